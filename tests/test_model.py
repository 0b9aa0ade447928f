"""The network's math: finite differences, an independent scalar computation, the fast kernel."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pipeline.communicator import LOCAL
from pipeline.config import TrainConfig
from pipeline.errors import ArrayError
from pipeline.nn.network import Network, sigmoid
from pipeline.nn.sparse_step import SparseStep
from pipeline.training.step import make_step


def make(sizes: list[int], seed: int = 0, dtype: str = "float64", std: float = 0.5) -> Network:
    return Network.initialize(sizes, rng=np.random.default_rng(seed), std=std, dtype=dtype)


def batch(rng: np.random.Generator, n: int, n_in: int, n_out: int, dtype: str = "float64"):
    x = rng.random((n, n_in))
    x[x < 0.5] = 0.0  # sparse like MNIST: exercises the kernel's skipped rows
    y = np.eye(n_out)[rng.integers(0, n_out, n)]
    return x.astype(dtype), y.astype(dtype)


def steps(
    net: Network, x: np.ndarray, y: np.ndarray, lr: float, batch_size: int, loss_sum: float = 0.0
) -> float:
    """SGD steps through the step the trainer takes for the original recipe's arithmetic: the
    compiled kernel for one hidden layer, the general step for deeper networks."""
    step = make_step(TrainConfig(batch_size=batch_size), net, LOCAL)
    return step.steps(x, y, [lr] * -(-len(x) // batch_size), batch_size, loss_sum)


def total_loss(net: Network, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((net.feedforward(x)[-1] - y) ** 2) / 2)


@pytest.mark.parametrize("sizes", [[6, 5, 3], [7, 4, 5, 2]])
def test_backprop_matches_finite_differences(sizes: list[int]) -> None:
    rng = np.random.default_rng(1)
    net = make(sizes)
    x, y = batch(rng, 4, sizes[0], sizes[-1])
    _, grads_w, grads_b = net.backprop(x, y)
    eps = 1e-6
    for params, grads in ((net.weights, grads_w), (net.biases, grads_b)):
        for param, grad in zip(params, grads, strict=True):
            numeric = np.zeros_like(param)
            for index in np.ndindex(param.shape):
                saved = param[index]
                param[index] = saved + eps
                up = total_loss(net, x, y)
                param[index] = saved - eps
                down = total_loss(net, x, y)
                param[index] = saved
                numeric[index] = (up - down) / (2 * eps) / len(x)  # gradients are batch means
            np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)


def scalar_step(w1, b1, w2, b2, x, y, lr):
    """The recipe's step written with Python scalars only: an independent hand computation."""
    n_in, n_hid, n_out, size = len(w1), len(b1), len(b2), len(x)
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    a1 = [
        [sig(b1[j] + sum(x[s][i] * w1[i][j] for i in range(n_in))) for j in range(n_hid)]
        for s in range(size)
    ]
    a2 = [
        [sig(b2[k] + sum(a1[s][j] * w2[j][k] for j in range(n_hid))) for k in range(n_out)]
        for s in range(size)
    ]
    loss = sum((a2[s][k] - y[s][k]) ** 2 for s in range(size) for k in range(n_out)) / 2
    d2 = [
        [(a2[s][k] - y[s][k]) * a2[s][k] * (1 - a2[s][k]) for k in range(n_out)]
        for s in range(size)
    ]
    d1 = [
        [
            sum(d2[s][k] * w2[j][k] for k in range(n_out)) * a1[s][j] * (1 - a1[s][j])
            for j in range(n_hid)
        ]
        for s in range(size)
    ]
    new_w2 = [
        [w2[j][k] - lr * sum(a1[s][j] * d2[s][k] for s in range(size)) / size for k in range(n_out)]
        for j in range(n_hid)
    ]
    new_b2 = [b2[k] - lr * sum(d2[s][k] for s in range(size)) / size for k in range(n_out)]
    new_w1 = [
        [w1[i][j] - lr * sum(x[s][i] * d1[s][j] for s in range(size)) / size for j in range(n_hid)]
        for i in range(n_in)
    ]
    new_b1 = [b1[j] - lr * sum(d1[s][j] for s in range(size)) / size for j in range(n_hid)]
    return loss, new_w1, new_b1, new_w2, new_b2


@pytest.mark.parametrize("step", ["kernel", "reference"])
def test_three_steps_match_a_scalar_hand_computation(step: str) -> None:
    rng = np.random.default_rng(2)
    net = make([5, 4, 3], seed=3)
    params = [p.tolist() for p in (net.weights[0], net.biases[0], net.weights[1], net.biases[1])]
    for size in (3, 3, 2):  # the last batch is partial: averaged over its real size
        x, y = batch(rng, size, 5, 3)
        w1, b1, w2, b2 = params
        loss_hand, *params = scalar_step(w1, b1, w2, b2, x.tolist(), y.tolist(), 0.1)
        if step == "kernel":
            loss = steps(net, x, y, 0.1, len(x))
        else:
            loss, gw, gb = net.backprop(x, y)
            net.update(gw, gb, 0.1)
        assert loss == pytest.approx(loss_hand, rel=1e-12)
        for got, want in zip(
            (net.weights[0], net.biases[0], net.weights[1], net.biases[1]), params, strict=True
        ):
            np.testing.assert_allclose(got, np.array(want), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [1, 3, 8])
def test_kernel_equals_plain_equations(dtype: str, size: int) -> None:
    rng = np.random.default_rng(4)
    fast, plain = (
        make([784, 50, 10], seed=5, dtype=dtype, std=0.01),
        make([784, 50, 10], seed=5, dtype=dtype, std=0.01),
    )
    for _ in range(30):
        x, y = batch(rng, size, 784, 10, dtype)
        loss_fast = steps(fast, x, y, 0.1, len(x))
        loss_plain, gw, gb = plain.backprop(x, y)
        plain.update(gw, gb, 0.1)
        assert loss_fast == pytest.approx(loss_plain, rel=1e-5 if dtype == "float32" else 1e-12)
    tol = 1e-6 if dtype == "float32" else 1e-14
    for a, b in zip(fast.weights + fast.biases, plain.weights + plain.biases, strict=True):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, rtol=0, atol=tol)


def test_kernel_leaves_weights_of_all_zero_pixels_alone() -> None:
    net = make([784, 20, 10], std=0.01, dtype="float32")
    before = net.weights[0].copy()
    x = np.zeros((3, 784), np.float32)
    x[:, 100:110] = 0.5
    steps(net, x, np.eye(10, dtype=np.float32)[[1, 2, 3]], 0.1, 3)
    changed = np.flatnonzero((net.weights[0] != before).any(axis=1))
    assert set(changed.tolist()) <= set(range(100, 110)) and len(changed) > 0


def test_kernel_is_deterministic() -> None:
    rng = np.random.default_rng(6)
    batches = [batch(rng, 3, 784, 10, "float32") for _ in range(50)]
    results = []
    for _ in range(2):
        net = make([784, 64, 10], seed=9, dtype="float32", std=0.01)
        for x, y in batches:
            steps(net, x, y, 0.1, len(x))
        results.append(net.weights + net.biases)
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b)


def test_initialization_matches_the_original_draw_order() -> None:
    net = make([4, 3, 2], seed=11, std=0.01)
    rng = np.random.default_rng(11)
    expected = [
        rng.standard_normal((4, 3)) * 0.01,
        rng.standard_normal(3) * 0.01,
        rng.standard_normal((3, 2)) * 0.01,
        rng.standard_normal(2) * 0.01,
    ]
    got = [net.weights[0], net.biases[0], net.weights[1], net.biases[1]]
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, b)


def test_sigmoid_saturates_without_warnings() -> None:
    assert sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0.0, 0.5, 1.0]


def test_predict_is_argmax_of_output() -> None:
    net = make([6, 5, 3])
    x, _ = batch(np.random.default_rng(8), 10, 6, 3)
    assert np.array_equal(net.predict(x), net.feedforward(x)[-1].argmax(axis=1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_many_steps_in_one_call_equal_one_call_per_batch(dtype: str) -> None:
    """Many batches in one call (the kernel's block path) are bit-identical to one call per
    batch."""
    rng = np.random.default_rng(12)
    x, y = batch(rng, 3 * 40 + 2, 784, 10, dtype)  # the last batch is partial
    blocked = make([784, 30, 10], seed=13, dtype=dtype, std=0.01)
    stepped = make([784, 30, 10], seed=13, dtype=dtype, std=0.01)
    total = steps(blocked, x, y, 0.1, 3)
    running = 0.0  # the step losses added one at a time, in order
    for i in range(0, len(x), 3):
        running += steps(stepped, x[i : i + 3], y[i : i + 3], 0.1, 3)
    assert total == running  # exactly: the kernel adds step by step too
    for a, b in zip(
        blocked.weights + blocked.biases, stepped.weights + stepped.biases, strict=True
    ):
        assert np.array_equal(a, b)


def test_deeper_networks_train_through_the_general_step() -> None:
    rng = np.random.default_rng(14)
    net = make([20, 8, 6, 4], seed=15, std=0.5)
    x, y = batch(rng, 9, 20, 4)
    before = total_loss(net, x, y)
    for _ in range(50):
        steps(net, x, y, 0.5, 3)
    assert total_loss(net, x, y) < before


@pytest.mark.parametrize("sizes", [[784, 30, 10], [784, 12, 8, 10]])
def test_a_running_loss_sum_does_not_depend_on_how_the_steps_are_split(sizes: list[int]) -> None:
    """What makes a resumed run record the same train_loss: the sum threaded through calls
    that start at different batches equals the sum of one call, bit for bit."""
    rng = np.random.default_rng(16)
    x, y = batch(rng, 3 * 50 + 1, 784, 10, "float32")
    totals = []
    for cuts in ([0, len(x)], [0, 3, 60, 63, len(x)], [0, 3 * 17, 3 * 49, len(x)]):
        net = make(sizes, seed=17, dtype="float32", std=0.01)
        total = 0.0
        for a, b in itertools.pairwise(cuts):
            total = steps(net, x[a:b], y[a:b], 0.1, 3, loss_sum=total)
        totals.append(total)
    assert totals[0] == totals[1] == totals[2]


def sparse_steps(
    w1: Any,
    b1: Any,
    w2: Any,
    b2: Any,
    x: Any,
    y: Any,
    lr: Any = 0.1,
    batch: Any = 3,
    loss_sum: Any = 0.0,
) -> float:
    """The compiled kernel's guard (`SparseStep`), handed the arrays and numbers as they are."""
    rates = -(-len(x) // batch) if isinstance(batch, int) and batch > 0 else 1
    return SparseStep(Network([w1, w2], [b1, b2])).steps(x, y, [lr] * rates, batch, loss_sum)


def _recipe_arrays() -> dict[str, Any]:
    net = make([12, 5, 3], seed=18, dtype="float32", std=0.1)
    x, y = batch(np.random.default_rng(19), 7, 12, 3, "float32")
    (w1, w2), (b1, b2) = net.weights, net.biases
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "x": x, "y": y}


def _fortran(a: np.ndarray) -> np.ndarray:
    return np.asfortranarray(a)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    ("param", "change", "needle"),
    [
        ("b2", lambda a: a.astype(np.float64), "dtype float64, need w1's float32"),
        ("b1", lambda a: a.astype(np.float16), "dtype float16, need w1's float32 or float64"),
        ("x", lambda a: a.astype(np.int64), "dtype int64"),
        ("y", lambda a: a.tolist(), "not an array"),
        ("w1", _fortran, "C-contiguous"),
        ("x", lambda a: np.repeat(a, 2, axis=1)[:, ::2], "C-contiguous"),
        ("w2", _read_only, "writable"),
        ("x", lambda a: a[:, :-1].copy(), "does not fit"),  # features: fewer than w1's rows
        ("x", lambda a: np.hstack([a, a]), "does not fit"),  # more: reads past w1
        ("y", lambda a: a[:, :2].copy(), "does not fit"),  # fewer classes than w2's columns
        ("y", lambda a: np.vstack([a, a]), "does not fit"),  # rows unlike x's
        ("b1", lambda a: a[:-1].copy(), "does not fit"),
        ("b2", lambda a: np.append(a, a), "does not fit"),
        ("w2", lambda a: a[:-1].copy(), "does not fit"),  # hidden units unlike w1's
        ("x", lambda a: a[None], "3-D, need 2-D"),
        ("b2", lambda a: a[None], "2-D, need 1-D"),
    ],
)
def test_kernel_refuses_arrays_that_do_not_fit(
    param: str, change: Callable[[np.ndarray], np.ndarray], needle: str
) -> None:
    """The compiled kernel checks no bounds: its Python boundary names the argument at fault,
    before anything is read or written."""
    arrays = _recipe_arrays()
    before = {k: np.array(v, copy=True) for k, v in arrays.items()}
    arrays[param] = change(arrays[param])
    with pytest.raises(ArrayError, match=needle) as caught:
        sparse_steps(**arrays, lr=0.1, batch=3)
    assert caught.value.param == param
    for name in ("w1", "b1", "w2", "b2"):
        if name != param:
            assert np.array_equal(arrays[name], before[name])


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("batch_size", 0),
        ("batch_size", -3),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("lrs", math.nan),
        ("lrs", math.inf),
        ("loss_sum", math.nan),
    ],
)
def test_kernel_refuses_bad_numbers(param: str, value: object) -> None:
    args: dict[str, object] = {**_recipe_arrays(), "lr": 0.1, "batch": 3, "loss_sum": 0.0}
    args[{"batch_size": "batch", "lrs": "lr"}.get(param, param)] = value
    with pytest.raises(ArrayError) as caught:
        sparse_steps(**args)
    assert caught.value.param == param


def test_kernel_accepts_a_batch_larger_than_its_rows() -> None:
    """Its work arrays are sized by the rows it is given, not by the batch it is told."""
    arrays, same = _recipe_arrays(), _recipe_arrays()
    total = sparse_steps(**arrays, lr=0.1, batch=10**12)
    assert total == sparse_steps(**same, lr=0.1, batch=len(same["x"]))
    assert np.array_equal(arrays["w1"], same["w1"])
