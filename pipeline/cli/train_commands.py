"""The training commands: `train` a run, `evaluate` it, `run` the whole job.

Each translates its options into one library call (`pipeline.training.trainer.train`,
`pipeline.report.evaluate.evaluate`, `pipeline.job.flow.run`) and shows the result; with `--runs`,
`train` and `run` hand over to the scheduled mode (`scheduled.run_trigger`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import views
from pipeline.cli.deploy_commands import ScheduledExport
from pipeline.cli.errors import EXIT_GATE, fail, friendly_errors
from pipeline.cli.logs import LogFormat
from pipeline.cli.options import (
    ImageShape,
    Keep,
    Logs,
    MinAccuracy,
    OptionalRunDir,
    RunDir,
    Runs,
    ValFraction,
    command_line,
    train_options,
)
from pipeline.cli.tracking import (
    Mlflow,
    MlflowExperiment,
    MlflowRequired,
    Tracking,
    tracker,
    watched,
)
from pipeline.cli.world import Distributed, world
from pipeline.config import TrainConfig
from pipeline.events import Events


def _gate(accuracy: float, min_accuracy: float | None) -> None:
    if min_accuracy is not None and accuracy < min_accuracy:
        views.log.error(
            f"quality gate failed: accuracy {accuracy:.4f} < --min-accuracy {min_accuracy}",
            event="gate-failed",
        )
        raise typer.Exit(EXIT_GATE)


@train_options
def train(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            file_okay=False,
            envvar="PIPELINE_DATA",
            help="Shard directory written by prepare.",
        ),
    ],
    run_dir: OptionalRunDir = None,
    runs: Runs = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --run-dir from its newest checkpoint.")
    ] = False,
    distributed_mode: Distributed = "auto",
    log_format: Logs = LogFormat.plain,
    mlflow: Mlflow = None,
    mlflow_experiment: MlflowExperiment = None,
    mlflow_required: MlflowRequired = False,
    *,
    config: TrainConfig,
) -> None:
    """Train the MLP on the shards (default: the original 784-500-10 recipe).

    With --runs, train the run of this data and recipe (resuming it); `run --runs` finishes it."""
    from pipeline.runs.rundir import epoch_accuracy
    from pipeline.training import trainer

    views.log.use(log_format)
    if _one_of(run_dir, runs) is None:
        from pipeline.cli.scheduled import run_trigger
        from pipeline.job import flow

        assert runs is not None
        spec = flow.Job(run_dir=runs, config=config, data_dir=data)
        tracking = Tracking(mlflow, mlflow_experiment, mlflow_required)
        run_trigger(
            runs,
            spec,
            keep=0,
            train_only=True,
            distributed_mode=distributed_mode,
            tracking=tracking,
        )
        return
    assert run_dir is not None

    tracking = Tracking(mlflow, mlflow_experiment, mlflow_required)
    with watched(distributed_mode, tracking, "rerun the same command with --resume") as (
        comm,
        events,
    ):
        result = trainer.train(data, run_dir, config, resume=resume, events=events, comm=comm)
        if result.resumed_from is not None and comm.rank == 0:
            views.say(f"resumed from {result.resumed_from}")
    if comm.rank != 0:
        return
    last = result.history[-1]
    split, accuracy = epoch_accuracy(last)
    views.say(
        f"trained {last['epoch']} epochs: {split} accuracy {accuracy:.2%}; "
        f"checkpoint {result.checkpoint}"
    )


def evaluate(
    run_dir: RunDir,
    data: Annotated[
        Path | None,
        typer.Option("--data", file_okay=False, help="Shard directory [default: the run's]."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    checkpoint: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Checkpoint file [default: the run's newest]."),
    ] = None,
    min_accuracy: MinAccuracy = None,
    distributed_mode: Distributed = "auto",
    log_format: Logs = LogFormat.plain,
    allow_other_data: Annotated[
        bool,
        typer.Option(
            "--allow-other-data",
            help="Evaluate a checkpoint on data other than it was trained on (other classes "
            "or another shard set); the report's headline then names both.",
        ),
    ] = False,
    mlflow: Mlflow = None,
    mlflow_experiment: MlflowExperiment = None,
    mlflow_required: MlflowRequired = False,
) -> None:
    """Write report.json, report.md and PNGs for a checkpoint; print the headline."""
    from pipeline.job import flow
    from pipeline.report import evaluate as evaluate_stage

    views.log.use(log_format)

    tracking = Tracking(mlflow, mlflow_experiment, mlflow_required)
    with (
        world(distributed_mode) as comm,
        friendly_errors(),
        tracker(tracking, comm.rank) as listener,
    ):
        evaluation = evaluate_stage.evaluate(
            run_dir,
            data_dir=data,
            split=split,
            checkpoint_path=checkpoint,
            allow_other_data=allow_other_data,
            comm=comm,
        )
        if listener is not None:  # into the run's MLflow run, if it has one
            flow.gate(run_dir, evaluation.doc, min_accuracy, Events(listener))
    if comm.rank != 0:
        return
    views.report_table(evaluation)
    _gate(evaluation.report.accuracy, min_accuracy)


@train_options
def run(
    run_dir: OptionalRunDir = None,
    runs: Runs = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            file_okay=False,
            envvar="PIPELINE_DATA",
            help="Shard directory: used if it holds a set, else written [default: RUN_DIR/shards].",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            envvar="PIPELINE_SOURCE",
            help="The source of a set to write: as prepare's --source "
            "[default: what --data holds, else embedded]. With --runs: only to fill an empty "
            "--data.",
        ),
    ] = None,
    image_shape: ImageShape = None,
    val_fraction: ValFraction = None,
    min_accuracy: MinAccuracy = None,
    keep: Keep = 0,
    distributed_mode: Distributed = "auto",
    log_format: Logs = LogFormat.plain,
    export: ScheduledExport = None,
    mlflow: Mlflow = None,
    mlflow_experiment: MlflowExperiment = None,
    mlflow_required: MlflowRequired = False,
    *,
    config: TrainConfig,
) -> None:
    """Prepare (if needed), train (resuming if the run exists) and evaluate, in one go.

    With --runs (the scheduled mode): the run of the data and recipe, up to date or brought up
    to date; a run passing the gate becomes RUNS/latest."""
    from pipeline.data import sources
    from pipeline.job import flow
    from pipeline.report.evaluate import REPORT_MD

    views.log.use(log_format)
    home = _one_of(run_dir, runs) or runs  # the run, or with --runs the directory of runs
    assert home is not None
    if runs is not None and data is None:
        data = runs / "shards"
    if runs is None and export is not None:
        raise fail("--export needs --runs (export a single run with pipeline export)", 2)
    with friendly_errors():  # a bad --image-shape is one line
        spec = flow.Job(
            run_dir=home,
            config=config,
            data_dir=data,
            source=source,
            image_shape=sources.parse_shape(image_shape) if image_shape else None,
            val_fraction=val_fraction,
            min_accuracy=min_accuracy,
            command=command_line(),
        )
    tracking = Tracking(mlflow, mlflow_experiment, mlflow_required)
    if runs is not None:
        from pipeline.cli.scheduled import run_trigger

        mode = distributed_mode
        run_trigger(runs, spec, keep=keep, export=export, distributed_mode=mode, tracking=tracking)
        return
    assert run_dir is not None
    with watched(distributed_mode, tracking) as (comm, events):
        result = flow.run(spec, events, comm=comm)
    if comm.rank != 0:
        return
    if result.evaluation is not None:
        views.report_table(result.evaluation)
    else:
        views.say(f'accuracy ("precision") {result.accuracy:.2%}; report: {run_dir / REPORT_MD}')
    _gate(result.accuracy, min_accuracy)


def _one_of(run_dir: Path | None, runs: Path | None) -> Path | None:
    """--run-dir (one run) or --runs (scheduled mode): exactly one of them; the run dir."""
    if (run_dir is None) == (runs is None):
        raise fail("pass either --run-dir (one run) or --runs (a directory of runs)", 2)
    return run_dir
