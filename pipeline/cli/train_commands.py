"""The training commands: `train` a run, `evaluate` it, `run` the whole job.

Each translates its options into one library call (`pipeline.training.trainer.train`,
`pipeline.report.evaluate.evaluate`, `pipeline.job.run`) and shows the result; with `--runs`,
`train` and `run` hand over to the scheduled mode (`scheduled.trigger`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    TrackedView,
    Tracking,
    tracker,
)
from pipeline.cli.world import Distributed, world
from pipeline.training.config import TrainConfig

if TYPE_CHECKING:  # the stages load when a command runs, not for --help
    from pipeline import job


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
    from pipeline.training import trainer
    from pipeline.training.rundir import epoch_accuracy

    views.log.use(log_format)
    if _one_of(run_dir, runs) is None:  # the scheduled mode trains in one process
        from pipeline.cli.scheduled import trigger

        assert runs is not None
        tracking = Tracking(mlflow, mlflow_experiment, mlflow_required)
        trigger(
            runs, data, None, config, min_accuracy=None, keep=0, train_only=True, tracking=tracking
        )
        return
    assert run_dir is not None

    with (
        world(distributed_mode) as comm,
        friendly_errors("rerun the same command with --resume"),
        tracker(Tracking(mlflow, mlflow_experiment, mlflow_required), comm.rank) as listener,
        views.display(comm) as progress,
    ):
        shown = views.TrainView(progress, config.batch_size)
        view = TrackedView(shown, listener, run_dir, config, world_size=comm.size)
        result = trainer.train(data, run_dir, config, resume=resume, reporter=view, comm=comm)
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
    from pipeline.report import evaluate as evaluate_stage
    from pipeline.training.loop import Silent

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
        if listener is not None:  # into the run's MLflow run (a new one if it has none)
            config = TrainConfig.from_json(evaluation.doc["model"]["config"])
            view = TrackedView(Silent(), listener, run_dir, config, world_size=comm.size)
            view.evaluated(evaluation)
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
    mlflow: Mlflow = None,
    mlflow_experiment: MlflowExperiment = None,
    mlflow_required: MlflowRequired = False,
    export: ScheduledExport = None,
    *,
    config: TrainConfig,
) -> None:
    """Prepare (if needed), train (resuming if the run exists) and evaluate, in one go.

    With --runs (the scheduled mode): the run of the data and recipe, up to date or brought up
    to date; a run passing the gate becomes RUNS/latest."""
    from pipeline import job
    from pipeline.data import sources
    from pipeline.report.evaluate import REPORT_MD

    views.log.use(log_format)
    tracking = Tracking(mlflow, mlflow_experiment, mlflow_required)
    if _one_of(run_dir, runs) is None:
        from pipeline.cli.scheduled import trigger

        assert runs is not None
        shards = data or runs / "shards"
        trigger(
            runs, shards, source, config, min_accuracy=min_accuracy, keep=keep, export=export,
            tracking=tracking,
        )  # fmt: skip
        return
    if export is not None:
        raise fail("--export needs --runs (export a single run with pipeline export)", 2)
    assert run_dir is not None

    with friendly_errors():  # a bad --image-shape is one line
        spec = job.Job(
            run_dir=run_dir,
            config=config,
            data_dir=data,
            source=source,
            image_shape=sources.parse_shape(image_shape) if image_shape else None,
            val_fraction=val_fraction,
            command=command_line(),
        )
    rank, result = _job(spec, tracking, distributed_mode)
    if rank != 0:
        return
    if result.evaluation is not None:
        views.report_table(result.evaluation)
    else:
        views.say(f'accuracy ("precision") {result.accuracy:.2%}; report: {run_dir / REPORT_MD}')
    _gate(result.accuracy, min_accuracy)


def _job(spec: job.Job, tracking: Tracking, distributed_mode: str) -> tuple[int, job.JobResult]:
    """`job.run` with its progress shown and tracked: (this process's MPI rank, the result)."""
    from pipeline import job

    with (
        world(distributed_mode) as comm,
        friendly_errors(),
        tracker(tracking, comm.rank) as listener,
        views.display(comm) as progress,
    ):
        shown = views.TrainView(progress, spec.config.batch_size)
        view = TrackedView(shown, listener, spec.run_dir, spec.config, world_size=comm.size)
        hooks = job.Hooks(
            say=views.say if comm.rank == 0 else job.Hooks.say,
            prepare_progress=lambda totals: views.PrepareView(progress, totals),
            reporter=view,
        )
        result = job.run(spec, hooks, comm=comm)
        if result.evaluation is not None:
            view.evaluated(result.evaluation)
    return comm.rank, result


def _one_of(run_dir: Path | None, runs: Path | None) -> Path | None:
    """--run-dir (one run) or --runs (scheduled mode): exactly one of them; the run dir."""
    if (run_dir is None) == (runs is None):
        raise fail("pass either --run-dir (one run) or --runs (a directory of runs)", 2)
    return run_dir
