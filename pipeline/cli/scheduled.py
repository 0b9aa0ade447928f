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
from pipeline.cli.tracking import TrackedView, Tracking, tracker
from pipeline.cli.views import log, out
from pipeline.training.config import TrainConfig

if TYPE_CHECKING:  # the stages load when a command runs, not for --help
    from pipeline import runs as runs_lib

PLAIN = {  # event -> its plain line
    "up-to-date": "up to date: {path} is finished (same data and recipe); nothing to do",
    "claimed": "run {path}",
    "trained": "trained: {checkpoint}{resumed}",
    "evaluated": "gate: accuracy {accuracy:.4f}, min {min_accuracy}: {verdict}",
    "exported": "exported: {path}",
    "promoted": "promoted: {latest} -> {run}",
    "pruned": "pruned: {path}",
}


def _on_event(event: str, fields: dict[str, Any]) -> None:
    if "run" in fields:
        log.context["run"] = fields["run"]  # epochs and errors name the run too
    verdict = "passed" if fields.get("passed") else "failed, latest unchanged"
    resumed = f" (resumed from {fields['resumed_from']})" if fields.get("resumed_from") else ""
    plain = PLAIN[event].format(**fields, verdict=verdict, resumed=resumed)
    log.event(event, fields, plain=plain)


def trigger(
    runs_dir: Path,
    data: Path,
    source: str | None,
    config: TrainConfig,
    *,
    min_accuracy: float | None,
    keep: int,
    train_only: bool = False,
    tracking: Tracking | None = None,
    export: str | None = None,
) -> None:
    """One trigger: the set in `data` (an empty one prepared from `source` unless
    `train_only`), then its run."""
    from pipeline import job, schedule
    from pipeline import runs as runs_lib
    from pipeline.data.shards import MANIFEST, load_manifest

    with (
        friendly_errors(),
        tracker(tracking or Tracking()) as listener,
        views.display() as progress,
    ):
        view = TrackedView(
            views.TrainView(progress, config.batch_size), listener, None, config, world_size=1
        )

        def on_event(event: str, fields: dict[str, Any]) -> None:
            view.claimed(event, fields)
            _on_event(event, fields)

        if export is not None:  # a missing extra is found before training, not after
            from pipeline.deploy.onnx_export import require_onnx

            require_onnx()
        if train_only or (data / MANIFEST).exists():  # a set there is used whatever its source
            manifest = load_manifest(data)
        else:
            spec = job.Job(run_dir=runs_dir, config=config, data_dir=data, source=source)
            hooks = job.Hooks(prepare_progress=lambda t: views.PrepareView(progress, t))
            manifest, _ = job.shard_set(spec, hooks)
        log.event(
            "data",
            {"path": str(data), "dataset": manifest.name, "identity": manifest.identity},
            plain=f"data: {manifest.name} in {data} (identity {manifest.identity[:12]})",
        )
        outcome = schedule.trigger(
            runs_dir,
            manifest,
            config,
            min_accuracy=min_accuracy,
            keep=keep,
            train_only=train_only,
            export=export,
            reporter=view,
            on_event=on_event,
        )
        if outcome.evaluation is not None:
            view.evaluated(outcome.evaluation)
    if outcome.evaluation is not None:
        views.report_table(outcome.evaluation)
    if outcome.passed is False and not outcome.up_to_date:
        log.error(
            f"quality gate failed: accuracy {outcome.accuracy:.4f} < --min-accuracy "
            f"{min_accuracy}; {runs_dir / runs_lib.LATEST} unchanged",
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


def _gate(info: runs_lib.RunInfo) -> str:
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
    from pipeline import runs as runs_lib

    log.use(log_format)
    with friendly_errors():
        rows = runs_lib.listing(runs_dir)
    if as_json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
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
