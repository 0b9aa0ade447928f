"""The original recipe's step: its compiled SGD kernel, behind a guard that checks every argument.

The compiled code (`sgd_kernel`: the sparse-input SGD step in numba, its design and its
determinism) does no bounds checks, so `SparseStep` checks the network's arrays when it is
built (kind, dtype, layout, shapes that fit each other) and every batch and number it is
handed: nothing a file says can make the kernel read or write outside an array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.errors import ArrayError
from pipeline.nn import sgd_kernel
from pipeline.nn.network import Network
from pipeline.nn.step import Rows, StepState

__all__ = ["SparseStep"]


class SparseStep:
    """Plain SGD on a one-hidden-layer network, in place, through `sgd_kernel.steps`."""

    def __init__(self, network: Network) -> None:
        (w1, w2), (b1, b2) = network.weights, network.biases
        self.arrays = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        _check_arrays(self.arrays, w1)

    def steps(
        self, x: Rows, y: Rows, lrs: Sequence[float], batch_size: int, loss_sum: float
    ) -> float:
        w1, w2 = self.arrays["w1"], self.arrays["w2"]
        _check_arrays({"x": x, "y": y}, w1)
        n = len(x)
        for name, shape in {"x": (n, w1.shape[0]), "y": (n, w2.shape[1])}.items():
            got = x if name == "x" else y
            if got.shape != shape:
                raise ArrayError(
                    f"does not fit w1 {w1.shape} and w2 {w2.shape}: need {shape}",
                    param=name,
                    value=got.shape,
                )
        b = batch_size
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1:
            raise ArrayError("must be an integer of at least 1", param="batch_size", value=b)
        if len(lrs) != -(-n // b) or len(set(lrs)) > 1:
            raise ArrayError(f"need one rate, {-(-n // b)} times", param="lrs", value=len(lrs))
        lr = float(lrs[0]) if len(lrs) else 0.0
        for name, number in (("lrs", lr), ("loss_sum", loss_sum)):
            if not isinstance(number, int | float | np.floating) or not math.isfinite(number):
                raise ArrayError("must be a finite number", param=name, value=number)
        a = self.arrays
        return float(
            sgd_kernel.steps(a["w1"], a["b1"], a["w2"], a["b2"], x, y, lr, int(b), float(loss_sum))
        )

    def state(self) -> StepState:
        return StepState()  # plain SGD keeps nothing between steps

    def load_state(self, state: StepState) -> None:
        if state.arrays or state.dropout_counter:
            raise ValueError("plain SGD has no optimizer or dropout state to continue")


def _check_arrays(arrays: dict[str, np.ndarray], w1: np.ndarray) -> None:
    """Each array a C-contiguous float32/float64 array of w1's dtype, of the right rank; the
    parameters writable and fitting each other."""
    dtype = getattr(w1, "dtype", None)
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise ArrayError(f"not an array but {type(a).__name__}", param=name, value="")
        if a.dtype not in (np.float32, np.float64) or a.dtype != dtype:
            need = "float32 or float64" if a.dtype not in (np.float32, np.float64) else dtype
            raise ArrayError(f"dtype {a.dtype}, need w1's {need}", param=name, value=a.shape)
        rank = 1 if name[0] == "b" else 2
        if a.ndim != rank:
            raise ArrayError(f"{a.ndim}-D, need {rank}-D", param=name, value=a.shape)
        if not (a.flags.c_contiguous and a.flags.aligned and (a.flags.writeable or name in "xy")):
            raise ArrayError("must be C-contiguous, aligned, writable", param=name, value=a.shape)
    if "w2" not in arrays:
        return
    (n_in, n_hid), n_out = w1.shape, arrays["w2"].shape[1]
    want = {"b1": (n_hid,), "w2": (n_hid, n_out), "b2": (n_out,)}
    for name, shape in want.items():
        if arrays[name].shape != shape:
            raise ArrayError(
                f"does not fit w1 {w1.shape}: need {shape}", param=name, value=arrays[name].shape
            )
    if min(n_in, n_hid, n_out) < 1:
        raise ArrayError("a layer has no units", param="w1", value=w1.shape)
