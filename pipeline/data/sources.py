"""Where raw images come from: the embedded MNIST or any directory of IDX files.

A source is read whole and validated (checksums, IDX structure, image/label agreement)
before the prepare stage writes a single byte.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.idx import parse_images, parse_labels, read_bytes
from pipeline.errors import IdxFormatError, SourceError

EMBEDDED_DIR = Path(__file__).parent / "mnist"

# split -> (images stem, labels stem), the original distribution's names
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# sha256 of the decompressed content, so both the original .gz files and re-compressed
# copies pass (their md5s are those of ../shared/datasets/README.md)
EMBEDDED_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

KNOWN_CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}  # fmt: skip


@dataclass(frozen=True)
class RawFile:
    name: str
    sha256: str  # of the decompressed content
    bytes: int


@dataclass(frozen=True)
class RawSplit:
    images: np.ndarray  # (n, rows * cols) uint8
    labels: np.ndarray  # (n,) uint8


@dataclass(frozen=True)
class RawDataset:
    name: str
    classes: list[str]
    source: str  # "embedded" or "idx:DIR", as the user would write it
    image_shape: tuple[int, int]
    files: list[RawFile]
    splits: dict[str, RawSplit]


def resolve(spec: str | None) -> tuple[str, Path]:
    """`None`/"embedded" -> the packaged MNIST; "idx:DIR" -> that directory."""
    if spec is None or spec == "embedded":
        return "embedded", EMBEDDED_DIR
    kind, sep, where = spec.partition(":")
    if kind != "idx" or not sep or not where:
        raise SourceError(f"--source {spec!r}: expected 'embedded' or 'idx:DIR'")
    directory = Path(where).expanduser()
    if not directory.is_dir():
        raise SourceError(f"--source {spec!r}: {directory} is not a directory")
    return f"idx:{directory.resolve()}", directory


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise SourceError(f"{directory}: missing IDX file {stem}[.gz]")


def load(
    spec: str | None, *, name: str | None = None, classes: list[str] | None = None
) -> RawDataset:
    """Read and validate all four IDX files of a source."""
    source, directory = resolve(spec)
    name = name or ("mnist" if source == "embedded" else directory.resolve().name)
    classes = classes or KNOWN_CLASSES.get(name, KNOWN_CLASSES["mnist"])
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise SourceError(f"--classes: need at least two distinct class names, got {classes}")

    files: list[RawFile] = []
    splits: dict[str, RawSplit] = {}
    shapes: set[tuple[int, int]] = set()
    for split, (image_stem, label_stem) in SPLIT_FILES.items():
        image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
        arrays = []
        for stem, path in ((image_stem, image_path), (label_stem, label_path)):
            data = read_bytes(path)
            digest = hashlib.sha256(data).hexdigest()
            if source == "embedded" and digest != EMBEDDED_SHA256[stem]:
                raise SourceError(f"{path}: checksum mismatch, the embedded MNIST is damaged")
            files.append(RawFile(path.name, digest, len(data)))
            arrays.append(data)
        images = parse_images(arrays[0], str(image_path))
        labels = parse_labels(arrays[1], str(label_path), len(classes))
        if len(images) != len(labels):
            raise IdxFormatError(
                f"{image_path}: {len(images)} images but {label_path.name} has {len(labels)} labels"
            )
        if len(images) == 0:
            raise IdxFormatError(f"{image_path}: holds no images")
        shapes.add((images.shape[1], images.shape[2]))
        splits[split] = RawSplit(images.reshape(len(images), -1), labels)
    if len(shapes) != 1:
        raise IdxFormatError(f"{directory}: train and test images differ in shape {sorted(shapes)}")
    return RawDataset(name, list(classes), source, shapes.pop(), files, splits)
