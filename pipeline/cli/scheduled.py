"""The scheduled mode's commands: `run --runs` / `train --runs` (one trigger) and `runs DIR`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli import views
from pipeline.cli.errors import EXIT_GATE, friendly_errors
from pipeline.cli.logs import LogFormat
from pipeline.cli.options import Logs
from pipeline.cli.tracking import Tracking, watched
from pipeline.cli.views import log, out
from pipeline.job import flow

if TYPE_CHECKING:  # the stages load when a command runs, not for --help
    from pipeline.runs import store


def run_trigger(
    runs_dir: Path,
    spec: flow.Job,
    *,
    keep: int,
    distributed_mode: str = "auto",
    train_only: bool = False,
    export: str | None = None,
    tracking: Tracking | None = None,
) -> None:
    """One trigger (`schedule.trigger`), shown; under MPI one trigger of every rank."""
    from pipeline.job import schedule
    from pipeline.runs import store

    with watched(distributed_mode, tracking or Tracking()) as (comm, events):
        if export is not None:  # a missing extra is found before training, not after
            from pipeline.deploy.onnx_export import require_onnx

            require_onnx()
        lead = comm.rank == 0
        one = schedule.Trigger(
            runs_dir=runs_dir, job=spec, keep=keep, train_only=train_only, export=export
        )
        outcome = schedule.trigger(one, events, comm)
    if not lead:
        return
    if outcome.evaluation is not None:
        views.report_table(outcome.evaluation)
    if outcome.passed is False and not outcome.up_to_date:
        log.error(
            f"quality gate failed: accuracy {outcome.accuracy:.4f} < --min-accuracy "
            f"{spec.min_accuracy}; {runs_dir / store.LATEST} unchanged",
            event="gate-failed",
        )
        raise typer.Exit(EXIT_GATE)


def _recipe(recipe: dict[str, Any] | None) -> str:
    if recipe is None:
        return "?"
    layers = "-".join(str(h) for h in recipe["hidden"])
    shuffled = " shuffled" if recipe["shuffle"] else ""
    return (
        f"h{layers} e{recipe['epochs']} b{recipe['batch_size']} lr{recipe['lr']} "
        f"s{recipe['seed']}{shuffled}"
    )


def _gate(info: store.RunInfo) -> str:
    if info.passed is None:
        return "-"
    if info.min_accuracy is None:
        return "none"
    return f"{'pass' if info.passed else 'FAIL'} {info.min_accuracy:g}"


def runs_command(
    runs_dir: Annotated[
        Path,
        typer.Argument(
            file_okay=False, envvar="PIPELINE_RUNS", help="A directory of runs (run --runs)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list, for scripts.")] = False,
    log_format: Logs = LogFormat.plain,
) -> None:
    """List the runs of the scheduled mode: data, recipe, accuracy, gate, status, latest."""
    from pipeline.runs import store

    log.use(log_format)
    with friendly_errors():
        rows = store.listing(runs_dir)
    if as_json:
        print(json.dumps([row.to_json() for row in rows], indent=2, allow_nan=False))
        return
    table = Table(title=f"runs in {runs_dir}")
    columns = ("id", "date", "dataset", "recipe", "accuracy", "gate", "status", "time", "latest")
    for column in columns:
        table.add_column(column, justify="right" if column in ("accuracy", "time") else "left")
    for row in rows:
        table.add_row(
            row.id,
            row.date,
            row.dataset or "?",
            _recipe(row.recipe),
            "-" if row.accuracy is None else f"{row.accuracy:.2%}",
            _gate(row),
            row.status,
            "-" if row.seconds is None else f"{row.seconds:.0f} s",
            "latest" if row.latest else "",
        )
    if log.json:
        log.event("runs", {"runs": [row.to_json() for row in rows]})
    elif out.is_terminal:
        out.print(table)
    else:  # one line a run in a log file or a pipe, however narrow the default width
        Console(width=160).print(table)
