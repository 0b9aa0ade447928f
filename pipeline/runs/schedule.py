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

from pipeline.runs import flow, store
from pipeline.data.shards import Manifest, load_manifest
from pipeline.events import CLAIMED, DATA, EXPORTED, PROMOTED, PRUNED, UP_TO_DATE, Events
from pipeline.report import evaluate as evaluate_stage
from pipeline.training import trainer as train_stage
from pipeline.training.config import TrainConfig
from pipeline.training.distributed import LOCAL, Comm


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


def run(
    runs_dir: Path,
    spec: flow.Job,
    *,
    keep: int = 0,
    train_only: bool = False,
    export: str | None = None,
    events: Events | None = None,
    comm: Comm = LOCAL,
) -> Outcome:
    """One trigger of `spec` (its data_dir, config, gate): the set there (an empty directory
    is prepared from spec.source unless `train_only`), then `trigger`."""
    events = events or Events()
    assert spec.data_dir is not None, "the scheduled mode names its data"
    if train_only:  # train never prepares: the set must be there
        manifest = load_manifest(spec.data_dir)
    else:
        manifest, _ = flow.open_set(spec, events, comm)
    events.emit(DATA, path=str(spec.data_dir), dataset=manifest.name, identity=manifest.identity)
    return trigger(
        runs_dir,
        manifest,
        spec.config,
        min_accuracy=spec.min_accuracy,
        keep=keep,
        train_only=train_only,
        export=export,
        events=events,
        comm=comm,
    )


def trigger(
    runs_dir: Path,
    manifest: Manifest,
    config: TrainConfig,
    *,
    min_accuracy: float | None = None,
    keep: int = 0,
    train_only: bool = False,
    export: str | None = None,
    events: Events | None = None,
    comm: Comm = LOCAL,
) -> Outcome:
    """Bring the run of (manifest, config) in `runs_dir` up to date; `keep` 0 keeps every run.
    `export` "onnx": every evaluated run gets RUN/model.onnx before it is finished, so before
    it can become `latest`.
    Under MPI every rank calls this: rank 0 decides, claims, records and promotes; all train
    and evaluate together."""
    config.check()
    events = events or Events()
    rid, lead = store.run_id(manifest.identity, config), comm.rank == 0
    found = store.find(runs_dir, rid) if lead else None
    if (outcome := comm.broadcast(done(found, manifest, config) if lead else None)) is not None:
        return _up_to_date(found or runs_dir, outcome, events)
    with _claimed(runs_dir, manifest, config, comm) as run:
        outcome = comm.broadcast(done(run, manifest, config) if lead else None)
        if outcome is not None:  # finished while we looked
            return _up_to_date(run, outcome, events)
        events.emit(CLAIMED, run=run.name, path=str(run), id=rid)
        if train_only:
            train_stage.train(manifest, run, config, resume=True, events=events, comm=comm)
            return Outcome(run, False, None, None)
        evaluation, started = None, time.perf_counter()
        report = comm.broadcast(flow.standing_report(run, manifest, config) if lead else None)
        if report is None:  # else trained and evaluated already: record and promote
            _, evaluation = flow.train_and_evaluate(run, manifest, config, events, comm)
            report, started = evaluation.doc, time.perf_counter()
        if not lead:
            return Outcome(run, False, None, None, evaluation)
        accuracy = float(report["accuracy"])
        seconds = report["history"][-1]["seconds_total"] + time.perf_counter() - started
        if export is not None:  # before the outcome (and the promotion): a failed export
            # leaves the run unfinished, and the next trigger exports again
            from pipeline.deploy.onnx_export import export_onnx

            onnx_file = export_onnx(run, run / "model.onnx")
            events.emit(EXPORTED, run=run.name, path=str(onnx_file), format=export)
        passed = flow.gate(run, report, min_accuracy, events)
        if passed:
            store.promote(runs_dir, run)
            events.emit(PROMOTED, run=run.name, latest=str(runs_dir / store.LATEST))
        store.finish(
            run, accuracy=accuracy, min_accuracy=min_accuracy, passed=passed, seconds=seconds
        )
    pruned = tuple(store.prune(runs_dir, keep)) if keep else ()
    for path in pruned:
        events.emit(PRUNED, run=path.name, path=str(path))
    return Outcome(run, False, accuracy, passed, evaluation, pruned)


def _up_to_date(run: Path, outcome: dict[str, Any], events: Events) -> Outcome:
    events.emit(UP_TO_DATE, run=run.name, path=str(run))
    return Outcome(run, True, outcome["accuracy"], outcome["passed"])
