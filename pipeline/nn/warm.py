"""Compile every kernel of the package into the on-disk cache (`compile_cache`), for both dtypes.

`python -m pipeline.nn.warm` (the image runs it at build time): afterwards no preset compiles
anything, so a container starts training at once. numba compiles one specialization per
argument-type signature (dtype, layout, bool or int flags), so the warm-up runs the real code
paths rather than calling kernels by hand: the original recipe's SGD step (`sparse_step`), and
the general step (`general_step`) twice, once with every part the presets use (dropout on input
and hidden layers, cross-entropy, momentum, max-norm) and once with the others (MSE, Adam). A
test holds it to leaving a cache entry for every kernel declared in the package.
"""

from __future__ import annotations

import numpy as np

from pipeline.nn.general_step import GeneralStep, StepSettings
from pipeline.nn.network import Network
from pipeline.nn.optimizers import OptimizerSettings
from pipeline.nn.sparse_step import SparseStep

# The general step's two variants: between them, every branch that calls a kernel.
VARIANTS = (
    StepSettings("relu", "cross_entropy", 0.2, 0.1, 3.5, OptimizerSettings("momentum")),
    StepSettings("sigmoid", "mse", 0.0, 0.0, 0.0, OptimizerSettings("adam")),
)


def original(dtype: str) -> None:
    """The original recipe's step (`sparse_step`) on x (8, 6), y (8, 4) one-hot."""
    rng = np.random.default_rng(0)
    x = rng.random((8, 6)).astype(dtype)
    y = np.eye(4, dtype=dtype)[rng.integers(4, size=8)]
    w1, w2 = rng.random((6, 5)).astype(dtype), rng.random((5, 4)).astype(dtype)
    b1, b2 = np.zeros(5, dtype), np.zeros(4, dtype)
    SparseStep(Network([w1, w2], [b1, b2])).steps(x, y, [0.1] * 3, 3, 0.0)


def general(dtype: str) -> None:
    """The general step of each of VARIANTS, 6-5-5-4 on a batch of 8."""
    rng = np.random.default_rng(0)
    x = rng.random((8, 6)).astype(dtype)
    y = np.eye(4, dtype=dtype)[rng.integers(4, size=8)]
    for spec in VARIANTS:
        sizes = [6, 5, 5, 4]
        net = Network.initialize(
            sizes, rng=rng, std=0.1, dtype=dtype, activation=spec.activation, loss=spec.loss
        )
        GeneralStep(net, spec, batch_size=8, dropout_key=1).step(x, y, 0.1)


def warm() -> None:
    """Every path, both dtypes: compiles (or loads) every kernel."""
    for dtype in ("float32", "float64"):
        original(dtype)
        general(dtype)


if __name__ == "__main__":
    warm()
