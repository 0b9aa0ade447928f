"""Losses, as pure functions of the network's output and the one-hot targets.

Each returns the loss summed over the batch's samples and its gradient with respect to the
last layer's pre-activation z (B, n_out); the network averages gradients over the batch.

    mse:            loss = sum_i |a_i - y_i|^2 / 2,  a = act(z)   (the original, act = sigmoid)
    cross_entropy:  loss = -sum_i log softmax(z_i)[y_i],  dloss/dz = softmax(z) - y
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Array = np.ndarray


def mse(a: Array, y: Array, act_prime: Callable[[Array], Array]) -> tuple[float, Array]:
    """The original loss on the output layer's activations a = act(z) (B, n_out):
    |a - y|^2 / 2 per sample; act_prime is act' in terms of a (`layers.ACTIVATIONS`)."""
    return float(np.sum((a - y) ** 2) / 2), (a - y) * act_prime(a)


def log_softmax(z: Array) -> Array:
    """Stable: the row's max is subtracted before exp, so nothing overflows."""
    shifted = z - z.max(axis=1, keepdims=True)
    result: Array = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def cross_entropy(z: Array, y: Array) -> tuple[float, Array]:
    """Softmax cross-entropy on logits z (B, n_out) and one-hot (or soft) targets y."""
    logp = log_softmax(z)
    return float(-np.sum(y * logp)), np.exp(logp) - y
