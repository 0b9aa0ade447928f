"""The options several commands share, each written once.

The training options are made from the `TrainConfig` dataclass: its fields are the options, its
defaults their defaults, and each field's `FieldMeta` (pipeline/config.py) their help.
`train` and `run` get them all through `@train_options`, which hands the command one
`config: TrainConfig` instead of seven values. Their ranges are checked by `TrainConfig.check`,
and a bad value exits 2 (bad usage) like typer's own checks. `--preset NAME` starts from a
named recipe (pipeline/training/presets.py); only the options given on the command line
override it (typer's parameter source tells).
"""

from __future__ import annotations

import functools
import inspect
import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import typer

from pipeline.cli.errors import checked_by, friendly_errors
from pipeline.cli.logs import ENVVAR, FLAG, LogFormat
from pipeline.config import TrainConfig, option_help
from pipeline.errors import ConfigError

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
MinAccuracy = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        envvar="PIPELINE_MIN_ACCURACY",
        help="Exit with code 3 if accuracy is below this (0-1).",
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


def _use_log_format(log_format: LogFormat) -> LogFormat:
    """Read first (eager), so that an error in any other option is logged in this format."""
    from pipeline.cli.views import log

    log.use(log_format)
    return log_format


Logs = Annotated[
    LogFormat,
    typer.Option(
        FLAG,
        envvar=ENVVAR,
        is_eager=True,
        callback=_use_log_format,
        help="plain: lines (a live display on a terminal); json: one JSON object per line.",
    ),
]
Source = Annotated[
    str,
    typer.Option(
        envvar="PIPELINE_SOURCE",
        help="embedded | idx:DIR | torchvision:NAME[/SPLIT]:ROOT | npz:FILE | csv:TRAIN,TEST | "
        "images:DIR (README: Data sources).",
    ),
]


def _image_shape(text: str) -> str:
    from pipeline.data.sources import parse_shape

    parse_shape(text)
    return text  # the commands parse it again where they use it


def _val_fraction(text: str) -> float:
    from pipeline.data.sources.split import check_fraction

    try:
        value = float(text)
    except ValueError:
        raise ConfigError("not a number", param="val_fraction", value=text) from None
    return check_fraction(value)


ImageShape = Annotated[
    str | None,
    typer.Option(
        parser=checked_by(_image_shape),
        help="ROWSxCOLS[xCHANNELS] of a csv source's rows [default: square, grey].",
    ),
]
ValFraction = Annotated[
    float | None,
    typer.Option(
        parser=checked_by(_val_fraction),
        help="Carve this share of each class of train into a 'val' split (0-1).",
    ),
]


def command_line() -> str:
    """The command as typed: recorded in a shard set's provenance."""
    return shlex.join(["pipeline", *sys.argv[1:]])


# the TrainConfig fields offered as options, with their help (the fields' Specs); the others
# keep their defaults. The defaults shown are the original recipe's; `--preset NAME`
# (pipeline/training/presets.py) replaces them, and an option given on the command line
# overrides the preset.
HELP = option_help()
NOT_OPTIONS = {f.name for f in fields(TrainConfig)} - set(HELP)  # fixed (dtype)


def _parameters() -> list[inspect.Parameter]:
    """One keyword parameter per field in HELP, typed and defaulted as the dataclass says."""
    hints, defaults = get_type_hints(TrainConfig), TrainConfig()
    parameters = []
    for f in fields(TrainConfig):
        if f.name not in HELP:
            continue
        kind, default = hints[f.name], getattr(defaults, f.name)
        if get_origin(kind) is tuple:  # tuple[int, ...] is a repeatable option
            kind, default = list[get_args(kind)[0]], list(default)  # type: ignore[misc]
        parameters.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[
                    kind, typer.Option(help=HELP[f.name], envvar=f"PIPELINE_{f.name.upper()}")
                ],
            )
        )
    return parameters


def train_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the training options to `command`, which takes them as one `config: TrainConfig`."""
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.name != "config"
    ]
    added = _parameters()
    names = [p.name for p in added]

    @functools.wraps(command)
    def with_config(**kwargs: Any) -> None:
        from pipeline.training import presets

        ctx: typer.Context = kwargs.pop("ctx")
        values: dict[str, Any] = {}
        for name in names:  # typer gives a repeated option as a list; the config holds tuples
            value = kwargs.pop(name)
            source = ctx.get_parameter_source(name)
            if source is not None and source.name in ("DEFAULT", "DEFAULT_MAP"):
                continue  # not given: the preset's value applies (the help shows the original's)
            values[name] = tuple(value) if isinstance(value, list) else value
        with friendly_errors():  # the preset's values, then every option given on top
            config = presets.resolve(values.pop("preset", "original"), **values)
        command(config=config, **kwargs)

    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    with_config.__signature__ = inspect.Signature([*own, *added, context])  # type: ignore[attr-defined]
    return with_config
