"""The shard set on disk: HDF5 shard files plus `manifest.json`, which describes and verifies them.

One shard is one HDF5 file holding a contiguous run of samples of one split:
    images   (n, features) float32, pixel / 255 exactly
    labels   (n, classes)  float32, one-hot
    targets  (n,)          uint8, the class index
chunked in blocks of whole rows (the loader reads contiguous blocks), with HDF5's fletcher32
filter so a flipped byte is caught on read. Shard file names end in the first 8 hex digits of
the file's sha256: a rebuild never overwrites a shard an existing manifest still points to.
The manifest is written last; its sha256 identifies the shard set (checkpoints record it).
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import __version__
from pipeline.errors import ShardCorruptError, ShardSetError
from pipeline.fsutil import commit, sha256_file, tmp_path_for

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-(?P<tag>[0-9a-f]{8})\.h5$")
# 256 rows of 784 float32 = 784 KiB: fits HDF5's default 1 MiB chunk cache
CHUNK_ROWS = 256


class Compression(StrEnum):
    """HDF5 compression of the shards' datasets (none reads fastest: see the README)."""

    none = "none"
    lzf = "lzf"
    gzip = "gzip"


DATASETS = {"images": "float32", "labels": "float32", "targets": "uint8"}


def provenance(command: str) -> dict[str, str]:
    """Who made a file and with what: stamped into the manifest and every shard."""
    return {
        "tool": "pipeline",
        "version": __version__,
        "command": command,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
    }


# --- writing ----------------------------------------------------------------------------


def write_hdf5(
    path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, str], *, compression: str
) -> None:
    """The one place that creates an HDF5 file: row-chunked, fletcher32, optional compression.

    The file is built in memory and written with ordinary file I/O: when HDF5's own writer
    hits a full disk, closing the file crashes the process (segfault), whereas a Python
    write raises OSError, which the caller turns into a clean error.
    """
    compress = None if compression == "none" else compression
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:  # in memory: nothing touches the disk yet
        for name, array in arrays.items():
            f.create_dataset(
                name,
                data=array,
                chunks=(min(CHUNK_ROWS, len(array)), *array.shape[1:]),
                fletcher32=True,
                compression=compress,
                shuffle=compress is not None,
            )
        f.attrs.update(attrs)
    with path.open("wb") as out:
        out.write(buffer.getbuffer())


@dataclass(frozen=True)
class ShardInfo:
    file: str
    samples: int
    bytes: int
    sha256: str


class ShardWriter:
    """Writes one split as numbered shards; a shard is flushed when it reaches `shard_size`.

    Lifecycle: `write()` any number of blocks, then `finish()` flushes the last partial shard
    and returns the index entries for the manifest. Each shard is written under a temporary
    name and renamed to its final, content-tagged name only once complete.
    """

    def __init__(
        self,
        *,
        directory: Path,
        split: str,
        n_classes: int,
        shard_size: int,
        compression: str,
        attrs: dict[str, str],
    ) -> None:
        assert shard_size >= 1
        assert compression in set(Compression)
        self.directory, self.split, self.n_classes = directory, split, n_classes
        self.shard_size, self.compression, self.attrs = shard_size, compression, attrs
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # uint8 images, labels
        self.pending_rows = 0
        self.shards: list[ShardInfo] = []
        self.written: list[Path] = []  # final paths, for cleanup if the run fails

    def write(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Queue (n, features) uint8 images and (n,) labels; flush every full shard."""
        self.pending.append((images, labels))
        self.pending_rows += len(images)
        while self.pending_rows >= self.shard_size:
            self._flush(self.shard_size)

    def finish(self) -> list[ShardInfo]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        return self.shards

    def _flush(self, rows: int) -> None:
        images = np.concatenate([i for i, _ in self.pending])
        labels = np.concatenate([lab for _, lab in self.pending])
        self.pending = [(images[rows:], labels[rows:])] if rows < len(images) else []
        self.pending_rows = len(images) - rows
        images, labels = images[:rows], labels[:rows]

        one_hot = np.zeros((rows, self.n_classes), np.float32)  # (n, classes)
        one_hot[np.arange(rows), labels] = 1.0
        arrays = {
            # float32 division, correctly rounded: the documented normalization
            "images": np.divide(images, np.float32(255), dtype=np.float32),  # (n, features)
            "labels": one_hot,
            "targets": np.ascontiguousarray(labels, dtype=np.uint8),  # (n,)
        }
        index = len(self.shards)
        attrs = {**self.attrs, "split": self.split, "shard_index": str(index)}
        tmp = tmp_path_for(self.directory / f"{self.split}-{index:05d}.h5")
        try:
            write_hdf5(tmp, arrays, attrs, compression=self.compression)
            digest = sha256_file(tmp)
            # the content tag is known only now, so the final name is chosen last
            final = self.directory / f"{self.split}-{index:05d}-{digest[:8]}.h5"
            # HDF5 output is deterministic: a rebuild can produce a file an existing manifest
            # already lists; such a file is not this run's to delete if the run fails
            existed = final.exists()
            commit(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        if not existed:
            self.written.append(final)
        self.shards.append(ShardInfo(final.name, rows, final.stat().st_size, digest))


# --- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitInfo:
    samples: int
    label_histogram: list[int]
    shards: list[ShardInfo]


@dataclass(frozen=True)
class Manifest:
    """A validated `manifest.json`, with the directory it describes."""

    directory: Path
    sha256: str  # of manifest.json's bytes: the identity of the shard set
    name: str
    classes: list[str]
    features: int
    image_shape: list[int]
    compression: str
    chunk_rows: int  # rows per HDF5 chunk: the loader reads whole chunks
    splits: dict[str, SplitInfo]
    raw: dict[str, Any] = field(repr=False)

    @property
    def identity(self) -> str:
        """What runs, checkpoints and reports record as the data they were made from."""
        return self.sha256

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ShardSetError(f"{self.directory}: no split {name!r} (has {sorted(self.splits)})")
        return self.splits[name]

    def path(self, shard: ShardInfo) -> Path:
        return self.directory / shard.file


def _parse(directory: Path, text: bytes) -> Manifest:
    where = directory / MANIFEST
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardSetError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        raise ShardSetError(
            f"{where}: unknown schema version {version!r} (this pipeline reads {SCHEMA_VERSION})"
        )
    try:
        dtypes = {k: v["dtype"] for k, v in doc["datasets"].items()}
        if dtypes != DATASETS:
            raise ShardSetError(f"{where}: unsupported datasets/dtypes {dtypes}")
        splits = {}
        for split, entry in doc["splits"].items():
            shards = [ShardInfo(**s) for s in entry["shards"]]
            for s in shards:
                if not SHARD_NAME.match(s.file) or not s.file.startswith(f"{split}-"):
                    raise ShardSetError(f"{where}: bad shard file name {s.file!r}")
            if sum(s.samples for s in shards) != entry["samples"]:
                raise ShardSetError(f"{where}: split {split!r} shard counts do not add up")
            splits[split] = SplitInfo(int(entry["samples"]), list(entry["label_histogram"]), shards)
        manifest = Manifest(
            directory=directory,
            sha256=hashlib.sha256(text).hexdigest(),
            name=str(doc["name"]),
            classes=[str(c) for c in doc["classes"]],
            features=int(doc["features"]),
            image_shape=[int(d) for d in doc["image_shape"]],
            compression=str(doc["layout"]["compression"]),
            chunk_rows=int(doc["layout"]["chunk_rows"]),
            splits=splits,
            raw=doc,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardSetError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
    if (
        manifest.features != int(np.prod(manifest.image_shape))
        or manifest.n_classes < 2
        or manifest.chunk_rows < 1
    ):
        raise ShardSetError(f"{where}: inconsistent features/image_shape/classes")
    return manifest


def load_manifest(directory: Path, *, check_files: bool = True) -> Manifest:
    """Read and validate a shard set's manifest; with `check_files`, every shard must be
    present with its listed size (cheap; `verify` does the full content check)."""
    where = directory / MANIFEST
    if not directory.is_dir():
        raise ShardSetError(f"{directory}: no such shard directory")
    try:
        text = where.read_bytes()
    except FileNotFoundError:
        raise ShardSetError(f"{where}: missing; is {directory} a prepared shard set?") from None
    except OSError as exc:
        raise ShardSetError(f"{where}: cannot read ({exc.strerror})") from None
    manifest = _parse(directory, text)
    if check_files:
        for split in manifest.splits.values():
            for shard in split.shards:
                path = manifest.path(shard)
                if not path.is_file():
                    raise ShardSetError(f"{path}: shard listed in the manifest is missing")
                if path.stat().st_size != shard.bytes:
                    raise ShardCorruptError(
                        f"{path}: {path.stat().st_size} bytes, the manifest lists {shard.bytes}"
                    )
    return manifest


def open_shard(path: Path, *, locking: bool = True) -> h5py.File:
    """Open a shard read-only. `locking=False` for file systems without POSIX locks (NFS)."""
    try:
        return h5py.File(path, "r", locking=locking)
    except FileNotFoundError:
        raise ShardSetError(f"{path}: shard listed in the manifest is missing") from None
    except OSError as exc:
        if "unable to lock file" in str(exc):
            raise ShardSetError(
                f"{path}: locked by another process ({exc}); on a file system without POSIX "
                "locks set HDF5_USE_FILE_LOCKING=FALSE"
            ) from None
        raise ShardCorruptError(f"{path}: not a readable HDF5 shard ({exc})") from None


def read_rows(f: h5py.File, path: Path, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) of a shard: (n, features) images and (n, classes) labels."""
    try:
        return f["images"][start:stop], f["labels"][start:stop]
    except (OSError, KeyError) as exc:
        raise ShardCorruptError(f"{path}: rows {start}:{stop} unreadable ({exc})") from None


# --- verification -----------------------------------------------------------------------


@dataclass(frozen=True)
class ShardCheck:
    split: str
    file: str
    samples: int
    problem: str | None  # None when the shard is sound


def _check_shard(
    manifest: Manifest, split: str, shard: ShardInfo, histogram: np.ndarray
) -> str | None:
    path = manifest.path(shard)
    if not path.is_file():
        return "missing"
    if path.stat().st_size != shard.bytes:
        return f"size {path.stat().st_size} bytes, manifest lists {shard.bytes}"
    if sha256_file(path) != shard.sha256:
        return "sha256 differs from the manifest"
    k, n = manifest.n_classes, shard.samples
    expected = {"images": (n, manifest.features), "labels": (n, k), "targets": (n,)}
    try:
        with open_shard(path) as f:
            for name, shape in expected.items():
                if name not in f:
                    return f"dataset {name!r} missing"
                found, dtype = f[name].shape, f[name].dtype
                if found != shape or dtype != DATASETS[name]:
                    return f"{name} is {found} {dtype}, expected {shape} {DATASETS[name]}"
            for start in range(0, n, 16 * CHUNK_ROWS):
                stop = min(n, start + 16 * CHUNK_ROWS)
                images, labels = read_rows(f, path, start, stop)
                targets = f["targets"][start:stop]
                if not ((images >= 0.0) & (images <= 1.0)).all():  # NaN fails this too
                    return f"image values outside [0, 1] in rows {start}:{stop}"
                if not (np.isin(labels, (0.0, 1.0)).all() and (labels.sum(axis=1) == 1).all()):
                    return f"labels not one-hot in rows {start}:{stop}"
                if not np.array_equal(labels.argmax(axis=1), targets):
                    return f"targets disagree with labels in rows {start}:{stop}"
                histogram += np.bincount(targets, minlength=k)[:k]
    except (ShardCorruptError, OSError) as exc:
        return f"unreadable: {exc}"
    return None


def verify(manifest: Manifest) -> Iterator[ShardCheck]:
    """Check every shard against the manifest, one result per shard, then each split's totals."""
    for split, info in manifest.splits.items():
        histogram = np.zeros(manifest.n_classes, np.int64)
        sound = True
        for shard in info.shards:
            problem = _check_shard(manifest, split, shard, histogram)
            sound = sound and problem is None
            yield ShardCheck(split, shard.file, shard.samples, problem)
        if sound and histogram.tolist() != info.label_histogram:
            yield ShardCheck(
                split,
                "(all shards)",
                info.samples,
                f"label histogram {histogram.tolist()} != manifest {info.label_histogram}",
            )
