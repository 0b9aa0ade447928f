"""The general training step: any activation, loss, dropout and optimizer, on reused buffers.

For a batch of B rows, with a_0 = x (after input dropout), layers l = 1..L:
    z_l = a_{l-1} w_l + b_l;   a_l = dropout(act(z_l))   (hidden layers)
    last layer: softmax cross-entropy on z_L, or act(z_L) and MSE (the original's loss)
    delta_L = dloss/dz_L / B;   delta_{l} = (delta_{l+1} w_{l+1}^T) * dropout' * act'(a_l)
    dw_l = a_{l-1}^T delta_l;   db_l = column sums of delta_l;   optimizer step;   max-norm
The products run in BLAS (numpy.matmul into preallocated outputs); everything else is one
fused pass (`pipeline.nn.fused`). No batch-sized array is allocated after construction: a
batch smaller than the buffers (an epoch's last) uses their first rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.nn import fused
from pipeline.nn.layers import GOLDEN, MASK64, dropout_threshold, words_for
from pipeline.nn.network import Network
from pipeline.nn.optimizers import Hyper, Optimizer


@dataclass(frozen=True)
class Spec:
    """What the step needs to know of the recipe (from TrainConfig)."""

    activation: str = "relu"
    loss: str = "cross_entropy"
    dropout: float = 0.0  # hidden layers
    input_dropout: float = 0.0
    max_norm: float = 0.0  # 0: off
    optimizer: Hyper = field(default_factory=Hyper)


class RecipeStep:
    def __init__(self, network: Network, spec: Spec, *, batch_size: int, dropout_key: int) -> None:
        self.network, self.spec = network, spec
        self.act = fused.ACT_CODE[spec.activation]
        sizes, dt = network.sizes, network.dtype
        n = batch_size
        self.a = [np.empty((n, k), dt) for k in sizes]  # activations; a[0] only for input dropout
        self.d = [np.empty((n, k), dt) for k in sizes]  # deltas; d[0] unused
        self.keep = [np.empty((n, k), np.uint8) for k in sizes[:-1]]  # dropout masks
        self.grad_w = [np.empty_like(w) for w in network.weights]
        self.grad_b = [np.empty_like(b) for b in network.biases]
        self.optimizer = Optimizer(network.weights + network.biases, spec.optimizer)
        self.dropout_key = dropout_key
        self.dropout_counter = 0  # splitmix64 words drawn so far: the dropout generator's state

    def _draw(self, keep: np.ndarray, p: float) -> None:
        start = np.uint64((self.dropout_key + self.dropout_counter * GOLDEN) & MASK64)
        fused.draw_keep(keep, start, dropout_threshold(p))
        self.dropout_counter += words_for(keep.size)

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One update on x (B, n_0), y (B, n_L); returns the batch's summed loss."""
        spec, net = self.spec, self.network
        rows, layers = len(x), len(net.weights)
        a = [buf[:rows] for buf in self.a]  # (rows, n_l) views: contiguous, no copies
        d = [buf[:rows] for buf in self.d]
        keep = [buf[:rows] for buf in self.keep]
        a[0] = x
        if spec.input_dropout > 0:
            self._draw(keep[0], spec.input_dropout)
            fused.dropout_into(x, self.a[0][:rows], keep[0], 1.0 / (1.0 - spec.input_dropout))
            a[0] = self.a[0][:rows]
        p = spec.dropout
        scale = 1.0 / (1.0 - p)
        for layer in range(layers - 1):  # hidden layers
            np.matmul(a[layer], net.weights[layer], out=a[layer + 1])  # (rows, n_{l+1})
            if p > 0:
                self._draw(keep[layer + 1], p)
            fused.forward_hidden(a[layer + 1], net.biases[layer], self.act, keep[layer + 1],
                                 scale, p > 0)  # fmt: skip
        out = layers
        np.matmul(a[out - 1], net.weights[out - 1], out=a[out])  # (rows, n_L) logits
        if spec.loss == "cross_entropy":
            loss = fused.cross_entropy_out(a[out], net.biases[out - 1], y, d[out], 1.0 / rows)
        else:
            loss = fused.mse_out(a[out], net.biases[out - 1], self.act, y, d[out], 1.0 / rows)
        for layer in reversed(range(layers)):  # weights[layer] maps a[layer] -> a[layer + 1]
            np.matmul(a[layer].T, d[layer + 1], out=self.grad_w[layer])  # (n_l, n_{l+1})
            fused.column_sums(d[layer + 1], self.grad_b[layer])
            if layer:
                np.matmul(d[layer + 1], net.weights[layer].T, out=d[layer])  # (rows, n_l)
                fused.backward_hidden(d[layer], a[layer], self.act, keep[layer], scale, p > 0)
        self.optimizer.step(net.weights + net.biases, self.grad_w + self.grad_b, lr)
        if spec.max_norm > 0:
            for w in net.weights:
                fused.max_norm(w, spec.max_norm)
        return float(loss)

    def steps(
        self,
        x: np.ndarray,
        y: np.ndarray,
        lrs: list[float],
        batch_size: int,
        *,
        loss_sum: float = 0.0,
    ) -> float:
        """Consecutive batches of x (N, n_0), one per rate in lrs; returns loss_sum plus each
        batch's summed loss, added in order (a running sum independent of how calls split)."""
        total = float(loss_sum)
        for k, lr in enumerate(lrs):
            rows = slice(k * batch_size, (k + 1) * batch_size)
            total += self.step(x[rows], y[rows], lr)
        return total
