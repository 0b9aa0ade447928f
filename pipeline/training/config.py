"""The run's configuration: one frozen dataclass, saved in run.json and in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.errors import ConfigError

CHOICES = {
    "activation": ("sigmoid", "tanh", "relu"),
    "loss": ("mse", "cross_entropy"),
    "init": ("normal", "he", "xavier"),
    "optimizer": ("sgd", "momentum", "nesterov", "adam", "adamw"),
    "schedule": ("constant", "step", "cosine"),
}
# the fields whose values make the original recipe's arithmetic (see TrainConfig.is_original)
ORIGINAL: dict[str, object] = {
    "activation": "sigmoid",
    "loss": "mse",
    "init": "normal",
    "optimizer": "sgd",
    "weight_decay": 0.0,
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "dropout": 0.0,
    "input_dropout": 0.0,
    "max_norm": 0.0,
}
# the largest network this project builds (weights and biases): a config beyond it is refused,
# and so is a checkpoint file that claims more (before it is read whole)
MAX_PARAMETERS = 1 << 26


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. The defaults are the original recipe."""

    hidden: tuple[int, ...] = (500,)
    epochs: int = 10
    batch_size: int = 3
    lr: float = 0.1
    seed: int = 0
    shuffle: bool = False
    init_std: float = 0.01
    dtype: str = "float32"
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: at epoch ends only
    # ---- the recipe (pipeline.training.presets names sets of these); defaults: the original
    preset: str = "original"  # the name the values started from; the values below decide
    activation: str = "sigmoid"  # sigmoid, tanh, relu
    loss: str = "mse"  # mse (sum |a - y|^2 / 2 per sample) or cross_entropy (softmax)
    init: str = "normal"  # normal: N(0, init_std); he; xavier
    optimizer: str = "sgd"  # sgd, momentum, nesterov, adam, adamw
    momentum: float = 0.9  # momentum and nesterov
    beta1: float = 0.9  # adam and adamw
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # of the weights (not biases); decoupled under adamw
    schedule: str = "constant"  # constant, step, cosine
    warmup_epochs: float = 0.0  # linear warmup, in epochs (may be a fraction)
    step_epochs: int = 10  # step schedule: lr *= step_gamma every step_epochs epochs
    step_gamma: float = 0.1
    dropout: float = 0.0  # hidden units dropped (inverted dropout)
    input_dropout: float = 0.0  # input pixels dropped
    max_norm: float = 0.0  # each unit's incoming weight vector kept within this norm; 0: off
    patience: int = 0  # stop after this many epochs without a better val accuracy; 0: never

    # fields a resumed run may change: they do not alter the weights of the epochs run so far
    RESUMABLE = ("epochs", "checkpoint_every", "patience")

    @property
    def is_original(self) -> bool:
        """The original recipe's arithmetic (sigmoid, MSE, plain SGD at a constant rate): it
        trains through Network.steps and its compiled kernel, exactly as before recipes."""
        recipe = {f: getattr(self, f) for f in ORIGINAL}
        return recipe == ORIGINAL

    def check(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("must be a positive finite number", param="lr", value=self.lr)
        for param in ("epochs", "batch_size"):
            if getattr(self, param) < 1:
                raise ConfigError("must be at least 1", param=param, value=getattr(self, param))
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(
                "each hidden size must be at least 1", param="hidden", value=list(self.hidden)
            )
        for param in ("seed", "checkpoint_every"):
            if getattr(self, param) < 0:
                raise ConfigError("must be 0 or more", param=param, value=getattr(self, param))
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ConfigError(
                "must be a positive finite number", param="init_std", value=self.init_std
            )
        if self.dtype not in ("float32", "float64"):
            raise ConfigError("float32 or float64", param="dtype", value=self.dtype)
        for param, choices in CHOICES.items():
            if getattr(self, param) not in choices:
                raise ConfigError(
                    f"one of {', '.join(choices)}", param=param, value=getattr(self, param)
                )
        for param in ("dropout", "input_dropout", "momentum", "beta1", "beta2"):
            value = getattr(self, param)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ConfigError("must be in [0, 1)", param=param, value=value)
        for param in ("eps", "weight_decay", "warmup_epochs", "max_norm", "step_gamma"):
            value = getattr(self, param)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError("must be 0 or a positive finite number", param=param, value=value)
        for param in ("step_epochs", "patience"):
            if getattr(self, param) < (1 if param == "step_epochs" else 0):
                raise ConfigError("out of range", param=param, value=getattr(self, param))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_json(cls, doc: object) -> TrainConfig:
        """A saved config, each value of its field's type and in range (ValueError if not:
        run.json and checkpoints are files, and their values size arrays)."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in doc:
                continue  # a field added since: its default is what the run used
            value, kind = doc[f.name], type(f.default)
            if kind is tuple:  # hidden: a list of ints
                ok = isinstance(value, list) and all(type(v) is int for v in value)
                value = tuple(value) if ok else value
            elif kind is float:
                ok = type(value) in (int, float)
                value = float(value) if ok else value
            else:
                ok = type(value) is kind
            if not ok:
                raise ValueError(f"{f.name} {str(value)[:40]!r} is not a {kind.__name__}")
            values[f.name] = value
        config = cls(**values)
        try:
            config.check()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return config
