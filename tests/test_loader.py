"""The streaming loader (issue 3), tested on real shard sets written by the prepare stage.

Most tests use shard sets whose images carry their own sample index: the first three pixels
of sample i are i in base 256 (least significant first) and its label is i % 10, so every
yielded row can be traced back to its raw sample exactly. Shard sizes are deliberately not
multiples of the batch sizes nor of the HDF5 chunk (256 rows):

    small: train 1,200 samples in 12 shards of 97 + one of 36 (shards smaller than a batch)
    big:   train 10,000 samples in shards of 4,500 / 4,500 / 1,000 (several 4,096-row blocks)
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import inspect
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data import MANIFEST, Manifest, integrity, open_set, prepare, sources
from pipeline.data.loader import Batch, Loader, LoaderState
from pipeline.errors import ConfigError, ShardCorruptError, ShardSetError
from tests.conftest import write_idx_dir

FEATURES, CLASSES = 784, 10
BIG_BATCH = 100  # 4,096-row blocks: batch 40 straddles the first block boundary


@dataclass(frozen=True)
class EncodedSet:
    manifest: Manifest
    images: np.ndarray  # (train samples, 784) uint8, the raw train images in file order


def encoded_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images whose first three pixels hold the sample index; labels i % 10."""
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    flat = images.reshape(n, FEATURES)
    index = np.arange(n)
    flat[:, 0], flat[:, 1], flat[:, 2] = index & 255, (index >> 8) & 255, index >> 16
    return images, (index % CLASSES).astype(np.uint8)


def ids_of(x: np.ndarray) -> np.ndarray:
    """The sample indices encoded in float32 rows x (n, 784): x = pixel / 255 exactly."""
    pixels = np.rint(x[:, :3].astype(np.float64) * 255).astype(np.int64)  # (n, 3)
    return pixels @ np.array([1, 256, 65536])


def _encoded_set(root: Path, train: int, test: int, shard_size: int) -> EncodedSet:
    rng = np.random.default_rng(train)
    train_split, test_split = encoded_split(rng, train), encoded_split(rng, test)
    raw_dir = write_idx_dir(root / "raw", train_split, test_split)
    raw = sources.load(f"idx:{raw_dir}", name="encoded", classes=[str(d) for d in range(10)])
    manifest = prepare.prepare(root / "shards", raw, shard_size=shard_size).manifest
    return EncodedSet(manifest, train_split[0].reshape(train, FEATURES))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> EncodedSet:
    s = _encoded_set(tmp_path_factory.mktemp("small"), train=1200, test=50, shard_size=97)
    assert [x.samples for x in s.manifest.splits["train"].shards] == [97] * 12 + [36]
    return s


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> EncodedSet:
    s = _encoded_set(tmp_path_factory.mktemp("big"), train=10_000, test=300, shard_size=4500)
    assert [x.samples for x in s.manifest.splits["train"].shards] == [4500, 4500, 1000]
    return s


def batches_of(loader: Loader, epoch: int = 0) -> list[Batch]:
    return list(loader.epoch(epoch))


def check_batches(loader: Loader, batches: list[Batch]) -> np.ndarray:
    """Shapes, dtypes and one-hot labels of an epoch's batches; returns the sample ids."""
    assert len(batches) == len(loader)
    for i, (x, y) in enumerate(batches):
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.shape[1:] == (FEATURES,) and y.shape[1:] == (CLASSES,)
        assert len(x) == len(y)
        assert len(x) == loader.batch_size or (i == len(batches) - 1 and len(x) < loader.batch_size)
    if not batches:
        return np.zeros(0, np.int64)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    ids = ids_of(x)
    assert len(ids) == loader.samples
    assert np.array_equal(y, np.eye(CLASSES, dtype=np.float32)[ids % CLASSES])  # labels follow x
    return ids


def assert_same_batches(got: list[Batch], want: list[Batch]) -> None:
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert np.array_equal(gx, wx) and np.array_equal(gy, wy)


def epoch_digest(batches: Iterator[Batch]) -> str:
    h = hashlib.sha256()
    for x, y in batches:
        h.update(x.tobytes())
        h.update(y.tobytes())
    return h.hexdigest()


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("shard-reader")]


def open_hdf5_files() -> int:
    """HDF5 files open in this process, from any thread (the library's own count)."""
    return int(h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE))


def copy_set(manifest: Manifest, to: Path) -> Path:
    shutil.copytree(manifest.directory, to)
    return to


# --- every sample once, order ---------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 100, 120, 128, 1200, 5000])
def test_every_sample_exactly_once_per_epoch(
    small: EncodedSet, shuffle: bool, batch_size: int
) -> None:
    # 1,200 = 12 * 100 = 10 * 120: 100 and 120 divide the split (100 > the 97-row shards)
    loader = Loader(small.manifest, "train", batch_size=batch_size, shuffle=shuffle, seed=3)
    for epoch in (0, 1):
        ids = check_batches(loader, batches_of(loader, epoch))
        assert np.array_equal(np.sort(ids), np.arange(1200))
    assert len(loader) == -(-1200 // batch_size)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [100, 128])
def test_every_sample_exactly_once_over_multi_block_shards(
    big: EncodedSet, shuffle: bool, batch_size: int
) -> None:
    loader = Loader(big.manifest, "train", batch_size=batch_size, shuffle=shuffle, seed=1)
    ids = check_batches(loader, batches_of(loader))
    assert np.array_equal(np.sort(ids), np.arange(10_000))


@pytest.mark.parametrize("which", ["small", "big"])
def test_file_order_without_shuffle_is_the_raw_order_exactly(
    which: str, request: pytest.FixtureRequest
) -> None:
    s: EncodedSet = request.getfixturevalue(which)
    loader = Loader(s.manifest, "train", batch_size=128)
    for epoch in (0, 3):  # every epoch is file order
        batches = batches_of(loader, epoch)
        ids = check_batches(loader, batches)
        assert np.array_equal(ids, np.arange(len(s.images)))
        x = np.concatenate([b[0] for b in batches])
        assert np.array_equal(x, np.divide(s.images, np.float32(255), dtype=np.float32))


def test_file_order_on_real_mnist_pixels(
    slice_shards: Manifest, real_mnist: sources.RawDataset
) -> None:
    train = real_mnist.splits["train"]
    batches = batches_of(Loader(slice_shards, "train", batch_size=7))
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert np.array_equal(x, train.images[:3000].astype(np.float32) / np.float32(255))
    assert np.array_equal(y.argmax(axis=1), train.labels[:3000])


@pytest.mark.parametrize("shuffle", [False, True])
def test_last_partial_batch_is_yielded_and_drop_last_drops_it(
    small: EncodedSet, shuffle: bool
) -> None:
    full = Loader(small.manifest, "train", batch_size=128, shuffle=shuffle, seed=2)
    dropped = Loader(
        small.manifest, "train", batch_size=128, shuffle=shuffle, seed=2, drop_last=True
    )
    all_batches, kept = batches_of(full), batches_of(dropped)
    assert [len(x) for x, _ in all_batches] == [128] * 9 + [48]
    assert len(dropped) == 9 and dropped.samples == 1152 and full.samples == 1200
    check_batches(dropped, kept)
    assert_same_batches(kept, all_batches[:9])

    none = Loader(small.manifest, "train", batch_size=5000, shuffle=shuffle, drop_last=True)
    assert len(none) == 0 and none.samples == 0 and batches_of(none) == []


# --- shuffling --------------------------------------------------------------------------


def shuffled_ids(s: EncodedSet, seed: int, epoch: int, batch_size: int = 64) -> np.ndarray:
    loader = Loader(s.manifest, "train", batch_size=batch_size, shuffle=True, seed=seed)
    return check_batches(loader, batches_of(loader, epoch))


def test_shuffle_is_deterministic_for_the_same_seed(small: EncodedSet) -> None:
    for epoch in (0, 5):
        a = batches_of(Loader(small.manifest, "train", batch_size=64, shuffle=True, seed=9), epoch)
        b = batches_of(Loader(small.manifest, "train", batch_size=64, shuffle=True, seed=9), epoch)
        assert_same_batches(a, b)


def test_shuffle_differs_between_epochs_and_seeds_and_permutes_shards_and_rows(
    small: EncodedSet,
) -> None:
    orders = {
        (seed, epoch): shuffled_ids(small, seed, epoch) for seed in (0, 1) for epoch in range(4)
    }
    keys = list(orders)
    for i, a in enumerate(keys):
        assert not np.array_equal(orders[a], np.arange(1200)), a
        for b in keys[i + 1 :]:
            assert not np.array_equal(orders[a], orders[b]), (a, b)
    # the shards are visited in a permuted order, each one whole, its rows permuted
    shard_orders = set()
    for ids in orders.values():
        shard = ids // 97  # the 36-row last shard is index 12
        runs = shard[np.r_[True, shard[1:] != shard[:-1]]]
        assert sorted(runs.tolist()) == list(range(13))  # each shard is one contiguous run
        shard_orders.add(tuple(runs.tolist()))
        for k in range(13):
            rows = ids[shard == k]
            assert not np.array_equal(rows, np.sort(rows))
    assert len(shard_orders) == len(orders)
    # and each shard's rows come in a different order in every epoch, and for every seed
    for k in range(13):
        in_shard = [tuple(ids[ids // 97 == k].tolist()) for ids in orders.values()]
        assert len(set(in_shard)) == len(in_shard), k


# --- resume -----------------------------------------------------------------------------


RESUME_CASES = [  # (set, batch size, world size, rank)
    ("big", BIG_BATCH, 1, 0),
    ("big", BIG_BATCH, 3, 1),  # rank 1 starts at sample 3,333: mid-shard, mid-block
    ("small", 7, 1, 0),
    ("small", 7, 2, 1),
]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("which", "batch_size", "world_size", "rank"), RESUME_CASES)
def test_resume_yields_exactly_the_remaining_batches(
    which: str,
    batch_size: int,
    world_size: int,
    rank: int,
    shuffle: bool,
    request: pytest.FixtureRequest,
) -> None:
    s: EncodedSet = request.getfixturevalue(which)
    options = dict(batch_size=batch_size, shuffle=shuffle, seed=4, rank=rank, world_size=world_size)
    loader = Loader(s.manifest, "train", **options)  # type: ignore[arg-type]
    epoch = 2
    whole = batches_of(loader, epoch)
    n = len(loader)
    # 0, 1, mid-block (20), across the first block boundary (41: batch 40 spans rows
    # 4,000-4,100), at the first shard boundary (45 * 100 = 4,500), the last batch, the end
    ks = sorted({k for k in (0, 1, 20, 41, 45, n // 2, n - 1, n) if k <= n})
    assert len(ks) >= 6
    for k in ks:
        saved = json.loads(json.dumps(dataclasses.asdict(loader.state(epoch, k))))
        # a new process: the manifest read again, a fresh loader, the state from a checkpoint
        fresh = Loader(open_set(s.manifest.directory), "train", **options)  # type: ignore[arg-type]
        rest = list(fresh.resume(LoaderState(**saved)))
        assert_same_batches(rest, whole[k:])


def test_resume_refuses_a_state_that_does_not_fit(small: EncodedSet, big: EncodedSet) -> None:
    loader = Loader(small.manifest, "train", batch_size=7, shuffle=True, seed=4)
    good = loader.state(1, 3)
    assert len(list(loader.resume(good))) == len(loader) - 3
    others = {
        "seed": Loader(small.manifest, "train", batch_size=7, shuffle=True, seed=5).state(1, 3),
        "batch size": Loader(small.manifest, "train", batch_size=8, shuffle=True, seed=4).state(
            1, 3
        ),
        "shuffle": Loader(small.manifest, "train", batch_size=7, seed=4).state(1, 3),
        "manifest": Loader(big.manifest, "train", batch_size=7, shuffle=True, seed=4).state(1, 3),
        "past the end": dataclasses.replace(good, batches=len(loader) + 1),
        "negative": dataclasses.replace(good, batches=-1),
        "negative epoch": dataclasses.replace(good, epoch=-1),
    }
    for what, state in others.items():
        with pytest.raises(ConfigError):  # refused at the call, before any batch
            loader.resume(state)
        assert readers() == [], what


# --- partitions -------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_ranks_partition_every_epoch_disjointly_and_completely(
    small: EncodedSet, world_size: int, shuffle: bool
) -> None:
    for epoch in (0, 1):
        whole = Loader(small.manifest, "train", batch_size=7, shuffle=shuffle, seed=6)
        everything = check_batches(whole, batches_of(whole, epoch))
        parts = []
        for rank in range(world_size):
            loader = Loader(
                small.manifest, "train", batch_size=7, shuffle=shuffle, seed=6,
                rank=rank, world_size=world_size,
            )  # fmt: skip
            parts.append(check_batches(loader, batches_of(loader, epoch)))
        sizes = [len(p) for p in parts]
        assert sum(sizes) == 1200 and max(sizes) - min(sizes) <= 1
        joined = np.concatenate(parts)
        assert len(np.unique(joined)) == 1200  # disjoint and complete
        assert np.array_equal(joined, everything)  # rank r: the r-th part of the epoch's order


def test_impossible_configurations_are_refused(small: EncodedSet) -> None:
    m = small.manifest
    assert m.splits["test"].samples == 50
    Loader(m, "test", batch_size=1, rank=49, world_size=50)  # one sample each: fine
    bad: list[dict[str, int]] = [
        {"world_size": 51},
        {"world_size": 51, "rank": 50},
        {"rank": 2, "world_size": 2},
        {"rank": -1, "world_size": 2},
        {"world_size": 0},
        {"batch_size": 0},
        {"prefetch": 0},
        {"seed": -1},
    ]
    for options in bad:
        with pytest.raises(ConfigError):
            Loader(m, "test", **{"batch_size": 4, **options})  # type: ignore[arg-type]
    loader = Loader(m, "test", batch_size=4)
    for start in (-1, len(loader) + 1):
        with pytest.raises(ConfigError):
            loader.epoch(0, start_batch=start)
    with pytest.raises(ConfigError):
        loader.epoch(-1)
    with pytest.raises(ShardSetError, match="no split 'valid'"):
        Loader(m, "valid", batch_size=4)


# --- threads and files ------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition (no timing is asserted; the deadline only turns a hang into a failure)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


def start_epoch(loader: Loader, baseline_files: int) -> Iterator[Batch]:
    """An epoch consumed for one batch, the reader thread alive (holding its shard open when
    reading in file order, where it blocks on the full queue mid-shard)."""
    assert readers() == []
    gen = loader.epoch(0)
    assert readers() == [] and open_hdf5_files() == baseline_files  # lazy: nothing yet
    next(gen)
    assert len(readers()) == 1
    if not loader.shuffle:
        wait_for(lambda: open_hdf5_files() == baseline_files + 1, "the reader opens a shard")
    return gen


def fail_in_the_loop(batches: Iterator[Batch], kind: type[BaseException]) -> None:
    for i, _ in enumerate(batches):
        if i == 3:
            raise kind(f"consumer failed at batch {i}")


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("how", ["close", "exception", "interrupt", "dropped", "exhausted"])
def test_stopping_early_leaves_no_thread_and_no_open_file(
    big: EncodedSet, how: str, shuffle: bool
) -> None:
    baseline = open_hdf5_files()
    loader = Loader(big.manifest, "train", batch_size=BIG_BATCH, shuffle=shuffle, seed=1)
    gen = start_epoch(loader, baseline)
    if how == "close":
        gen.close()  # type: ignore[attr-defined]
    elif how in ("exception", "interrupt"):
        kind = RuntimeError if how == "exception" else KeyboardInterrupt
        with pytest.raises(kind, match="consumer failed at batch 3"):
            fail_in_the_loop(gen, kind)
        del gen
    elif how == "dropped":
        del gen
        gc.collect()
    else:
        assert sum(len(x) for x, _ in gen) == 10_000 - BIG_BATCH
    assert readers() == []
    assert open_hdf5_files() == baseline


def test_consumer_exception_inside_a_plain_loop_cleans_up(big: EncodedSet) -> None:
    baseline = open_hdf5_files()
    loader = Loader(big.manifest, "train", batch_size=BIG_BATCH)

    def train_a_bit() -> None:
        for i, (x, _) in enumerate(loader.epoch(0)):
            if i == 2:
                assert len(readers()) == 1
                raise ValueError(f"diverged at batch {i} of {len(x)} samples")

    with pytest.raises(ValueError, match="diverged"):
        train_a_bit()
    assert readers() == []
    assert open_hdf5_files() == baseline


# --- damaged and foreign shard sets -----------------------------------------------------


def flip_a_byte_in_a_chunk(path: Path, dataset: str, chunk: int) -> None:
    """Corrupt one byte inside a stored chunk of `dataset`; the file size stays the same."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    offset = info.byte_offset + info.size // 2
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert path.stat().st_size == size


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dataset", ["images", "labels"])
def test_a_corrupted_shard_is_reported_by_name_in_the_consumer(
    small: EncodedSet, tmp_path: Path, dataset: str, shuffle: bool
) -> None:
    directory = copy_set(small.manifest, tmp_path / "set")
    manifest = open_set(directory)  # opened (and verified) before the damage
    victim = manifest.path(manifest.splits["train"].shards[5])
    flip_a_byte_in_a_chunk(victim, dataset, 0)
    with pytest.raises(ShardCorruptError, match=f"{victim.name}: sha256 differs"):
        open_set(directory)  # opened after it: refused at once

    baseline = open_hdf5_files()
    loader = Loader(manifest, "train", batch_size=7, shuffle=shuffle, seed=0)
    delivered: list[Batch] = []
    with pytest.raises(ShardCorruptError) as raised:
        delivered.extend(loader.epoch(0))
    assert victim.name in str(raised.value)
    if not shuffle:  # the sound shards before it were delivered first, then the error
        assert sum(len(x) for x, _ in delivered) >= 5 * 97 - 7
    assert readers() == []
    assert open_hdf5_files() == baseline
    # the damage is also what `verify` reports, for this shard only
    problems = [c.file for c in integrity.verify(manifest) if c.problem is not None]
    assert problems == [victim.name]


def edit_manifest(directory: Path, change: object) -> None:
    path = directory / MANIFEST
    doc = json.loads(path.read_text())
    change(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))


def test_a_missing_or_resized_shard_is_refused_by_name(small: EncodedSet, tmp_path: Path) -> None:
    directory = copy_set(small.manifest, tmp_path / "set")
    victim = directory / small.manifest.splits["train"].shards[3].file

    manifest = open_set(directory)
    victim.rename(victim.with_suffix(".away"))
    with pytest.raises(ShardSetError, match=victim.name):
        open_set(directory)
    # removed after the manifest was checked: reported by name when the loader reaches it
    with pytest.raises(ShardSetError, match=victim.name):
        batches_of(Loader(manifest, "train", batch_size=7))
    assert readers() == []

    victim.with_suffix(".away").rename(victim)
    with victim.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ShardSetError, match=victim.name):
        open_set(directory)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(schema_version=3), "unknown schema version 3"),
        (lambda d: d.update(schema_version=1), "unknown schema version 1"),
        (lambda d: d.pop("schema_version"), "unknown schema version None"),
        (lambda d: d.pop("splits"), "malformed manifest"),
        (lambda d: d.update(splits={}), "splits: none"),
        (lambda d: d["layout"].pop("compression"), "malformed manifest"),
        (lambda d: d["datasets"]["images"].update(dtype="float64"), "this pipeline reads"),
        (lambda d: d.update(features=100), "features 100: image_shape"),
        (lambda d: d["splits"]["train"].update(samples=1199), "does not count 1199"),
        (lambda d: d["splits"]["train"]["shards"][0].update(file="../x.h5"), "file '../x.h5'"),
        (lambda d: d.update(identity="0" * 64), "identity: does not match"),
    ],
)
def test_a_manifest_the_pipeline_does_not_understand_is_refused(
    small: EncodedSet, tmp_path: Path, change: object, needle: str
) -> None:
    directory = copy_set(small.manifest, tmp_path / "set")
    edit_manifest(directory, change)
    with pytest.raises(ShardSetError, match=needle):
        open_set(directory)


def test_a_manifest_that_is_not_json_is_refused(small: EncodedSet, tmp_path: Path) -> None:
    directory = copy_set(small.manifest, tmp_path / "set")
    (directory / MANIFEST).write_bytes(b'{"schema_version": 1, "name": ')
    with pytest.raises(ShardSetError, match="not valid JSON"):
        open_set(directory)
    (directory / MANIFEST).unlink()
    with pytest.raises(ShardSetError, match="missing"):
        open_set(directory)


# --- read-only directories, file locking, fork ------------------------------------------


def make_read_only(directory: Path) -> None:
    for path in (*directory.iterdir(), directory):
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def mount_read_only_tmpfs(mountpoint: Path, request: pytest.FixtureRequest) -> bool:
    """A tmpfs at `mountpoint`, to be remounted read-only; False if this process may not mount."""
    mountpoint.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mountpoint)],
            check=True, capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return False
    request.addfinalizer(lambda: subprocess.run(["umount", str(mountpoint)], check=True))
    return True


def read_only_digest(directory: Path) -> str:
    """A digest of a file-order and a shuffled epoch read from the shard set in `directory`."""
    digests = []
    for shuffle in (False, True):
        loader = Loader(open_set(directory), "train", batch_size=7, shuffle=shuffle, seed=1)
        digests.append(epoch_digest(loader.epoch(0)))
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()


# A child process that gives up root, checks that it cannot write, and reads the set. It
# reads once as root first, so that every module is imported: the interpreter may live where
# user nobody cannot read (under /root). Every file is opened again by the second read.
READ_AS_NOBODY = f"""from __future__ import annotations
import hashlib, os, sys
from pathlib import Path
from pipeline.data import Loader, open_set
{textwrap.dedent(inspect.getsource(epoch_digest))}
{textwrap.dedent(inspect.getsource(read_only_digest))}
directory = Path(sys.argv[1])
as_root = read_only_digest(directory)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    (directory / "probe").write_bytes(b"")
except PermissionError:
    pass
else:
    sys.exit("the directory is writable")
as_nobody = read_only_digest(directory)
print(as_root, as_nobody)
"""


def test_a_read_only_shard_directory_works(
    small: EncodedSet, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    expected = read_only_digest(small.manifest.directory)
    # 1. write permission removed (does not stop root, but stops everyone else)
    plain = copy_set(small.manifest, tmp_path / "chmod")
    make_read_only(plain)
    request.addfinalizer(lambda: plain.chmod(0o755))
    assert read_only_digest(plain) == expected

    checks = []
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            (plain / "probe").write_bytes(b"")
        checks.append("chmod")
    elif mount_read_only_tmpfs(tmp_path / "mnt", request):
        # 2. as root: a read-only file system, like a container volume mounted read-only
        mounted = copy_set(small.manifest, tmp_path / "mnt" / "set")
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "mnt")], check=True)
        with pytest.raises(OSError, match="Read-only file system") as refused:
            (mounted / "probe").write_bytes(b"")
        assert refused.value.errno == errno.EROFS
        assert read_only_digest(mounted) == expected
        unlocked = Loader(open_set(mounted), "train", batch_size=7, locking=False)
        assert epoch_digest(unlocked.epoch(0)) == epoch_digest(
            Loader(small.manifest, "train", batch_size=7).epoch(0)
        )
        checks.append("read-only mount")
    if os.geteuid() == 0:
        # 3. as root: a child that gives up root reads a copy without write permission
        with tempfile.TemporaryDirectory() as tmp:  # pytest's tmp_path is root-only
            Path(tmp).chmod(0o755)
            copy = copy_set(small.manifest, Path(tmp) / "set")
            make_read_only(copy)
            child = subprocess.run(
                [sys.executable, "-c", READ_AS_NOBODY, str(copy)],
                capture_output=True, text=True, check=False, cwd="/",
            )  # fmt: skip
            copy.chmod(0o755)
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == [expected, expected]
        checks.append("unprivileged child")
    assert checks


HOLD_OPEN_FOR_WRITING = textwrap.dedent(
    """
    import fcntl, sys
    # the exclusive flock HDF5's writer takes (h5py.File(path, "r+") would also change the
    # file's bytes, which the set's sha256 check then refuses before any locking question)
    f = open(sys.argv[1], "rb")
    fcntl.flock(f, fcntl.LOCK_EX)
    print("holding", flush=True)
    sys.stdin.read()
    """
)


def test_file_locking_can_be_turned_off(small: EncodedSet, tmp_path: Path) -> None:
    """`locking=False` is h5py.File(..., locking=False), the per-file form of the environment
    variable HDF5_USE_FILE_LOCKING=FALSE: for file systems without working POSIX locks (some
    NFS mounts), where HDF5 would otherwise fail to open any shard. Shown here with a lock
    that is really held: another process has a shard open for writing."""
    directory = copy_set(small.manifest, tmp_path / "set")
    manifest = open_set(directory)
    held = manifest.path(manifest.splits["train"].shards[0])
    expected = batches_of(Loader(manifest, "train", batch_size=7))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN_FOR_WRITING, str(held)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(ShardSetError, match=held.name):
            batches_of(Loader(manifest, "train", batch_size=7))  # locking on: refused
        assert_same_batches(
            batches_of(Loader(manifest, "train", batch_size=7, locking=False)), expected
        )
        # the environment variable has the same effect on a loader with locking on
        env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
        script = (
            "import sys; from pathlib import Path; from pipeline.data import open_set;"
            " from pipeline.data.loader import Loader;"
            " m = open_set(Path(sys.argv[1]));"
            " print(sum(len(x) for x, _ in Loader(m, 'train', batch_size=7).epoch(0)))"
        )
        child = subprocess.run(
            [sys.executable, "-c", script, str(directory)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == "1200"
    finally:
        holder.communicate("")
    assert readers() == []


def test_a_forked_child_reads_with_a_loader_made_before_the_fork(small: EncodedSet) -> None:
    baseline = open_hdf5_files()
    loaders = [
        Loader(small.manifest, "train", batch_size=7, shuffle=s, seed=2) for s in (False, True)
    ]
    assert open_hdf5_files() == baseline  # construction opens nothing: files open lazily
    expected = [epoch_digest(loader.epoch(1)) for loader in loaders]  # the parent reads first
    assert readers() == [] and open_hdf5_files() == baseline
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its digests, never return into pytest
        code = 1
        try:
            os.close(read_end)
            digests = [epoch_digest(loader.epoch(1)) for loader in loaders]
            os.write(write_end, json.dumps(digests).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reported = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(reported) == expected


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("batch_size", "group"), [(3, 5), (7, 1000), (128, 2)])
def test_grouped_items_are_the_same_batches_back_to_back(
    big: EncodedSet, shuffle: bool, batch_size: int, group: int
) -> None:
    """`group` only packs consecutive batches together: same rows, same order, resumable."""
    loader = Loader(big.manifest, "train", batch_size=batch_size, shuffle=shuffle, seed=3)
    for start in (0, 5):
        batches = list(loader.epoch(1, start_batch=start))
        items = list(loader.epoch(1, start_batch=start, group=group))
        assert all(len(x) % batch_size == 0 for x, _ in items[:-1])
        assert all(len(x) <= batch_size * group for x, _ in items)
        assert np.array_equal(
            np.concatenate([x for x, _ in items]), np.concatenate([x for x, _ in batches])
        )
        assert np.array_equal(
            np.concatenate([y for _, y in items]), np.concatenate([y for _, y in batches])
        )
