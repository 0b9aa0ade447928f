"""The layers of a recipe, as pure functions: activations and their derivatives, dropout, inits.

Derivatives are written in terms of the activation's output a = f(z), which the forward pass
keeps anyway (Nielsen's sigmoid_prime, with a instead of z). These are the readable reference;
`pipeline.nn.fused` computes the same in place, and the tests hold the two to each other and
these to finite differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Array = np.ndarray


def sigmoid(z: Array) -> Array:
    with np.errstate(over="ignore"):  # exp(-z) overflows to inf for z < -88: sigmoid is 0
        result: Array = 1.0 / (1.0 + np.exp(-z))
    return result


def sigmoid_prime(a: Array) -> Array:
    """sigmoid'(z) written in terms of a = sigmoid(z), which backprop already holds."""
    return a * (1.0 - a)


def tanh(z: Array) -> Array:
    result: Array = np.tanh(z)
    return result


def tanh_prime(a: Array) -> Array:
    result: Array = 1.0 - a * a
    return result


def relu(z: Array) -> Array:
    result: Array = np.maximum(z, 0.0)
    return result


def relu_prime(a: Array) -> Array:
    result: Array = (a > 0).astype(a.dtype)
    return result


# name -> (f, f' in terms of f's output); the fused kernels number them in this order
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "relu": (relu, relu_prime),
    "tanh": (tanh, tanh_prime),
    "sigmoid": (sigmoid, sigmoid_prime),
}


# ---- dropout: inverted, with a counter-based generator --------------------------------------
# A layer's keep-mask for one batch is drawn from splitmix64 at positions counter, counter+1, ...
# (four 16-bit draws per 64-bit output): the generator's whole state is one integer that the
# checkpoint holds, the mask is never stored between steps, and the draws cost ~1 ns each.
# A unit is kept when its draw >= round(p * 65536): p is honoured to 1/65536.
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def splitmix64(x: Array) -> Array:
    """The splitmix64 finaliser of (uint64) x + GOLDEN, elementwise, wrapping mod 2**64."""
    z = x + np.uint64(GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    result: Array = z ^ (z >> np.uint64(31))
    return result


def dropout_threshold(p: float) -> int:
    return round(p * 65536)


def words_for(size: int) -> int:
    """64-bit draws one mask of `size` units uses: the counter advances by this much."""
    return (size + 3) // 4


def keep_mask(key: int, counter: int, shape: tuple[int, ...], p: float) -> Array:
    """(shape) bool: True where a unit is kept. Draw k is 16 bits of splitmix64 word k // 4."""
    size = math.prod(shape)
    words = np.arange(words_for(size), dtype=np.uint64)  # arrays wrap silently, scalars warn
    state = np.uint64((key + counter * GOLDEN) & MASK64) + words * np.uint64(GOLDEN)
    bits = splitmix64(state)  # (words,)
    parts = (bits[:, None] >> (np.arange(4, dtype=np.uint64) * np.uint64(16))) & np.uint64(0xFFFF)
    draws = parts.reshape(-1)[:size].reshape(shape)
    keep: Array = draws >= dropout_threshold(p)
    return keep


def dropout(a: Array, keep: Array, p: float) -> Array:
    """Inverted dropout: kept units scaled by 1/(1-p), so inference needs no rescaling."""
    return np.where(keep, a / (1.0 - p), 0.0).astype(a.dtype)


# ---- initialisation ------------------------------------------------------------------------
def init_std(init: str, n_in: int, n_out: int, std: float) -> float:
    """The standard deviation of a layer's weights: N(0, std) (the original), He (ReLU:
    sqrt(2/n_in)) or Xavier/Glorot (tanh, sigmoid: sqrt(2/(n_in + n_out)))."""
    if init == "he":
        return math.sqrt(2.0 / n_in)
    if init == "xavier":
        return math.sqrt(2.0 / (n_in + n_out))
    assert init == "normal", init
    return std
