"""Shared fixtures: real IDX bytes written by the tests, and real MNIST shards.

Small datasets use real IDX files (images 28x28 taken from the real MNIST where a test needs
realistic pixels, random ones otherwise); nothing here mocks a stage.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data import MANIFEST, Manifest, open_set, prepare, sources

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(__file__).resolve().parents[1] / "pipeline" / "data" / "mnist"
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@pytest.fixture(autouse=True, scope="session")
def _children_take_sigint() -> Iterator[None]:
    """Subprocesses the tests start react to SIGINT even when this run was started with SIGINT
    ignored (a background job of a non-interactive shell, some CI runners): an ignored signal
    is inherited through exec, a handler is not, so the tests that send SIGINT do not hang."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True, scope="session")
def _private_verify_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The shards' verified-sha256 cache of this session only (subprocesses inherit it)."""
    old = os.environ.get("PIPELINE_CACHE_DIR")
    os.environ["PIPELINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("verify-cache"))
    yield
    if old is None:
        del os.environ["PIPELINE_CACHE_DIR"]
    else:
        os.environ["PIPELINE_CACHE_DIR"] = old


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes for a uint8 array: magic 0x00000803 (or 0801), sizes, data."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.tobytes()


def write_idx_dir(
    directory: Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    gz: bool = True,
) -> Path:
    """Write the four IDX files (images (n, rows, cols) uint8, labels (n,) uint8)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", train), ("test", test)):
        image_stem, label_stem = sources.SPLIT_FILES[split]
        for stem, array in ((image_stem, images), (label_stem, labels)):
            data = idx_bytes(array)
            if gz:
                (directory / f"{stem}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (directory / stem).write_bytes(data)
    return directory


def random_split(
    rng: np.random.Generator, n: int, shape: tuple[int, int] = (28, 28), classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    images[images < 128] = 0  # sparse, like real digits
    labels = rng.integers(0, classes, n, dtype=np.uint8)
    return images, labels


@pytest.fixture
def small_idx(tmp_path: Path) -> Path:
    """A small, valid IDX source: 250 train and 60 test random 28x28 images, gzipped."""
    rng = np.random.default_rng(7)
    return write_idx_dir(tmp_path / "raw", random_split(rng, 250), random_split(rng, 60))


@pytest.fixture(scope="session")
def real_mnist() -> sources.RawDataset:
    return sources.load(None)


@pytest.fixture(scope="session")
def mnist_slice_idx(
    tmp_path_factory: pytest.TempPathFactory, real_mnist: sources.RawDataset
) -> Path:
    """The first 3,000 train and 1,000 test images of the real MNIST, as IDX files."""
    train, test = real_mnist.splits["train"], real_mnist.splits["test"]
    return write_idx_dir(
        tmp_path_factory.mktemp("mnist-slice"),
        (train.images[:3000].reshape(-1, 28, 28), train.labels[:3000]),
        (test.images[:1000].reshape(-1, 28, 28), test.labels[:1000]),
    )


@pytest.fixture(scope="session")
def mnist_shards(
    tmp_path_factory: pytest.TempPathFactory, real_mnist: sources.RawDataset
) -> Manifest:
    """The full real MNIST prepared once per session (read-only for the tests using it)."""
    out = tmp_path_factory.mktemp("mnist-shards")
    return prepare.prepare(out, real_mnist).manifest


@pytest.fixture(scope="session")
def slice_shards(tmp_path_factory: pytest.TempPathFactory, mnist_slice_idx: Path) -> Manifest:
    """The 3,000/1,000 real-MNIST slice prepared with 1,000-sample shards."""
    out = tmp_path_factory.mktemp("slice-shards")
    raw = sources.load(
        f"idx:{mnist_slice_idx}", name="mnist-slice", classes=[str(d) for d in range(10)]
    )
    return prepare.prepare(out, raw, shard_size=1000).manifest


def one_line_error(args: list[str], code: int) -> str:
    """`pipeline ARGS` through typer's runner: exit `code`, one `error:` line, no traceback."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry of `directory`: name -> (inode, mtime_ns, size). Equal snapshots: untouched."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(directory.iterdir())
    }


@pytest.fixture
def mount_tmpfs() -> Iterator[Callable[[Path, str], bool]]:
    """`mount_tmpfs(directory, options)` mounts a fresh tmpfs there (e.g. "size=2m" or
    "ro,size=1m"); False when mounting is not permitted (not root, no CAP_SYS_ADMIN).
    Every mount is undone when the test ends."""
    mounted: list[Path] = []

    def mount(directory: Path, options: str) -> bool:
        directory.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None:
            return False
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)]
        if subprocess.run(command, capture_output=True, check=False).returncode != 0:
            return False
        mounted.append(directory)
        return True

    yield mount
    for directory in reversed(mounted):
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def assert_clean(directory: Path) -> None:
    """Only the manifest, the lock and the shards the manifest lists: no orphan, no tmp."""
    manifest = open_set(directory)
    listed = {s.file for split in manifest.splits.values() for s in split.shards}
    assert {p.name for p in directory.iterdir()} == {MANIFEST, ".lock", *listed}


def flip_chunk_byte(path: Path, dataset: str, chunk: int) -> None:
    """Invert one byte in the middle of one stored chunk of `dataset` (a real on-disk flip)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    offset = info.byte_offset + info.size // 2
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def run_size_limited(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS` with RLIMIT_FSIZE: no file may grow beyond `limit` bytes
    (SIGXFSZ ignored, so writes fail with EFBIG as they would on a full disk)."""
    code = (
        "import resource, runpy, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "sys.argv = ['pipeline', *sys.argv[1:]]\n"
        "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="session")
def slice_set(tmp_path_factory: pytest.TempPathFactory, mnist_slice_idx: Path) -> Path:
    """The slice's set named "mnist-slice" (classes from the labels), the runs tests' data."""
    out = tmp_path_factory.mktemp("slice-set")
    raw = sources.load(f"idx:{mnist_slice_idx}", name="mnist-slice")
    prepare.prepare(out, raw, shard_size=1000)
    return out


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's build step, once per session: `python -m pipeline.nn.warm` compiles every
    kernel into a cache outside the package (from /, as the Dockerfile runs it). Read-only for
    the tests: copy it to load from it (numba loads a cache only from a writable directory)."""
    cache = tmp_path_factory.mktemp("numba-cache")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    subprocess.run([sys.executable, "-m", "pipeline.nn.warm"], env=env, check=True, cwd="/")
    return cache


@pytest.fixture(scope="session")
def deploy_runs(
    tmp_path_factory: pytest.TempPathFactory, slice_shards: Manifest
) -> dict[str, Path]:
    """Three briefly trained models (one epoch on the 3,000-image slice) for predict and
    export: the original recipe (sigmoid, MSE), `fast` (ReLU, softmax) and a 3-layer tanh."""
    from pipeline.config import TrainConfig
    from pipeline.training import presets, trainer

    configs = {
        "original": TrainConfig(epochs=1),
        "fast": presets.resolve("fast", epochs=1),
        "tanh": TrainConfig(
            hidden=(64, 32),
            activation="tanh",
            init="xavier",
            loss="cross_entropy",
            lr=0.1,
            batch_size=32,
            epochs=1,
        ),
    }
    runs = {}
    for name, config in configs.items():
        runs[name] = tmp_path_factory.mktemp(f"deploy-{name}")
        trainer.train(slice_shards.directory, runs[name], config)
    return runs
