"""The original recipe's compiled SGD steps, behind a guard: every argument checked first.

The compiled code (`sgd_kernel`: the sparse-input SGD step in numba, its design and its
determinism) does no bounds checks, so `sgd_steps` checks every array (kind, dtype, layout,
shapes that fit each other) and every number before it runs: nothing a file says can make it
read or write outside an array. `python -m pipeline.nn.warm` compiles it (with every other
kernel) into the on-disk cache (`compile_cache`), e.g. at image build time.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.errors import ArrayError
from pipeline.nn import sgd_kernel

__all__ = ["sgd_steps"]


def sgd_steps(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    lr: float,
    batch: int,
    loss_sum: float = 0.0,
) -> float:
    """`sgd_kernel.steps` on checked arguments: SGD steps in place over consecutive batches
    of `batch` rows of x (n, n_in), y (n, n_out); returns `loss_sum` plus their summed loss."""
    arrays = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "x": x, "y": y}
    dtype = getattr(w1, "dtype", None)
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise ArrayError(f"not an array but {type(a).__name__}", param=name, value="")
        if a.dtype not in (np.float32, np.float64) or a.dtype != dtype:
            need = "float32 or float64" if a.dtype not in (np.float32, np.float64) else dtype
            raise ArrayError(f"dtype {a.dtype}, need w1's {need}", param=name, value=a.shape)
        if a.ndim != (1 if name[0] == "b" else 2):
            raise ArrayError(
                f"{a.ndim}-D, need {1 if name[0] == 'b' else 2}-D", param=name, value=a.shape
            )
        if not (a.flags.c_contiguous and a.flags.aligned and (a.flags.writeable or name in "xy")):
            raise ArrayError("must be C-contiguous, aligned, writable", param=name, value=a.shape)
    (n_in, n_hid), n_out, n = w1.shape, w2.shape[1], len(x)
    want = {"b1": (n_hid,), "w2": (n_hid, n_out), "b2": (n_out,), "x": (n, n_in), "y": (n, n_out)}
    for name, shape in want.items():
        if arrays[name].shape != shape:
            raise ArrayError(
                f"does not fit w1 {w1.shape} and w2 {w2.shape}: need {shape}",
                param=name,
                value=arrays[name].shape,
            )
    if min(n_in, n_hid, n_out) < 1:
        raise ArrayError("a layer has no units", param="w1", value=w1.shape)
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
        raise ArrayError("must be an integer of at least 1", param="batch", value=batch)
    for name, number in (("lr", lr), ("loss_sum", loss_sum)):
        if not isinstance(number, int | float | np.floating) or not math.isfinite(number):
            raise ArrayError("must be a finite number", param=name, value=number)
    return float(sgd_kernel.steps(w1, b1, w2, b2, x, y, float(lr), int(batch), float(loss_sum)))
