"""Layers, losses, optimizers, schedules and the recipe step: against finite differences (float64),
against independent plain computations, and (when it is installed) against PyTorch."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from pipeline.nn import fused, layers, losses
from pipeline.nn.general_step import GeneralStep, StepSettings
from pipeline.nn.network import Network
from pipeline.nn.optimizers import OPTIMIZERS, Optimizer, OptimizerSettings
from pipeline.nn.schedules import Schedule

ACTS = list(layers.ACTIVATIONS)


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of scalar f at every element of x (float64)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("name", ACTS)
def test_activation_derivative_matches_finite_differences(name: str) -> None:
    f, f_prime = layers.ACTIVATIONS[name]
    z = np.random.default_rng(0).normal(size=50) * 3
    z = z[np.abs(z) > 1e-3]  # relu has no derivative at 0
    numeric = np.array([(f(np.array(v + 1e-6)) - f(np.array(v - 1e-6))) / 2e-6 for v in z])
    np.testing.assert_allclose(f_prime(f(z)), numeric, rtol=1e-6, atol=1e-9)


def test_loss_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 5)) * 4
    y = np.eye(5)[rng.integers(0, 5, 4)]
    numeric = numeric_grad(lambda: losses.cross_entropy(z, y)[0], z)
    np.testing.assert_allclose(losses.cross_entropy(z, y)[1], numeric, rtol=1e-6, atol=1e-8)
    for name in ACTS:
        f, f_prime = layers.ACTIVATIONS[name]
        numeric = numeric_grad(lambda f=f, f_prime=f_prime: losses.mse(f(z), y, f_prime)[0], z)
        np.testing.assert_allclose(losses.mse(f(z), y, f_prime)[1], numeric, atol=1e-7)


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    z = np.array([[1000.0, 0.0, -1000.0]])
    loss, grad = losses.cross_entropy(z, np.array([[0.0, 1.0, 0.0]]))
    assert loss == pytest.approx(1000.0) and np.all(np.isfinite(grad))
    d = np.empty((1, 3))
    assert fused.cross_entropy_out(z.copy(), np.zeros(3), np.array([[0.0, 1.0, 0.0]]), d, 1.0) == (
        pytest.approx(1000.0)
    )
    np.testing.assert_allclose(d, grad)


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_backprop_matches_finite_differences(activation: str, loss: str) -> None:
    """Network.backprop (the plain equations), two hidden layers, float64."""
    rng = np.random.default_rng(2)
    net = Network.initialize(
        [6, 5, 4, 3], rng=rng, std=0.5, dtype="float64", activation=activation, loss=loss
    )
    x, y = rng.normal(size=(7, 6)), np.eye(3)[rng.integers(0, 3, 7)]
    _, grads_w, grads_b = net.backprop(x, y)
    for param, grad in zip(net.weights + net.biases, grads_w + grads_b, strict=True):
        numeric = numeric_grad(lambda: net.backprop(x, y)[0] / len(x), param)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_fused_kernels_match_the_plain_functions() -> None:
    rng = np.random.default_rng(3)
    z0, b = rng.normal(size=(9, 13)) * 3, rng.normal(size=13)
    keep = layers.keep_mask(12345, 7, z0.shape, 0.3)
    for name, code in fused.ACT_CODE.items():
        f, f_prime = layers.ACTIVATIONS[name]
        z = z0.copy()
        fused.forward_hidden(z, b, code, keep.astype(np.uint8), 1 / 0.7, True)
        expected = layers.dropout(f(z0 + b), keep, 0.3)
        np.testing.assert_allclose(z, expected, rtol=1e-12)
        d0 = rng.normal(size=z.shape)
        d = d0.copy()
        fused.backward_hidden(d, z, code, keep.astype(np.uint8), 1 / 0.7, True)
        np.testing.assert_allclose(d, d0 * keep / 0.7 * f_prime(f(z0 + b)), rtol=1e-9, atol=1e-12)
        y = np.eye(13)[rng.integers(0, 13, 9)]
        z, d = z0.copy(), np.empty_like(z0)
        total = fused.mse_out(z, b, code, y, d, 1 / 9)
        loss, grad = losses.mse(f(z0 + b), y, f_prime)
        assert total == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(d, grad / 9, rtol=1e-9, atol=1e-15)
    out = np.empty(13)
    fused.column_sums(z0, out)
    np.testing.assert_allclose(out, z0.sum(axis=0), rtol=1e-12)


def test_dropout_mask_kernel_equals_the_reference_and_keeps_1_minus_p() -> None:
    keep = np.empty((128, 800), np.uint8)
    start = np.uint64((99 + 5 * layers.GOLDEN) & layers.MASK64)
    fused.draw_keep(keep, start, layers.dropout_threshold(0.3))
    reference = layers.keep_mask(99, 5, keep.shape, 0.3)
    assert np.array_equal(keep.astype(bool), reference)
    assert abs(reference.mean() - 0.7) < 0.005
    odd = np.empty((3, 5), np.uint8)  # 15 units: the last word is partly used
    fused.draw_keep(odd, start, layers.dropout_threshold(0.5))
    assert np.array_equal(odd.astype(bool), layers.keep_mask(99, 5, (3, 5), 0.5))
    assert not np.array_equal(reference, layers.keep_mask(99, 6, keep.shape, 0.3))


def reference_update(name, w, g, state, lr, h: OptimizerSettings, t, decay):
    """The optimizers' published formulas, one element at a time in plain Python."""
    w, g = w.ravel().tolist(), g.ravel().tolist()
    wd = h.weight_decay if decay else 0.0
    for i in range(len(w)):
        gi = g[i]
        if name in ("adam", "adamw"):
            if name == "adamw":
                w[i] -= lr * wd * w[i]
            else:
                gi += wd * w[i]
            m, v = state[0][i], state[1][i]
            m = h.beta1 * m + (1 - h.beta1) * gi
            v = h.beta2 * v + (1 - h.beta2) * gi * gi
            state[0][i], state[1][i] = m, v
            mhat, vhat = m / (1 - h.beta1**t), v / (1 - h.beta2**t)
            w[i] -= lr * mhat / (math.sqrt(vhat) + h.eps)
        else:
            gi += wd * w[i]
            if name == "sgd":
                w[i] -= lr * gi
                continue
            state[0][i] = h.momentum * state[0][i] + gi
            step = gi + h.momentum * state[0][i] if name == "nesterov" else state[0][i]
            w[i] -= lr * step
    return w


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_match_their_formulas(name: str) -> None:
    rng = np.random.default_rng(4)
    h = OptimizerSettings(name, momentum=0.8, beta1=0.85, beta2=0.99, eps=1e-6, weight_decay=0.05)
    params = [rng.normal(size=(3, 4)), rng.normal(size=4)]
    expected = [p.ravel().tolist() for p in params]
    states = [[[0.0] * p.size, [0.0] * p.size] for p in params]
    opt = Optimizer(params, h)
    for t in range(1, 5):
        grads = [rng.normal(size=p.shape) for p in params]
        for k, g in enumerate(grads):
            w = np.array(expected[k]).reshape(g.shape)
            expected[k] = reference_update(name, w, g, states[k], 0.1, h, t, g.ndim == 2)
        opt.step(params, [g.copy() for g in grads], 0.1)
        for p, e in zip(params, expected, strict=True):
            np.testing.assert_allclose(p.ravel(), e, rtol=1e-12, atol=1e-14)
    assert opt.step_count == 4


def test_optimizer_descends_a_quadratic_to_its_minimum() -> None:
    """Gradients from finite differences of f(w) = |A w - c|^2 / 2 drive every optimizer
    to the least-squares solution."""
    rng = np.random.default_rng(5)
    a, c = rng.normal(size=(6, 3)), rng.normal(size=6)
    solution = np.linalg.lstsq(a, c, rcond=None)[0]
    for name, lr in [("sgd", 0.05), ("momentum", 0.02), ("nesterov", 0.02), ("adam", 0.05)]:
        w = np.zeros((1, 3))
        opt = Optimizer([w], OptimizerSettings(name))
        for _ in range(3000):
            g = numeric_grad(lambda w=w: float(np.sum((a @ w[0] - c) ** 2) / 2), w)
            opt.step([w], [g], lr)
        np.testing.assert_allclose(w[0], solution, atol=1e-3)


def test_schedules() -> None:
    cos = Schedule("cosine", 0.1, total=100, per_epoch=10, warmup=10)
    assert [cos.lr_at(s) for s in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert cos.lr_at(10) == pytest.approx(0.1) and cos.lr_at(55) == pytest.approx(0.05)
    assert 0 < cos.lr_at(99) < 1e-3
    step = Schedule("step", 0.1, total=100, per_epoch=10, step_epochs=3, gamma=0.5)
    assert [step.lr_at(s) for s in (0, 29, 30, 60)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert Schedule("constant", 0.3, total=5, per_epoch=5).lr_at(4) == 0.3


def reference_steps(net: Network, spec: StepSettings, key: int, batches, lrs):
    """The recipe's steps written plainly: masks from layers.keep_mask, numpy equations,
    the optimizer formulas of `reference_update`. Returns weights + biases."""
    f, f_prime = layers.ACTIVATIONS[spec.activation]
    ws = [w.copy() for w in net.weights]
    bs = [b.copy() for b in net.biases]
    states = [[[0.0] * p.size, [0.0] * p.size] for p in ws + bs]
    counter = 0

    def mask(shape, p):
        nonlocal counter
        keep = layers.keep_mask(key, counter, shape, p)
        counter += layers.words_for(math.prod(shape))
        return keep

    for t, ((x, y), lr) in enumerate(zip(batches, lrs, strict=True), start=1):
        if spec.input_dropout:
            x = layers.dropout(x, mask(x.shape, spec.input_dropout), spec.input_dropout)
        acts, keeps = [x], [None]
        for w, b in zip(ws[:-1], bs[:-1], strict=True):
            keep = mask((len(x), w.shape[1]), spec.dropout) if spec.dropout else None
            h = f(acts[-1] @ w + b)
            acts.append(layers.dropout(h, keep, spec.dropout) if keep is not None else h)
            keeps.append(keep)
        z = acts[-1] @ ws[-1] + bs[-1]
        if spec.loss == "cross_entropy":
            delta = losses.cross_entropy(z, y)[1] / len(x)
        else:
            delta = losses.mse(f(z), y, f_prime)[1] / len(x)
        grads_w, grads_b = [None] * len(ws), [None] * len(ws)
        for layer in reversed(range(len(ws))):
            grads_w[layer], grads_b[layer] = acts[layer].T @ delta, delta.sum(axis=0)
            if layer:
                delta = delta @ ws[layer].T
                keep, rate = keeps[layer], spec.dropout
                h = acts[layer] * (1 - rate) if keep is not None else acts[layer]
                delta = delta * f_prime(h) * (keep / (1 - rate) if keep is not None else 1)
        for k, (param, g) in enumerate(zip(ws + bs, grads_w + grads_b, strict=True)):
            new = reference_update(
                spec.optimizer.name, param, g, states[k], lr, spec.optimizer, t, k < len(ws)
            )
            param[...] = np.array(new).reshape(param.shape)
        if spec.max_norm:
            for w in ws:
                norms = np.sqrt((w**2).sum(axis=0))
                w *= np.where(norms > spec.max_norm, spec.max_norm / norms, 1.0)
    return ws + bs


@pytest.mark.parametrize(
    "spec",
    [
        StepSettings(
            "relu", "cross_entropy", 0.3, 0.2, 0.0, OptimizerSettings("momentum", weight_decay=1e-3)
        ),
        StepSettings("tanh", "cross_entropy", 0.0, 0.0, 0.5, OptimizerSettings("nesterov")),
        StepSettings(
            "sigmoid", "mse", 0.25, 0.0, 0.0, OptimizerSettings("adam", weight_decay=1e-2)
        ),
        StepSettings("relu", "mse", 0.0, 0.1, 1.0, OptimizerSettings("adamw", weight_decay=1e-2)),
        StepSettings("relu", "cross_entropy", 0.5, 0.0, 0.0, OptimizerSettings("sgd")),
    ],
    ids=lambda s: f"{s.activation}-{s.loss}-{s.optimizer.name}",
)
def test_recipe_step_matches_the_plain_reference(spec: StepSettings) -> None:
    rng = np.random.default_rng(6)
    net = Network.initialize(
        [20, 12, 9, 4], rng=rng, std=0.3, dtype="float64", init="he",
        activation=spec.activation, loss=spec.loss,
    )  # fmt: skip
    batches = [(rng.random((8, 20)), np.eye(4)[rng.integers(0, 4, 8)]) for _ in range(3)]
    batches.append((rng.random((5, 20)), np.eye(4)[rng.integers(0, 4, 5)]))  # a short last batch
    batches.append((rng.random((1, 20)), np.eye(4)[rng.integers(0, 4, 1)]))  # one half empty
    lrs = [0.1, 0.08, 0.05, 0.02, 0.01]
    expected = reference_steps(net, spec, 777, batches, lrs)
    step = GeneralStep(net, spec, batch_size=8, dropout_key=777)
    for (x, y), lr in zip(batches, lrs, strict=True):
        step.step(x, y, lr)
    for got, want in zip(net.weights + net.biases, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_recipe_step_bits_do_not_depend_on_the_thread_count() -> None:
    """The step's two halves on a worker thread or one after the other: the same bits (the
    split fixes the arithmetic, not the machine's cores), with dropout and max-norm."""
    from concurrent.futures import ThreadPoolExecutor

    spec = StepSettings(
        "relu", "cross_entropy", 0.3, 0.1, 0.8, OptimizerSettings("nesterov", weight_decay=1e-3)
    )
    steps, losses = [], []
    for worker in (ThreadPoolExecutor(max_workers=1), None):
        rng = np.random.default_rng(11)
        net = Network.initialize([50, 33, 17, 5], rng=rng, std=0.1, dtype="float32", init="he",
                                 activation="relu", loss="cross_entropy")  # fmt: skip
        step = GeneralStep(net, spec, batch_size=9, dropout_key=5)
        step.worker = worker
        x = rng.random((37, 50), dtype=np.float32)  # 4 batches of 9, then 1 row
        y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 37)]
        losses.append(step.steps(x, y, [0.1, 0.09, 0.08, 0.07, 0.06], 9, 0.0))
        steps.append(step)
        if worker is not None:
            worker.shutdown()
    threaded, serial = steps
    assert losses[0] == losses[1] and threaded.dropout_counter == serial.dropout_counter
    for a, b in zip(threaded.network.weights + threaded.network.biases,
                    serial.network.weights + serial.network.biases, strict=True):  # fmt: skip
        assert a.tobytes() == b.tobytes()
    assert not np.array_equal(serial.network.weights[0], Network.initialize(
        [50, 33, 17, 5], rng=np.random.default_rng(11), std=0.1, dtype="float32", init="he",
        activation="relu", loss="cross_entropy").weights[0])  # fmt: skip  # it did train


def test_recipe_step_allocates_no_batch_sized_arrays() -> None:
    """After the first step, steps reuse the buffers: tracemalloc sees no batch-sized block."""
    import tracemalloc

    rng = np.random.default_rng(7)
    net = Network.initialize([784, 256, 10], rng=rng, std=0.01, dtype="float32", init="he",
                             activation="relu", loss="cross_entropy")  # fmt: skip
    settings = StepSettings(dropout=0.2, input_dropout=0.1, optimizer=OptimizerSettings("adam"))
    step = GeneralStep(net, settings, batch_size=64, dropout_key=1)
    x = rng.random((64, 784), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
    step.step(x, y, 0.01)  # compiles the kernels
    tracemalloc.start()
    for _ in range(3):
        step.step(x, y, 0.01)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 256 * 4 / 4  # a quarter of one (64, 256) float32 activation


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="PyTorch is not installed (optional: `pip install torch==2.13.0` to run this check)",
)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_recipe_step_matches_pytorch(name: str) -> None:
    import torch

    rng = np.random.default_rng(8)
    net = Network.initialize([30, 16, 16, 10], rng=rng, std=0.1, dtype="float64", init="he",
                             activation="relu", loss="cross_entropy")  # fmt: skip
    layers_t = []
    for w, b in zip(net.weights, net.biases, strict=True):
        lin = torch.nn.Linear(w.shape[0], w.shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers_t += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers_t[:-1])
    decay = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
    plain = [m.bias for m in model if isinstance(m, torch.nn.Linear)]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": plain, "weight_decay": 0.0}]
    opt_t = {
        "sgd": lambda: torch.optim.SGD(groups, lr=0.1),
        "momentum": lambda: torch.optim.SGD(groups, lr=0.1, momentum=0.9),
        "nesterov": lambda: torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True),
        "adam": lambda: torch.optim.Adam(groups, lr=0.01),
        "adamw": lambda: torch.optim.AdamW(groups, lr=0.01),
    }[name]()
    lr = 0.1 if name in ("sgd", "momentum", "nesterov") else 0.01
    settings = StepSettings(optimizer=OptimizerSettings(name, weight_decay=0.01))
    step = GeneralStep(net, settings, batch_size=12, dropout_key=0)
    for _ in range(4):
        x, labels = rng.random((12, 30)), rng.integers(0, 10, 12)
        step.step(x, np.eye(10)[labels], lr)
        opt_t.zero_grad()
        torch.nn.functional.cross_entropy(
            model(torch.from_numpy(x)), torch.from_numpy(labels)
        ).backward()
        opt_t.step()
    for k, lin in enumerate(m for m in model if isinstance(m, torch.nn.Linear)):
        np.testing.assert_allclose(
            net.weights[k], lin.weight.detach().numpy().T, rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(net.biases[k], lin.bias.detach().numpy(), rtol=1e-9, atol=1e-12)
