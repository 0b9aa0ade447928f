"""Shard files: HDF5 files of one split's contiguous samples, written and read here.

One shard holds a contiguous run of samples of one split:
    images   (n, features) float32, pixel / 255 exactly
    labels   (n, classes)  float32, one-hot
    targets  (n,)          uint8, the class index
chunked in blocks of whole rows (the loader reads contiguous blocks), with HDF5's fletcher32
filter so a flipped byte is caught on read. Shard file names end in the first 8 hex digits of
the file's sha256: a rebuild never overwrites a shard an existing manifest still points to.
The set's description is `manifest.json` (modules `manifest`, `manifest_file`); its checks
are in `integrity`; `pipeline.data` is the entry point to all of them.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from pipeline.data.manifest import (
    Compression,
    ShardInfo,
    SplitInfo,
)
from pipeline.data.pixels import normalize
from pipeline.errors import ShardCorruptError, ShardSetError
from pipeline.fsutil import commit, sha256_file, tmp_path_for

__all__ = [
    "CHUNK_ROWS",
    "ShardWriter",
    "open_shard",
    "read_rows",
    "write_hdf5",
]

# 256 rows of 784 float32 = 784 KiB: fits HDF5's default 1 MiB chunk cache
CHUNK_ROWS = 256


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


class ShardWriter:
    """Writes one split as numbered shards; a shard is flushed when it reaches `shard_size`.

    Lifecycle: `write()` any number of blocks, then `finish()` flushes the last partial shard
    and returns the split's manifest entry. Each shard is written under a temporary name and
    renamed to its final, content-tagged name only once complete; `claim(path, sha256)` is
    called just before that rename (prepare records the name as its own, to clean up after a
    kill; False: an identical file is already there, kept as it is), and `written` maps each
    final name to its stat key and sha256 (verified as written).
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
        claim: Callable[[Path, str], bool],
    ) -> None:
        assert shard_size >= 1
        assert compression in set(Compression)
        self.directory, self.split, self.n_classes = directory, split, n_classes
        self.shard_size, self.compression, self.attrs = shard_size, compression, attrs
        self.claim = claim
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # uint8 images, labels
        self.pending_rows = 0
        self.shards: list[ShardInfo] = []
        self.histogram = np.zeros(n_classes, np.int64)
        # the split's content, in order: what the set's identity is made of
        self.images_sha, self.targets_sha = hashlib.sha256(), hashlib.sha256()
        self.written: dict[str, tuple[tuple[int, ...], str]] = {}

    def write(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Queue (n, features) uint8 images and (n,) labels; flush every full shard."""
        self.pending.append((images, labels))
        self.pending_rows += len(images)
        while self.pending_rows >= self.shard_size:
            self._flush(self.shard_size)

    def finish(self) -> SplitInfo:
        if self.pending_rows:
            self._flush(self.pending_rows)
        content = {"images": self.images_sha.hexdigest(), "targets": self.targets_sha.hexdigest()}
        samples = sum(s.samples for s in self.shards)
        return SplitInfo(samples, self.histogram.tolist(), content, self.shards)

    def _flush(self, rows: int) -> None:
        images = np.concatenate([i for i, _ in self.pending])
        labels = np.concatenate([lab for _, lab in self.pending])
        self.pending = [(images[rows:], labels[rows:])] if rows < len(images) else []
        self.pending_rows = len(images) - rows
        images, labels = images[:rows], labels[:rows]

        one_hot = np.zeros((rows, self.n_classes), np.float32)  # (n, classes)
        one_hot[np.arange(rows), labels] = 1.0
        arrays = {
            "images": normalize(images),  # (n, features) float32: the documented normalization
            "labels": one_hot,
            "targets": np.ascontiguousarray(labels, dtype=np.uint8),  # (n,)
        }
        self.images_sha.update(arrays["images"].data)
        self.targets_sha.update(arrays["targets"].data)
        self.histogram += np.bincount(arrays["targets"], minlength=self.n_classes)
        index = len(self.shards)
        attrs = {**self.attrs, "split": self.split, "shard_index": str(index)}
        tmp = tmp_path_for(self.directory / f"{self.split}-{index:05d}.h5")
        try:
            write_hdf5(tmp, arrays, attrs, compression=self.compression)
            digest = sha256_file(tmp)
            # the content tag is known only now, so the final name is chosen last
            final = self.directory / f"{self.split}-{index:05d}-{digest[:8]}.h5"
            if self.claim(final, digest):
                commit(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        info = os.stat(final)
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        self.written[final.name] = (key, digest)
        self.shards.append(ShardInfo(final.name, rows, info.st_size, digest))


# --- reading ----------------------------------------------------------------------------


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
