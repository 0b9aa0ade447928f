"""Learning-rate schedules: the rate for global step s (0-based) of a run of `total` steps.

    constant   lr
    step       lr * gamma ** (epoch // step_epochs)
    cosine     lr * (1 + cos(pi * t)) / 2, t = (s - warmup) / (total - warmup) from 0 toward 1
each optionally after a linear warmup over the first `warmup` steps: lr * (s + 1) / warmup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    name: str
    lr: float
    total: int  # steps in the run
    per_epoch: int  # steps in an epoch
    warmup: int = 0  # steps
    step_epochs: int = 10
    gamma: float = 0.1

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.name == "constant":
            return self.lr
        if self.name == "step":
            return self.lr * self.gamma ** (step // self.per_epoch // self.step_epochs)
        assert self.name == "cosine", self.name
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.lr * (1.0 + math.cos(math.pi * min(t, 1.0))) / 2
