"""The recipe's command-line options (train, run): `--preset NAME` and one option per
TrainConfig recipe field. Every option defaults to None: unset, the preset's value (or
TrainConfig's default) applies; set, it overrides. The defaults live in one place, the config
dataclass and the presets (pipeline/training/presets.py). `with_recipe_options` adds them all
to a command, which receives them as one dict, so the list is written once."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from pipeline.training.config import CHOICES
from pipeline.training.presets import PRESETS


def _choices(field: str) -> str:
    return ", ".join(CHOICES[field])


Preset = Annotated[
    str,
    typer.Option(
        help=f"Named recipe ({', '.join(PRESETS)}); any option given overrides its values."
    ),
]
Activation = Annotated[str | None, typer.Option(help=f"Hidden units: {_choices('activation')}.")]
Loss = Annotated[str | None, typer.Option(help=f"Loss: {_choices('loss')} (softmax).")]
Init = Annotated[
    str | None,
    typer.Option(help=f"Weight init: {_choices('init')} (normal: N(0, --init-std))."),
]
InitStd = Annotated[float | None, typer.Option(help="Std of the normal init (original: 0.01).")]
Optimizer = Annotated[str | None, typer.Option(help=f"Optimizer: {_choices('optimizer')}.")]
Momentum = Annotated[float | None, typer.Option(help="Momentum (momentum, nesterov), in [0, 1).")]
Beta1 = Annotated[float | None, typer.Option(help="Adam's beta1.")]
Beta2 = Annotated[float | None, typer.Option(help="Adam's beta2.")]
Eps = Annotated[float | None, typer.Option(help="Adam's epsilon.")]
WeightDecay = Annotated[
    float | None, typer.Option(help="Weight decay of the weights (decoupled under adamw).")
]
Schedule = Annotated[str | None, typer.Option(help=f"LR schedule: {_choices('schedule')}.")]
WarmupEpochs = Annotated[float | None, typer.Option(help="Linear LR warmup, in epochs.")]
StepEpochs = Annotated[int | None, typer.Option(help="Step schedule: epochs between decays.")]
StepGamma = Annotated[float | None, typer.Option(help="Step schedule: the decay factor.")]
Dropout = Annotated[float | None, typer.Option(help="Dropout of hidden units, in [0, 1).")]
InputDropout = Annotated[float | None, typer.Option(help="Dropout of input pixels, in [0, 1).")]
MaxNorm = Annotated[
    float | None, typer.Option(help="Max norm of each unit's incoming weights (0: off).")
]
Patience = Annotated[
    int | None,
    typer.Option(help="With a val split: stop after N epochs without a better val accuracy."),
]


def with_recipe_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a typer command the options above; it receives them as `recipe={name: value}`
    (the preset's name under "preset"), in place of a long parameter list of its own."""
    options = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in _OPTIONS
    ]
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "recipe"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        recipe = {name: kwargs.pop(name) for name, _, _ in _OPTIONS}
        command(**kwargs, recipe=recipe)

    wrapper.__signature__ = signature.replace(parameters=own + options)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + options}
    return wrapper


_OPTIONS: list[tuple[str, Any, Any]] = [
    ("preset", Preset, "original"),
    ("activation", Activation, None),
    ("loss", Loss, None),
    ("init", Init, None),
    ("init_std", InitStd, None),
    ("optimizer", Optimizer, None),
    ("momentum", Momentum, None),
    ("beta1", Beta1, None),
    ("beta2", Beta2, None),
    ("eps", Eps, None),
    ("weight_decay", WeightDecay, None),
    ("schedule", Schedule, None),
    ("warmup_epochs", WarmupEpochs, None),
    ("step_epochs", StepEpochs, None),
    ("step_gamma", StepGamma, None),
    ("dropout", Dropout, None),
    ("input_dropout", InputDropout, None),
    ("max_norm", MaxNorm, None),
    ("patience", Patience, None),
]
# library parameter -> flag, for rendering the errors the config check raises
FLAGS = {name: "--" + name.replace("_", "-") for name, _, _ in _OPTIONS} | {"shuffle": "--shuffle"}
