"""Checking a shard set before its data is used: every claim of the manifest against the files.

`open_set` is how train, evaluate and verify open a set. It holds the directory's reader lock
(so a `prepare --force` keeps the old files while we read them), parses the manifest, and for
each shard checks, before any array is allocated from a claimed size:
  - it is a regular file (not missing, not a device) of the listed size;
  - its bytes hash to the listed sha256 (a result cached per file, see below);
  - its datasets exist with the listed shapes, dtypes, chunking and compression, and every
    chunk is really stored (HDF5 reads missing chunks as zeros of any claimed size).
The loader then checks that each file it opens is the very file verified (same inode, size,
mtime, ctime). A set `prepare` just wrote (each shard hashed as it was written) takes the
same lock with `under_reader_lock`. `verify` adds the full content checks (values, one-hot
labels, the split's content hashes behind the identity).

The sha256 cache: one empty file per verified (device, inode, size, mtime_ns, ctime_ns,
sha256) in `$PIPELINE_CACHE_DIR` (default `$XDG_CACHE_HOME/pipeline/verified`, else
`~/.cache/pipeline/verified`), never inside the shard directory (often read-only). Any write to a
shard changes its ctime, which the user cannot set back, so an entry never outlives a content
change. An unwritable cache only costs speed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.data.manifest import DATASETS, Manifest, ShardInfo
from pipeline.data.manifest_file import read
from pipeline.data.shards import open_shard, read_rows
from pipeline.errors import ShardCorruptError, ShardSetError
from pipeline.fsutil import ReaderLock, file_type

StatKey = tuple[int, ...]  # device, inode, size, mtime_ns, ctime_ns
VERIFY_ROWS = 4096  # verify reads and checks this many rows at a time


def stat_key(info: os.stat_result) -> StatKey:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def cache_dir() -> Path:
    if explicit := os.environ.get("PIPELINE_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pipeline" / "verified"


def _entry(key: StatKey, sha256: str) -> Path:
    name = hashlib.sha256(f"{key}:{sha256}".encode()).hexdigest()
    return cache_dir() / name[:2] / name


def _known(key: StatKey, sha256: str) -> bool:
    try:
        return _entry(key, sha256).exists()
    except OSError:  # a cache we may not look into (another user's home): verify again
        return False


def remember(key: StatKey, sha256: str) -> None:
    """Record that the file with `key` hashes to `sha256` (best effort)."""
    entry = _entry(key, sha256)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.touch()
    except OSError:
        pass  # a read-only home: verify again next time


def _sha256_checked(path: Path, shard: ShardInfo) -> tuple[StatKey | None, str | None]:
    """(key, problem): the file's stat key once its bytes hash to the listed sha256."""
    try:
        with path.open("rb") as f:
            before = stat_key(os.fstat(f.fileno()))
            if _known(before, shard.sha256):
                return before, None
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            if stat_key(os.fstat(f.fileno())) != before:
                return None, "changed while it was being verified"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if digest != shard.sha256:
        return None, "sha256 differs from the manifest"
    remember(before, shard.sha256)
    return before, None


def _datasets_problem(f: h5py.File, manifest: Manifest, rows: int) -> str | None:
    """The shard's datasets against the manifest's claims; reads no data."""
    widths = {"images": (manifest.features,), "labels": (manifest.n_classes,), "targets": ()}
    compression = None if manifest.compression == "none" else manifest.compression
    for name, width in widths.items():
        dataset = f.get(name)
        if not isinstance(dataset, h5py.Dataset):
            return f"dataset {name!r} missing"
        shape, dtype = (rows, *width), np.dtype(DATASETS[name])
        if dataset.shape != shape or dataset.dtype != dtype:
            return f"{name} is {dataset.shape} {dataset.dtype}, expected {shape} {dtype}"
        chunk = min(manifest.chunk_rows, rows)
        if dataset.chunks != (chunk, *width) or dataset.compression != compression:
            return (
                f"{name} is stored in chunks {dataset.chunks} ({dataset.compression}), the "
                f"manifest says {(chunk, *width)} ({manifest.compression})"
            )
        stored, expected = dataset.id.get_num_chunks(), math.ceil(rows / chunk)
        if stored != expected or not dataset.fletcher32:
            return (
                f"{name} stores {stored} of its {expected} chunks (fletcher32 {dataset.fletcher32})"
            )
    return None


def shard_problem(manifest: Manifest, shard: ShardInfo) -> tuple[StatKey | None, str | None]:
    """All open-time checks of one shard: (the verified file's key, None) or (None, problem)."""
    path = manifest.path(shard)
    try:
        info = path.stat()
    except FileNotFoundError:
        return None, "missing" + (" (a dangling symlink)" if path.is_symlink() else "")
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return None, f"is {file_type(info.st_mode)}, not a shard file"
    if info.st_size != shard.bytes:
        return None, f"size {info.st_size} bytes, manifest lists {shard.bytes}"
    key, problem = _sha256_checked(path, shard)
    if problem is not None:
        return None, problem
    try:
        # metadata only, of bytes just hashed: HDF5's file lock (for files being written) is
        # not needed, and would refuse sets on file systems without POSIX locks
        with open_shard(path, locking=False) as f:
            problem = _datasets_problem(f, manifest, shard.samples)
            if problem is None and stat_key(os.fstat(f.id.get_vfd_handle())) != key:
                problem = "changed while it was being verified"
    except ShardSetError as exc:
        return None, f"unreadable: {exc.detail.partition(': ')[2] or exc}"
    return (None, problem) if problem else (key, None)


def open_set(directory: Path, *, hold: bool = True) -> Manifest:
    """The verified shard set in `directory` (see the module's docstring); with `hold`, the
    returned Manifest holds the reader lock while it lives."""
    lock = ReaderLock(directory) if hold and directory.is_dir() else None
    manifest = dataclasses.replace(read(directory), lock=lock)
    for split in manifest.splits.values():
        for shard in split.shards:
            key, problem = shard_problem(manifest, shard)
            if problem is not None:
                error = ShardSetError if problem.startswith("missing") else ShardCorruptError
                where = "shard listed in the manifest is" if problem == "missing" else ""
                raise error(f"{manifest.path(shard)}: {where}{' ' if where else ''}{problem}")
            assert key is not None
            manifest.verified[shard.file] = key
    return manifest


def under_reader_lock(manifest: Manifest) -> Manifest:
    """`manifest`, holding its directory's reader lock while it lives: for a set verified
    without it (the one `prepare` just wrote, hashing each shard as it wrote it). Under the
    lock, every shard must still be the very file verified: a `prepare --force` that replaced
    the set in between is refused here, not read."""
    if manifest.lock is not None:
        return manifest
    directory = manifest.directory
    held = dataclasses.replace(manifest, lock=ReaderLock(directory) if directory.is_dir() else None)
    for split in held.splits.values():
        for shard in split.shards:
            try:
                key: StatKey | None = stat_key(held.path(shard).stat())
            except OSError:
                key = None
            if key is None or held.verified.get(shard.file) != key:
                raise ShardCorruptError(
                    f"{held.path(shard)}: changed since the set was written and verified; "
                    "run the command again"
                )
    return held


def check_opened(manifest: Manifest, shard: ShardInfo, f: h5py.File) -> None:
    """Refuse to read a shard file other than the one `open_set` verified."""
    key = stat_key(os.fstat(f.id.get_vfd_handle()))
    if manifest.verified.get(shard.file) != key:
        raise ShardCorruptError(
            f"{manifest.path(shard)}: changed since the set was opened and verified; "
            "run the command again"
        )


# --- verify: the full content check -------------------------------------------------------


@dataclass(frozen=True)
class ShardCheck:
    split: str
    file: str
    samples: int
    problem: str | None  # None when the shard is sound


def _content_problem(
    f: h5py.File, path: Path, manifest: Manifest, rows: int, split: _SplitTotals
) -> str | None:
    k = manifest.n_classes
    for start in range(0, rows, VERIFY_ROWS):
        stop = min(rows, start + VERIFY_ROWS)
        images, labels = read_rows(f, path, start, stop)
        targets = f["targets"][start:stop]
        if not ((images >= 0.0) & (images <= 1.0)).all():  # NaN fails this too
            return f"image values outside [0, 1] in rows {start}:{stop}"
        if not (np.isin(labels, (0.0, 1.0)).all() and (labels.sum(axis=1) == 1).all()):
            return f"labels not one-hot in rows {start}:{stop}"
        if not np.array_equal(labels.argmax(axis=1), targets):
            return f"targets disagree with labels in rows {start}:{stop}"
        split.histogram += np.bincount(targets, minlength=k)[:k]
        split.images.update(np.ascontiguousarray(images).data)
        split.targets.update(np.ascontiguousarray(targets).data)
    return None


class _SplitTotals:
    def __init__(self, n_classes: int) -> None:
        self.histogram = np.zeros(n_classes, np.int64)
        self.images, self.targets = hashlib.sha256(), hashlib.sha256()


def verify(manifest: Manifest) -> Iterator[ShardCheck]:
    """Check every shard as `open_set` does, then its content; one result per shard, then
    each split's totals (label histogram, the content hashes the identity is made of)."""
    for split, info in manifest.splits.items():
        totals, sound = _SplitTotals(manifest.n_classes), True
        for shard in info.shards:
            path = manifest.path(shard)
            _, problem = shard_problem(manifest, shard)
            if problem is None:
                try:
                    with open_shard(path) as f:
                        problem = _content_problem(f, path, manifest, shard.samples, totals)
                except (ShardSetError, OSError) as exc:
                    problem = f"unreadable: {exc}"
            sound = sound and problem is None
            yield ShardCheck(split, shard.file, shard.samples, problem)
        if not sound:
            continue
        found = {"images": totals.images.hexdigest(), "targets": totals.targets.hexdigest()}
        if totals.histogram.tolist() != info.label_histogram:
            problem = f"label histogram {totals.histogram.tolist()} != {info.label_histogram}"
        elif found != info.content:
            problem = "content differs from the manifest's hashes (its identity is not this data)"
        else:
            continue
        yield ShardCheck(split, "(all shards)", info.samples, problem)
