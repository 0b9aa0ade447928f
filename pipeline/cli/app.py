"""The commands: each translates its options into one library call and shows the result.

The stages are imported inside the commands, so `pipeline --help` loads neither numba nor
matplotlib (numpy and h5py do come, with the shard format's `Compression` that `prepare` offers).
Exit codes and error lines: `pipeline.cli.errors`; views: `views`; MPI: `world`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline import __version__
from pipeline.cli import views
from pipeline.cli.errors import (
    EXIT_ERROR,
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    OneLineErrors,
    fail,
    friendly_errors,
)
from pipeline.cli.logs import LogFormat
from pipeline.cli.options import (
    Keep,
    Logs,
    MinAccuracy,
    OptionalRunDir,
    RunDir,
    Runs,
    train_options,
)
from pipeline.cli.world import Distributed, world
from pipeline.data.prepare import DEFAULT_SHARD_SIZE
from pipeline.data.shards import Compression
from pipeline.training.config import TrainConfig

__all__ = ["EXIT_ERROR", "EXIT_GATE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "app"]

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: "[default: mnist]" must not read as markup
    help="MNIST-style images: IDX -> HDF5 shards -> batches -> MLP -> checkpoint -> report.",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"pipeline {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """MNIST-style images: IDX -> HDF5 shards -> batches -> MLP -> checkpoint -> report."""


def _command() -> str:
    return shlex.join(["pipeline", *sys.argv[1:]])


Source = Annotated[
    str,
    typer.Option(
        envvar="PIPELINE_SOURCE",
        help="embedded | idx:DIR | torchvision:NAME[/SPLIT]:ROOT | npz:FILE | csv:TRAIN,TEST | "
        "images:DIR (README: Data sources).",
    ),
]
ImageShape = Annotated[
    str | None,
    typer.Option(help="ROWSxCOLS[xCHANNELS] of a csv source's rows [default: square, grey]."),
]
ValFraction = Annotated[
    float | None,
    typer.Option(help="Carve this share of each class of train into a 'val' split (0-1)."),
]


@app.command()
def prepare(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out", file_okay=False, envvar="PIPELINE_DATA", help="Directory for the shard set."
        ),
    ],
    source: Source = "embedded",
    name: Annotated[str | None, typer.Option(help="Dataset name [default: the source's].")] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class names [default: the source's, else 0..N-1]."),
    ] = None,
    image_shape: ImageShape = None,
    val_fraction: ValFraction = None,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Samples per shard file.")
    ] = DEFAULT_SHARD_SIZE,
    compression: Annotated[
        Compression, typer.Option(help="HDF5 compression of the shards.")
    ] = Compression.none,
    force: Annotated[
        bool,
        typer.Option(
            help="Rebuild even if a shard set is there; the old one stays usable until the "
            "new one is complete."
        ),
    ] = False,
    if_missing: Annotated[
        bool,
        typer.Option(
            help="Do nothing if --out already holds a complete shard set, whatever its source "
            "(the scheduled mode's first stage: a data set swapped in stays)."
        ),
    ] = False,
    log_format: Logs = LogFormat.plain,
) -> None:
    """Read a data source and write normalized, one-hot HDF5 shards plus manifest.json."""
    from pipeline.data import prepare as prepare_stage
    from pipeline.data import shards, sources

    views.log.use(log_format)
    if if_missing and (out_dir / shards.MANIFEST).exists() and not force:
        with friendly_errors():
            manifest = shards.load_manifest(out_dir)
        views.log.event(
            "prepared",
            {"path": str(out_dir), "dataset": manifest.name, "identity": manifest.identity},
            plain=f"shards: {out_dir} already holds {manifest.name}",
        )
        return

    with friendly_errors(), views.display() as progress:
        class_names = [c.strip() for c in classes.split(",")] if classes else None
        shape = sources.parse_shape(image_shape) if image_shape else None
        raw = sources.load(
            source, name=name, classes=class_names, image_shape=shape, val_fraction=val_fraction
        )
        view = views.PrepareView(progress, {s: len(d.images) for s, d in raw.splits.items()})
        result = prepare_stage.prepare(
            out_dir,
            raw,
            shard_size=shard_size,
            compression=compression.value,
            force=force,
            command=_command(),
            on_progress=view,
        )
        view.finish()
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    views.prepare_summary(result)


@app.command()
def show(
    data: Annotated[Path, typer.Argument(help="A shard directory written by prepare.")],
    grid: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="PNG of sample images [default: ./NAME-samples.png]."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split the sample images come from.")] = "train",
    per_class: Annotated[int, typer.Option(min=1, max=32, help="Images per class.")] = 8,
) -> None:
    """Summarize a shard set (splits, counts per class, shape, identity, source) and draw a
    grid of sample images per class."""
    from pipeline.data import shards
    from pipeline.report import dataset

    with friendly_errors():
        manifest = shards.load_manifest(data)
        summary = dataset.summarize(manifest)
        grid = grid or Path(f"{summary.name.replace('/', '_')}-samples.png")
        manifest.split(split)  # an unknown split is an error before anything is drawn
        dataset.save_sample_grid(manifest, grid, split=split, per_class=per_class)
    views.dataset_table(summary)
    views.say(f"sample images: {grid}")


@app.command()
def verify(
    data: Annotated[Path, typer.Argument(help="A shard directory written by prepare.")],
) -> None:
    """Check every shard against the manifest: presence, size, sha256, shapes, values, labels."""
    from pipeline.data import integrity, shards

    with friendly_errors():
        manifest = shards.load_manifest(data, check_files=False)
        problems = views.verify_table(data, integrity.verify(manifest))
    if problems:
        raise fail(f"{len(problems)} problem(s); first: {problems[0]}")


def _gate(accuracy: float, min_accuracy: float | None) -> None:
    if min_accuracy is not None and accuracy < min_accuracy:
        views.log.error(
            f"quality gate failed: accuracy {accuracy:.4f} < --min-accuracy {min_accuracy}",
            event="gate-failed",
        )
        raise typer.Exit(EXIT_GATE)


@app.command()
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
        trigger(runs, data, None, config, min_accuracy=None, keep=0, train_only=True)
        return
    assert run_dir is not None

    with (
        world(distributed_mode) as comm,
        friendly_errors("rerun the same command with --resume"),
        views.display(comm) as progress,
    ):
        view = views.TrainView(progress, config.batch_size)
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


@app.command()
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
) -> None:
    """Write report.json, report.md and PNGs for a checkpoint; print the headline."""
    from pipeline.report import evaluate as evaluate_stage

    views.log.use(log_format)

    with world(distributed_mode) as comm, friendly_errors():
        evaluation = evaluate_stage.evaluate(
            run_dir,
            data_dir=data,
            split=split,
            checkpoint_path=checkpoint,
            allow_other_data=allow_other_data,
            comm=comm,
        )
    if comm.rank != 0:
        return
    views.report_table(evaluation)
    _gate(evaluation.report.accuracy, min_accuracy)


@app.command()
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
    if _one_of(run_dir, runs) is None:
        from pipeline.cli.scheduled import trigger

        assert runs is not None
        trigger(runs, data or runs / "shards", source, config, min_accuracy=min_accuracy, keep=keep)
        return
    assert run_dir is not None

    with friendly_errors():
        shape = sources.parse_shape(image_shape) if image_shape else None
    spec = job.Job(
        run_dir=run_dir,
        config=config,
        data_dir=data,
        source=source,
        image_shape=shape,
        val_fraction=val_fraction,
        command=_command(),
    )
    with world(distributed_mode) as comm, friendly_errors(), views.display(comm) as progress:
        hooks = job.Hooks(
            say=views.say if comm.rank == 0 else job.Hooks.say,
            prepare_progress=lambda totals: views.PrepareView(progress, totals),
            reporter=views.TrainView(progress, config.batch_size),
        )
        result = job.run(spec, hooks, comm=comm)
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
