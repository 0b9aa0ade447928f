"""The fast path: the recipe's SGD step compiled with numba, exploiting sparse inputs.

Same updates as `Network.backprop` + `Network.update` (the tests hold them to each other),
computed differently for speed:
  - about 80% of MNIST's pixels are exactly 0, and a zero pixel contributes nothing to the
    first layer, forward or backward: only rows of w1 whose pixel is nonzero in the batch
    are read or updated (a row p of w1 is contiguous: a unit-stride loop over hidden units);
  - the update is applied as the gradient is formed: no (784, 500) gradient array exists;
  - one compiled call runs many consecutive batches (`sgd_steps`), so the per-step Python
    and numpy dispatch overhead, which dominates at batch 3, is paid once per block.
fastmath stays off and the loops run in a fixed order: results are deterministic, bit for
bit, run after run. The kernels release the GIL so the loader's reader thread runs alongside.
Compiled on first use and cached on disk (`python -m pipeline.kernels` warms the cache).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["sgd_step", "sgd_steps"]


@njit(cache=True, nogil=True)
def _step(w1, b1, w2, b2, x, y, lr, nz, h, d1, o, d2):  # type: ignore[no-untyped-def]
    """One step on batch x (B, n_in), y (B, n_out); w1 (n_in, n_hid), w2 (n_hid, n_out).

    Scratch: nz (n_in,) int64; h, d1 (>=B, n_hid); o, d2 (>=B, n_out). Returns the summed loss.
    """
    batch, n_in = x.shape
    n_hid, n_out = w2.shape
    one, zero = w1.dtype.type(1.0), w1.dtype.type(0.0)  # keep float32 math in float32
    s = w1.dtype.type(lr / batch)  # the gradient is averaged over the real batch size

    # pixels nonzero in some sample: the only rows of w1 that take part in this step
    n_nz = 0
    for p in range(n_in):
        for b in range(batch):
            if x[b, p] != zero:
                nz[n_nz] = p
                n_nz += 1
                break

    # forward, layer 1: h = sigmoid(x w1 + b1), summing over nonzero pixels only
    for b in range(batch):
        for j in range(n_hid):
            h[b, j] = b1[j]
        for k in range(n_nz):
            v = x[b, nz[k]]
            if v != zero:
                row = nz[k]
                for j in range(n_hid):
                    h[b, j] += v * w1[row, j]
        for j in range(n_hid):
            h[b, j] = one / (one + math.exp(-h[b, j]))

    # forward, layer 2: o = sigmoid(h w2 + b2); output delta d2 = (o - y) * o * (1 - o)
    loss = 0.0
    for b in range(batch):
        for c in range(n_out):
            o[b, c] = b2[c]
        for j in range(n_hid):
            for c in range(n_out):
                o[b, c] += h[b, j] * w2[j, c]
        for c in range(n_out):
            out = one / (one + math.exp(-o[b, c]))
            err = out - y[b, c]
            loss += err * err
            d2[b, c] = err * out * (one - out)

    # hidden delta d1 = (d2 w2^T) * h * (1 - h), from w2 before its update
    for b in range(batch):
        for j in range(n_hid):
            acc = zero
            for c in range(n_out):
                acc += d2[b, c] * w2[j, c]
            d1[b, j] = acc * h[b, j] * (one - h[b, j])

    # updates: w2 -= s h^T d2, b2 -= s sum(d2), b1 -= s sum(d1)
    for j in range(n_hid):
        for c in range(n_out):
            g = zero
            for b in range(batch):
                g += h[b, j] * d2[b, c]
            w2[j, c] -= s * g
    for c in range(n_out):
        g = zero
        for b in range(batch):
            g += d2[b, c]
        b2[c] -= s * g
    for j in range(n_hid):
        g = zero
        for b in range(batch):
            g += d1[b, j]
        b1[j] -= s * g

    # w1 -= s x^T d1, row by row over the nonzero pixels (every other row's gradient is 0)
    for k in range(n_nz):
        row = nz[k]
        for b in range(batch):
            v = x[b, row]
            if v != zero:
                for j in range(n_hid):
                    w1[row, j] -= s * (v * d1[b, j])
    return loss / 2


@njit(cache=True, nogil=True)
def sgd_steps(w1, b1, w2, b2, x, y, lr, batch_size):  # type: ignore[no-untyped-def]
    """Consecutive SGD steps over x (N, n_in), y (N, n_out) in batches of `batch_size` (the
    last may be smaller), in place; returns the loss summed over all samples.

    Equal, bit for bit, to calling `sgd_step` on each batch in turn.
    """
    n, n_in = x.shape
    n_hid, n_out = w2.shape
    size = min(batch_size, n)
    nz = np.empty(n_in, np.int64)
    h, d1 = np.empty((size, n_hid), w1.dtype), np.empty((size, n_hid), w1.dtype)
    o, d2 = np.empty((size, n_out), w1.dtype), np.empty((size, n_out), w1.dtype)
    total = 0.0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        total += _step(w1, b1, w2, b2, x[start:stop], y[start:stop], lr, nz, h, d1, o, d2)
    return total


def sgd_step(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
) -> float:
    """One SGD step on one batch x (B, n_in), y (B, n_out), in place; returns its summed loss."""
    return float(sgd_steps(w1, b1, w2, b2, x, y, lr, len(x)))


if __name__ == "__main__":  # warm the on-disk cache (e.g. at image build time)
    for dtype in (np.float32, np.float64):
        w1, b1 = np.zeros((4, 3), dtype), np.zeros(3, dtype)
        w2, b2 = np.zeros((3, 2), dtype), np.zeros(2, dtype)
        sgd_step(w1, b1, w2, b2, np.ones((2, 4), dtype), np.ones((2, 2), dtype), 0.1)
