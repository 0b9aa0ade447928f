"""What `predict` reads, a batch at a time: image files and folders, or a source's split.

    batches(...) -> Batch(names, pixels (B, features) uint8, targets (B,) int64, -1 unknown)

Image files are read as the `images:` source reads them (`sources.images`: the same header
checks, the same decoding), so a PNG exported from a shard set comes back as the same bytes.
Folders are walked in sorted order, lazily: memory holds one batch, whatever the count. An
image in a folder named after one of the model's classes is labelled with that class.
A source (`npz:`, `csv:`, `idx:`, ...) is streamed (`sources.stream`): its one split, a batch
at a time, each checked as prepare checks it. `count_files` and a stream's count give the
progress bar its total.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.sources import images
from pipeline.errors import SourceError

RESAMPLING = "BILINEAR"  # Pillow's Image.Resampling member --resize uses (documented)


@dataclass(frozen=True)
class Batch:
    names: list[str]  # a file's path, or "split/index" for a source's sample
    pixels: np.ndarray  # (B, features) uint8, row-major (rows, cols[, 3]) per image
    targets: np.ndarray  # (B,) int64 true class index, -1 where unknown


def _walk(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, sorted by name at each level, hidden ones skipped."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.suffix.lower() in images.EXTENSIONS and entry.is_file():
            yield entry


def image_files(paths: Sequence[Path]) -> Iterator[Path]:
    """Each path as given (a file) or the image files of a folder; an empty folder or a
    missing path is an error naming it."""
    for path in paths:
        if path.is_dir():
            found = _walk(path)
            first = next(found, None)
            if first is None:
                raise SourceError(
                    f"{path}: no image files ({', '.join(sorted(images.EXTENSIONS))})"
                )
            yield from itertools.chain([first], found)
        elif path.exists():
            yield path
        else:
            raise SourceError(f"{path}: no such file or folder")


def count_files(paths: Sequence[Path]) -> int:
    """How many image files `paths` name: a walk of names alone (the progress bar's total);
    an empty folder or a missing path is its error, before any image is read."""
    return sum(1 for _ in image_files(paths))


def _read(paths: list[Path], shape: tuple[int, ...], resize: bool) -> np.ndarray:
    """(B, rows, cols[, 3]) uint8: each image's header checked (`images.opened`: the source's
    checks) against the model's shape, then decoded as the images source decodes
    (`images.read_image`) or, with `resize`, converted and resized by Pillow."""
    from PIL import Image

    rows, cols = shape[:2]
    mode = "RGB" if len(shape) == 3 else "L"
    want = f"{cols}x{rows} {'RGB' if mode == 'RGB' else 'grey'}"
    out = np.empty((len(paths), *shape), np.uint8)
    if resize:
        method = getattr(Image.Resampling, RESAMPLING)
        for i, path in enumerate(paths):
            with images.opened(path) as im:
                try:
                    out[i] = np.asarray(im.convert(mode).resize((cols, rows), method), np.uint8)
                except images.DECODE_ERRORS as exc:
                    raise SourceError(f"{path}: cannot decode ({exc})") from None
        return out
    for path in paths:
        with images.opened(path) as im:
            size, colour = im.size, im.mode in images.COLOUR_MODES
        got = f"{size[0]}x{size[1]} {'RGB' if colour else 'grey'}"
        # a grey image is read as RGB for an RGB model, as the images source reads it
        if size != (cols, rows) or (colour and mode == "L"):
            raise SourceError(f"{path}: a {got} image; the model takes {want} (or --resize)")
    for i, path in enumerate(paths):
        out[i] = images.read_image(path, mode)  # (rows, cols[, 3]), as checked above
    return out


def _target(path: Path, classes: Sequence[str]) -> int:
    return classes.index(path.parent.name) if path.parent.name in classes else -1


def file_batches(
    paths: Sequence[Path],
    shape: tuple[int, ...],
    classes: Sequence[str],
    batch: int,
    *,
    resize: bool = False,
) -> Iterator[Batch]:
    files = image_files(paths)
    while chunk := list(itertools.islice(files, batch)):
        pixels = _read(chunk, shape, resize).reshape(len(chunk), -1)
        targets = np.array([_target(p, classes) for p in chunk], np.int64)
        yield Batch([str(p) for p in chunk], pixels, targets)


@contextmanager
def source_batches(
    spec: str, split: str, shape: tuple[int, ...], classes: Sequence[str], batch: int
) -> Iterator[tuple[int, Iterator[Batch]]]:
    """A source's split, streamed (`sources.stream`: read and checked as prepare reads it, a
    batch at a time): its sample count and its batches, in order. Labels count only where
    the source's class names are the model's; a source without names has its labels taken as
    the model's class indices (`Tally` withholds the accuracy if one is beyond them)."""
    from pipeline.data import sources

    # the model's shape: a csv: row is read as the model's images (as --image-shape would)
    with sources.stream(spec, split, batch, image_shape=tuple(shape)) as found:
        if tuple(found.image_shape) != tuple(shape):
            raise SourceError(
                f"{spec}: images of shape {list(found.image_shape)}; the model takes {list(shape)}"
            )
        same = found.classes is None or list(found.classes) == list(classes)

        def batches() -> Iterator[Batch]:
            start = 0
            for pixels, labels in found.chunks:
                stop = start + len(pixels)
                targets = labels.astype(np.int64) if same else np.full(stop - start, -1)
                yield Batch([f"{split}/{i}" for i in range(start, stop)], pixels, targets)
                start = stop

        yield found.count, batches()
