"""The run's configuration: one frozen dataclass, saved in run.json and in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.errors import ConfigError

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

    # fields a resumed run may change: they do not alter the weights of the epochs run so far
    RESUMABLE = ("epochs", "checkpoint_every")

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
