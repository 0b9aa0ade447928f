"""Optimizers: how a step's gradients become new weights; their state is plain arrays.

    sgd        w -= lr g                                  (no state)
    momentum   v = mu v + g;  w -= lr v                   (PyTorch's form; v per parameter)
    nesterov   v = mu v + g;  w -= lr (g + mu v)
    adam       m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
               w -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    adamw      adam, with weight decay decoupled: w -= lr wd w before the step
Weight decay (L2: g += wd w, for sgd/momentum/nesterov/adam) applies to weights, not biases.
The update runs in one fused pass per parameter (`pipeline.nn.fused`). The state (buffers and
step count) goes into every checkpoint, so a resumed run continues bit-identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.nn import fused

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def _part(a: np.ndarray, half: int | None) -> np.ndarray:
    """a's elements as a flat view: all (None), or the first (0) or second (1) half."""
    flat = a.reshape(-1)
    mid = flat.size // 2
    return flat if half is None else flat[:mid] if half == 0 else flat[mid:]


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer's settings (from TrainConfig)."""

    name: str = "sgd"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0


class Optimizer:
    def __init__(self, params: list[np.ndarray], settings: OptimizerSettings) -> None:
        assert settings.name in OPTIMIZERS, settings.name
        self.settings = settings
        self.step_count = 0
        # per parameter: momentum buffer (sgd family) or first and second moments (adam)
        slots = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2}[settings.name]
        self.slots = [[np.zeros_like(p) for p in params] for _ in range(slots)]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float) -> None:
        """Update params in place from grads (which the sgd family may overwrite)."""
        self.begin()
        self.update(params, grads, lr)

    def begin(self) -> None:
        """Count the step (Adam's bias correction uses the count); then `update` its parts."""
        self.step_count += 1

    def update(
        self, params: list[np.ndarray], grads: list[np.ndarray], lr: float, half: int | None = None
    ) -> None:
        """Update every parameter's elements, or `half` of them (two threads update one half
        each: `pipeline.nn.general_step`); element by element, so the split never changes a bit."""
        h = self.settings
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            wd = h.weight_decay if p.ndim == 2 else 0.0  # weights decay, biases do not
            p, g = _part(p, half), _part(g, half)
            if h.name in ("adam", "adamw"):
                m, v = _part(self.slots[0][i], half), _part(self.slots[1][i], half)
                fused.adam_update(
                    p, g, m, v, lr, h.beta1, h.beta2, h.eps, wd, h.name == "adamw", self.step_count
                )
            else:
                mu = h.momentum if h.name != "sgd" else 0.0
                buffer = _part(self.slots[0][i], half) if self.slots else g
                fused.sgd_update(p, g, buffer, lr, mu, wd, h.name == "nesterov")

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The buffers, named slot{k}_{i}; the step count travels beside them (`step_count`)."""
        return {f"slot{k}_{i}": a for k, slot in enumerate(self.slots) for i, a in enumerate(slot)}

    def load_state(self, arrays: dict[str, np.ndarray], step_count: int) -> None:
        """Restore what `state_arrays` gave; shapes and dtypes must match exactly."""
        expected = self.state_arrays()
        if set(arrays) != set(expected):
            raise ValueError(f"optimizer state holds {sorted(arrays)}, expected {sorted(expected)}")
        for name, target in expected.items():
            got = arrays[name]
            if got.shape != target.shape or got.dtype != target.dtype:
                raise ValueError(f"optimizer state {name}: {got.shape} {got.dtype}")
            target[...] = got
        self.step_count = step_count
