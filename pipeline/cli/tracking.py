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
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.errors import TrackingError
from pipeline.events import Events, Listener

if TYPE_CHECKING:
    from pipeline.communicator import Comm

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


@contextlib.contextmanager
def watched(
    distributed_mode: str, tracking: Tracking, how_to_continue: str = "rerun the same command"
) -> Iterator[tuple[Comm, Events]]:
    """What a training command runs in: the MPI world, one-line errors, the tracker and the
    live display; yields (comm, the job's events: the terminal and the tracker on rank 0,
    no listener on the other ranks)."""
    from pipeline.cli import views
    from pipeline.cli.errors import TRAINING_OUT_OF_MEMORY, friendly_errors
    from pipeline.cli.watch import Terminal
    from pipeline.cli.world import world

    with (
        world(distributed_mode) as comm,
        friendly_errors(how_to_continue, TRAINING_OUT_OF_MEMORY),
        tracker(tracking, comm.rank) as listener,
        views.display(comm) as progress,
    ):
        events = Events(Terminal(progress)) if comm.rank == 0 else Events()
        if listener is not None:
            events.add(listener)
        yield comm, events
