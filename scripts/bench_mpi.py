"""Benchmark data-parallel training over MPI on this machine, and the cost model it implies.

In one run, side by side (each figure from its own `mpiexec` or plain process, started here):
  1. the time of one in-place `Allreduce` (SUM) of a network's parameters as one flat float32
     and float64 buffer, at 2 and 4 ranks over loopback (4 oversubscribes the 2 cores);
  2. training samples/s of a numpy MLP step (forward + backward + update: ReLU, softmax
     cross-entropy, SGD with momentum, float32, gradients in one flat buffer) at global batch
     128 and 1024: 1 process with 1 and with 2 BLAS threads, and 2 ranks with 1 thread each
     splitting every global batch and summing gradients with one Allreduce per step;
  3. equivalence on the real MNIST: the pipeline's own `train` for --equiv-steps steps of
     the same global batch, 2 ranks against 1 process, float64 and float32: the largest
     absolute weight difference and both test accuracies;
  4. the README's cost model, from (1) and (2): the smallest global batch at which the ring
     allreduce stays under 10% of a step, for 2, 8 and 32 machines at 10, 25 and 100 Gb/s.
Needs the `mpi` extra (`pip install -e '.[mpi]'`).

    flock /work/bench.lock python scripts/bench_mpi.py [--steps 40] [--repeats 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NETS = {"784-500-10": [784, 500, 10], "784-800-800-10": [784, 800, 800, 10]}
LATENCY_S = 30e-6  # assumed per-message latency of a datacenter TCP network (the ring sends 2(N-1))
BENCH = Path(__file__).resolve()


def n_params(sizes: list[int]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


# --- worker side (run under mpiexec or alone; prints one JSON line on rank 0) ---------------


def world() -> Any:
    """MPI.COMM_WORLD when launched with several ranks, else None (mpi4py not imported)."""
    from pipeline import communicator

    return communicator.connect("auto") if communicator.launched_by_mpi() else None


def worker_allreduce(repeats: int) -> dict[str, float]:
    from pipeline.communicator import MPIComm

    comm = MPIComm()
    out: dict[str, float] = {}
    for net, sizes in NETS.items():
        for dtype in ("float32", "float64"):
            buf = np.ones(n_params(sizes), dtype=dtype)
            times = np.empty(1)
            samples = []
            for i in range(repeats + 10):
                comm.barrier()
                start = time.perf_counter()
                comm.allreduce_sum(buf)
                times[0] = time.perf_counter() - start
                comm._comm.Allreduce(comm._mpi.IN_PLACE, times, op=comm._mpi.MAX)  # slowest rank
                if i >= 10:  # the first calls set up connections and buffers
                    samples.append(times[0])
                buf.fill(1)
            out[f"{net} {dtype}"] = float(np.median(samples))
    return out


class MLP:
    """ReLU hidden layers, softmax cross-entropy, SGD with momentum, preallocated buffers; all
    gradients are views of one flat buffer, so one Allreduce sums them without a copy."""

    def __init__(self, sizes: list[int], local_batch: int, dtype: str) -> None:
        rng = np.random.default_rng(0)
        self.params = np.empty(n_params(sizes), dtype=dtype)
        self.grads = np.zeros_like(self.params)
        self.velocity = np.zeros_like(self.params)
        self.w: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.gw: list[np.ndarray] = []
        self.gb: list[np.ndarray] = []
        offset = 0
        for n_in, n_out in itertools.pairwise(sizes):
            for store, grads, shape in (
                (self.w, self.gw, (n_in, n_out)),
                (self.b, self.gb, (n_out,)),
            ):
                size = int(np.prod(shape))
                store.append(self.params[offset : offset + size].reshape(shape))
                grads.append(self.grads[offset : offset + size].reshape(shape))
                offset += size
        for w, n_in in zip(self.w, sizes, strict=False):
            w[...] = rng.standard_normal(w.shape) * np.sqrt(2.0 / n_in)  # He
        for b in self.b:
            b[...] = 0
        self.acts = [np.empty((local_batch, n), dtype=dtype) for n in sizes]  # (B, n_l)

    def backprop(self, x: np.ndarray, labels: np.ndarray, global_batch: int) -> None:
        """Gradients of the GLOBAL batch's mean loss from this rank's rows: the ranks' sum is
        the single-process mean gradient."""
        a, last = self.acts, len(self.w) - 1
        a[0][...] = x
        for layer, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            np.matmul(a[layer], w, out=a[layer + 1])
            a[layer + 1] += b
            if layer < last:
                np.maximum(a[layer + 1], 0, out=a[layer + 1])
        probs = a[-1]  # (B, 10) logits -> softmax in place
        probs -= probs.max(axis=1, keepdims=True)
        np.exp(probs, out=probs)
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(len(labels)), labels] -= 1
        delta = probs / global_batch  # (B, n_L)
        for layer in range(last, -1, -1):
            np.matmul(a[layer].T, delta, out=self.gw[layer])
            delta.sum(axis=0, out=self.gb[layer])
            if layer:
                delta = delta @ self.w[layer].T
                delta *= a[layer] > 0

    def update(self, lr: float, momentum: float) -> None:
        self.velocity *= momentum
        self.velocity -= lr * self.grads
        self.params += self.velocity


def worker_train(net: str, global_batch: int, steps: int) -> dict[str, float]:
    comm = world()
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    local = global_batch // size
    model = MLP(NETS[net], local, "float32")
    rng = np.random.default_rng(rank)
    x = rng.random((local, 784), dtype=np.float32)
    labels = rng.integers(0, 10, local)

    def step() -> None:
        model.backprop(x, labels, global_batch)
        if comm is not None:
            comm.allreduce_sum(model.grads)
        model.update(0.01, 0.9)

    for _ in range(5):
        step()
    if comm is not None:
        comm.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if comm is not None:
        comm.barrier()
    seconds = time.perf_counter() - start
    return {"samples_per_s": steps * global_batch / seconds}


def worker_equiv(data: str, run_dir: str, dtype: str, batch: int, steps: int) -> dict[str, float]:
    from pipeline.config import TrainConfig
    from pipeline.training import trainer

    comm = world()
    config = TrainConfig(
        hidden=(100,), epochs=1, batch_size=batch, lr=3.0, shuffle=True, dtype=dtype
    )
    kwargs = {"comm": comm} if comm is not None else {}
    result = trainer.train(Path(data), Path(run_dir), config, **kwargs)
    return {"test_accuracy": result.history[-1]["test_accuracy"]}


# --- driver side ----------------------------------------------------------------------------


def launch(mpiexec: str | None, ranks: int, threads: int, *args: str) -> dict[str, float]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(BENCH), "--worker", *args]
    if mpiexec is not None:
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def equivalence(mpiexec: str, steps: int, batch: int) -> None:
    from pipeline.data import prepare, sources
    from pipeline.runs.rundir import RunDir
    from pipeline.training import checkpoint

    print(
        f"\nEquivalence on MNIST: {steps} steps of global batch {batch} (784-100-10, sigmoid MSE "
        "SGD, shuffled), the pipeline's train: 2 ranks vs 1 process"
    )
    print(f"{'dtype':8} {'max |w2 - w1|':>14} {'acc 1 proc':>11} {'acc 2 ranks':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = sources.load(None)
        take = steps * batch  # the first `take` training images make exactly `steps` steps
        full = raw.splits["train"]
        part = dataclasses.replace(full, images=full.images[:take], labels=full.labels[:take])
        raw = dataclasses.replace(raw, splits={**raw.splits, "train": part})
        data = prepare.prepare(Path(tmp) / "shards", raw).manifest.directory
        for dtype in ("float64", "float32"):
            runs = {}
            for ranks in (1, 2):
                run_dir = Path(tmp) / f"{dtype}-{ranks}"
                work = ("equiv", str(data), str(run_dir), dtype, str(batch), str(steps))
                acc = launch(None if ranks == 1 else mpiexec, ranks, 1, *work)["test_accuracy"]
                newest = RunDir(run_dir).newest_checkpoint()
                assert newest is not None
                ckpt = checkpoint.load(newest)
                runs[ranks] = (acc, ckpt.network.weights + ckpt.network.biases)
            diff = max(
                float(np.abs(a - b).max()) for a, b in zip(runs[1][1], runs[2][1], strict=True)
            )
            print(f"{dtype:8} {diff:14.3e} {runs[1][0]:11.4f} {runs[2][0]:12.4f}")


def cost_model(allreduce: dict[int, dict[str, float]], rates: dict[tuple[str, int], float]) -> None:
    print("\nCost model: communication <= 10% of a step  <=>  B/N * c >= 9 * T_comm, i.e.")
    print(
        "  B >= 9 * N * T_comm / c,   T_comm = 2(N-1)/N * P * bytes / bandwidth + 2(N-1) * latency"
    )
    print(f"  (ring allreduce; latency {LATENCY_S * 1e6:.0f} us a message assumed; c = seconds per")
    print("  sample of one machine like this one: 1 / the better of 1 proc x 2 threads and")
    print("  2 ranks x 1 thread at batch 1024, float32)")
    for net, sizes in NETS.items():
        rate = rates[(net, 1024)]
        c = 1.0 / rate
        nbytes = n_params(sizes) * 4
        print(
            f"\n{net}: P = {n_params(sizes):,} float32 = {nbytes / 1e6:.2f} MB; c = 1/{rate:,.0f} "
            f"= {c * 1e6:.1f} us/sample; loopback 2-rank allreduce here: "
            f"{allreduce[2][f'{net} float32'] * 1e3:.2f} ms"
        )
        print(
            f"{'machines':>8} {'moved MB':>9} "
            + " ".join(f"{f'{g} Gb/s: T_comm, min B':>24}" for g in (10, 25, 100))
        )
        for n in (2, 8, 32):
            moved = 2 * (n - 1) / n * nbytes
            cells = []
            for gbps in (10, 25, 100):
                t_comm = moved / (gbps * 1e9 / 8) + 2 * (n - 1) * LATENCY_S
                cells.append(f"{t_comm * 1e3:8.2f} ms, {9 * n * t_comm / c:11,.0f}")
            print(f"{n:8d} {moved / 1e6:9.2f} " + " ".join(f"{cell:>24}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per training run")
    parser.add_argument("--repeats", type=int, default=100, help="timed allreduces per buffer")
    parser.add_argument("--equiv-steps", type=int, default=300)
    parser.add_argument("--equiv-batch", type=int, default=128)
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        if kind == "allreduce":
            result = worker_allreduce(int(rest[0]))
        elif kind == "train":
            result = worker_train(rest[0], int(rest[1]), int(rest[2]))
        else:
            result = worker_equiv(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        comm = world()
        if comm is None or comm.rank == 0:
            print(json.dumps(result))
        return
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    if mpiexec is None:
        raise SystemExit("error: no mpiexec beside this python: pip install -e '.[mpi]'")
    from mpi4py import MPI

    print(f"MPI: {MPI.Get_library_version().splitlines()[0].strip()}; mpiexec {mpiexec}")
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")

    print(f"\nOne in-place Allreduce of all parameters (median of {args.repeats}; slowest rank):")
    allreduce = {n: launch(mpiexec, n, 1, "allreduce", str(args.repeats)) for n in (2, 4)}
    print(
        f"{'network':16} {'params':>9} {'dtype':8} {'MB':>6} {'2 ranks ms':>11} {'4 ranks ms':>11}"
    )
    for net, sizes in NETS.items():
        for dtype, width in (("float32", 4), ("float64", 8)):
            key = f"{net} {dtype}"
            print(
                f"{net:16} {n_params(sizes):9d} {dtype:8} {n_params(sizes) * width / 1e6:6.2f} "
                f"{allreduce[2][key] * 1e3:11.3f} {allreduce[4][key] * 1e3:11.3f}"
            )

    print("\nTraining step (ReLU, softmax-CE, SGD momentum, float32), samples/s:")
    print(
        f"{'network':16} {'batch':>6} {'1 proc x 1 thr':>15} {'1 proc x 2 thr':>15} "
        f"{'2 ranks x 1 thr':>16} {'2 ranks / 1x2':>14}"
    )
    rates = {}
    for net in NETS:
        for batch in (128, 1024):
            work = ("train", net, str(batch), str(args.steps))
            single = launch(None, 1, 1, *work)["samples_per_s"]
            threads = launch(None, 1, 2, *work)["samples_per_s"]
            ranks = launch(mpiexec, 2, 1, *work)["samples_per_s"]
            rates[(net, batch)] = max(threads, ranks)
            print(
                f"{net:16} {batch:6d} {single:15,.0f} {threads:15,.0f} {ranks:16,.0f} "
                f"{ranks / threads:14.2f}"
            )
    equivalence(mpiexec, args.equiv_steps, args.equiv_batch)
    cost_model(allreduce, rates)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
