"""One trigger of the scheduled mode (`pipeline run --runs DIR`): do what is new, nothing else.

    the data's identity + the recipe -> the run id (pipeline.runs.store)
    a finished run of that id        -> "up to date": return, touching no file
    else claim it (or RunBusyError)  -> train, resuming what a killed trigger left
                                     -> evaluate (both skipped if the report stands)
                                     -> promote if it passed, then record the outcome
                                     -> prune the oldest finished runs beyond --keep
`events` (pipeline.events) hears each step: the CLI prints it as a line or as JSON.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.communicator import LOCAL, Comm
from pipeline.config import TrainConfig
from pipeline.data import Manifest, open_set
from pipeline.events import CLAIMED, DATA, EXPORTED, PROMOTED, PRUNED, UP_TO_DATE, Events
from pipeline.job import flow
from pipeline.report import evaluate as evaluate_stage
from pipeline.runs import store
from pipeline.training import trainer as train_stage


@dataclass(frozen=True)
class Outcome:
    run: Path
    up_to_date: bool  # nothing was done: the run was already finished
    accuracy: float | None
    passed: bool | None
    evaluation: evaluate_stage.Evaluation | None = None
    pruned: tuple[Path, ...] = ()


def done(run: Path | None, manifest: Manifest, config: TrainConfig) -> dict[str, Any] | None:
    """The run's outcome if the run is done: its report stands (flow.standing_report, the rule
    `--run-dir` uses) and its outcome is recorded; written after the promotion, that outcome
    proves a run that passed was promoted. Raises ConfigError for an outcome not ours."""
    if run is None or (outcome := store.read_outcome(run)) is None:
        return None
    return outcome if flow.standing_report(run, manifest, config) is not None else None


@contextlib.contextmanager
def _claimed(runs_dir: Path, manifest: Manifest, config: TrainConfig, comm: Comm) -> Iterator[Path]:
    """The run, claimed by rank 0 (the one trigger of an MPI job); the others learn its path."""
    if comm.rank != 0:
        yield Path(comm.broadcast(None))
        return
    with store.claim(runs_dir, manifest, config) as run:
        comm.broadcast(str(run))
        yield run


@dataclass(frozen=True, kw_only=True)
class Trigger:
    """One trigger: a job (its data_dir, config and gate) brought up to date in `runs_dir`."""

    runs_dir: Path
    job: flow.Job
    keep: int = 0  # finished runs kept (the newest); 0 keeps every run
    train_only: bool = False  # train the run, no more (`train --runs`)
    export: str | None = None  # "onnx": RUN/model.onnx before the outcome, so before `latest`


def trigger(spec: Trigger, events: Events | None = None, comm: Comm = LOCAL) -> Outcome:
    """The set in spec.job.data_dir (an empty directory is prepared from its source unless
    `train_only`), then its run brought up to date. Under MPI every rank calls this: rank 0
    decides, claims, records and promotes; all train and evaluate together."""
    events = events or Events()
    data = spec.job.data_dir
    assert data is not None, "the scheduled mode names its data"
    if spec.train_only:  # train never prepares: the set must be there
        manifest = open_set(data)
    else:
        manifest, _ = flow.open_set(spec.job, events, comm, any_source=True)
    events.emit(DATA, path=str(data), dataset=manifest.name, identity=manifest.identity)
    return _bring_up_to_date(spec, manifest, events, comm)


def _bring_up_to_date(spec: Trigger, manifest: Manifest, events: Events, comm: Comm) -> Outcome:
    runs_dir, config, min_accuracy = spec.runs_dir, spec.job.config, spec.job.min_accuracy
    config.check()
    rid, lead = store.run_id(manifest.identity, config), comm.rank == 0
    found = store.find(runs_dir, rid) if lead else None
    if (outcome := comm.broadcast(done(found, manifest, config) if lead else None)) is not None:
        return _up_to_date(found or runs_dir, outcome, events)
    with _claimed(runs_dir, manifest, config, comm) as run:
        outcome = comm.broadcast(done(run, manifest, config) if lead else None)
        if outcome is not None:  # finished while we looked
            return _up_to_date(run, outcome, events)
        events.emit(CLAIMED, run=run.name, path=str(run), id=rid)
        if spec.train_only:
            train_stage.train(manifest, run, config, resume=True, events=events, comm=comm)
            return Outcome(run, False, None, None)
        evaluation = None
        report = comm.broadcast(flow.standing_report(run, manifest, config) if lead else None)
        if report is None:  # else trained and evaluated already: record and promote
            _, evaluation = flow.train_and_evaluate(run, manifest, config, events, comm)
            report = evaluation.doc
        if not lead:
            return Outcome(run, False, None, None, evaluation)
        accuracy, started = float(report["accuracy"]), time.perf_counter()
        if spec.export is not None:  # before the outcome (and the promotion): a failed export
            # leaves the run unfinished, and the next trigger exports again
            from pipeline.deploy.onnx_export import ONNX_FILE, export_onnx

            onnx_file = export_onnx(run, run / ONNX_FILE)
            events.emit(
                EXPORTED, run=run.name, run_dir=str(run), path=str(onnx_file), format=spec.export
            )
        # training (every try's, from the history), this trigger's evaluation and export
        seconds = report["history"][-1]["seconds_total"] + time.perf_counter() - started
        seconds += evaluation.seconds if evaluation is not None else 0.0
        passed = flow.gate(run, report, min_accuracy, events)
        if passed:
            store.promote(runs_dir, run)
            events.emit(PROMOTED, run=run.name, latest=str(runs_dir / store.LATEST))
        store.finish(
            run, accuracy=accuracy, min_accuracy=min_accuracy, passed=passed, seconds=seconds
        )
    pruned = tuple(store.prune(runs_dir, spec.keep)) if spec.keep else ()
    for path in pruned:
        events.emit(PRUNED, run=path.name, path=str(path))
    return Outcome(run, False, accuracy, passed, evaluation, pruned)


def _up_to_date(run: Path, outcome: dict[str, Any], events: Events) -> Outcome:
    events.emit(UP_TO_DATE, run=run.name, path=str(run))
    return Outcome(run, True, outcome["accuracy"], outcome["passed"])
