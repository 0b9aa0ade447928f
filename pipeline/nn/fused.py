"""The recipe path's elementwise work, fused into single passes and compiled with numba.

The matrix products go to BLAS (numpy's float32 sgemm on every core); everything between them
is one pass each here, in place on buffers the caller preallocated: bias + activation +
dropout forward, dropout' * activation' backward, the loss and its gradient, the column sums
for the bias gradients and the optimizers' updates. The plain equations are in `layers`,
`losses` and `optimizers`; the tests hold these kernels to them.

Declared with `compile_cache.jit` (compiled at first use, cached outside the package).
numba runs single-threaded beside BLAS's threads (its default threading layer and OpenBLAS
fight over the two cores). Every loop runs in a fixed order and fastmath stays off: results
are bit-identical from run to run and across a resume.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.nn.compile_cache import jit
from pipeline.nn.layers import GOLDEN

ACT_CODE = {"relu": 0, "tanh": 1, "sigmoid": 2}  # the kernels' names for layers.ACTIVATIONS
_GOLDEN = np.uint64(GOLDEN)  # a typed constant inside the kernels: layers' splitmix64 increment


@jit(nogil=True, inline="always")
def _splitmix(start: np.uint64, word: int) -> np.uint64:
    z = start + np.uint64(word) * _GOLDEN + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@jit(nogil=True)
def draw_keep(keep: np.ndarray, start: np.uint64, threshold: int) -> None:
    """keep (B, n) uint8 <- 1 where draw k >= threshold; draw k is 16 bits of
    splitmix64(start + (k // 4) * GOLDEN) (as `layers.keep_mask`)."""
    flat = keep.reshape(-1)
    n = flat.size
    full = n // 4
    for word in range(full):  # four draws a word, unrolled: this loop vectorizes
        z = _splitmix(start, word)
        q = 4 * word
        flat[q] = (z & np.uint64(0xFFFF)) >= threshold
        flat[q + 1] = ((z >> np.uint64(16)) & np.uint64(0xFFFF)) >= threshold
        flat[q + 2] = ((z >> np.uint64(32)) & np.uint64(0xFFFF)) >= threshold
        flat[q + 3] = (z >> np.uint64(48)) >= threshold
    if 4 * full < n:  # the last word's first n % 4 draws
        z = _splitmix(start, full)
        for s in range(n - 4 * full):
            flat[4 * full + s] = ((z >> np.uint64(16 * s)) & np.uint64(0xFFFF)) >= threshold


@jit(nogil=True, inline="always")
def _act(v: float, act: int) -> float:
    if act == 0:
        return v if v > 0.0 else 0.0
    if act == 1:
        return math.tanh(v)
    return 1.0 / (1.0 + math.exp(-v)) if v > -88.0 else 0.0


@jit(nogil=True, inline="always")
def _act_prime(a: float, act: int) -> float:
    if act == 0:
        return 1.0 if a > 0.0 else 0.0
    if act == 1:
        return 1.0 - a * a
    return a * (1.0 - a)


@jit(nogil=True)
def forward_hidden(
    z: np.ndarray, b: np.ndarray, act: int, keep: np.ndarray, scale: float, drop: bool
) -> None:
    """z (B, n) <- dropout(act(z + b)) in place; keep (B, n) is read only if `drop`."""
    rows, n = z.shape
    for i in range(rows):
        for j in range(n):
            v = _act(z[i, j] + b[j], act)
            if drop:
                v = v * scale if keep[i, j] else 0.0
            z[i, j] = v


@jit(nogil=True)
def backward_hidden(
    d: np.ndarray, a: np.ndarray, act: int, keep: np.ndarray, scale: float, drop: bool
) -> None:
    """d (B, n) <- d * dropout' * act', from the layer's output a (after dropout, so a unit's
    activation is a / scale where kept)."""
    rows, n = d.shape
    for i in range(rows):
        for j in range(n):
            if drop:
                d[i, j] = d[i, j] * scale * _act_prime(a[i, j] / scale, act) if keep[i, j] else 0.0
            else:
                d[i, j] = d[i, j] * _act_prime(a[i, j], act)


@jit(nogil=True)
def dropout_into(src: np.ndarray, dst: np.ndarray, keep: np.ndarray, scale: float) -> None:
    """dst (B, n) <- src with dropped units zeroed and kept ones scaled (the input layer)."""
    rows, n = src.shape
    for i in range(rows):
        for j in range(n):
            dst[i, j] = src[i, j] * scale if keep[i, j] else 0.0


@jit(nogil=True)
def cross_entropy_out(
    z: np.ndarray, b: np.ndarray, y: np.ndarray, d: np.ndarray, inv_batch: float
) -> float:
    """Logits z (B, k) += b; d <- (softmax(z) - y) / B; returns the summed loss. Stable: the
    row's max is subtracted before exp."""
    rows, k = z.shape
    total = 0.0
    for i in range(rows):
        top = -np.inf
        for j in range(k):
            z[i, j] += b[j]
            top = max(top, z[i, j])
        s = 0.0
        for j in range(k):
            e = math.exp(z[i, j] - top)
            d[i, j] = e
            s += e
        log_s = math.log(s) + top
        for j in range(k):
            total += y[i, j] * (log_s - z[i, j])
            d[i, j] = (d[i, j] / s - y[i, j]) * inv_batch
    return total


@jit(nogil=True)
def mse_out(
    z: np.ndarray, b: np.ndarray, act: int, y: np.ndarray, d: np.ndarray, inv_batch: float
) -> float:
    """z (B, k) <- act(z + b); d <- (a - y) act'(a) / B; returns sum |a - y|^2 / 2."""
    rows, k = z.shape
    total = 0.0
    for i in range(rows):
        for j in range(k):
            a = _act(z[i, j] + b[j], act)
            z[i, j] = a
            e = a - y[i, j]
            total += e * e / 2
            d[i, j] = e * _act_prime(a, act) * inv_batch
    return total


@jit(nogil=True)
def column_sums(d: np.ndarray, out: np.ndarray) -> None:
    """out (n,) <- sum over rows of d (B, n): the bias gradient."""
    rows, n = d.shape
    out[:] = 0.0
    for i in range(rows):
        for j in range(n):
            out[j] += d[i, j]


@jit(nogil=True)
def sgd_update(
    w: np.ndarray, g: np.ndarray, v: np.ndarray, lr: float, mu: float, wd: float, nesterov: bool
) -> None:
    """PyTorch's SGD: g' = g + wd w; v = mu v + g'; w -= lr (nesterov ? g' + mu v : v).
    With mu == 0, v may be g itself (plain SGD keeps no state)."""
    wf, gf, vf = w.reshape(-1), g.reshape(-1), v.reshape(-1)
    for i in range(wf.size):
        gi = gf[i] + wd * wf[i]
        vi = mu * vf[i] + gi
        vf[i] = vi
        wf[i] -= lr * (gi + mu * vi if nesterov else vi)


@jit(nogil=True)
def adam_update(
    w: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    wd: float,
    decoupled: bool,
    step: int,
) -> None:
    """Adam (wd added to g) or AdamW (decoupled: w -= lr wd w first), bias-corrected."""
    c1, c2 = 1.0 - beta1**step, 1.0 - beta2**step
    wf, gf, mf, vf = w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    for i in range(wf.size):
        gi = gf[i]
        if decoupled:
            wf[i] -= lr * wd * wf[i]
        else:
            gi += wd * wf[i]
        mf[i] = beta1 * mf[i] + (1.0 - beta1) * gi
        vf[i] = beta2 * vf[i] + (1.0 - beta2) * gi * gi
        wf[i] -= lr * (mf[i] / c1) / (math.sqrt(vf[i] / c2) + eps)


@jit(nogil=True)
def max_norm(w: np.ndarray, limit: float) -> None:
    """Rescale each unit's incoming weights (a column of w (n_in, n_out)) to norm <= limit."""
    n_in, n_out = w.shape
    norms = np.zeros(n_out)
    for i in range(n_in):
        for j in range(n_out):
            norms[j] += w[i, j] * w[i, j]
    for j in range(n_out):
        norms[j] = math.sqrt(norms[j])
        norms[j] = limit / norms[j] if norms[j] > limit else 1.0
    for i in range(n_in):
        for j in range(n_out):
            if norms[j] != 1.0:
                w[i, j] *= norms[j]
