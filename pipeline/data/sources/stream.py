"""One split of a source, a chunk at a time: what `predict --source` reads in bounded memory.

    with sources.stream(spec, split, rows) as s:    # sources/__init__.py
        s.image_shape, s.count, s.classes
        for images, labels in s.chunks: ...   # (k, features) uint8, (k,) uint8 class indices

A form's streaming reader opens the split's files, checks their headers (the checks its
whole-split read applies, the same functions) and hands over a `SplitChunks`: the claimed
dimensions and the chunks as the files hold them. `checked()` then applies `validate()`'s
per-sample rules to every chunk as it passes (`image_shape_of`, `to_uint8`,
`class_indices`): the same images arrive as the same bytes as prepare reads them, and a
bad pixel or label is the same error, naming the same sample. What only a whole dataset
can tell is not checked here (train and test shapes agree; numbered classes each have a
train sample): one split is read, and nothing of another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.data.sources.base import check_names, class_indices, image_shape_of, to_uint8
from pipeline.errors import SourceError

Chunk = tuple[np.ndarray, np.ndarray]  # images (k, rows, cols[, channels]), labels (k,)


@dataclass
class SplitChunks:
    """A split as a form streams it, before validation (`base.FoundSplit`, a chunk at a time)."""

    dims: tuple[int, ...]  # (n, rows, cols[, channels]), as the files claim
    chunks: Iterator[Chunk]  # images any numeric dtype, labels any integer dtype
    where: str  # the file (or directory) the images come from, for error messages
    labels_where: str = ""  # the labels' file, when not `where`
    classes: list[str] | None = None  # the source's class names, if it carries any


@dataclass
class SplitStream:
    image_shape: tuple[int, ...]  # (rows, cols) or (rows, cols, 3)
    count: int  # samples in the split
    classes: list[str] | None  # the source's class names; None: it names none
    chunks: Iterator[Chunk]  # (k, features) uint8, (k,) uint8


def checked(split: str, found: SplitChunks, rows: int) -> SplitStream:
    """`found` under validate()'s rules, per chunk, in chunks of exactly `rows` samples (the
    last: the rest), whatever the form's own; its labels checked against its class names, or
    as class indices (0..MAX_CLASSES - 1) if it names none, as `load` checks them."""
    shape = image_shape_of(found.dims, found.where)
    if found.dims[0] == 0:
        raise SourceError(f"{found.where}: the {split} split holds no images")
    if found.classes:
        check_names(found.classes)
    n_classes = len(found.classes) if found.classes else None
    labels_where = found.labels_where or found.where

    def chunks() -> Iterator[Chunk]:
        start = 0
        for images, labels in found.chunks:
            pixels = to_uint8(images, found.where, start).reshape(len(images), -1)
            yield pixels, class_indices(labels, labels_where, n_classes, start)
            start += len(images)

    return SplitStream(shape, found.dims[0], found.classes, _rechunk(chunks(), rows))


def _rechunk(chunks: Iterator[Chunk], rows: int) -> Iterator[Chunk]:
    """The same samples in chunks of `rows` (a CSV block may be longer, or cut short)."""
    held: list[Chunk] = []
    count = 0
    for chunk in chunks:
        held.append(chunk)
        count += len(chunk[0])
        while count >= rows:
            images, labels = _joined(held)
            yield images[:rows], labels[:rows]
            held, count = [(images[rows:], labels[rows:])], count - rows
    if count:
        yield _joined(held)


def _joined(held: list[Chunk]) -> Chunk:
    if len(held) == 1:
        return held[0]  # no copy: a form's chunk of the batch size passes as it is
    images, labels = (np.concatenate(part) for part in zip(*held, strict=True))
    return images, labels
