"""`csv:TRAIN,TEST`: one image per row, the label in the first column, then the pixels.

Both common MNIST layouts are read: "MNIST in CSV" (no header) and Kaggle's digit-recognizer
`train.csv` (header `label,pixel0,...`). A header is a first row whose first field (a UTF-8
byte order mark and quotes aside) is not a number, and not empty before numbers (a data row
missing its label). Kaggle's `test.csv` carries no labels
(header `pixel0,...`: it is for submissions) and is refused: a test split without labels cannot
be scored; cut a labelled test file off `train.csv` instead (README). The image side is
inferred when the pixel count is a square; otherwise `image_shape` gives it (rows, cols[, ch]).

Pixels are typed by how the file writes them, as a CSV reader types a column, never by their
values: if any pixel of the file is written as a float (a `.` or an exponent: `0.5`, `1.0`,
`1e-3`), all its pixels are floats in [0, 1] (`0` and `1` among them are 0.0 and 1.0, as
`%g` writes them) and become rint(x * 255); otherwise they are integers 0..255, stored as is.

Memory follows the rows really present, never a count the file claims: lines are read at most
MAX_LINE_CHARS at a time (a longer one is refused), parsed in blocks of at most BLOCK_ROWS rows
and BLOCK_CHARS characters, each block turned into bytes at once.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.data.sources.base import (
    MAX_CLASSES,
    Found,
    FoundSplit,
    RawFile,
    file_size,
    to_uint8,
)
from pipeline.data.sources.stream import Chunk, SplitChunks
from pipeline.errors import SourceError

BLOCK_ROWS = 1024
BLOCK_CHARS = 1 << 22
# a row is one image: 4 MiB holds a million pixels written `255,` (parsing costs ~15x a line)
MAX_LINE_CHARS = 1 << 22
FLOAT_TEXT = re.compile(r"[.eE]")  # a cell written as a float, not an integer


class _Block:
    """Consecutive non-blank lines parsed at once, kept as `pixels` (rows, features) uint8 read
    by how the block writes them (module docstring) and `labels` (rows,) int64."""

    def __init__(self, batch: list[tuple[int, str]], path: Path, columns: int | None) -> None:
        self.numbers, self.path = [n for n, _ in batch], path  # each row's line in the file
        values = _parse([line for _, line in batch], self.numbers, path)  # (rows, columns) f8
        self.columns = values.shape[1]
        if columns is not None and self.columns != columns:
            raise SourceError(
                f"{self.where(0)}: {self.columns} columns, earlier rows have {columns}"
            )
        if self.columns < 2:
            raise SourceError(f"{self.where(0)}: a label but no pixels (one column)")
        # the first line with a pixel (not the label) written as a float, if any
        self.float_line = next((n for n, line in batch if _float_written(line)), None)
        self.floats = self.float_line is not None
        self.pixels = self._pixels(values[:, 1:])
        self.labels = self._labels(values[:, 0])

    def where(self, row: int) -> str:
        return f"{self.path}: line {self.numbers[row]}"

    def _pixels(self, pixels: np.ndarray) -> np.ndarray:
        high = 1.0 if self.floats else 255.0
        bad = ~(np.isfinite(pixels) & (pixels >= 0.0) & (pixels <= high))  # NaN is bad too
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            why = "in a file of float pixels; floats must lie in [0, 1]"
            raise SourceError(
                f"{self.where(row)}: pixel {pixels[row, col]:g} "
                + (why if self.floats else "is outside 0..255")
            )
        if self.floats:
            return to_uint8(pixels, self.where(0))
        return pixels.astype(np.uint8)  # integer-written: whole numbers (no '.' nor exponent)

    def _labels(self, column: np.ndarray) -> np.ndarray:
        good = np.isfinite(column) & (column == np.rint(column)) & (column >= 0)
        good &= column < MAX_CLASSES  # before the cast: 1e30 or inf have no int64
        if not good.all():
            bad = int(np.argmin(good))
            raise SourceError(
                f"{self.where(bad)}: label {column[bad]:g} is not a class index "
                f"(0..{MAX_CLASSES - 1})"
            )
        return column.astype(np.int64)


def _lines(f: TextIO, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; none may exceed MAX_LINE_CHARS."""
    number = 0
    while True:
        try:
            line = f.readline(MAX_LINE_CHARS + 1)
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}: not a text file ({exc.reason})") from None
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise SourceError(
                f"{path}: line {number} is longer than {MAX_LINE_CHARS:,} characters; "
                "a row holds one image (label, then pixels)"
            )
        if line.strip():
            yield number, line


def _batches(
    lines: Iterator[tuple[int, str]], rows: int = BLOCK_ROWS
) -> Iterator[list[tuple[int, str]]]:
    """The lines in batches of at most `rows` lines and about BLOCK_CHARS characters."""
    batch: list[tuple[int, str]] = []
    chars = 0
    for number, line in lines:
        batch.append((number, line))
        chars += len(line)
        if len(batch) == rows or chars >= BLOCK_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _is_header(first: str, path: Path) -> bool:
    cell, _, rest = (c.strip().strip('"').strip() for c in first.partition(","))
    if _is_number(cell):
        return False
    if not cell and all(_is_number(c.strip().strip('"')) for c in rest.split(",")):
        return False  # a data row missing its label (its pixels are numbers): refused as one
    if re.fullmatch(r"pixel\d*", cell.lower()):
        raise SourceError(
            f"{path}: has no label column (header starts {cell!r}); an unlabelled file "
            "(Kaggle's test.csv) cannot be a split"
        )
    return True


def _float_written(line: str) -> bool:
    """A pixel of the line (the label aside) is written as a float."""
    return FLOAT_TEXT.search(line, line.find(",") + 1) is not None


def _data_lines(f: TextIO, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each data row: `_lines` without a header."""
    lines = _lines(f, path)
    first = next(lines, None)
    if first is None:
        raise SourceError(f"{path}: empty file, no header or data rows")
    if not _is_header(first[1], path):
        yield first
    yield from lines


def _blocks(f: TextIO, path: Path, rows: int = BLOCK_ROWS) -> Iterator[_Block]:
    """The file's rows parsed a block (`_batches`) at a time, every block as wide as the first."""
    columns = None
    for batch in _batches(_data_lines(f, path), rows):
        block = _Block(batch, path, columns)
        columns = block.columns
        yield block


def _opened(path: Path) -> TextIO:
    try:  # utf-8-sig: a byte order mark (Excel, Notepad) is no part of the first field
        return path.open("r", encoding="utf-8-sig", errors="strict", newline="")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _shape(block: _Block, path: Path, image_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    features = block.columns - 1
    shape = image_shape or _square(features, path)
    if math.prod(shape) != features:
        raise SourceError(f"{path}: {features} pixels per row do not make images of {list(shape)}")
    return shape


def _typed(block: _Block, float_line: int | None) -> np.ndarray:
    """The block's pixels under the file's one type (`float_line`: the file's first line with
    a float pixel, None: an integer file): in a float file, an integer-written block may hold
    only 0 and 1 (checked), which mean 0.0 and 1.0."""
    if float_line is None or block.floats:
        return block.pixels
    if block.pixels.max() > 1:
        row = int(np.argmax(block.pixels.max(axis=1) > 1))
        raise SourceError(
            f"{block.where(row)}: pixel {block.pixels[row].max()} in a file of float pixels "
            f"(line {float_line}); floats must lie in [0, 1]"
        )
    return block.pixels * np.uint8(255)


def _rows(path: Path, image_shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """(n, rows, cols[, channels]) uint8 images and (n,) int64 labels of one file."""
    with _opened(path) as f:
        blocks = list(_blocks(f, path))
    if not blocks:
        raise SourceError(f"{path}: no data rows")
    float_line = next((b.float_line for b in blocks if b.floats), None)
    images = np.concatenate([_typed(b, float_line) for b in blocks])  # (n, features) uint8
    shape = _shape(blocks[0], path, image_shape)
    return images.reshape(len(images), *shape), np.concatenate([b.labels for b in blocks])


def _scan(path: Path) -> tuple[int, int | None]:
    """The file's data rows and its first line with a float pixel (None: none), from its text
    alone: what the type of a block read before that line depends on."""
    rows, float_line = 0, None
    with _opened(path) as f:
        for number, line in _data_lines(f, path):
            rows += 1
            if float_line is None and _float_written(line):
                float_line = number
    return rows, float_line


@contextmanager
def stream(path: Path, rows: int, image_shape: tuple[int, ...] | None) -> Iterator[SplitChunks]:
    """One file as a split, in blocks of at most `rows` (and BLOCK_ROWS) rows: the text
    scanned first for the row count and the file's type (`_scan`: no parsing), then one
    parsing pass, each block checked and typed as `_rows` does."""
    count, float_line = _scan(path)
    with _opened(path) as f:
        blocks = _blocks(f, path, min(rows, BLOCK_ROWS))
        first = next(blocks, None)
        if first is None:
            raise SourceError(f"{path}: no data rows")
        shape = _shape(first, path, image_shape)

        def chunks() -> Iterator[Chunk]:
            for block in itertools.chain([first], blocks):
                pixels = _typed(block, float_line)  # (k, features) uint8
                yield pixels.reshape(len(pixels), *shape), block.labels

        yield SplitChunks((count, *shape), chunks(), str(path))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _parse(lines: list[str], numbers: list[int], path: Path) -> np.ndarray:
    try:
        return np.loadtxt(lines, delimiter=",", quotechar='"', dtype=np.float64, ndmin=2)
    except ValueError as exc:
        message = " ".join(str(exc).split(";")[0].split())
        # loadtxt counts rows within the block (from 0 in conversion errors, else from 1):
        # name the file's line instead
        first = 0 if "could not convert" in message else 1
        message = re.sub(
            r"row (\d+)",
            lambda m: f"line {numbers[min(int(m.group(1)) - first, len(numbers) - 1)]}",
            message,
        )
        raise SourceError(f"{path}: {message}") from None


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
        images, labels = _rows(path, image_shape)
        splits[split] = FoundSplit(images, labels, str(path))
        with path.open("rb") as f:
            files.append(RawFile(path.name, hashlib.file_digest(f, "sha256").hexdigest(), stored))
    return Found(spec, train.stem, None, splits, files)
