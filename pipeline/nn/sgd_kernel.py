"""The fast path: the recipe's SGD step compiled with numba, exploiting sparse inputs.

The updates of `Network.backprop` + `update` (the tests hold the two together), made fast:
  - about 80% of MNIST's pixels are exactly 0 and contribute nothing to the first layer,
    forward or backward: only rows of w1 whose pixel is nonzero in some sample are read or
    updated, each a unit-stride loop over the hidden units; the update is applied as the
    gradient is formed, so no (n_in, n_hid) gradient array ever exists;
  - those two passes are bound by memory traffic on w1, so the forward pass adds 4 rows of w1
    per pass over the hidden activations, and the update writes each touched row once;
  - w2 is held transposed inside a call so every layer-2 loop is unit-stride too; its dot
    products use 8 partial sums (a fixed order: vectorised without fastmath);
  - `steps` runs many consecutive batches in one compiled call: the per-step Python and
    dispatch overhead (most of a batch-3 step) is paid once per block of rows.
fastmath stays off and every sum runs in a fixed order: results are deterministic, bit for
bit, and one call over many batches equals one call per batch. The kernels release the GIL,
so the loader's reader thread runs beside them; one thread, as a step is too short for two to
pay for their syncing (README, Training). Called through `sparse_step`.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.nn.compile_cache import jit

__all__ = ["steps"]


@jit(fastmath=False, nogil=True)
def _scratch(bmax: int, n_in: int, n_hid: int, n_out: int, dt: np.dtype) -> tuple:  # type: ignore[type-arg]
    """Work arrays for _step, for batches of up to bmax samples.

    anyf (n_in,) bool      pixel nonzero in some sample of the batch
    nz   (n_in,) int64     union of nonzero pixels, increasing   [:nnz]
    rb   (n_in, bmax)      rb[k, :rcnt[k]] = samples with x[b, nz[k]] != 0
    rcnt (n_in,) int64     how many samples each nz pixel is nonzero in
    sidx (bmax, n_in)      sidx[b, :scnt[b]] = nonzero pixels of sample b
    sval (bmax, n_in) dt   their values
    scnt (bmax,) int64
    a1, d1 (bmax, n_hid)   hidden activations / hidden error
    tmp  (n_hid,)          gradient row accumulator (>3 samples on a row)
    z2, d2 (bmax, n_out)   output pre-activation / output error
    w2t  (n_out, n_hid)    W2 transposed: makes every layer-2 loop a
                           unit-stride loop over hidden units
    """
    return (
        np.zeros(n_in, np.bool_),
        np.empty(n_in, np.int64),
        np.empty((n_in, bmax), np.int64),
        np.empty(n_in, np.int64),
        np.empty((bmax, n_in), np.int64),
        np.empty((bmax, n_in), dt),
        np.empty(bmax, np.int64),
        np.empty((bmax, n_hid), dt),
        np.empty((bmax, n_hid), dt),
        np.empty(n_hid, dt),
        np.empty((bmax, n_out), dt),
        np.empty((bmax, n_out), dt),
        np.empty((n_out, n_hid), dt),
    )


@jit(fastmath=False, nogil=True)
def _transpose(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[o, j] = src[j, o] (exact copy)."""
    n, m = src.shape
    for j in range(n):
        for o in range(m):
            dst[o, j] = src[j, o]


@jit(fastmath=False, nogil=True)
def _step(
    w1: np.ndarray,
    b1: np.ndarray,
    w2t: np.ndarray,
    b2: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
    scr: tuple,  # type: ignore[type-arg]
) -> float:
    """One SGD step on (w1, b1, w2t, b2) in place, W2 held TRANSPOSED as
    w2t (n_out, n_hid).  x (B, n_in), y (B, n_out), B <= bmax of scr.
    Returns the loss summed over the batch."""
    anyf, nz, rb, rcnt, sidx, sval, scnt, a1, d1, tmp, z2, d2, _ = scr
    B, n_in = x.shape
    n_hid = w1.shape[1]
    n_out = w2t.shape[0]
    # constants in the array dtype, so float32 math stays float32
    # (a bare Python literal would promote every expression to float64)
    one = b1.dtype.type(1.0)
    zero = b1.dtype.type(0.0)
    s = b1.dtype.type(lr / B)  # lr/B, rounded once to the dtype

    # ---- nonzero-pixel scan ----------------------------------------------
    # Branch-free: always write the candidate slot, advance by (x != 0).
    for p in range(n_in):
        anyf[p] = False
    for b in range(B):
        for p in range(n_in):  # vectorised OR over pixels
            anyf[p] = anyf[p] | (x[b, p] != zero)
    nnz = 0
    for p in range(n_in):
        nz[nnz] = p
        nnz += anyf[p]
    for k in range(nnz):  # which samples light up row nz[k]
        p = nz[k]
        c = 0
        for b in range(B):
            rb[k, c] = b
            c += x[b, p] != zero
        rcnt[k] = c
    for b in range(B):  # per-sample nonzero lists
        c = 0
        for k in range(nnz):
            p = nz[k]
            v = x[b, p]
            sidx[b, c] = p
            sval[b, c] = v
            c += v != zero
        scnt[b] = c

    # ---- layer 1 forward, sparse: a1[b,:] = b1 + sum_p x[b,p]*W1[p,:] ----
    # Per sample, nonzero pixels taken 4 at a time: one read-modify-write
    # pass over a1[b,:] per 4 rows of W1 instead of per row (this loop is
    # bound by stores / L2 reads, not by flops).  Fixed summation order:
    # a1 += ((x0*w0 + x1*w1) + (x2*w2 + x3*w3)), groups in pixel order.
    for b in range(B):
        for j in range(n_hid):
            a1[b, j] = b1[j]
        n = scnt[b]
        k = 0
        while k + 4 <= n:
            p0 = sidx[b, k]
            p1 = sidx[b, k + 1]
            p2 = sidx[b, k + 2]
            p3 = sidx[b, k + 3]
            x0 = sval[b, k]
            x1 = sval[b, k + 1]
            x2 = sval[b, k + 2]
            x3 = sval[b, k + 3]
            for j in range(n_hid):  # unit stride, vectorised
                a1[b, j] += (x0 * w1[p0, j] + x1 * w1[p1, j]) + (x2 * w1[p2, j] + x3 * w1[p3, j])
            k += 4
        while k < n:
            p0 = sidx[b, k]
            x0 = sval[b, k]
            for j in range(n_hid):
                a1[b, j] += x0 * w1[p0, j]
            k += 1

    # ---- hidden sigmoid ---------------------------------------------------
    for b in range(B):
        for j in range(n_hid):
            a1[b, j] = one / (one + math.exp(-a1[b, j]))

    # ---- layer 2 forward: z2[b,o] = b2[o] + a1[b,:].w2t[o,:] -------------
    # A dot product cannot be vectorised without reassociation (fastmath),
    # so use 8 independent partial sums (fixed order) to hide add latency.
    nb8 = n_hid - n_hid % 8
    for b in range(B):
        for o in range(n_out):
            s0 = zero
            s1 = zero
            s2 = zero
            s3 = zero
            s4 = zero
            s5 = zero
            s6 = zero
            s7 = zero
            for j in range(0, nb8, 8):
                s0 += a1[b, j] * w2t[o, j]
                s1 += a1[b, j + 1] * w2t[o, j + 1]
                s2 += a1[b, j + 2] * w2t[o, j + 2]
                s3 += a1[b, j + 3] * w2t[o, j + 3]
                s4 += a1[b, j + 4] * w2t[o, j + 4]
                s5 += a1[b, j + 5] * w2t[o, j + 5]
                s6 += a1[b, j + 6] * w2t[o, j + 6]
                s7 += a1[b, j + 7] * w2t[o, j + 7]
            t = zero
            for j in range(nb8, n_hid):
                t += a1[b, j] * w2t[o, j]
            z2[b, o] = b2[o] + ((((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + t)

    # ---- output error: a2, loss, d2 = (a2-y)*a2*(1-a2) -------------------
    loss = 0.0  # float64 accumulator for the returned loss
    for b in range(B):
        for o in range(n_out):
            a2 = one / (one + math.exp(-z2[b, o]))
            e = a2 - y[b, o]
            loss += e * e
            d2[b, o] = e * a2 * (one - a2)

    # ---- hidden error: d1 = (d2 @ W2.T) * a1 * (1-a1), W2 not yet updated
    for b in range(B):
        c = d2[b, 0]
        for j in range(n_hid):
            d1[b, j] = c * w2t[0, j]
        for o in range(1, n_out):
            c = d2[b, o]
            for j in range(n_hid):
                d1[b, j] += c * w2t[o, j]
        for j in range(n_hid):
            a = a1[b, j]
            d1[b, j] = d1[b, j] * a * (one - a)

    # ---- W2, b2, b1 updates ------------------------------------------------
    for o in range(n_out):  # W2[:, o] -= s * sum_b a1[b,:]*d2[b,o]
        c = d2[0, o]
        for j in range(n_hid):
            tmp[j] = a1[0, j] * c
        for b in range(1, B):
            c = d2[b, o]
            for j in range(n_hid):
                tmp[j] += a1[b, j] * c
        for j in range(n_hid):
            w2t[o, j] -= s * tmp[j]
    for o in range(n_out):
        g = d2[0, o]
        for b in range(1, B):
            g += d2[b, o]
        b2[o] -= s * g
    for j in range(n_hid):
        tmp[j] = d1[0, j]
    for b in range(1, B):
        for j in range(n_hid):
            tmp[j] += d1[b, j]
    for j in range(n_hid):
        b1[j] -= s * tmp[j]

    # ---- W1 update, only rows with a nonzero pixel (others get -= 0) ----
    # W1[p,:] -= s * sum_b x[b,p]*d1[b,:], summed over the samples with
    # x[b,p] != 0 in batch order; 1-3 samples are written as one expression
    # (one pass over the row, no temporary); more use tmp.  All paths give
    # the same bits as the tmp path.
    for k in range(nnz):
        p = nz[k]
        c = rcnt[k]
        ba = rb[k, 0]
        xa = x[ba, p]
        if c == 1:
            for j in range(n_hid):
                w1[p, j] -= s * (xa * d1[ba, j])
        elif c == 2:
            bb = rb[k, 1]
            xb = x[bb, p]
            for j in range(n_hid):
                w1[p, j] -= s * (xa * d1[ba, j] + xb * d1[bb, j])
        elif c == 3:
            bb = rb[k, 1]
            xb = x[bb, p]
            bc = rb[k, 2]
            xc = x[bc, p]
            for j in range(n_hid):
                w1[p, j] -= s * ((xa * d1[ba, j] + xb * d1[bb, j]) + xc * d1[bc, j])
        else:
            for j in range(n_hid):
                tmp[j] = xa * d1[ba, j]
            for q in range(1, c):
                bq = rb[k, q]
                xq = x[bq, p]
                for j in range(n_hid):
                    tmp[j] += xq * d1[bq, j]
            for j in range(n_hid):
                w1[p, j] -= s * tmp[j]
    return 0.5 * loss


@jit(fastmath=False, nogil=True)
def steps(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    lr: float,
    batch: int,
    total: float,
) -> float:
    """SGD steps in place over X (N, n_in), Y (N, n_out): consecutive batches of `batch` rows
    (the last may be smaller). Returns `total` plus each step's summed loss, added one step at
    a time: the running sum is the same however the steps are split into calls.

    The same arithmetic as one call per batch, so the weights are bit-identical; w2 is
    transposed once per call instead of twice per step."""
    N, n_in = X.shape
    n_hid = w1.shape[1]
    n_out = w2.shape[1]
    scr = _scratch(max(1, min(batch, N)), n_in, n_hid, n_out, b1.dtype)  # no bigger than X
    w2t = scr[12]
    _transpose(w2, w2t)
    for i in range(0, N, batch):
        B = min(batch, N - i)
        total += _step(w1, b1, w2t, b2, X[i : i + B], Y[i : i + B], lr, scr)
    _transpose(w2t, w2)
    return total
