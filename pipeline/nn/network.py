"""The network: a multilayer perceptron of sigmoid units, trained by back-propagation on MSE.

Weights are stored input-major, as the original recipe has them: layer l maps a (batch, n_in)
activation to (batch, n_out) through w (n_in, n_out) and b (n_out,). In that orientation the
textbook equations read, for a batch of B rows (delta and a are row-per-sample):

    z_l = a_{l-1} w_l + b_l,    a_l = sigmoid(z_l)
    loss = sum over samples of |a_L - y|^2 / 2
    delta_L = (a_L - y) * sigmoid'(z_L)
    delta_l = (delta_{l+1} w_{l+1}^T) * sigmoid'(z_l)
    dw_l = a_{l-1}^T delta_l / B,   db_l = sum over rows of delta_l / B
    w_l -= lr * dw_l,   b_l -= lr * db_l

`backprop` and `update` are those equations, plainly; `step` runs the same update through the
fused kernel in `pipeline.nn.kernels` when the network has one hidden layer (the default recipe),
and the tests hold the two to each other.
"""

from __future__ import annotations

import itertools

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-z) overflows to inf for z < -88: sigmoid is 0
        result: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return result


def sigmoid_prime(a: np.ndarray) -> np.ndarray:
    """sigmoid'(z) written in terms of a = sigmoid(z), which backprop already holds."""
    return a * (1.0 - a)


class Network:
    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray]) -> None:
        assert len(weights) == len(biases) >= 1
        self.weights = weights  # [(n_in, n_out)] per layer
        self.biases = biases  # [(n_out,)] per layer

    @classmethod
    def initialize(
        cls, sizes: list[int], *, rng: np.random.Generator, std: float, dtype: str
    ) -> Network:
        """N(0, std) weights and biases, drawn layer by layer (w then b) like the original."""
        weights, biases = [], []
        for n_in, n_out in itertools.pairwise(sizes):
            weights.append((rng.standard_normal((n_in, n_out)) * std).astype(dtype))
            biases.append((rng.standard_normal(n_out) * std).astype(dtype))
        return cls(weights, biases)

    @property
    def sizes(self) -> list[int]:
        return [self.weights[0].shape[0]] + [w.shape[1] for w in self.weights]

    @property
    def dtype(self) -> np.dtype[np.floating]:
        return self.weights[0].dtype

    def feedforward(self, x: np.ndarray) -> list[np.ndarray]:
        """Activations of every layer, input first: [(B, n_0), (B, n_1), ..., (B, n_L)]."""
        activations = [x]
        for w, b in zip(self.weights, self.biases, strict=True):
            activations.append(sigmoid(activations[-1] @ w + b))
        return activations

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(B,) class indices for a (B, n_0) batch."""
        out = self.feedforward(x.astype(self.dtype, copy=False))[-1]  # (B, n_L)
        classes: np.ndarray = np.argmax(out, axis=1)
        return classes

    def backprop(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
        """The batch's summed loss and the gradients (averaged over its rows) of every layer."""
        activations = self.feedforward(x)
        out = activations[-1]  # (B, n_L)
        loss = float(np.sum((out - y) ** 2) / 2)
        delta = (out - y) * sigmoid_prime(out)  # (B, n_L)
        grads_w: list[np.ndarray] = []
        grads_b: list[np.ndarray] = []
        for layer in reversed(range(len(self.weights))):
            grads_w.insert(0, activations[layer].T @ delta / len(x))  # (n_in, n_out)
            grads_b.insert(0, delta.sum(axis=0) / len(x))  # (n_out,)
            if layer:
                delta = (delta @ self.weights[layer].T) * sigmoid_prime(activations[layer])
        return loss, grads_w, grads_b

    def update(self, grads_w: list[np.ndarray], grads_b: list[np.ndarray], lr: float) -> None:
        for w, b, gw, gb in zip(self.weights, self.biases, grads_w, grads_b, strict=True):
            w -= (lr * gw).astype(w.dtype)
            b -= (lr * gb).astype(b.dtype)

    def steps(
        self, x: np.ndarray, y: np.ndarray, lr: float, batch_size: int, *, loss_sum: float = 0.0
    ) -> float:
        """SGD steps over consecutive batches of x (N, n_0), y (N, n_L), the last batch possibly
        smaller; returns `loss_sum` plus each batch's summed loss, added one batch at a time, so
        a running sum threaded through many calls does not depend on how the batches were
        split into calls (a resumed run records the same numbers). One hidden layer (the
        recipe) runs the fused kernel."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        y = np.ascontiguousarray(y, dtype=self.dtype)
        if len(self.weights) == 2:
            from pipeline.nn import kernels  # numba: compiled (or loaded) only when training

            (w1, w2), (b1, b2) = self.weights, self.biases
            return kernels.sgd_steps(
                w1, b1, w2, b2, x, y, lr=lr, batch=batch_size, loss_sum=loss_sum
            )
        total = float(loss_sum)
        for start in range(0, len(x), batch_size):
            loss, grads_w, grads_b = self.backprop(
                x[start : start + batch_size], y[start : start + batch_size]
            )
            self.update(grads_w, grads_b, lr)
            total += loss
        return total

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One SGD step on a (B, n_0) batch; returns its summed loss."""
        return self.steps(x, y, lr, len(x))
