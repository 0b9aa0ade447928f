"""Experiment tracking from the command line: `--mlflow`, `--mlflow-experiment`,
`--mlflow-required`, and the tracker they build (pipeline.tracking.mlflow) as a listener on
the job's events.

Tracking is on with `--mlflow` (PIPELINE_MLFLOW=1), or when MLFLOW_TRACKING_URI is set (then
`--no-mlflow` turns it off). Asked for by flag without the extra, it is an error; asked for by
MLFLOW_TRACKING_URI alone, a warning (a machine may set it for other tools).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.errors import TrackingError
from pipeline.events import EPOCH_ENDED, EVALUATED, EXPORTED, RUN_STARTED, Event, Listener

if TYPE_CHECKING:
    from pipeline.report.evaluate import Evaluation
    from pipeline.training.config import TrainConfig
    from pipeline.training.loop import Reporter

Mlflow = Annotated[
    bool | None,
    typer.Option(
        "--mlflow/--no-mlflow",
        envvar="PIPELINE_MLFLOW",
        show_default=False,
        help="Track the run in MLflow (on by default when MLFLOW_TRACKING_URI is set; needs "
        "the mlflow extra).",
    ),
]
MlflowExperiment = Annotated[
    str | None,
    typer.Option(
        "--mlflow-experiment",
        envvar="PIPELINE_MLFLOW_EXPERIMENT",
        help="The MLflow experiment [default: the dataset's name].",
    ),
]
MlflowRequired = Annotated[
    bool,
    typer.Option(
        "--mlflow-required",
        envvar="PIPELINE_MLFLOW_REQUIRED",
        help="An unreachable tracking server is an error (exit 1) before training, not a warning.",
    ),
]


@dataclass(frozen=True)
class Tracking:
    """What the three options ask for."""

    mlflow: bool | None = None
    experiment: str | None = None
    required: bool = False


def _warn(message: str) -> None:
    from pipeline.cli.views import log

    log.warning(message)


@contextlib.contextmanager
def tracker(tracking: Tracking, rank: int = 0) -> Iterator[Listener | None]:
    """The tracker asked for (rank 0 only), or None; ended with the MLflow run's status as
    the block ends: FINISHED, KILLED (interrupted) or FAILED."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    wanted = tracking.mlflow if tracking.mlflow is not None else uri is not None
    if not wanted or rank != 0:
        yield None
        return
    from pipeline.tracking.mlflow import MlflowTracker

    try:
        listener = MlflowTracker(
            uri, experiment=tracking.experiment, required=tracking.required, warn=_warn
        )
    except TrackingError as exc:
        if tracking.mlflow or tracking.required:  # asked for by flag: an error
            raise
        _warn(f"MLFLOW_TRACKING_URI is set but not tracked: {exc.detail}")
        yield None
        return
    status = "FAILED"
    try:
        yield listener
        status = "FINISHED"
    except (KeyboardInterrupt, typer.Exit) as exc:
        status = "FINISHED" if getattr(exc, "exit_code", 1) == 0 else "KILLED"
        raise
    finally:
        listener.close(status)


# --- until the job's one event stream is wired through the stages: today's hooks, as events --


class TrackedView:
    """A trainer Reporter that draws as `view` and tells `listener` the run's events."""

    def __init__(
        self,
        view: Reporter,
        listener: Listener | None,
        run_dir: Path | None,
        config: TrainConfig,
        *,
        world_size: int,
    ) -> None:
        self.view, self.listener, self.run_dir, self.config = view, listener, run_dir, config
        self.world_size = world_size
        self.run: str | None = None  # the scheduled mode's run id (its directory's name)
        self.started = False

    def claimed(self, event: str, fields: dict[str, Any]) -> None:
        """Hears the scheduled mode's events: the run directory is known once claimed; an
        exported model is told (after RUN_STARTED, when no epoch was left to train)."""
        if event == "claimed":
            self.run_dir, self.run = Path(fields["path"]), str(fields["run"])
        if event == EXPORTED and self.listener is not None:
            self._start(None)
            self.listener(Event(EXPORTED, fields))

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.view.start_epoch(epoch, epochs, steps, done)
        self._start(epoch)

    def _start(self, epoch: int | None) -> None:
        """RUN_STARTED, once, with the `epoch` epochs done (None: all that metrics.jsonl
        holds) and their records."""
        if self.started or self.listener is None or self.run_dir is None:
            return
        import json

        from pipeline.training.rundir import METRICS_FILE, RunDir

        self.started = True
        saved = RunDir(self.run_dir).read_run_file()
        metrics = self.run_dir / METRICS_FILE
        lines = metrics.read_text().splitlines()[:epoch] if metrics.is_file() else []
        epoch = len(lines) if epoch is None else epoch
        fields = {
            "path": str(self.run_dir),
            "run": self.run,
            "config": self.config.to_json(),
            "preset": self.config.preset,
            "identity": saved.data_identity if saved else None,
            "dataset": saved.dataset if saved else None,
            "world_size": self.world_size,
            "epoch": epoch,
            "history": [json.loads(line) for line in lines],
        }
        self.listener(Event(RUN_STARTED, fields))

    def advance(self, step: int, samples: int, loss_sum: float) -> None:
        self.view.advance(step, samples, loss_sum)

    def end_epoch(self, record: dict[str, Any]) -> None:
        self.view.end_epoch(record)
        if self.listener is not None:
            self.listener(Event(EPOCH_ENDED, {"epoch": record["epoch"], "metrics": record}))

    def evaluated(self, evaluation: Evaluation) -> None:
        """EVALUATED: the headline metrics, per class, the report's files (after RUN_STARTED,
        when no epoch was left to train)."""
        from pipeline.training.rundir import REPORT_FILES, RUN_FILE

        if self.listener is None:
            return
        doc, run_dir = evaluation.doc, evaluation.run_dir
        self.run_dir = self.run_dir or run_dir
        self._start(len(doc["history"]))
        fields = {
            "run": run_dir.name,
            "report": str(run_dir / "report.json"),
            "split": doc["split"],
            "accuracy": evaluation.report.accuracy,
            "macro_f1": evaluation.report.macro_f1,
            "per_class": {row["class"]: row for row in doc["per_class"]},
            "artifacts": [str(run_dir / name) for name in (*REPORT_FILES, RUN_FILE)],
        }
        self.listener(Event(EVALUATED, fields))
