"""Benchmark the recipes: speed against PyTorch, accuracy of the presets, and a profile.

  speed (default)  per-epoch training time of a recipe (default: the `fast` preset; also the
                   issue's reference 784-800-10 ReLU, dropout 0.2, momentum 0.9, batch 128,
                   cosine) through pipeline.nn.general_step, against PyTorch (CPU) on the same
                   recipe, batch, data and machine; epochs alternate between the two so a change in
                   the machine's load hits both; prints the medians and the ratio.
  --accuracy P     trains preset P through the pipeline (`train.train` on HDF5 shards) once per
                   --seeds, and prints each test accuracy and training seconds.
  --profile        where a step's time goes: BLAS matmuls, fused elementwise kernels, the
                   optimizer, the dropout draws and the loader, at --batch sizes.
  --contended      the step's two halves on two threads (one BLAS thread each, as trained)
                   against the same step on BLAS's own two threads, alone and then beside a
                   busy neighbour (another process multiplying float32 matrices on two BLAS
                   threads, as a second training job would); epochs alternate.

    python scripts/bench_recipes.py [--epochs 3] [--recipe fast|reference]
    python scripts/bench_recipes.py --accuracy fast --seeds 0 1 2 [--source idx:DIR]
    python scripts/bench_recipes.py --profile [--batch 128 1024]
    python scripts/bench_recipes.py --contended [--epochs 2]
Wrap timings in `flock /work/bench.lock` on a shared machine and note `uptime` beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import TrainConfig
from pipeline.data import prepare, sources
from pipeline.data.loader import Loader
from pipeline.nn import fused
from pipeline.nn.general_step import GeneralStep, StepSettings
from pipeline.nn.network import Network
from pipeline.nn.optimizers import OptimizerSettings
from pipeline.nn.schedules import Schedule
from pipeline.training import presets
from pipeline.training import trainer as train

REFERENCE = presets.resolve(
    "fast", hidden=(800,), dropout=0.2, input_dropout=0.0, lr=0.05, batch_size=128, epochs=20
)  # the PyTorch reference recipe


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return "BLAS: (pip install threadpoolctl to show which and how many threads)"
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return "; ".join(f"BLAS: {i['internal_api']} {i.get('version')} {i['num_threads']} threads"
                     for i in blas)  # fmt: skip


def in_memory(source: str | None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    raw = sources.load(source).splits[split]
    x = raw.images.astype(np.float32) / 255  # (N, 784)
    y = np.eye(10, dtype=np.float32)[raw.labels]  # (N, 10) one-hot
    return x, y


def ours(config: TrainConfig, x: np.ndarray, y: np.ndarray) -> tuple[GeneralStep, Schedule]:
    rng = np.random.default_rng(config.seed)
    net = Network.initialize([784, *config.hidden, 10], rng=rng, std=config.init_std,
                             dtype="float32", init=config.init, activation=config.activation,
                             loss=config.loss)  # fmt: skip
    settings = OptimizerSettings(
        config.optimizer, config.momentum, weight_decay=config.weight_decay
    )
    spec = StepSettings(config.activation, config.loss, config.dropout, config.input_dropout,
                config.max_norm, settings)  # fmt: skip
    per_epoch = -(-len(x) // config.batch_size)
    schedule = Schedule(config.schedule, config.lr, config.epochs * per_epoch, per_epoch)
    return GeneralStep(net, spec, batch_size=config.batch_size, dropout_key=1), schedule


def our_epoch(
    step: GeneralStep, schedule: Schedule, x: np.ndarray, y: np.ndarray, epoch: int, batch: int
) -> float:
    order = np.random.default_rng(epoch).permutation(len(x))
    xs, ys = x[order], y[order]  # one gather per epoch, outside the timed loop for both
    start = time.perf_counter()
    base = epoch * schedule.per_epoch
    lrs = [schedule.lr_at(base + k) for k in range(schedule.per_epoch)]
    step.steps(xs, ys, lrs, batch, 0.0)  # as the trainer calls it: many batches a call
    return time.perf_counter() - start


def torch_model(config: TrainConfig):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(config.seed)
    mods: list[Any] = [torch.nn.Dropout(config.input_dropout)] if config.input_dropout else []
    sizes = [784, *config.hidden, 10]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        mods.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods += [torch.nn.ReLU(), torch.nn.Dropout(config.dropout)]
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    return model, opt


def torch_epoch(model, opt, schedule: Schedule, x, y, epoch: int, batch: int) -> float:  # type: ignore[no-untyped-def]
    import torch

    order = np.random.default_rng(epoch).permutation(len(x))
    xs = torch.from_numpy(x[order])
    labels = torch.from_numpy(y[order].argmax(axis=1))
    model.train()
    start = time.perf_counter()
    base = epoch * schedule.per_epoch
    for k in range(schedule.per_epoch):
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(base + k)
        rows = slice(k * batch, (k + 1) * batch)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xs[rows]), labels[rows]).backward()  # type: ignore[no-untyped-call,unused-ignore]
        opt.step()
    return time.perf_counter() - start


def speed(config: TrainConfig, epochs: int, source: str | None) -> None:
    import torch

    x, y = in_memory(source)
    step, schedule = ours(config, x, y)
    model, opt = torch_model(config)
    step.step(x[:8], y[:8], 0.0)  # compile (or load) the kernels before timing
    print(f"{blas_info()}; torch {torch.__version__} {torch.get_num_threads()} threads; "
          f"cores {os.cpu_count()}; load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    mine, theirs = [], []
    for epoch in range(epochs):
        mine.append(our_epoch(step, schedule, x, y, epoch, config.batch_size))
        theirs.append(torch_epoch(model, opt, schedule, x, y, epoch, config.batch_size))
        print(f"  epoch {epoch + 1}: numpy {mine[-1]:.3f} s, torch {theirs[-1]:.3f} s, "
              f"ratio {mine[-1] / theirs[-1]:.2f}", flush=True)  # fmt: skip
    ratio = float(np.median(mine) / np.median(theirs))
    print(f"{'recipe':<44} {'numpy s/epoch':>14} {'torch s/epoch':>14} {'ratio':>7}")
    print(f"{describe(config):<44} {np.median(mine):14.3f} {np.median(theirs):14.3f} "
          f"{ratio:7.2f}   (goal <= 0.80; load now {os.getloadavg()[0]:.2f})")  # fmt: skip


def describe(c: TrainConfig) -> str:
    sizes = "-".join(map(str, [784, *c.hidden, 10]))
    return f"{sizes} {c.activation} do{c.dropout}/{c.input_dropout} {c.optimizer} b{c.batch_size}"


NEIGHBOUR = """
import time, numpy as np
a, b = np.ones((256, 784), np.float32), np.ones((784, 512), np.float32)
while True:
    a @ b
"""


def contended(config: TrainConfig, epochs: int, source: str | None) -> None:
    x, y = in_memory(source)
    split, _ = ours(config, x, y)
    blas, schedule = ours(config, x, y)
    if split.worker is None:
        print("one core: the step's halves run in turn; nothing to compare")
        return
    blas.worker = None  # halves in turn on this thread, each product on BLAS's own threads
    split.step(x[:8], y[:8], 0.0)  # compile (or load) the kernels before timing
    print(f"{blas_info()}; cores {os.cpu_count()}; {describe(config)}", flush=True)
    rows = []
    for neighbour in (False, True):
        busy = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if neighbour else None
        try:
            threads, own = [], []
            for epoch in range(epochs):
                threads.append(our_epoch(split, schedule, x, y, epoch, config.batch_size))
                own.append(our_epoch(blas, schedule, x, y, epoch, config.batch_size))
            load = os.getloadavg()[0]
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        rows.append(("beside a busy neighbour" if neighbour else "alone", threads, own, load))
    print(f"{'':<24} {'2 threads s/epoch':>18} {'BLAS threads s/epoch':>21} {'ratio':>7}")
    for name, threads, own, load in rows:
        a, b = float(np.median(threads)), float(np.median(own))
        print(f"{name:<24} {a:18.3f} {b:21.3f} {a / b:7.2f}   (load {load:.2f})")


def accuracy(
    preset: str, seeds: list[int], source: str | None, epochs: int | None, hidden: list[int] | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = prepare.prepare(Path(tmp) / "shards", sources.load(source)).manifest
        print(f"{manifest.name}: preset {preset}; load {os.getloadavg()[0]:.2f}", flush=True)
        for seed in seeds:
            config = presets.resolve(preset, seed=seed, epochs=epochs, hidden=hidden)
            result = train.train(manifest.directory, Path(tmp) / f"run{seed}", config)
            seconds = sum(r["seconds"] for r in result.history)
            curve = " ".join(f"{r['test_accuracy']:.4f}" for r in result.history)
            print(f"seed {seed}: test accuracy {result.history[-1]['test_accuracy']:.2%} "
                  f"after {len(result.history)} epochs, {seconds:.1f} s of training "
                  f"(load {os.getloadavg()[0]:.2f}); curve {curve}", flush=True)  # fmt: skip


def profile(batches: list[int], steps: int) -> None:
    """Time every call of the step's parts by wrapping them (the wrappers cost ~1 us each).
    The step's two threads both add to a part's time: the parts sum to up to twice the wall
    time, and what is left of the wall time ("python + other") may come out negative."""
    spent: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return result

        return wrapper

    config = presets.resolve("fast")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = prepare.prepare(Path(tmp) / "shards", sources.load(None)).manifest
        for batch in batches:
            cfg = dataclasses.replace(config, batch_size=batch)
            loader = Loader(manifest, "train", batch_size=batch, shuffle=True, seed=0)
            x0, y0 = next(iter(loader.epoch(0)))
            step, _ = ours(cfg, x0, y0)
            step.step(x0, y0, 0.01)
            spent.clear()
            real = {n: getattr(fused, n) for n in dir(fused) if callable(getattr(fused, n))}
            matmul = np.matmul
            setattr(np, "matmul", timed("BLAS matmul", matmul))  # noqa: B010
            kinds = {"sgd_update": "optimizer", "adam_update": "optimizer",
                     "draw_keep": "dropout draws", "max_norm": "max-norm"}  # fmt: skip
            for name, fn in real.items():
                kind = kinds.get(name, "fused elementwise")
                setattr(fused, name, timed(kind, fn))
            start = time.perf_counter()
            done = 0
            load_start = time.perf_counter()
            for x, y in loader.epoch(0):
                spent["loader"] = spent.get("loader", 0.0) + time.perf_counter() - load_start
                step.step(x, y, 0.01)
                done += 1
                if done == steps:
                    break
                load_start = time.perf_counter()
            total = time.perf_counter() - start
            for name, fn in real.items():
                setattr(fused, name, fn)
            setattr(np, "matmul", matmul)  # noqa: B010
            print(f"batch {batch}: {done} steps, {total / done * 1e3:.2f} ms a step "
                  f"({total / done / batch * 1e6:.1f} us a sample); load "
                  f"{os.getloadavg()[0]:.2f}")  # fmt: skip
            for name, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
                print(f"  {name:<20} {sec / done * 1e3:8.3f} ms  {sec / total:6.1%}")
            rest = total - sum(spent.values())
            print(f"  {'python + other':<20} {rest / done * 1e3:8.3f} ms  {rest / total:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--recipe", choices=["fast", "reference", "both"], default="both")
    parser.add_argument("--accuracy", metavar="PRESET", choices=list(presets.PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--source", default=None, help="'embedded' MNIST or 'idx:DIR'")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="override")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--contended", action="store_true")
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if args.accuracy:
        accuracy(args.accuracy, args.seeds, args.source, args.epochs, args.hidden)
    elif args.profile:
        profile(args.batch, args.steps)
    elif args.contended:
        contended(presets.resolve("fast"), args.epochs or 2, args.source)
    else:
        chosen = {"fast": [presets.resolve("fast")], "reference": [REFERENCE]}
        chosen["both"] = chosen["fast"] + chosen["reference"]
        for config in chosen[args.recipe]:
            speed(config, args.epochs or 3, args.source)


if __name__ == "__main__":
    main()
