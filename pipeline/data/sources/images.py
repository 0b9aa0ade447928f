"""`images:DIR`: torchvision's ImageFolder layout, `DIR/train/<class>/*.png` and `DIR/test/...`.

Class names are the train split's folder names, sorted (valid UTF-8: they are the dataset's
class names); a test folder must name one of them. Files are read with Pillow (PNG, JPEG,
BMP, GIF, TIFF, WebP; other files and hidden ones are skipped). Within a split, images are
ordered by file name (ties by class): files named by their index (`train/7/00042.png`) come
back in their original order, whatever their class.

All images of a split share one size. Grayscale stays one channel; if any image of the
dataset has colour, every image is read as RGB (grey replicated), so the channel count is
the dataset's, recorded in the manifest. 16-bit and float images are refused (8-bit only).
Each file's header is read first and checked (`opened`): at most MAX_PIXELS pixels, no more
than the file can hold; then one array is allocated for the split and filled image by image.
`read_image` reads one file on its own, with the same checks (predicting on a PNG uses it).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.sources.base import (
    Found,
    FoundSplit,
    RawFile,
    check_claim,
    file_size,
    not_utf8,
)
from pipeline.data.sources.stream import Chunk, SplitChunks
from pipeline.errors import SourceError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")  # what Pillow may take a file for
GRAY_MODES = {"1", "L", "LA"}
COLOUR_MODES = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
# pixels one image may have (4096 x 4096): our own bound, checked on the header before any
# decoding; below Pillow's decompression-bomb limits (89M warns, 179M raises), so those
# never speak first
MAX_PIXELS = 1 << 24
# what Pillow raises decoding a damaged file (a PNG chunk that fails its check: SyntaxError)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


@contextmanager
def opened(path: Path) -> Iterator[PILImage]:
    """The image file at `path`, open, its header checked: one of FORMATS, 8-bit, at most
    MAX_PIXELS pixels, no more pixels than the file's bytes can hold."""
    from PIL import Image, UnidentifiedImageError

    stored = file_size(path)
    # Pillow warns of what it skips (damaged metadata, a transparency we drop anyway) and of
    # sizes past its own limit, above ours: it then reads the pixels or raises, and that decides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(path, formats=FORMATS)
        except Image.DecompressionBombError:
            raise SourceError(f"{path}: more than {MAX_PIXELS:,} pixels in one image") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            # Pillow names the file, as str or repr: it is named once already
            reason = str(exc).replace(repr(str(path)), "").replace(str(path), "")
            reason = " ".join(reason.split()).strip(" '")
            raise SourceError(f"{path}: not an image Pillow can read ({reason})") from None
        with image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise SourceError(
                    f"{path}: {width}x{height} pixels, more than the {MAX_PIXELS:,} an image "
                    "may have"
                )
            if image.mode not in GRAY_MODES | COLOUR_MODES:
                raise SourceError(
                    f"{path}: image mode {image.mode} (16-bit or float); only 8-bit is read"
                )
            check_claim(
                width * height * 3, stored, compressed=True, where=str(path), error=SourceError
            )
            yield image


def read_image(path: Path, mode: str | None = None) -> np.ndarray:
    """One image file -> (rows, cols) uint8 for mode "L", (rows, cols, 3) for "RGB"; mode None:
    the file's own (grey stays grey, anything else becomes RGB). Bad input: SourceError."""
    with opened(path) as image:
        mode = mode or ("L" if image.mode in GRAY_MODES else "RGB")
        try:
            return np.asarray(image.convert(mode), dtype=np.uint8)
        except DECODE_ERRORS as exc:
            raise SourceError(f"{path}: cannot decode ({' '.join(str(exc).split())})") from None


@dataclass(frozen=True)
class _Entry:
    path: Path
    label: int
    size: tuple[int, int]  # (width, height), as Pillow reports it
    mode: str


def _files(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """A split's image files as (name within its class folder, class index), in the split's
    order: by that name, then class (index-named files keep their order across class
    folders). Names are kept as text (~120 bytes a file): the order needs them all."""
    found: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        count = len(found)
        found += [
            (str(p.relative_to(folder)), label)
            for p in folder.rglob("*")
            if p.suffix.lower() in EXTENSIONS
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
        if len(found) == count:
            raise SourceError(f"{folder}: no image files ({', '.join(sorted(EXTENSIONS))})")
    return sorted(found)


def _header(path: Path, label: int) -> _Entry:
    with opened(path) as image:
        return _Entry(path, label, image.size, image.mode)


def _decode(paths: list[Path], size: tuple[int, int], mode: str) -> np.ndarray:
    """(n, rows, cols) or (n, rows, cols, 3) uint8 of images of `size` (width, height, their
    headers' claim): one allocation, filled image by image."""
    width, height = size
    shape = (height, width) if mode == "L" else (height, width, 3)
    images = np.empty((len(paths), *shape), np.uint8)
    for i, path in enumerate(paths):
        image = read_image(path, mode)
        if image.shape != shape:  # the file changed since its header was read
            raise SourceError(f"{path}: changed while being read")
        images[i] = image
    return images


def _class_folders(split_dir: Path) -> list[Path]:
    """The class folders of a split; their names must be text (they become class names)."""
    folders = [p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for p in folders:
        name = not_utf8(p.name)
        if name is not None:
            raise SourceError(
                f"{split_dir}: class folder '{name}': the name is not valid UTF-8; rename it"
            )
    return folders


def _classes(directory: Path) -> list[str]:
    """The train split's class folders, sorted; every test folder must be one of them."""
    if not directory.is_dir():
        raise SourceError(f"{directory}: not a directory")
    train_dir = directory / "train"
    if not train_dir.is_dir():
        raise SourceError(f"{directory}: no train/ folder (expected train/<class>/*.png)")
    classes = sorted(p.name for p in _class_folders(train_dir))
    if not classes:
        raise SourceError(f"{train_dir}: no class folders")
    test_dir = directory / "test"
    if test_dir.is_dir():
        for p in _class_folders(test_dir):
            if p.name not in classes:
                raise SourceError(f"{p}: class {p.name!r} has no folder in {train_dir}")
    return classes


def _split_files(
    directory: Path, split: str, classes: list[str]
) -> tuple[Path, list[tuple[str, int]]]:
    """A split's folder and its image files (`_files`), or the error that it has none."""
    split_dir = directory / split
    if not split_dir.is_dir():
        raise SourceError(f"{directory}: no {split}/ folder (expected {split}/<class>/*.png)")
    return split_dir, _files(split_dir, classes)


def _entries(split_dir: Path, files: list[tuple[str, int]], classes: list[str]) -> Iterator[_Entry]:
    """A split's files in order, each header checked as it is reached; all of one size."""
    first = None
    for name, label in files:
        path = split_dir / classes[label] / name
        entry = _header(path, label)
        first = first or entry
        if entry.size != first.size:
            raise SourceError(
                f"{path}: {entry.size[0]}x{entry.size[1]} pixels, but {first.path.name} "
                f"is {first.size[0]}x{first.size[1]}; all images of a split share one size"
            )
        yield entry
    if first is None:
        raise SourceError(f"{split_dir}: no images")


def read(directory: Path, spec: str) -> Found:
    classes = _classes(directory)
    entries = {
        split: list(_entries(*_split_files(directory, split, classes), classes))
        for split in ("train", "test")
    }
    colour = any(e.mode in COLOUR_MODES for split in entries.values() for e in split)
    mode = "RGB" if colour else "L"
    splits, files = {}, []
    for split, split_entries in entries.items():
        images = _decode([e.path for e in split_entries], split_entries[0].size, mode)
        labels = np.array([e.label for e in split_entries], np.int64)
        splits[split] = FoundSplit(images, labels, str(directory / split))
        digest = hashlib.sha256()
        for e in split_entries:  # the split's files, in order: a provenance record
            # the name's bytes as on disk (a file name need not be UTF-8)
            digest.update(os.fsencode(e.path.relative_to(directory)) + b"\0" + e.path.read_bytes())
        total = sum(e.path.stat().st_size for e in split_entries)
        files.append(RawFile(f"{split}/", digest.hexdigest(), total))
    return Found(spec, directory.resolve().name, classes, splits, files)


@contextmanager
def stream(directory: Path, split: str, rows: int) -> Iterator[SplitChunks]:
    """One split, `rows` images at a time: the class folders, then every file's header checked
    as `read` checks them, then one decoding pass. Memory holds the split's sorted file names
    (the order needs them all), never its pixels. Colour is the dataset's, as for `read`: a
    colour image in either split makes all RGB (the other split's headers are read for it)."""
    classes = _classes(directory)
    split_dir, files = _split_files(directory, split, classes)
    colour, size, count = False, (0, 0), len(files)
    for entry in _entries(split_dir, files, classes):  # every header checked, as `read` does
        colour, size = colour or entry.mode in COLOUR_MODES, entry.size
    other = "test" if split == "train" else "train"
    if not colour and (directory / other).is_dir():
        found = _entries(*_split_files(directory, other, classes), classes)
        colour = any(e.mode in COLOUR_MODES for e in found)
    width, height = size
    dims = (count, height, width, 3) if colour else (count, height, width)

    def chunks() -> Iterator[Chunk]:
        for at in range(0, count, rows):
            part = files[at : at + rows]
            paths = [split_dir / classes[label] / name for name, label in part]
            labels = np.array([label for _, label in part])
            yield _decode(paths, size, "RGB" if colour else "L"), labels

    yield SplitChunks(dims, chunks(), str(directory / split), classes=classes)
