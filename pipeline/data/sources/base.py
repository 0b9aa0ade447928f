"""What every source hands over, and the one validation path it all goes through.

A source reader returns a `Found`: its splits as arrays exactly as the files hold them, plus
what it knows (a dataset name, class names, the files it read). `validate()` then checks
counts, shapes, dtypes, pixel and label ranges and turns every form into one canonical one,
so that the same images arrive as the same bytes whichever way they were stored:

    images  (n, features) uint8, each image row-major (rows, cols[, channels])
    labels  (n,) uint8 class indices in [0, classes)

Float pixels in [0, 1] (npz, CSV) map to the stored value exactly as 8-bit pixels do:
pixel = rint(x * 255) as uint8, stored as float32(pixel) / float32(255). A float image that
was once k / 255 (in float32 or float64) is thus stored bit for bit like the byte k; finer
float data is rounded to the nearest of the 256 levels (at most 1/510 away).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.bounded import check_claim as check_claim  # the one ratio rule, re-exported
from pipeline.errors import SourceError

SPLITS = ("train", "test")  # what every source must provide; "val" may be carved from train
MAX_CLASSES = 256  # the shards store class indices as uint8


@dataclass(frozen=True)
class RawFile:
    name: str
    sha256: str  # of the (decompressed) content read
    bytes: int


@dataclass(frozen=True)
class RawSplit:
    images: np.ndarray  # (n, features) uint8
    labels: np.ndarray  # (n,) uint8


@dataclass(frozen=True)
class RawDataset:
    name: str
    classes: list[str]
    source: str  # the normalized spec, as the user would write it
    image_shape: tuple[int, ...]  # (rows, cols) or (rows, cols, channels)
    files: list[RawFile]
    splits: dict[str, RawSplit]
    val_fraction: float = 0.0  # the share of train carved into "val" (split.py), 0: none


@dataclass
class FoundSplit:
    images: np.ndarray  # (n, rows, cols) or (n, rows, cols, channels), any numeric dtype
    labels: np.ndarray  # (n,) any integer dtype
    where: str  # the file (or directory) the images came from, for error messages
    labels_where: str = ""  # the labels' file, when not `where`


@dataclass
class Found:
    """A source's data before validation."""

    source: str
    name: str
    classes: list[str] | None  # None: the source carries no class names
    splits: dict[str, FoundSplit]
    files: list[RawFile] = field(default_factory=list)


# --- bounded reading --------------------------------------------------------------------


class HashingReader:
    """Reads a binary stream exactly, hashing what it reads; a short read is `error`."""

    def __init__(self, stream: IO[bytes], where: str, *, error: type[SourceError]) -> None:
        self.stream, self.where, self.error = stream, where, error
        self.digest = hashlib.sha256()
        self.count = 0

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.stream.read(n)
        self.seen(data)
        if len(data) != n:
            raise self.error(f"{self.where}: truncated inside the {what}")
        return data

    def read_into(self, buffer: memoryview, what: str) -> None:
        done = 0
        while done < len(buffer):
            got = self.stream.readinto(buffer[done:])  # type: ignore[attr-defined]
            if not got:
                raise self.error(
                    f"{self.where}: truncated: the {what} ends after {done} of {len(buffer)} bytes"
                )
            done += got
        self.seen(buffer)

    def expect_end(self) -> None:
        """The stream must end here (reading on to its end also checks a gzip CRC and length)."""
        if self.stream.read(1):
            raise self.error(f"{self.where}: trailing bytes after {self.count} bytes of data")

    def seen(self, data: bytes | memoryview) -> None:
        self.digest.update(data)
        self.count += len(data)

    def record(self, name: str) -> RawFile:
        return RawFile(name, self.digest.hexdigest(), self.count)


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


# --- validation -------------------------------------------------------------------------


def not_utf8(text: str) -> str | None:
    """`text` shown with its bytes that are not UTF-8 as \\xNN, if it has any (Python keeps
    them, in file names and argv, as surrogates no encoder takes), else None."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return os.fsencode(text).decode(errors="backslashreplace")
    return None


def to_uint8(images: np.ndarray, where: str, start: int = 0) -> np.ndarray:
    """Any accepted pixel array -> uint8, by the rule in the module docstring; `images` are
    the split's from image `start` on (a streamed chunk), as messages number them."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind == "f":
        finite = np.isfinite(images)
        if not finite.all() or images.min() < 0.0 or images.max() > 1.0:
            bad = np.argwhere(~(finite & (images >= 0.0) & (images <= 1.0)))[0]
            raise SourceError(
                f"{where}: float pixel {images[tuple(bad)]} at image {start + bad[0]} "
                "is outside [0, 1]"
            )
        # float64 arithmetic: x * 255 of a float32 k / 255 lies within 1e-4 of k
        return np.rint(images.astype(np.float64) * 255.0).astype(np.uint8)
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            bad = int(np.argmax((images < 0) | (images > 255)).item())
            raise SourceError(
                f"{where}: pixel {images.flat[bad]} is outside 0..255 "
                f"(image {start + bad // max(1, math.prod(images.shape[1:]))})"
            )
        return images.astype(np.uint8)
    raise SourceError(f"{where}: pixels of dtype {images.dtype}; expected uint8 or float in [0, 1]")


def image_shape_of(dims: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The image shape of an (n, ...) array's `dims` (or a header's claim of them)."""
    shape = tuple(int(d) for d in dims[1:])
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]  # one channel is grayscale: stored like (rows, cols) data
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
        raise SourceError(
            f"{where}: images of shape {list(dims[1:])}; expected (rows, cols), "
            "(rows, cols, 1) or (rows, cols, 3)"
        )
    if 0 in shape:
        raise SourceError(f"{where}: images of shape {list(shape)} hold no pixels")
    return shape


def label_type(ndim: int, dtype: np.dtype, where: str) -> None:
    """Labels must be 1-D integers (checked on a header before any is read)."""
    if ndim != 1 or dtype.kind not in "iu":
        raise SourceError(f"{where}: labels are {ndim}-D {dtype}; expected 1-D integers")


def class_indices(
    labels: np.ndarray, where: str, classes: int | None, start: int = 0
) -> np.ndarray:
    """(k,) integer labels, the split's from sample `start` on -> (k,) uint8 class indices,
    each checked against the class count (`classes`, or MAX_CLASSES when the source names
    none) before anything is sized by one."""
    if labels.size and labels.min() < 0:
        bad = int(np.argmax(labels < 0))
        raise SourceError(f"{where}: label {labels[bad]} at index {start + bad} is negative")
    limit = MAX_CLASSES if classes is None else classes
    if labels.size and labels.max() >= limit:
        bad = int(np.argmax(labels >= limit))
        why = (
            f": at most {MAX_CLASSES} classes are supported (labels 0..{MAX_CLASSES - 1})"
            if classes is None
            else f" for {classes} classes"
        )
        raise SourceError(
            f"{where}: label {labels[bad]} at index {start + bad} is out of range{why}"
        )
    return labels.astype(np.uint8)


def _labels(labels: np.ndarray, n: int, where: str, classes: int | None) -> np.ndarray:
    """(n,) integer labels -> (n,) uint8 class indices (`class_indices`)."""
    label_type(labels.ndim, labels.dtype, where)
    label_count(n, len(labels), where)
    return class_indices(labels, where, classes)


def label_count(images: int, labels: int, where: str) -> None:
    if images != labels:
        raise SourceError(f"{where}: {images} images but {labels} labels")


def _numbered(found: Found, labels: dict[str, np.ndarray]) -> list[str]:
    """Class names for a source that has none: the label numbers 0..max, each one present in
    train (a gap means a corrupt label, or classes the user must name with `classes`).
    `labels` are uint8 (checked by `_labels`): the count below is at most MAX_CLASSES long."""
    top = max(int(lab.max()) for lab in labels.values())
    present = np.bincount(labels["train"], minlength=top + 1) > 0
    if not present.all():
        gap = int(np.argmin(present))
        for split, lab in labels.items():
            if (lab > gap).any():
                bad = int(np.argmax(lab > gap))
                where = found.splits[split].labels_where or found.splits[split].where
                raise SourceError(
                    f"{where}: label {lab[bad]} at index {bad} leaves class {gap} without a "
                    "train sample; if the classes are right, name them (classes)"
                )
    return [str(k) for k in range(max(top + 1, 2))]


def check_names(names: list[str]) -> None:
    if len(names) < 2 or len(set(names)) != len(names):
        raise SourceError(
            "need at least two distinct class names", param="classes", value=",".join(names)
        )
    if len(names) > MAX_CLASSES:
        raise SourceError(
            f"{len(names)} classes; at most {MAX_CLASSES} are supported",
            param="classes",
            value=f"{names[0]},...",
        )


def validate(
    found: Found, *, name: str | None = None, classes: list[str] | None = None
) -> RawDataset:
    """Check a source's data and bring it into the canonical form (see the module docstring)."""
    for param, texts in (("name", [name] if name else []), ("classes", classes or [])):
        if any(not_utf8(text) for text in texts):  # the manifest records them as text
            shown = ",".join(not_utf8(text) or text for text in texts)
            raise SourceError("not valid UTF-8", param=param, value=shown)
    missing = [s for s in SPLITS if s not in found.splits]
    if missing:
        raise SourceError(f"{found.source}: no {' or '.join(missing)} split")
    given = classes or found.classes
    if given:
        check_names(given)
    shapes: dict[str, tuple[int, ...]] = {}
    labels: dict[str, np.ndarray] = {}  # (n,) uint8 per split
    for split, data in found.splits.items():
        if len(data.images) == 0:
            raise SourceError(f"{data.where}: the {split} split holds no images")
        shapes[split] = image_shape_of(data.images.shape, data.where)
        where = data.labels_where or data.where
        labels[split] = _labels(data.labels, len(data.images), where, len(given) if given else None)
    if len(set(shapes.values())) != 1:
        found_shapes = ", ".join(f"{s} {list(shape)}" for s, shape in shapes.items())
        raise SourceError(f"{found.source}: train and test images differ in shape ({found_shapes})")

    names = given or _numbered(found, labels)
    splits: dict[str, RawSplit] = {}
    for split, data in found.splits.items():
        images = to_uint8(data.images, data.where)  # (n, rows, cols[, channels]) uint8
        splits[split] = RawSplit(
            np.ascontiguousarray(images).reshape(len(images), -1),  # (n, features)
            labels[split],
        )
    shape = shapes["train"]
    return RawDataset(name or found.name, list(names), found.source, shape, found.files, splits)
