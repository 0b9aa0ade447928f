"""What the commands show: live rich progress on a terminal, plain lines in logs, tables.

Nothing here computes anything; `watch.Terminal` drives these views from the job's event stream.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

from pipeline.cli.logs import Log

if TYPE_CHECKING:  # the stages (numpy, h5py, matplotlib) load only when a command runs
    from pipeline.communicator import Comm
    from pipeline.data.integrity import ShardCheck
    from pipeline.data.prepare import PrepareResult
    from pipeline.report.dataset import DataSummary
    from pipeline.report.evaluate import Evaluation

out = Console(soft_wrap=True)  # long paths stay on one line in logs
log = Log(out)  # plain lines, or JSON ones with --log-format json


def say(message: str) -> None:
    """One plain line on stdout (no rich highlighting of numbers and paths)."""
    out.print(message, highlight=False)


@contextlib.contextmanager
def display(comm: Comm | None = None) -> Iterator[Progress | None]:
    """A live progress display on a terminal; None (plain lines) in logs and pipes, and on
    every MPI rank but the first."""
    if not out.is_terminal or log.json or (comm is not None and comm.rank != 0):
        yield None
        return
    with _progress() as progress:
        yield progress


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

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.started, self.first_samples = time.perf_counter(), 0

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.started, self.first_samples = time.perf_counter(), -1
        if self.progress is not None:
            self.task = self.progress.add_task(
                f"epoch {epoch + 1}/{epochs}", total=steps, completed=done, info=""
            )

    def advance(self, step: int, samples: int, loss_sum: float) -> None:
        if self.first_samples < 0:  # the rate counts from the first block (a resumed epoch)
            self.started, self.first_samples = time.perf_counter(), samples
        if self.progress is None or self.task is None:
            return
        rate = (samples - self.first_samples) / max(time.perf_counter() - self.started, 1e-9)
        info = f"{rate:,.0f} samples/s  loss {loss_sum / max(samples, 1):.4f}"
        self.progress.update(self.task, completed=step, info=info)

    def end_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        from pipeline.runs.rundir import epoch_accuracy

        split, accuracy = epoch_accuracy(metrics)
        line = (
            f"epoch {epoch}: train loss {metrics['train_loss']:.5f}, "
            f"{split} accuracy {accuracy:.2%}, {metrics['seconds']:.1f} s"
        )
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, info=f"{split} accuracy {accuracy:.2%}")
        else:
            log.event("epoch", {"epoch": epoch, "metrics": metrics}, plain=line)


class PrepareView:
    """Shows samples written and speed per split: a bar on a terminal, else a line per split."""

    def __init__(self, progress: Progress | None, totals: dict[str, int]) -> None:
        self.progress, self.totals = progress, totals
        self.done = dict.fromkeys(totals, 0)
        self.started = time.perf_counter()
        self.tasks: dict[str, TaskID] = {}
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
            say(f"prepare {split}: {self.totals[split]:,} samples written, {rate}")
        if self.done[split] == self.totals[split]:
            self.started = time.perf_counter()  # the next split's clock

    def finish(self) -> None:
        """Fill the bars (a no-op prepare writes nothing)."""
        if self.progress is not None:
            for split, task in self.tasks.items():
                self.progress.update(task, completed=self.totals[split])


def prepare_summary(result: PrepareResult) -> None:
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
    table.caption = f"{state} in {result.seconds:.2f} s; content identity {manifest.identity[:16]}"
    out.print(table)


def report_table(evaluation: Evaluation) -> None:
    from pipeline.report.evaluate import REPORT_MD

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
    report_md = evaluation.run_dir / REPORT_MD
    log.event(
        "report",
        {"accuracy": report.accuracy, "samples": doc["samples"], "report": str(report_md)},
        plain=f'accuracy ("precision") {report.accuracy:.2%} on {doc["samples"]:,} '
        f"{doc['split']} images; report: {report_md}",
    )


def verify_table(data: Path, checks: Iterable[ShardCheck]) -> list[str]:
    """Show one row per shard checked; returns the problems found, each naming its file."""
    table = Table(title=f"verify {data}")
    for column in ("split", "shard", "samples", "status"):
        table.add_column(column)
    problems = []
    for check in checks:
        table.add_row(
            check.split,
            check.file,
            f"{check.samples:,}",
            Text("ok", "green") if check.problem is None else Text(check.problem, "red"),
        )
        if check.problem is not None:
            problems.append(f"{data / check.file}: {check.problem}")
    out.print(table)
    return problems


def dataset_table(summary: DataSummary) -> None:
    """Samples per class and split, with the set's shape, identity and source."""
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
