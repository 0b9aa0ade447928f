"""`images:DIR`: torchvision's ImageFolder layout, `DIR/train/<class>/*.png` and `DIR/test/...`.

Class names are the train split's folder names, sorted; a test folder must name one of them.
Files are read with Pillow (PNG, JPEG, BMP, GIF, TIFF, WebP; other files and hidden ones are
skipped). Within a split, images are ordered by file name (ties by class): files named by
their index (`train/7/00042.png`) come back in their original order, whatever their class.

All images of a split share one size. Grayscale stays one channel; if any image of the
dataset has colour, every image is read as RGB (grey replicated), so the channel count is
the dataset's, recorded in the manifest. 16-bit and float images are refused (8-bit only).
Each file's header is read first and its size checked against what the file can hold, then
one array is allocated for the split and filled image by image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.sources.base import Found, FoundSplit, RawFile, check_claim, file_size
from pipeline.errors import SourceError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GRAY_MODES = {"1", "L", "LA"}
COLOUR_MODES = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


@dataclass(frozen=True)
class _Entry:
    path: Path
    label: int
    size: tuple[int, int]  # (width, height), as Pillow reports it
    mode: str


def _files(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    found = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        files = [
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in EXTENSIONS
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
        if not files:
            raise SourceError(f"{folder}: no image files ({', '.join(sorted(EXTENSIONS))})")
        found += [(p, label) for p in files]
    # by file name, then class: index-named files keep their order across class folders
    return sorted(
        found, key=lambda item: (str(item[0].relative_to(split_dir / classes[item[1]])), item[1])
    )


def _header(path: Path, label: int) -> _Entry:
    from PIL import Image, UnidentifiedImageError

    stored = file_size(path)
    try:
        with Image.open(path) as im:
            entry = _Entry(path, label, im.size, im.mode)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()).replace(str(path), "").strip(" '")
        raise SourceError(f"{path}: not an image Pillow can read ({reason})") from None
    if entry.mode not in GRAY_MODES | COLOUR_MODES:
        raise SourceError(f"{path}: image mode {entry.mode} (16-bit or float); only 8-bit is read")
    width, height = entry.size
    check_claim(width * height * 3, stored, compressed=True, where=str(path), error=SourceError)
    return entry


def _decode(entries: list[_Entry], mode: str, where: str) -> np.ndarray:
    """(n, rows, cols) or (n, rows, cols, 3) uint8: one allocation, filled image by image."""
    from PIL import Image

    width, height = entries[0].size
    shape = (height, width) if mode == "L" else (height, width, 3)
    images = np.empty((len(entries), *shape), np.uint8)
    for i, entry in enumerate(entries):
        try:
            with Image.open(entry.path) as im:
                if im.size != entries[0].size:  # the file changed since its header was read
                    raise SourceError(f"{entry.path}: changed while being read")
                images[i] = np.asarray(im.convert(mode), dtype=np.uint8)
        except OSError as exc:
            raise SourceError(f"{entry.path}: cannot decode ({exc})") from None
    return images


def read(directory: Path, spec: str) -> Found:
    if not directory.is_dir():
        raise SourceError(f"{directory}: not a directory")
    train_dir = directory / "train"
    if not train_dir.is_dir():
        raise SourceError(f"{directory}: no train/ folder (expected train/<class>/*.png)")
    classes = sorted(
        p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise SourceError(f"{train_dir}: no class folders")
    test_dir = directory / "test"
    if test_dir.is_dir():
        for p in test_dir.iterdir():
            if p.is_dir() and not p.name.startswith(".") and p.name not in classes:
                raise SourceError(f"{p}: class {p.name!r} has no folder in {train_dir}")
    entries: dict[str, list[_Entry]] = {}
    for split in ("train", "test"):
        split_dir = directory / split
        if not split_dir.is_dir():
            raise SourceError(f"{directory}: no {split}/ folder (expected {split}/<class>/*.png)")
        entries[split] = [_header(p, label) for p, label in _files(split_dir, classes)]
        if not entries[split]:
            raise SourceError(f"{split_dir}: no images")
        sizes = {e.size for e in entries[split]}
        if len(sizes) > 1:
            first = entries[split][0]
            odd = next(e for e in entries[split] if e.size != first.size)
            raise SourceError(
                f"{odd.path}: {odd.size[0]}x{odd.size[1]} pixels, but {first.path.name} "
                f"is {first.size[0]}x{first.size[1]}; all images of a split share one size"
            )
    colour = any(e.mode in COLOUR_MODES for split in entries.values() for e in split)
    mode = "RGB" if colour else "L"
    splits, files = {}, []
    for split, split_entries in entries.items():
        images = _decode(split_entries, mode, str(directory / split))
        labels = np.array([e.label for e in split_entries], np.int64)
        splits[split] = FoundSplit(images, labels, str(directory / split))
        digest = hashlib.sha256()
        for e in split_entries:  # the split's files, in order: a provenance record
            digest.update(str(e.path.relative_to(directory)).encode() + b"\0" + e.path.read_bytes())
        total = sum(e.path.stat().st_size for e in split_entries)
        files.append(RawFile(f"{split}/", digest.hexdigest(), total))
    return Found(spec, directory.resolve().name, classes, splits, files)
