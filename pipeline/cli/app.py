"""The command line: thin typer commands over the stages, rich output, one-line errors.

Exit codes: 0 success (also "up to date"); 1 bad input or environment (one line on stderr);
2 bad usage (typer); 3 the `--min-accuracy` quality gate failed (the report is still written);
75 another trigger holds the run (EX_TEMPFAIL: try again later); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from pipeline import runs as runs_lib
from pipeline.cli.logs import Log, LogFormat
from pipeline.data import prepare as prepare_stage
from pipeline.data import shards, sources
from pipeline.errors import PipelineError
from pipeline.report import evaluate as evaluate_stage
from pipeline.training import distributed
from pipeline.training import trainer as train_stage
from pipeline.training.config import TrainConfig
from pipeline.training.distributed import Comm

EXIT_ERROR, EXIT_GATE, EXIT_BUSY, EXIT_INTERRUPTED = 1, 3, 75, 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# library parameter -> the flag that sets it, for rendering errors the library raises
FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in ("lr", "epochs", "batch_size", "hidden", "seed", "checkpoint_every")
} | {
    "shard_size": "--shard-size",
    "compression": "--compression",
    "allow_other_data": "--allow-other-data",
    "run_dir": "--run-dir",
    "data_dir": "--data",
    "distributed": "--distributed",
}
# the data source's parameters (pipeline.data.sources)
FLAGS |= {
    name: "--" + name.replace("_", "-")
    for name in ("source", "classes", "image_shape", "val_fraction")
}


class OneLineErrors(TyperGroup):
    """Report usage errors as one `error:` line, like every other error (typer draws a box)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # errors come back to us instead of being printed
        try:
            code = super().main(*args, **kwargs)
        except typer.TyperException as exc:  # typer's usage errors (its vendored click's)
            if message := exc.format_message():  # empty when the help was shown instead
                typer.echo(f"error: {message}", err=True)
            code = exc.exit_code
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = EXIT_INTERRUPTED
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="MNIST-style images: IDX -> HDF5 shards -> batches -> MLP -> checkpoint -> report.",
)
out = Console(soft_wrap=True)  # long paths stay on one line in logs
log = Log(out)


class Compression(StrEnum):
    none = "none"
    lzf = "lzf"
    gzip = "gzip"


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn the pipeline's exceptions into one line on stderr and an exit code."""
    try:
        yield
    except runs_lib.RunBusyError as exc:  # a scheduler's "not now": its own exit code
        log.error(f"busy: {exc}", event="busy")
        raise typer.Exit(EXIT_BUSY) from None
    except PipelineError as exc:
        log.error(exc.render(FLAGS))
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        log.error(
            "interrupted: every file written is complete; rerun (train: --resume) to go on",
            event="interrupted",
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except MemoryError:
        log.error("out of memory (a smaller --hidden or --batch-size?)")
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as exc:  # a safety net: the stages turn the ones they expect into errors
        log.error(str(exc))
        raise typer.Exit(EXIT_ERROR) from None


@contextlib.contextmanager
def _world(mode: str) -> Iterator[Comm]:
    """The MPI world for `--distributed MODE` (one process unless launched under MPI). Under
    MPI, SIGTERM or SIGINT stops every rank after the same step (distributed.request_stop);
    a rank that fails alone stops cleanly (its files are atomic) and then aborts the job, so
    no rank waits forever for it in a collective."""
    with friendly_errors():
        comm = distributed.connect(mode)
    if comm.size == 1:
        yield comm
        return
    previous = {s: signal.signal(s, distributed.request_stop) for s in STOP_SIGNALS}
    try:
        yield comm
    except typer.Exit as exc:
        if exc.exit_code and not distributed.stop_agreed():
            comm.abort(exc.exit_code)
        raise
    except BaseException:  # a bug: show it, then end the other ranks too
        traceback.print_exc()
        comm.abort(EXIT_ERROR)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _command() -> str:
    return shlex.join(["pipeline", *sys.argv[1:]])


# --- progress displays --------------------------------------------------------------------


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=out,
        transient=False,
    )


class TrainView:
    """Shows training on a rich progress bar, or as one plain line per epoch off a terminal."""

    def __init__(self, progress: Progress | None, batch_size: int) -> None:
        self.progress, self.batch_size = progress, batch_size
        self.task: TaskID | None = None
        self.started = time.perf_counter()
        self.first_step = 0

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.started, self.first_step = time.perf_counter(), done
        if self.progress is not None:
            self.task = self.progress.add_task(
                f"epoch {epoch + 1}/{epochs}", total=steps, completed=done, info=""
            )

    def advance(self, step: int, samples: int, loss_sum: float) -> None:
        if self.progress is None or self.task is None:
            return
        rate = (
            (step - self.first_step)
            * self.batch_size
            / max(time.perf_counter() - self.started, 1e-9)
        )
        info = f"{rate:,.0f} samples/s  loss {loss_sum / max(samples, 1):.4f}"
        self.progress.update(self.task, completed=step, info=info)

    def end_epoch(self, record: dict[str, Any]) -> None:
        split, accuracy = train_stage.epoch_accuracy(record)
        line = (
            f"epoch {record['epoch']}: train loss {record['train_loss']:.5f}, "
            f"{split} accuracy {accuracy:.2%}, {record['seconds']:.1f} s"
        )
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, info=f"{split} accuracy {accuracy:.2%}")
        else:
            metrics = {k: v for k, v in record.items() if k != "epoch"}
            log.event("epoch", {"epoch": record["epoch"], "metrics": metrics}, plain=line)


@contextlib.contextmanager
def _display(comm: Comm | None = None) -> Iterator[Progress | None]:
    """A live progress display on a terminal; None (plain lines) in logs and pipes."""
    if not out.is_terminal or log.json or (comm is not None and comm.rank != 0):
        yield None
        return
    with _progress() as progress:
        yield progress


# --- prepare and verify -------------------------------------------------------------------


class PrepareView:
    """Shows samples written and speed per split: a bar on a terminal, else a line per split."""

    def __init__(self, progress: Progress | None, totals: dict[str, int]) -> None:
        self.progress, self.totals = progress, totals
        self.done = dict.fromkeys(totals, 0)
        self.started = time.perf_counter()
        self.tasks = {}
        if progress is not None:
            self.tasks = {
                s: progress.add_task(f"prepare {s}", total=n, info="") for s, n in totals.items()
            }

    def __call__(self, split: str, samples: int) -> None:
        self.done[split] += samples
        rate = f"{self.done[split] / max(time.perf_counter() - self.started, 1e-9):,.0f} samples/s"
        if self.progress is not None:
            self.progress.update(self.tasks[split], advance=samples, info=rate)
        elif self.done[split] == self.totals[split]:
            out.print(
                f"prepare {split}: {self.totals[split]:,} samples written, {rate}", highlight=False
            )
        if self.done[split] == self.totals[split]:
            self.started = time.perf_counter()  # the next split's clock

    def finish(self) -> None:
        """Fill the bars (a no-op prepare writes nothing)."""
        if self.progress is not None:
            for split, task in self.tasks.items():
                self.progress.update(task, completed=self.totals[split])


def _do_prepare(
    out_dir: Path,
    source: str,
    *,
    name: str | None,
    classes: str | None,
    image_shape: str | None,
    val_fraction: float | None,
    shard_size: int,
    compression: Compression,
    force: bool,
    progress: Progress | None,
) -> prepare_stage.PrepareResult:
    class_names = [c.strip() for c in classes.split(",")] if classes else None
    shape = sources.parse_shape(image_shape) if image_shape else None
    raw = sources.load(
        source, name=name, classes=class_names, image_shape=shape, val_fraction=val_fraction
    )
    view = PrepareView(progress, {split: len(data.images) for split, data in raw.splits.items()})
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
    return result


def _summary(result: prepare_stage.PrepareResult) -> None:
    manifest = result.manifest
    table = Table(title=f"{manifest.name} shard set in {manifest.directory}")
    for column in ("split", "samples", "shards", "bytes", "seconds"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, info in manifest.splits.items():
        seconds = result.split_seconds.get(split)
        table.add_row(
            split,
            f"{info.samples:,}",
            str(len(info.shards)),
            f"{sum(s.bytes for s in info.shards):,}",
            "-" if seconds is None else f"{seconds:.2f}",
        )
    state = "already up to date, nothing written" if result.skipped else "written"
    table.caption = f"{state} in {result.seconds:.2f} s; manifest sha256 {manifest.identity[:16]}"
    out.print(table)


Source = Annotated[
    str,
    typer.Option(
        envvar="PIPELINE_SOURCE",
        # "\\[" is a literal bracket in rich markup (a bare "[/SPLIT]" crashed --help)
        help="embedded | idx:DIR | torchvision:NAME\\[/SPLIT]:ROOT | npz:FILE | csv:TRAIN,TEST | "
        "images:DIR (README: Data sources). With --runs: only to fill an empty --data.",
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
    ] = prepare_stage.DEFAULT_SHARD_SIZE,
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
    log.use(log_format)
    if if_missing and (out_dir / shards.MANIFEST).exists() and not force:
        with friendly_errors():
            manifest = shards.load_manifest(out_dir)
        log.event(
            "prepared",
            {"path": str(out_dir), "dataset": manifest.name, "identity": manifest.identity},
            plain=f"shards: {out_dir} already holds {manifest.name}",
        )
        return
    with friendly_errors(), _display() as progress:
        result = _do_prepare(
            out_dir,
            source,
            name=name,
            classes=classes,
            image_shape=image_shape,
            val_fraction=val_fraction,
            shard_size=shard_size,
            compression=compression,
            force=force,
            progress=progress,
        )
    _summary(result)


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
    from pipeline.report import dataset

    with friendly_errors():
        manifest = shards.load_manifest(data)
        summary = dataset.summarize(manifest)
        grid = grid or Path(f"{summary.name.replace('/', '_')}-samples.png")
        manifest.split(split)  # an unknown split is an error before anything is drawn
        dataset.save_sample_grid(manifest, grid, split=split, per_class=per_class)
    shape = "x".join(map(str, summary.image_shape))
    table = Table(title=f"{summary.name}: {shape} images, {len(summary.classes)} classes")
    table.add_column("class")
    for name in summary.histograms:
        table.add_column(name, justify="right")
    for k, cls in enumerate(summary.classes):
        table.add_row(cls, *(f"{h[k]:,}" for h in summary.histograms.values()))
    table.add_row("total", *(f"{sum(h):,}" for h in summary.histograms.values()), style="bold")
    table.caption = (
        f"identity {summary.identity[:16]}; source {summary.source}; "
        f"{summary.channels} channel(s); shards {summary.shards}"
    )
    out.print(table)
    out.print(f"sample images: {grid}", highlight=False)


@app.command()
def verify(
    data: Annotated[Path, typer.Argument(help="A shard directory written by prepare.")],
) -> None:
    """Check every shard against the manifest: presence, size, sha256, shapes, values, labels."""
    with friendly_errors():
        manifest = shards.load_manifest(data, check_files=False)
        table = Table(title=f"verify {data}")
        for column in ("split", "shard", "samples", "status"):
            table.add_column(column)
        problems = []
        for check in shards.verify(manifest):
            table.add_row(
                check.split,
                check.file,
                f"{check.samples:,}",
                Text("ok", "green") if check.problem is None else Text(check.problem, "red"),
            )
            if check.problem is not None:
                problems.append(f"{data / check.file}: {check.problem}")
    out.print(table)
    if problems:
        typer.echo(f"error: {len(problems)} problem(s); first: {problems[0]}", err=True)
        raise typer.Exit(EXIT_ERROR)


# --- train, evaluate, run -----------------------------------------------------------------

Hidden = Annotated[
    list[int] | None,
    typer.Option(
        "--hidden",
        envvar="PIPELINE_HIDDEN",
        help="Hidden layer size; repeat for more layers (env: space-separated) [default: 500].",
    ),
]
Epochs = Annotated[int, typer.Option(min=1, envvar="PIPELINE_EPOCHS", help="Epochs to train.")]
BatchSize = Annotated[
    int, typer.Option(min=1, envvar="PIPELINE_BATCH_SIZE", help="Mini-batch size.")
]
LearningRate = Annotated[
    float, typer.Option(envvar="PIPELINE_LR", help="SGD learning rate (positive).")
]
Seed = Annotated[
    int,
    typer.Option(envvar="PIPELINE_SEED", help="Seed of the initial weights (and of shuffling)."),
]
Shuffle = Annotated[
    bool,
    typer.Option(
        envvar="PIPELINE_SHUFFLE",
        help="Shuffle each epoch; off trains in file order, as the original recipe.",
    ),
]
CheckpointEvery = Annotated[
    int,
    typer.Option(
        min=0,
        envvar="PIPELINE_CHECKPOINT_EVERY",
        help="Also checkpoint every N steps (0: at epoch ends only).",
    ),
]
MinAccuracy = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        envvar="PIPELINE_MIN_ACCURACY",
        help="Exit with code 3 if accuracy is below this (0-1).",
    ),
]
RunDir = Annotated[
    Path,
    typer.Option(
        "--run-dir", file_okay=False, envvar="PIPELINE_RUN_DIR", help="The run's directory."
    ),
]
OptionalRunDir = Annotated[
    Path | None,
    typer.Option(
        "--run-dir",
        file_okay=False,
        envvar="PIPELINE_RUN_DIR",
        help="The run's directory (or --runs).",
    ),
]
Runs = Annotated[
    Path | None,
    typer.Option(
        "--runs",
        file_okay=False,
        envvar="PIPELINE_RUNS",
        help="Scheduled mode: a directory of runs, one per (data, recipe); "
        "a finished one is 'up to date'.",
    ),
]
Keep = Annotated[
    int,
    typer.Option(
        min=0,
        envvar="PIPELINE_KEEP",
        help="With --runs: keep the newest N finished runs (and latest), delete older (0: all).",
    ),
]
Logs = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="PIPELINE_LOG_FORMAT",
        help="plain: lines (a live display on a terminal); json: one JSON object per line.",
    ),
]
Distributed = Annotated[
    str,
    typer.Option(
        "--distributed",
        help="Data-parallel over MPI: 'auto' (when started by mpiexec/srun with several ranks), "
        "'mpi' (always; needs the mpi extra) or 'off'.",
    ),
]


def _config(
    hidden: list[int] | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    shuffle: bool,
    checkpoint_every: int,
) -> TrainConfig:
    return TrainConfig(
        hidden=tuple(hidden or (500,)),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        shuffle=shuffle,
        checkpoint_every=checkpoint_every,
    )


def _do_train(
    data: Path,
    run_dir: Path,
    config: TrainConfig,
    resume: bool,
    progress: Progress | None,
    comm: Comm = distributed.LOCAL,
) -> train_stage.TrainResult:
    view = TrainView(progress, config.batch_size)
    result = train_stage.train(data, run_dir, config, resume=resume, reporter=view, comm=comm)
    if result.resumed_from is not None and comm.rank == 0:
        out.print(f"resumed from {result.resumed_from}", highlight=False)
    return result


def _show_report(evaluation: evaluate_stage.Evaluation) -> None:
    report, doc = evaluation.report, evaluation.doc
    table = Table(title=f"{doc['dataset']['name']} {doc['split']}: per class")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in doc["per_class"]:
        table.add_row(
            row["class"],
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    table.add_row(
        "macro",
        f"{report.macro_precision:.4f}",
        f"{report.macro_recall:.4f}",
        f"{report.macro_f1:.4f}",
        str(doc["samples"]),
        style="bold",
    )
    out.print(table)
    report_md = evaluation.run_dir / evaluate_stage.REPORT_MD
    log.event(
        "report",
        {"accuracy": report.accuracy, "samples": doc["samples"], "report": str(report_md)},
        plain=f'accuracy ("precision") {report.accuracy:.2%} on {doc["samples"]:,} '
        f"{doc['split']} images; report: {report_md}",
    )


def _gate(evaluation: evaluate_stage.Evaluation, min_accuracy: float | None) -> None:
    if min_accuracy is not None and evaluation.report.accuracy < min_accuracy:
        log.error(
            f"quality gate failed: accuracy {evaluation.report.accuracy:.4f} < "
            f"--min-accuracy {min_accuracy}",
            event="gate-failed",
        )
        raise typer.Exit(EXIT_GATE)


@app.command()
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
    epochs: Epochs = 10,
    batch_size: BatchSize = 3,
    lr: LearningRate = 0.1,
    hidden: Hidden = None,
    seed: Seed = 0,
    shuffle: Shuffle = False,
    checkpoint_every: CheckpointEvery = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --run-dir from its newest checkpoint.")
    ] = False,
    distributed_mode: Distributed = "auto",
    log_format: Logs = LogFormat.plain,
) -> None:
    """Train the MLP on the shards (default: the original 784-500-10 recipe).

    With --runs, train the run of this data and recipe (resuming it); `run --runs` finishes it."""
    log.use(log_format)
    config = _config(hidden, epochs, batch_size, lr, seed, shuffle, checkpoint_every)
    where = _one_of(run_dir, runs)
    if runs is not None:  # the scheduled mode trains in one process
        from pipeline.cli.scheduled import trigger

        trigger(runs, data, None, config, min_accuracy=None, keep=0, train_only=True)
        return
    assert where is not None
    with _world(distributed_mode) as comm, friendly_errors(), _display(comm) as progress:
        result = _do_train(data, where, config, resume, progress, comm)
    if comm.rank != 0:
        return
    last = result.history[-1]
    split, accuracy = train_stage.epoch_accuracy(last)
    log.event(
        "trained",
        {"epoch": last["epoch"], "metrics": last, "checkpoint": str(result.checkpoint)},
        plain=f"trained {last['epoch']} epochs: {split} accuracy {accuracy:.2%}; "
        f"checkpoint {result.checkpoint}",
    )


def _one_of(run_dir: Path | None, runs: Path | None) -> Path | None:
    """--run-dir (one run) or --runs (scheduled mode): exactly one of them."""
    if (run_dir is None) == (runs is None):
        log.error("pass either --run-dir (one run) or --runs (a directory of runs)")
        raise typer.Exit(2)
    return run_dir


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
    allow_other_data: Annotated[
        bool,
        typer.Option(
            "--allow-other-data",
            help="Evaluate a checkpoint on data other than it was trained on (other classes "
            "or another shard set); the report's headline then names both.",
        ),
    ] = False,
    log_format: Logs = LogFormat.plain,
) -> None:
    """Write report.json, report.md and PNGs for a checkpoint; print the headline."""
    log.use(log_format)
    with _world(distributed_mode) as comm, friendly_errors():
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
    _show_report(evaluation)
    _gate(evaluation, min_accuracy)


@app.command()
def run(
    run_dir: OptionalRunDir = None,
    runs: Runs = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            file_okay=False,
            envvar="PIPELINE_DATA",
            help="Shard directory [default: RUN_DIR/shards, RUNS/shards].",
        ),
    ] = None,
    source: Source = "embedded",
    image_shape: ImageShape = None,
    val_fraction: ValFraction = None,
    epochs: Epochs = 10,
    batch_size: BatchSize = 3,
    lr: LearningRate = 0.1,
    hidden: Hidden = None,
    seed: Seed = 0,
    shuffle: Shuffle = False,
    checkpoint_every: CheckpointEvery = 0,
    min_accuracy: MinAccuracy = None,
    keep: Keep = 0,
    distributed_mode: Distributed = "auto",
    log_format: Logs = LogFormat.plain,
) -> None:
    """Prepare (if needed), train (resuming if the run exists) and evaluate, in one go.

    With --runs (the scheduled mode): the run of the data and recipe, up to date or brought up to
    date; a run passing the gate becomes RUNS/latest."""
    log.use(log_format)
    config = _config(hidden, epochs, batch_size, lr, seed, shuffle, checkpoint_every)
    run_dir = _one_of(run_dir, runs)
    if runs is not None:
        from pipeline.cli.scheduled import trigger

        trigger(runs, data or runs / "shards", source, config, min_accuracy=min_accuracy, keep=keep)
        return
    assert run_dir is not None
    data = data or run_dir / "shards"
    with _world(distributed_mode) as comm, friendly_errors():
        with _display(comm) as progress:
            existing = prepare_stage.find_set(data, source, val_fraction or 0.0)
            if existing is not None:
                if comm.rank == 0:
                    out.print(f"shards: {data} already holds {existing.name}", highlight=False)
            elif comm.rank != 0:  # rank 0 prepares; the others wait for its shards
                pass
            else:
                _do_prepare(
                    data,
                    source,
                    name=None,
                    classes=None,
                    image_shape=image_shape,
                    val_fraction=val_fraction,
                    shard_size=prepare_stage.DEFAULT_SHARD_SIZE,
                    compression=Compression.none,
                    force=False,
                    progress=progress,
                )
            comm.barrier()
            _do_train(data, run_dir, config, True, progress, comm)
        evaluation = evaluate_stage.evaluate(run_dir, data_dir=data, comm=comm)
    if comm.rank != 0:
        return
    _show_report(evaluation)
    _gate(evaluation, min_accuracy)
