"""The model leaves the pipeline: `predict` (inputs -> predictions) and `export` (model.onnx).

Each turns its options into calls of `pipeline.deploy` and shows the result: a rich table on a
terminal, CSV or JSON lines for programs (stdout, or `--out FILE` written atomically).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from pipeline.cli import views
from pipeline.cli.errors import EXIT_USAGE, fail, friendly_errors
from pipeline.cli.tracking import Mlflow, MlflowExperiment, MlflowRequired, Tracking, tracker
from pipeline.events import EXPORTED, Events

if TYPE_CHECKING:
    from pipeline.deploy.predict import Prediction, Tally

Model = Annotated[
    Path,
    typer.Option(
        "--model", help="A run directory, a runs directory (its latest) or a checkpoint (.npz)."
    ),
]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"


class ExportFormat(StrEnum):
    onnx = "onnx"


ScheduledExport = Annotated[  # `run --runs --export onnx`
    ExportFormat | None,
    typer.Option(help="With --runs: write RUN/model.onnx before the run can become latest."),
]


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[TextIO]:
    """stdout, or a temporary sibling of `out` renamed over it once everything is written."""
    if out is None:
        yield sys.stdout
        return
    from pipeline.fsutil import atomic_path

    with atomic_path(out) as tmp, tmp.open("w", newline="") as stream:
        yield stream


def _table(p: Prediction, classes: tuple[str, ...], top: int) -> Table:
    from pipeline.deploy.predict import rows

    table = Table("label", "class", *(f"top {k + 1}" for k in range(top)))
    table.add_column("input", overflow="fold")  # last: a long path folds, the rest stays
    for r in rows(p, classes, top):
        table.add_row(
            str(r["label"]), r["class"], *(f"{c} {q:.4f}" for c, q in r["top"]), r["input"]
        )
    return table


def _write(
    predictions: Iterator[Prediction],
    stream: TextIO,
    output_format: Format,
    classes: tuple[str, ...],
    top: int | None,
    *,
    advance: Callable[[int], object],
    table_out: Console,
) -> Tally:
    """Each batch's predictions written as they come (one pass); their tally."""
    from pipeline.deploy import predict as engine

    tally = engine.Tally()
    for p in predictions:
        tally.add(p)
        advance(len(p.labels))
        if output_format is Format.table:
            table_out.print(_table(p, classes, top or min(3, len(classes))))
        elif output_format is Format.csv:
            if tally.inputs == len(p.labels):
                stream.write(",".join(engine.csv_header(classes, top)) + "\n")
            engine.write_csv(stream, engine.rows(p, classes, top))
        else:
            engine.write_jsonl(stream, engine.rows(p, classes, top))
    return tally


def predict(
    model: Model,
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Image files or folders (PNG, JPEG, ...).")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Predict on a source's split instead: as prepare's --source.")
    ] = None,
    split: Annotated[str, typer.Option(help="The split of --source.")] = "test",
    resize: Annotated[
        bool, typer.Option("--resize", help="Convert and resize images to the model's (bilinear).")
    ] = False,
    output_format: Annotated[
        Format, typer.Option("--format", help="table (a terminal), csv or jsonl.")
    ] = Format.table,
    top: Annotated[
        int | None,
        typer.Option(min=1, help="Only the K likeliest classes [default: all; the table 3]."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Write here (atomically) [default: stdout].")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Inputs per forward pass.")] = 1000,
) -> None:
    """Classify images (or a source's split) with a trained model; print the accuracy of
    labelled inputs (an image in a folder named after a class, a source's labels)."""
    from pipeline.deploy import inputs as inputs_lib
    from pipeline.deploy import predict as engine
    from pipeline.deploy.model import Model as Loaded

    if bool(inputs) == (source is not None):
        raise fail("pass image files or folders, or --source (one of them)", EXIT_USAGE)
    with friendly_errors(), contextlib.ExitStack() as stack:
        loaded = Loaded.load(model)
        classes, shape = loaded.classes, loaded.image_shape
        if top is not None and top > len(classes):
            raise fail(f"--top {top}: the model has {len(classes)} classes", EXIT_USAGE)
        if source is not None:
            opened = inputs_lib.source_batches(source, split, shape, classes, batch_size)
            total, batches = stack.enter_context(opened)
        else:
            total = inputs_lib.count_files(inputs or [])
            batches = inputs_lib.file_batches(
                inputs or [], shape, classes, batch_size, resize=resize
            )
        bar = Console(stderr=True)
        progress = Progress(
            *Progress.get_default_columns(),
            MofNCompleteColumn(),  # "done/total" images
            console=bar,
            transient=True,
            disable=not bar.is_terminal,
        )
        with progress, _output(out) as stream:
            task = progress.add_task("predicting", total=total)
            tally = _write(
                engine.predict(loaded, batches),
                stream,
                output_format,
                classes,
                top,
                advance=lambda n: progress.advance(task, n),
                table_out=Console(file=stream, width=160) if out else views.out,
            )
    note = f"{tally.inputs:,} inputs predicted with {loaded.ckpt.path}"
    if tally.accuracy is not None:
        note += f"; accuracy {tally.accuracy:.2%} on {tally.labelled:,} labelled inputs"
        note += f" ({tally.correct:,} correct)"
    elif tally.beyond:
        beyond = f"{tally.beyond:,} labels are beyond the model's {len(classes)} classes"
        note += f"; no accuracy: {beyond}"
    Console(
        stderr=out is None and output_format is not Format.table, highlight=False, soft_wrap=True
    ).print(note)


def export(
    model: Model,
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="The format: onnx.")
    ] = ExportFormat.onnx,
    out: Annotated[
        Path | None,
        typer.Option(help="File or directory [default: model.onnx in the run's directory]."),
    ] = None,
    mlflow: Mlflow = None,
    mlflow_experiment: MlflowExperiment = None,
    mlflow_required: MlflowRequired = False,
) -> None:
    """Export a trained model for serving: model.onnx (uint8 images in, probabilities out)."""
    from pipeline.deploy.model import checkpoint_of
    from pipeline.deploy.onnx_export import ONNX_FILE, OPSET, export_onnx
    from pipeline.runs.rundir import run_of

    tracking = Tracking(mlflow, mlflow_experiment, mlflow_required)
    with friendly_errors(), tracker(tracking) as listener:
        ckpt = checkpoint_of(model)
        run = run_of(ckpt) or ckpt.parent  # beside a checkpoint that is in no run
        written = export_onnx(model, out or run / ONNX_FILE)
        if listener is not None:  # into the run's MLflow run, if it has one
            fields = {"run": run.name, "run_dir": str(run), "path": str(written)}
            Events(listener).emit(EXPORTED, **fields, format=export_format.value)
    views.say(f"exported: {written} (ONNX opset {OPSET}, {export_format.value})")
