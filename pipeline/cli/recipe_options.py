"""The recipe's command-line options (train, run): `--preset NAME` and one option per
TrainConfig recipe field. Every option defaults to None: unset, the preset's value (or
TrainConfig's default) applies; set, it overrides. The defaults live in one place, the config
dataclass and the presets (pipeline/training/presets.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.training.config import CHOICES
from pipeline.training.presets import PRESETS

# library parameter -> flag, for rendering the errors the config check raises
FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in (
        "preset",
        "activation",
        "loss",
        "init",
        "optimizer",
        "momentum",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "schedule",
        "warmup_epochs",
        "step_epochs",
        "step_gamma",
        "dropout",
        "input_dropout",
        "max_norm",
        "patience",
        "init_std",
        "shuffle",
    )
}


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
