"""Benchmark the streaming loader against in-memory numpy, and its memory against dataset size.

In one run, side by side:
  1. throughput: samples/s streaming the full MNIST train split (60,000) through `Loader` at
     batch 3 and 128, in file order and shuffled, from uncompressed and lzf shards, against
     plain in-memory slicing (x[i:i+B], y[i:i+B]) of the same float32 arrays held whole;
     best of --repeats epochs each (the page cache is warm: this measures the loader, not the
     disk). The issue's bound: at least 500,000 samples/s uncompressed at batch 128.
  2. the GIL: a pure-Python loop in the main thread, alone and while the loader's reader
     thread reads an epoch, since the training loop runs concurrently with the reader.
  3. memory: peak RSS (VmHWM) of a fresh process streaming one epoch of MNIST, and of one
     streaming a synthetic shard set ten times its size (600,000 samples: MNIST tiled),
     in file order and shuffled. Bounded memory means the two peaks are about equal.

    python scripts/bench_loader.py [--out DIR] [--repeats N]

With --out the MNIST shard sets are kept in DIR (and reused by the next run); the ten-times
set is always deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from benchlib import peak_rss_mib, rss_mib, table

from pipeline.data import Manifest, open_set, prepare, shards, sources
from pipeline.data.loader import Loader

SPLIT = "train"
BATCHES = (3, 128)
BOUND_SPS = 500_000  # issue 3: uncompressed, batch 128
BOUND_BATCH = 128
TILES = 10  # the synthetic set is MNIST's train split this many times over
RSS_BATCH = 128


# --- 1. throughput ----------------------------------------------------------------------


def loader_sps(manifest: Manifest, batch: int, shuffle: bool, repeats: int) -> float:
    loader = Loader(manifest, SPLIT, batch_size=batch, shuffle=shuffle, seed=0)
    best = float("inf")
    for epoch in range(repeats):
        started, samples = time.perf_counter(), 0
        for x, _ in loader.epoch(epoch):
            samples += len(x)
        best = min(best, time.perf_counter() - started)
    assert samples == manifest.split(SPLIT).samples
    return samples / best


def h5py_sps(manifest: Manifest, repeats: int) -> float:
    """The storage's own speed: the file-order loader's reads alone (same 4,096-row blocks,
    fletcher32 checked), in this thread, with no queue and no batching."""
    block = 16 * shards.CHUNK_ROWS
    best = float("inf")
    for _ in range(repeats):
        started, samples = time.perf_counter(), 0
        for shard in manifest.split(SPLIT).shards:
            path = manifest.path(shard)
            with shards.open_shard(path) as f:
                for start in range(0, shard.samples, block):
                    x, _ = shards.read_rows(f, path, start, min(start + block, shard.samples))
                    samples += len(x)
        best = min(best, time.perf_counter() - started)
    return samples / best


def memory_sps(x: np.ndarray, y: np.ndarray, batch: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started, samples = time.perf_counter(), 0
        for i in range(0, len(x), batch):
            xb, _ = x[i : i + batch], y[i : i + batch]
            samples += len(xb)
        best = min(best, time.perf_counter() - started)
    assert samples == len(x)
    return samples / best


def throughput(sets: dict[str, Manifest], raw: sources.RawDataset, repeats: int) -> bool:
    """Print the table; True when the file-order (default) loader meets the bound."""
    data = raw.splits[SPLIT]
    x = np.divide(data.images, np.float32(255), dtype=np.float32)  # (60000, 784), whole
    y = np.eye(len(raw.classes), dtype=np.float32)[data.labels]  # (60000, 10)
    in_memory = {batch: memory_sps(x, y, batch, repeats) for batch in BATCHES}
    header = (
        "source",
        "order",
        "batch",
        "samples/s",
        "in-memory samples/s",
        "loader/in-memory",
        "loader/h5py reads",
    )
    rows = []
    for batch in BATCHES:
        rows.append(("in-memory numpy", "file", str(batch), f"{in_memory[batch]:,.0f}", "", "", ""))
    passed: dict[str, bool] = {}  # order -> uncompressed batch-128 figure meets the bound
    for compression, manifest in sets.items():
        reads = h5py_sps(manifest, repeats)
        rows.append((f"h5py reads only, {compression}", "file", "-", f"{reads:,.0f}", "", "", ""))
        for shuffle in (False, True):
            for batch in BATCHES:
                sps = loader_sps(manifest, batch, shuffle, repeats)
                verdict = ""
                if compression == "none" and batch == BOUND_BATCH:
                    passed["shuffled" if shuffle else "file order"] = sps >= BOUND_SPS
                    verdict = "  PASS" if sps >= BOUND_SPS else "  FAIL"
                rows.append((
                    f"Loader, {compression}",
                    "shuffled" if shuffle else "file",
                    str(batch),
                    f"{sps:,.0f}",
                    f"{in_memory[batch]:,.0f}",
                    f"{sps / in_memory[batch]:.4f}",
                    f"{sps / reads:.2f}{verdict}",
                ))  # fmt: skip
    print(table(header, rows))
    print(
        "in-memory = slicing views of the whole float32 arrays; h5py reads only = the same "
        "4,096-row block reads as the loader, in one thread, without queue or batches"
    )
    verdicts = ", ".join(f"{order} {'PASS' if ok else 'FAIL'}" for order, ok in passed.items())
    print(
        f"bound: uncompressed, batch {BOUND_BATCH}, >= {BOUND_SPS:,} samples/s: {verdicts} "
        f"(best of {repeats} epochs each)"
    )
    return passed["file order"]


# --- 2. the GIL -------------------------------------------------------------------------


def spin(n: int) -> None:
    total = 0
    for i in range(n):
        total += i


def reader_thread() -> threading.Thread:
    (reader,) = [t for t in threading.enumerate() if t.name.startswith("shard-reader")]
    return reader


def gil(manifest: Manifest) -> None:
    """Python-loop speed in the main thread, alone and while the reader thread reads.

    The loader gets a queue deep enough for the whole epoch, so its reader thread reads
    60,000 samples without ever waiting for the consumer, while the main thread spins.
    """
    step = 20_000

    def spin_alone() -> float:
        rates = []
        for _ in range(5):
            started = time.perf_counter()
            spin(40 * step)
            rates.append(40 * step / (time.perf_counter() - started))
        return max(rates)

    alone = spin_alone()

    loader = Loader(manifest, SPLIT, batch_size=4096, prefetch=64)
    reader_alone = float("inf")
    for epoch in range(3):
        gen = loader.epoch(epoch)
        started = time.perf_counter()
        next(gen)  # the reader thread is started, the first block read
        reader_thread().join()
        reader_alone = min(reader_alone, time.perf_counter() - started)
        gen.close()

    def concurrently() -> tuple[float, float]:
        """(best spin rate, best reader seconds) while both run."""
        rates, seconds = [], float("inf")
        for epoch in range(3):
            gen = loader.epoch(epoch)
            started = time.perf_counter()
            next(gen)
            reader = reader_thread()
            spun, spin_started = 0, time.perf_counter()
            while reader.is_alive():
                spin(step)
                spun += step
            ended = time.perf_counter()
            seconds = min(seconds, ended - started)
            rates.append(spun / (ended - spin_started))
            gen.close()
        return max(rates), seconds

    concurrent, reader_concurrent = concurrently()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(interval / 10)
    try:
        concurrent_short, reader_short = concurrently()
    finally:
        sys.setswitchinterval(interval)
    alone = max(alone, spin_alone())  # before and after: the machine's best
    print(
        f"pure-Python loop in the main thread: alone {alone / 1e6:.1f} M it/s; while the "
        f"reader thread reads: {concurrent / 1e6:.1f} M it/s ({concurrent / alone:.0%})"
    )
    print(
        f"reader thread, one epoch (60,000 samples, uncompressed): {reader_alone:.3f} s alone; "
        f"{reader_concurrent:.3f} s while the main thread spins (switch interval "
        f"{interval * 1e3:g} ms); {reader_short:.3f} s with a {interval * 1e2:g} ms interval "
        f"(main loop then {concurrent_short / alone:.0%})"
    )


# --- 3. memory --------------------------------------------------------------------------


def tiled_set(out: Path, raw: sources.RawDataset, scratch: Path) -> Manifest:
    """MNIST's train split TILES times over, prepared as a shard set by the real prepare stage.

    The tiled raw images go to a memory-mapped file, so building the set never holds them.
    """
    train = raw.splits[SPLIT]
    n = TILES * len(train.images)
    images = np.lib.format.open_memmap(
        scratch, mode="w+", dtype=np.uint8, shape=(n, train.images.shape[1])
    )  # (n, 784)
    for k in range(TILES):
        images[k * len(train.images) : (k + 1) * len(train.images)] = train.images
    images.flush()
    labels = np.tile(train.labels, TILES)  # (n,), 600 KB
    big = sources.RawDataset(
        name=f"mnist-x{TILES}",
        classes=raw.classes,
        source=f"synthetic:mnist-x{TILES}",
        image_shape=raw.image_shape,
        files=raw.files,
        splits={SPLIT: sources.RawSplit(images, labels), "test": raw.splits["test"]},
    )
    manifest = prepare.prepare(out, big).manifest
    del images
    scratch.unlink()
    return manifest


def stream_child(directory: Path, shuffle: bool) -> None:
    """In a fresh process: stream one epoch, print the memory figures as JSON."""
    manifest = open_set(directory)
    before = rss_mib()
    samples = 0
    for x, _ in Loader(manifest, SPLIT, batch_size=RSS_BATCH, shuffle=shuffle).epoch(0):
        samples += len(x)
    print(json.dumps({"samples": samples, "before_mib": before, "peak_mib": peak_rss_mib()}))


def measure_rss(directory: Path, shuffle: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--stream", str(directory)]
    done = subprocess.run(
        [*command, *(["--shuffle"] if shuffle else [])], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"error: streaming {directory} failed: {done.stderr.strip()}")
    report: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return report


def memory(mnist: Manifest, big: Manifest) -> None:
    header = ("order", "MNIST peak RSS MiB", f"{TILES}x set peak RSS MiB", "ratio", "samples")
    rows = []
    for shuffle in (False, True):
        small, large = measure_rss(mnist.directory, shuffle), measure_rss(big.directory, shuffle)
        rows.append((
            "shuffled" if shuffle else "file",
            f"{small['peak_mib']:.0f} (before {small['before_mib']:.0f})",
            f"{large['peak_mib']:.0f} (before {large['before_mib']:.0f})",
            f"{large['peak_mib'] / small['peak_mib']:.2f}",
            f"{small['samples']:,.0f} / {large['samples']:,.0f}",
        ))  # fmt: skip
    print(table(header, rows))
    print(
        "peak RSS (VmHWM) of a fresh process streaming one epoch at batch "
        f"{RSS_BATCH}; before = RSS after imports and manifest, before the first batch"
    )


# --- output -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="keep the MNIST shard sets here")
    parser.add_argument("--repeats", type=int, default=5, help="epochs per figure, best taken")
    parser.add_argument("--stream", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shuffle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream is not None:
        stream_child(args.stream, args.shuffle)
        return

    started = time.perf_counter()
    temporary = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    out = args.out if args.out is not None else temporary
    try:
        raw = sources.load(None)
        sets = {
            c: prepare.prepare(out / f"mnist-{c}", raw, compression=c).manifest
            for c in ("none", "lzf")
        }
        print(
            f"streaming the MNIST train split ({raw.splits[SPLIT].images.shape[0]:,} samples, "
            f"shards of {prepare.DEFAULT_SHARD_SIZE:,}); python {sys.version.split()[0]}",
            flush=True,
        )
        passed = throughput(sets, raw, args.repeats)
        print(flush=True)
        gil(sets["none"])
        print(flush=True)
        big = tiled_set(temporary / f"mnist-x{TILES}", raw, temporary / "tiled-images.npy")
        memory(sets["none"], big)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    verdict = "PASS" if passed else "FAIL"
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.0f} s in all; bound (file order, the default): {verdict}")


if __name__ == "__main__":
    main()
