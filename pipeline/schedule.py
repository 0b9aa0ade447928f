"""One trigger of the scheduled mode (`pipeline run --runs DIR`): do what is new, nothing else.

    the data's identity + the recipe -> the run id (pipeline.runs)
    a finished run of that id        -> "up to date": return, touching no file
    else claim it (or RunBusyError)  -> train, resuming what a killed trigger left
                                     -> evaluate, record the outcome, promote if it passed
                                     -> prune the oldest finished runs beyond --keep
`on_event(event, fields)` hears each step: the CLI prints it as a line or as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import runs
from pipeline.data.shards import Manifest
from pipeline.report import evaluate as evaluate_stage
from pipeline.training import trainer as train_stage
from pipeline.training.config import TrainConfig

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


def trigger(
    runs_dir: Path,
    manifest: Manifest,
    config: TrainConfig,
    *,
    min_accuracy: float | None = None,
    keep: int = 0,
    train_only: bool = False,
    export: str | None = None,
    reporter: train_stage.Reporter | None = None,
    on_event: OnEvent = _quiet,
) -> Outcome:
    """Bring the run of (manifest, config) in `runs_dir` up to date; `keep` 0 keeps every run.
    `export` "onnx": every evaluated run gets RUN/model.onnx before it is finished, so before
    it can become `latest`."""
    config.check()
    rid = runs.run_id(manifest.identity, config)
    done = runs.finished(runs_dir, manifest, config)
    if done is not None:
        recorded = runs.read_outcome(done) or {}
        on_event("up-to-date", {"run": done.name, "path": str(done)})
        return Outcome(done, True, recorded.get("accuracy"), recorded.get("passed"))
    with runs.claim(runs_dir, manifest, config) as run:
        if (outcome := runs.read_outcome(run)) is not None:  # finished while we looked
            on_event("up-to-date", {"run": run.name, "path": str(run)})
            return Outcome(run, True, outcome.get("accuracy"), outcome.get("passed"))
        on_event("claimed", {"run": run.name, "path": str(run), "id": rid})
        result = train_stage.train(manifest, run, config, resume=True, reporter=reporter)
        resumed = None if result.resumed_from is None else str(result.resumed_from)
        trained = {"run": run.name, "checkpoint": str(result.checkpoint), "resumed_from": resumed}
        on_event("trained", trained)
        if train_only:
            return Outcome(run, False, None, None)
        started = time.perf_counter()
        evaluation = evaluate_stage.evaluate(run, manifest=manifest)
        accuracy = evaluation.report.accuracy
        seconds = result.history[-1]["seconds_total"] + time.perf_counter() - started
        if export is not None:  # before the run is finished (and so before promotion): a
            # failed export leaves it unfinished, and the next trigger exports again
            from pipeline.deploy.onnx_export import export_onnx

            onnx_file = export_onnx(run, run / "model.onnx")
            on_event("exported", {"run": run.name, "path": str(onnx_file), "format": export})
        passed = runs.finish(run, accuracy=accuracy, min_accuracy=min_accuracy, seconds=seconds)
        fields = {"run": run.name, "accuracy": accuracy, "min_accuracy": min_accuracy}
        on_event("evaluated", {**fields, "passed": passed, "report": str(run / "report.json")})
        if passed:
            runs.promote(runs_dir, run)
            on_event("promoted", {"run": run.name, "latest": str(runs_dir / runs.LATEST)})
    pruned = tuple(runs.prune(runs_dir, keep)) if keep else ()
    for path in pruned:
        on_event("pruned", {"run": path.name, "path": str(path)})
    return Outcome(run, False, accuracy, passed, evaluation, pruned)
