"""`npz:FILE`: the Keras `mnist.npz` layout, arrays `x_train`, `y_train`, `x_test`, `y_test`.

Images (n, rows, cols) or (n, rows, cols, channels), uint8 or float in [0, 1]; labels (n,)
or (n, 1) integers. An optional `classes` array of strings names the classes. The file is a
zip of .npy members, read by `pipeline.bounded`: each member's declared sizes and its .npy
header (shape, dtype) are checked against the bytes really there before it is read, without
pickle; an archive naming one array twice (`x_train.npy` and `x_train`) is refused.

`stream` reads one split a chunk of rows at a time, straight from the (inflating) members.
An array stored in Fortran order (column-major, as `np.save` writes a transposed view) has
no contiguous rows: it is read whole, then chunked, and its memory follows its size.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline import bounded
from pipeline.data.sources.base import (
    Found,
    FoundSplit,
    RawFile,
    file_size,
    image_shape_of,
    label_count,
    label_type,
)
from pipeline.data.sources.stream import Chunk, SplitChunks
from pipeline.errors import SourceError

KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
WANTED = [key for pair in KEYS.values() for key in pair]


def _unreadable(path: Path, exc: Exception) -> SourceError:
    return SourceError(f"{path}: not a readable npz file ({' '.join(str(exc).split())})")


def _classes(path: Path, classes: np.ndarray | None) -> list[str] | None:
    if classes is None:
        return None
    if classes.ndim != 1 or classes.dtype.kind != "U":
        raise SourceError(f"{path}:classes: expected a 1-D array of strings")
    return [str(c) for c in classes]


def read(path: Path, spec: str) -> Found:
    stored = file_size(path)
    try:
        with path.open("rb") as f:
            arrays = bounded.read_npz(
                f, stored, str(path), error=SourceError, names=[*WANTED, "classes"],
                required=WANTED,
            )  # fmt: skip
            f.seek(0)  # the digest of the very bytes read (a replaced file keeps its inode)
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except bounded.READ_ERRORS as exc:
        raise _unreadable(path, exc) from None

    splits = {}
    for split, (x, y) in KEYS.items():
        labels = arrays[y]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        splits[split] = FoundSplit(arrays[x], labels, f"{path}:{x}", f"{path}:{y}")
    classes = _classes(path, arrays.get("classes"))
    return Found(spec, path.stem, classes, splits, [RawFile(path.name, digest, stored)])


@contextmanager
def stream(path: Path, split: str, rows: int) -> Iterator[SplitChunks]:
    """The split `rows` samples at a time, every member and header checked as `read` checks
    them (`bounded.headers`) before the first row is read."""
    x, y = KEYS[split]
    stored, where = file_size(path), str(path)
    try:
        f = path.open("rb")
        zf = zipfile.ZipFile(f)
    except bounded.READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    with f, zf:
        try:
            npy = bounded.headers(zf, stored, where, error=SourceError,
                                  names=[x, y, "classes"], required=WANTED)  # fmt: skip
            names = (
                bounded.read_npy(zf, npy["classes"], error=SourceError)
                if "classes" in npy
                else None
            )
        except bounded.READ_ERRORS as exc:
            raise _unreadable(path, exc) from None
        images, labels = npy[x], npy[y]
        image_shape_of(images.shape, images.where)  # (n, ...): 0-d or 1-d is refused here
        label_dims = labels.shape[:1] if labels.shape[1:] == (1,) else labels.shape
        label_type(len(label_dims), labels.dtype, f"{path}:{y}")
        label_count(images.shape[0], label_dims[0], f"{path}:{y}")

        def chunks() -> Iterator[Chunk]:
            try:
                with _rows(zf, images, rows) as xs, _rows(zf, labels, rows) as ys:
                    for chunk in zip(xs, ys, strict=True):
                        yield chunk[0], chunk[1].reshape(-1)
            except bounded.READ_ERRORS as exc:
                raise _unreadable(path, exc) from None

        yield SplitChunks(
            images.shape, chunks(), f"{path}:{x}", f"{path}:{y}", _classes(path, names)
        )


@contextmanager
def _rows(zf: zipfile.ZipFile, npy: bounded.Npy, rows: int) -> Iterator[Iterator[np.ndarray]]:
    """A member's array `rows` rows at a time, (k, *shape[1:]); a Fortran-order one whole."""
    if npy.fortran:
        array = bounded.read_npy(zf, npy, error=SourceError)
        yield (array[at : at + rows] for at in range(0, len(array), rows))
        return
    with bounded.npy_data(zf, npy, error=SourceError) as f:
        n = npy.shape[0]
        yield (
            bounded.read_rows(f, npy, at, min(at + rows, n), error=SourceError)
            for at in range(0, n, rows)
        )
