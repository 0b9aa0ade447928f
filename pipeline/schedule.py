"""One trigger of the scheduled mode (`pipeline run --runs DIR`): do what is new, nothing else.

    the data's identity + the recipe -> the run id (pipeline.runs)
    a finished run of that id        -> "up to date": return, touching no file
    else claim it (or RunBusyError)  -> train, resuming what a killed trigger left
                                     -> evaluate (both skipped if the report stands)
                                     -> promote if it passed, then record the outcome
                                     -> prune the oldest finished runs beyond --keep
`on_event(event, fields)` hears each step: the CLI prints it as a line or as JSON.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import job, runs
from pipeline.data.shards import Manifest
from pipeline.report import evaluate as evaluate_stage
from pipeline.training import trainer as train_stage
from pipeline.training.config import TrainConfig
from pipeline.training.distributed import LOCAL, Comm

OnEvent = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Outcome:
    run: Path
    up_to_date: bool  # nothing was done: the run was already finished
    accuracy: float | None
    passed: bool | None
    evaluation: evaluate_stage.Evaluation | None = None
    pruned: tuple[Path, ...] = ()


def _quiet(event: str, fields: dict[str, Any]) -> None:
    pass


def done(run: Path | None, manifest: Manifest, config: TrainConfig) -> dict[str, Any] | None:
    """The run's outcome if the run is done: its report stands (job.standing_report, the rule
    `--run-dir` uses) and its outcome is recorded; written after the promotion, that outcome
    proves a run that passed was promoted. Raises ConfigError for an outcome not ours."""
    if run is None or (outcome := runs.read_outcome(run)) is None:
        return None
    return outcome if job.standing_report(run, manifest, config) is not None else None


@contextlib.contextmanager
def _claimed(runs_dir: Path, manifest: Manifest, config: TrainConfig, comm: Comm) -> Iterator[Path]:
    """The run, claimed by rank 0 (the one trigger of an MPI job); the others learn its path."""
    if comm.rank != 0:
        yield Path(comm.broadcast(None))
        return
    with runs.claim(runs_dir, manifest, config) as run:
        comm.broadcast(str(run))
        yield run


def trigger(
    runs_dir: Path,
    manifest: Manifest,
    config: TrainConfig,
    *,
    min_accuracy: float | None = None,
    keep: int = 0,
    train_only: bool = False,
    reporter: train_stage.Reporter | None = None,
    on_event: OnEvent = _quiet,
    comm: Comm = LOCAL,
) -> Outcome:
    """Bring the run of (manifest, config) in `runs_dir` up to date; `keep` 0 keeps every run.
    Under MPI every rank calls this: rank 0 decides, claims, records and promotes; all train
    and evaluate together."""
    config.check()
    rid, lead = runs.run_id(manifest.identity, config), comm.rank == 0
    found = runs.find(runs_dir, rid) if lead else None
    if (outcome := comm.broadcast(done(found, manifest, config) if lead else None)) is not None:
        assert found is not None or not lead
        return _up_to_date(found or runs_dir, outcome, on_event)
    with _claimed(runs_dir, manifest, config, comm) as run:
        outcome = comm.broadcast(done(run, manifest, config) if lead else None)
        if outcome is not None:  # finished while we looked
            return _up_to_date(run, outcome, on_event)
        on_event("claimed", {"run": run.name, "path": str(run), "id": rid})
        standing = comm.broadcast(job.standing_report(run, manifest, config) if lead else None)
        evaluation, started = None, time.perf_counter()
        if standing is None or train_only:  # else trained and evaluated: record, promote
            result = train_stage.train(
                manifest, run, config, resume=True, reporter=reporter, comm=comm
            )
            resumed = None if result.resumed_from is None else str(result.resumed_from)
            on_event(
                "trained",
                {"run": run.name, "checkpoint": str(result.checkpoint), "resumed_from": resumed},
            )
            if train_only:
                return Outcome(run, False, None, None)
            started = time.perf_counter()
            evaluation = evaluate_stage.evaluate(run, manifest=manifest, comm=comm)
            standing = evaluation.doc
        if not lead:
            return Outcome(run, False, None, None, evaluation)
        accuracy = float(standing["accuracy"])
        seconds = standing["history"][-1]["seconds_total"] + time.perf_counter() - started
        passed = min_accuracy is None or accuracy >= min_accuracy
        fields = {"run": run.name, "accuracy": accuracy, "min_accuracy": min_accuracy}
        on_event("evaluated", {**fields, "passed": passed, "report": str(run / "report.json")})
        if passed:
            runs.promote(runs_dir, run)
            on_event("promoted", {"run": run.name, "latest": str(runs_dir / runs.LATEST)})
        runs.finish(
            run, accuracy=accuracy, min_accuracy=min_accuracy, passed=passed, seconds=seconds
        )
    pruned = tuple(runs.prune(runs_dir, keep)) if keep else ()
    for path in pruned:
        on_event("pruned", {"run": path.name, "path": str(path)})
    return Outcome(run, False, accuracy, passed, evaluation, pruned)


def _up_to_date(run: Path, outcome: dict[str, Any], on_event: OnEvent) -> Outcome:
    on_event("up-to-date", {"run": run.name, "path": str(run)})
    return Outcome(run, True, outcome["accuracy"], outcome["passed"])
