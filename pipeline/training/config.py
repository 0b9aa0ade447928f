"""The run's configuration: one frozen dataclass, saved in run.json and in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.errors import ConfigError


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
    def from_json(cls, doc: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(
            **{**{k: v for k, v in doc.items() if k in known}, "hidden": tuple(doc["hidden"])}
        )
