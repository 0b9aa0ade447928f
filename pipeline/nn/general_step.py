"""The general training step: any depth, activation, loss, dropout and optimizer, on reused
buffers, in one process or data-parallel over MPI.

For a batch of B rows, with a_0 = x (after input dropout), layers l = 1..L:
    z_l = a_{l-1} w_l + b_l;   a_l = dropout(act(z_l))   (hidden layers)
    last layer: softmax cross-entropy on z_L, or act(z_L) and MSE (the original's loss)
    delta_L = dloss/dz_L / B;   delta_{l} = (delta_{l+1} w_{l+1}^T) * dropout' * act'(a_l)
    dw_l = a_{l-1}^T delta_l;   db_l = column sums of delta_l;   optimizer step;   max-norm
The products run in BLAS (numpy.matmul into preallocated outputs); everything else is one
fused pass (`pipeline.nn.fused`). No batch-sized array is allocated after construction: a
batch smaller than the buffers (an epoch's last) uses their first rows.

Two cores, two halves. Every step is computed in two halves, always the same ones: the
forward and backward passes by rows of the batch (a row's activations and deltas need no other
row), the gradients by rows of each w (and columns of each b), the update by halves of each
parameter's elements. On two cores a worker thread takes one half while this thread takes the
other, each with a one-thread BLAS; on one core, and in an MPI rank (the ranks use the
cores), this thread takes both in turn. The split, not the thread count, fixes the arithmetic:
the bits are the same on any machine. Why not BLAS's own two threads: beside another busy
process they wait on each other (`scripts/bench_recipes.py --contended` measures both ways
side by side; the figures are in the README's Recipes section).

Under MPI (`comm`, `pipeline.communicator`) the batch is the GLOBAL batch: every rank
draws the dropout masks of all its rows (so the generator and the masks are those of one
process), computes its share of the rows with delta_L scaled by 1 / (global rows), and one
Allreduce sums the gradients (and the loss) before the identical optimizer step on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from pipeline.communicator import LOCAL, Comm, GradientSum, rows_of_rank
from pipeline.nn import fused
from pipeline.nn.layers import GOLDEN, MASK64, dropout_threshold, words_for
from pipeline.nn.network import Network
from pipeline.nn.optimizers import Optimizer, OptimizerSettings
from pipeline.nn.step import Rows, StepState


@dataclass(frozen=True)
class StepSettings:
    """What the step needs to know of the recipe (from TrainConfig)."""

    activation: str = "relu"
    loss: str = "cross_entropy"
    dropout: float = 0.0  # hidden layers
    input_dropout: float = 0.0
    max_norm: float = 0.0  # 0: off
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)


class GeneralStep:
    def __init__(
        self,
        network: Network,
        spec: StepSettings,
        *,
        batch_size: int,
        dropout_key: int,
        comm: Comm = LOCAL,
    ) -> None:
        self.network, self.spec, self.comm = network, spec, comm
        self.act = fused.ACT_CODE[spec.activation]
        sizes, dt = network.sizes, network.dtype
        n = batch_size
        self.a = [np.empty((n, k), dt) for k in sizes]  # activations; a[0] only for input dropout
        self.d = [np.empty((n, k), dt) for k in sizes]  # deltas; d[0] unused
        self.keep = [np.empty((n, k), np.uint8) for k in sizes[:-1]]  # dropout masks
        self.grad_w = [np.empty_like(w) for w in network.weights]
        self.grad_b = [np.empty_like(b) for b in network.biases]
        self.optimizer = Optimizer(network.weights + network.biases, spec.optimizer)
        shapes = [p.shape for p in (*network.weights, *network.biases)]
        self.reducer = GradientSum(shapes, dt) if comm.size > 1 else None
        self.dropout_key = dropout_key
        self.dropout_counter = 0  # splitmix64 words drawn so far: the dropout generator's state
        # MPI ranks are the parallelism there: a rank takes its two halves in turn
        self.worker = _worker() if comm.size == 1 else None

    def _draw(self, keep: np.ndarray, p: float) -> None:
        start = np.uint64((self.dropout_key + self.dropout_counter * GOLDEN) & MASK64)
        fused.draw_keep(keep, start, dropout_threshold(p))
        self.dropout_counter += words_for(keep.size)

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One update on the (global) batch x (B, n_0), y (B, n_L); returns its summed loss."""
        with self.blas_threads():
            return self._step(x, y, lr)

    def _step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        spec, net = self.spec, self.network
        total = len(x)
        mine = rows_of_rank(total, self.comm.rank, self.comm.size)  # all rows in one process
        x, y = x[mine], y[mine]
        rows = len(x)
        if spec.input_dropout > 0:  # every layer's mask for the global batch, in layer order
            self._draw(self.keep[0][:total], spec.input_dropout)
        if spec.dropout > 0:
            for mask in self.keep[1:]:
                self._draw(mask[:total], spec.dropout)
        keep = [buf[mine] for buf in self.keep]  # this rank's rows of the global masks
        inputs = self.a[0][:rows] if spec.input_dropout > 0 else x  # (rows, n_0)
        losses = [0.0, 0.0]

        def backprop(k: int) -> None:
            losses[k] = self.backprop(x, y, inputs, keep, _half(rows, k), 1.0 / total)

        self._halves(backprop)
        self._halves(lambda k: self.gradients(inputs, rows, k))
        grads, loss = self.grad_w + self.grad_b, losses[0] + losses[1]
        if self.reducer is not None:  # sum over the ranks: the global batch's mean gradient
            grads, loss = self.reducer(self.comm, grads, loss, 1.0)
        params = net.weights + net.biases
        self.optimizer.begin()
        self._halves(lambda k: self.optimizer.update(params, grads, lr, half=k))
        if spec.max_norm > 0:  # over whole columns of w: after every row is updated
            self._halves(lambda k: self.limit_norms(k))
        return float(loss)

    def backprop(
        self,
        x: np.ndarray,
        y: np.ndarray,
        inputs: np.ndarray,
        keep: list[np.ndarray],
        r: slice,
        inv_total: float,
    ) -> float:
        """Forward and backward over rows r of this rank's batch: the activations a[l][r] and
        deltas d[l][r] of every layer (no other row is read); returns their summed loss."""
        spec, net, layers = self.spec, self.network, len(self.network.weights)
        a = [buf[r] for buf in self.a]  # (r, n_l) views: contiguous, no copies
        d = [buf[r] for buf in self.d]
        kept = [buf[r] for buf in keep]
        a[0] = inputs[r]  # x's rows, or (with input dropout) a[0]'s own rows, written here
        if spec.input_dropout > 0:
            fused.dropout_into(x[r], a[0], kept[0], 1.0 / (1.0 - spec.input_dropout))
        p = spec.dropout
        scale = 1.0 / (1.0 - p)
        for layer in range(layers - 1):  # hidden layers
            np.matmul(a[layer], net.weights[layer], out=a[layer + 1])  # (r, n_{l+1})
            fused.forward_hidden(a[layer + 1], net.biases[layer], self.act, kept[layer + 1],
                                 scale, p > 0)  # fmt: skip
        out = layers
        np.matmul(a[out - 1], net.weights[out - 1], out=a[out])  # (r, n_L) logits
        if spec.loss == "cross_entropy":
            loss = fused.cross_entropy_out(a[out], net.biases[out - 1], y[r], d[out], inv_total)
        else:
            loss = fused.mse_out(a[out], net.biases[out - 1], self.act, y[r], d[out], inv_total)
        for layer in reversed(range(1, layers)):  # weights[layer] maps a[layer] -> a[layer + 1]
            np.matmul(d[layer + 1], net.weights[layer].T, out=d[layer])  # (r, n_l)
            fused.backward_hidden(d[layer], a[layer], self.act, kept[layer], scale, p > 0)
        return float(loss)

    def gradients(self, inputs: np.ndarray, rows: int, k: int) -> None:
        """Half k of every gradient: rows of dw_l = a_{l-1}^T delta_l, columns of db_l."""
        for layer, (gw, gb) in enumerate(zip(self.grad_w, self.grad_b, strict=True)):
            a = inputs if layer == 0 else self.a[layer][:rows]  # (rows, n_l)
            d = self.d[layer + 1][:rows]  # (rows, n_{l+1})
            part = _half(len(gw), k)
            np.matmul(a[:, part].T, d, out=gw[part])  # (part, n_{l+1})
            cols = _half(len(gb), k)
            fused.column_sums(d[:, cols], gb[cols])

    def limit_norms(self, k: int) -> None:
        for w in self.network.weights:
            fused.max_norm(w[:, _half(w.shape[1], k)], self.spec.max_norm)

    def _halves(self, work: Callable[[int], None]) -> None:
        """work(0) and work(1): at once on two cores (the worker takes half 1), else in turn."""
        if self.worker is None:
            work(0)
            work(1)
            return
        other = self.worker.submit(work, 1)
        try:
            work(0)
        finally:
            other.result()  # re-raises the worker's exception, if any

    def steps(
        self, x: Rows, y: Rows, lrs: Sequence[float], batch_size: int, loss_sum: float
    ) -> float:
        """Consecutive batches of x (N, n_0), one per rate in lrs; returns loss_sum plus each
        batch's summed loss, added in order (a running sum independent of how calls split)."""
        total = float(loss_sum)
        with self.blas_threads():
            for k, lr in enumerate(lrs):
                rows = slice(k * batch_size, (k + 1) * batch_size)
                total += self._step(x[rows], y[rows], lr)
        return total

    def state(self) -> StepState:
        arrays = self.optimizer.state_arrays()
        return StepState(arrays, self.optimizer.step_count, self.dropout_counter)

    def load_state(self, state: StepState) -> None:
        self.optimizer.load_state(state.arrays, state.step_count)  # ValueError: does not fit
        self.dropout_counter = state.dropout_counter

    @contextmanager
    def blas_threads(self) -> Iterator[None]:
        """One BLAS thread per half while the two halves run on two threads (two threads
        each calling a two-thread BLAS would wait on each other)."""
        if self.worker is None:
            yield
            return
        with _blas().limit(limits=1, user_api="blas"):
            yield


def _half(n: int, k: int) -> slice:
    """Half k (0 or 1) of range(n): the fixed split of every step's work."""
    return slice(0, n // 2) if k == 0 else slice(n // 2, n)


@cache
def _worker() -> ThreadPoolExecutor | None:
    """The one thread that takes every step's second half; None with one core."""
    if len(os.sched_getaffinity(0)) < 2:
        return None
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="recipe-half")


@cache
def _blas():  # type: ignore[no-untyped-def]
    from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

    return ThreadpoolController()
