"""`csv:TRAIN,TEST`: one image per row, the label in the first column, then the pixels.

Both common MNIST layouts are read: "MNIST in CSV" (no header) and Kaggle's digit-recognizer
`train.csv` (header `label,pixel0,...`). A header is a first row whose first field is not a
number. Kaggle's `test.csv` carries no labels (header `pixel0,...`: it is for submissions) and
is refused: a test split without labels cannot be scored; cut a labelled test file off
`train.csv` instead (README). Pixels are integers 0..255, or floats in [0, 1] (a file with any
non-integer pixel is a float file; 0/1 rows in it mean 0 and 255). The image side is inferred
when the pixel count is a square; otherwise `image_shape` gives it (rows, cols[, channels]).

Rows are parsed in blocks as they are read, each block turned into bytes at once, so memory
follows the rows really present, never a count the file claims.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from pathlib import Path

import numpy as np

from pipeline.data.sources.base import Found, FoundSplit, RawFile, file_size, to_uint8
from pipeline.errors import SourceError

BLOCK_ROWS = 1024


def _rows(path: Path, image_shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """(n, rows, cols[, channels]) uint8 images and (n,) int64 labels of one file."""
    blocks: list[tuple[str, np.ndarray]] = []  # (kind, (rows, features) uint8)
    labels: list[np.ndarray] = []
    columns = 0
    with path.open("r", encoding="utf-8", errors="strict", newline="") as f:
        first = f.readline()
        line_no = 1
        cells = first.strip().split(",")
        if not first.strip():
            raise SourceError(f"{path}: empty file, no header or data rows")
        pending = [first]
        if not _is_number(cells[0]):  # a header row
            if re.fullmatch(r"pixel\d*", cells[0].strip().strip('"').lower()):
                raise SourceError(
                    f"{path}: has no label column (header starts {cells[0].strip()!r}); an "
                    "unlabelled file (Kaggle's test.csv) cannot be a split"
                )
            pending = []
            line_no = 2
        while True:
            chunk = pending + list(itertools.islice(f, BLOCK_ROWS))
            pending = []
            if not chunk:
                break
            start = line_no
            line_no += len(chunk)
            chunk = [line for line in chunk if line.strip()]
            if not chunk:
                continue
            values = _parse(chunk, path, start)
            columns = columns or values.shape[1]
            if values.shape[1] != columns:
                raise SourceError(
                    f"{path}: line {start}: {values.shape[1]} columns, earlier rows have {columns}"
                )
            kind, pixels = _block_pixels(values[:, 1:], path, start)
            blocks.append((kind, pixels))
            labels.append(_labels(values[:, 0], path, start))
    if not blocks:
        raise SourceError(f"{path}: no data rows")
    kinds = {kind for kind, _ in blocks}
    if {"int", "float"} <= kinds:
        raise SourceError(f"{path}: mixes integer pixels 0..255 with float pixels in [0, 1]")
    # rows of only 0 and 1 are bytes 0/1 in an integer file, and 0.0/1.0 in a float file
    scale = 255 if "float" in kinds else 1
    images = np.concatenate(
        [block * np.uint8(scale) if kind == "binary" else block for kind, block in blocks]
    )  # (n, features) uint8
    features = columns - 1
    shape = image_shape or _square(features, path)
    if math.prod(shape) != features:
        raise SourceError(f"{path}: {features} pixels per row do not make images of {list(shape)}")
    return images.reshape(len(images), *shape), np.concatenate(labels)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _parse(lines: list[str], path: Path, start: int) -> np.ndarray:
    try:
        return np.loadtxt(lines, delimiter=",", quotechar='"', dtype=np.float64, ndmin=2)
    except ValueError as exc:
        message = " ".join(str(exc).split(";")[0].split())
        # loadtxt counts rows within the block (from 0 in conversion errors, else from 1):
        # name the file's line instead
        first = 0 if "could not convert" in message else 1
        message = re.sub(r"row (\d+)", lambda m: f"line {start + int(m.group(1)) - first}", message)
        raise SourceError(f"{path}: {message}") from None


def _block_pixels(pixels: np.ndarray, path: Path, start: int) -> tuple[str, np.ndarray]:
    """One block's pixels as uint8 and their kind: int (0..255), float, or binary (0/1 only)."""
    if not np.isfinite(pixels).all():
        raise SourceError(f"{path}: lines {start}-{start + len(pixels) - 1}: non-finite pixel")
    if (pixels == np.rint(pixels)).all():
        if pixels.min() < 0 or pixels.max() > 255:
            raise SourceError(
                f"{path}: lines {start}-{start + len(pixels) - 1}: pixel values "
                f"{pixels.min():g}..{pixels.max():g} are outside 0..255"
            )
        kind = "binary" if pixels.max() <= 1 else "int"
        return kind, pixels.astype(np.uint8)
    if pixels.max() > 1:
        raise SourceError(
            f"{path}: lines {start}-{start + len(pixels) - 1}: mixes integer pixels 0..255 "
            f"with fractions (up to {pixels.max():g}); floats must lie in [0, 1]"
        )
    return "float", to_uint8(pixels, f"{path}: lines {start}-{start + len(pixels) - 1}")


def _labels(column: np.ndarray, path: Path, start: int) -> np.ndarray:
    if not (column == np.rint(column)).all() or column.min() < 0:
        bad = int(np.argmax((column != np.rint(column)) | (column < 0)))
        raise SourceError(f"{path}: line {start + bad}: label {column[bad]:g} is not a class index")
    return column.astype(np.int64)


def _square(features: int, path: Path) -> tuple[int, int]:
    side = math.isqrt(features)
    if side * side != features:
        raise SourceError(
            f"{path}: {features} pixels per row is not a square image; give the image shape"
        )
    return side, side


def read(train: Path, test: Path, spec: str, image_shape: tuple[int, ...] | None) -> Found:
    splits, files = {}, []
    for split, path in (("train", train), ("test", test)):
        stored = file_size(path)
        try:
            images, labels = _rows(path, image_shape)
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}: not a text file ({exc.reason})") from None
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
        splits[split] = FoundSplit(images, labels, str(path))
        with path.open("rb") as f:
            files.append(RawFile(path.name, hashlib.file_digest(f, "sha256").hexdigest(), stored))
    return Found(spec, train.stem, None, splits, files)
