"""The network: a multilayer perceptron trained by back-propagation; the original recipe's
units are sigmoids and its loss MSE (`activation` and `loss` choose others: `layers`, `losses`).

Weights are stored input-major, as the original recipe has them: layer l maps a (batch, n_in)
activation to (batch, n_out) through w (n_in, n_out) and b (n_out,). In that orientation the
textbook equations read, for a batch of B rows (delta and a are row-per-sample):

    z_l = a_{l-1} w_l + b_l,    a_l = sigmoid(z_l)
    loss = sum over samples of |a_L - y|^2 / 2
    delta_L = (a_L - y) * sigmoid'(z_L)
    delta_l = (delta_{l+1} w_{l+1}^T) * sigmoid'(z_l)
    dw_l = a_{l-1}^T delta_l / B,   db_l = sum over rows of delta_l / B
    w_l -= lr * dw_l,   b_l -= lr * db_l

`backprop` and `update` are those equations, plainly: the reference the training steps
(`pipeline.nn.step`: the original recipe's compiled kernel, the general step) are held to.
"""

from __future__ import annotations

import itertools

import numpy as np

from pipeline.nn.layers import ACTIVATIONS, init_std, sigmoid, sigmoid_prime
from pipeline.nn.losses import cross_entropy, mse

__all__ = ["Network", "sigmoid", "sigmoid_prime"]


class Network:
    def __init__(
        self,
        weights: list[np.ndarray],
        biases: list[np.ndarray],
        *,
        activation: str = "sigmoid",
        loss: str = "mse",
    ) -> None:
        assert len(weights) == len(biases) >= 1
        assert activation in ACTIVATIONS and loss in ("mse", "cross_entropy")
        self.weights = weights  # [(n_in, n_out)] per layer
        self.biases = biases  # [(n_out,)] per layer
        self.activation = activation  # of the hidden layers, and of the output under MSE
        self.loss = loss  # cross_entropy: the output layer is linear (logits for a softmax)

    def __repr__(self) -> str:
        return f"Network({self.sizes}, {self.activation}, {self.loss}, {self.dtype})"

    @classmethod
    def initialize(
        cls,
        sizes: list[int],
        *,
        rng: np.random.Generator,
        std: float,
        dtype: str,
        init: str = "normal",
        activation: str = "sigmoid",
        loss: str = "mse",
    ) -> Network:
        """init "normal": N(0, std) weights and biases, drawn layer by layer (w then b) like
        the original; "he"/"xavier": N(0, their std) weights and zero biases."""
        weights, biases = [], []
        for n_in, n_out in itertools.pairwise(sizes):
            scale = init_std(init, n_in, n_out, std)
            weights.append((rng.standard_normal((n_in, n_out)) * scale).astype(dtype))
            if init == "normal":
                biases.append((rng.standard_normal(n_out) * std).astype(dtype))
            else:
                biases.append(np.zeros(n_out, dtype))
        return cls(weights, biases, activation=activation, loss=loss)

    @property
    def sizes(self) -> list[int]:
        return [self.weights[0].shape[0]] + [w.shape[1] for w in self.weights]

    @property
    def dtype(self) -> np.dtype[np.floating]:
        return self.weights[0].dtype

    def feedforward(self, x: np.ndarray) -> list[np.ndarray]:
        """Activations of every layer, input first: [(B, n_0), (B, n_1), ..., (B, n_L)]."""
        f = ACTIVATIONS[self.activation][0]
        activations = [x]
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = activations[-1] @ w + b
            last = layer == len(self.weights) - 1
            activations.append(z if last and self.loss == "cross_entropy" else f(z))
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
        f_prime = ACTIVATIONS[self.activation][1]
        activations = self.feedforward(x)
        out = activations[-1]  # (B, n_L): act(z_L) under MSE, the logits z_L otherwise
        if self.loss == "mse":
            loss, delta = mse(out, y, f_prime)  # delta (B, n_L) = dloss/dz_L
        else:
            loss, delta = cross_entropy(out, y)
        grads_w: list[np.ndarray] = []
        grads_b: list[np.ndarray] = []
        for layer in reversed(range(len(self.weights))):
            grads_w.insert(0, activations[layer].T @ delta / len(x))  # (n_in, n_out)
            grads_b.insert(0, delta.sum(axis=0) / len(x))  # (n_out,)
            if layer:
                delta = (delta @ self.weights[layer].T) * f_prime(activations[layer])
        return loss, grads_w, grads_b

    def update(self, grads_w: list[np.ndarray], grads_b: list[np.ndarray], lr: float) -> None:
        for w, b, gw, gb in zip(self.weights, self.biases, grads_w, grads_b, strict=True):
            w -= (lr * gw).astype(w.dtype)
            b -= (lr * gb).astype(b.dtype)
