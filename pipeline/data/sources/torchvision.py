"""`torchvision:NAME[/SPLIT]:ROOT`: a dataset as torchvision keeps it on disk, read natively.

torchvision stores MNIST-family datasets as IDX files in `ROOT/<Name>/raw/` (each download
leaves the .gz beside its extracted copy; either is read). These are read here without
torchvision, whose wheels need not import on the machine:

    MNIST, FashionMNIST, KMNIST   train-/t10k-{images-idx3,labels-idx1}-ubyte[.gz]
    QMNIST[/test|test10k|test50k] qmnist-{train,test}-{images-idx3-ubyte,labels-idx2-int}[.gz]
                                  labels are (n, 8) int32 rows; column 0 is the class. The test
                                  file holds 60k; test10k/test50k are its first 10k / the rest
    EMNIST/SPLIT                  emnist-SPLIT-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]
                                  or the same inside raw/gzip.zip (the download itself); images
                                  are stored transposed and are turned upright here; the letters
                                  split's labels 1..26 become 0..25 (torchvision keeps an
                                  empty class 0, "N/A", which a classifier need not learn)

Any other NAME (CIFAR10, SVHN, ...) goes through torchvision itself when it imports (the
optional `torchvision` extra); otherwise the error says so.
"""

from __future__ import annotations

import string
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import bounded
from pipeline.data.sources import idx
from pipeline.data.sources.base import Found, FoundSplit, RawFile, file_size
from pipeline.errors import IdxFormatError, SourceError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
KMNIST_CLASSES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
DIGITS = list(string.digits)
# EMNIST's merged splits fold these lowercase letters into their uppercase twins
_MERGED = set("cijklmopsuvwxyz")
EMNIST_CLASSES = {
    "byclass": sorted(string.digits + string.ascii_letters),
    "bymerge": sorted(set(string.digits + string.ascii_letters) - _MERGED),
    "balanced": sorted(set(string.digits + string.ascii_letters) - _MERGED),
    "letters": list(string.ascii_lowercase),
    "digits": DIGITS,
    "mnist": DIGITS,
}
MNIST_LIKE = {"MNIST": DIGITS, "FashionMNIST": FASHION_CLASSES, "KMNIST": KMNIST_CLASSES}
QMNIST_SPLITS = ("test", "test10k", "test50k")
NATIVE = (*MNIST_LIKE, "QMNIST", "EMNIST")
EXTRA_HINT = "pip install 'mnist-pipeline[torchvision]'"


def _raw(canonical: str, split: str | None, root: Path, spec: str) -> Path:
    raw = root / canonical / "raw"
    if not raw.is_dir():
        raise SourceError(
            f"{raw}: no such directory (torchvision keeps {canonical} in ROOT/{canonical}/raw)"
        )
    if canonical in MNIST_LIKE and split is not None:
        raise SourceError(f"{canonical} has no splits to choose from", param="source", value=spec)
    return raw


def mnist_like(
    name: str, split: str | None, root: Path, spec: str
) -> tuple[Path, list[str]] | None:
    """The raw directory and class names of MNIST, FashionMNIST or KMNIST (None: another NAME),
    checked as `read` checks them: what streams as an IDX pair."""
    canonical = next((n for n in MNIST_LIKE if n.lower() == name.lower()), None)
    if canonical is None:
        return None
    return _raw(canonical, split, root, spec), MNIST_LIKE[canonical]


def read(name: str, split: str | None, root: Path, spec: str) -> Found:
    canonical = next((n for n in NATIVE if n.lower() == name.lower()), None)
    if canonical is None:
        return _through_torchvision(name, split, root, spec)
    raw = _raw(canonical, split, root, spec)
    files: list[RawFile] = []
    if canonical in MNIST_LIKE:
        splits = {
            part: idx.read_pair(idx.find(raw, images), idx.find(raw, labels), files)
            for part, (images, labels) in idx.SPLIT_FILES.items()
        }
        return Found(spec, canonical.lower(), MNIST_LIKE[canonical], splits, files)
    if canonical == "QMNIST":
        return _qmnist(raw, split or "test", spec, files)
    return _emnist(raw, split, spec, files)


def _qmnist(raw: Path, test: str, spec: str, files: list[RawFile]) -> Found:
    if test not in QMNIST_SPLITS:
        raise SourceError(
            f"QMNIST test part {test!r}; choose one of {QMNIST_SPLITS}", param="source", value=spec
        )
    splits = {}
    for part in ("train", "test"):
        image_path = idx.find(raw, f"qmnist-{part}-images-idx3-ubyte")
        label_path = idx.find(raw, f"qmnist-{part}-labels-idx2-int")
        images, image_file = idx.read_idx(image_path)
        table, label_file = idx.read_idx(label_path)
        files += [image_file, label_file]
        idx.check_images(images.shape, images.dtype, str(image_path))
        if table.ndim != 2 or table.dtype.kind != "i" or table.shape[1] < 1:
            raise IdxFormatError(
                f"{label_path}: expected 2-D integer label rows, found "
                f"{table.ndim}-D {table.dtype} {list(table.shape)}"
            )
        if len(images) != len(table):
            raise IdxFormatError(
                f"{image_path}: {len(images)} images but {label_path.name} has {len(table)} rows"
            )
        labels = table[:, 0]  # the class; the other columns are QMNIST's provenance
        if part == "test" and test != "test":
            cut = slice(0, 10_000) if test == "test10k" else slice(10_000, None)
            images, labels = images[cut], labels[cut]
        splits[part] = FoundSplit(images, labels, str(image_path), str(label_path))
    name = "qmnist" if test == "test" else f"qmnist-{test}"
    return Found(spec, name, DIGITS, splits, files)


def _emnist(raw: Path, split: str | None, spec: str, files: list[RawFile]) -> Found:
    if split not in EMNIST_CLASSES:
        raise SourceError(
            f"EMNIST needs a split, one of {'/'.join(EMNIST_CLASSES)}", param="source", value=spec
        )
    archive = raw / "gzip.zip"
    splits = {}
    for part in ("train", "test"):
        arrays = []
        for kind in ("images-idx3", "labels-idx1"):
            stem = f"emnist-{split}-{part}-{kind}-ubyte"
            try:
                path = idx.find(raw, stem)
                array, record = idx.read_idx(path)
            except SourceError as exc:
                if not archive.is_file() or "missing IDX file" not in str(exc):
                    raise
                array, record = _from_zip(archive, f"gzip/{stem}.gz")
                path = archive / f"gzip/{stem}.gz"
            files.append(record)
            arrays.append((path, array))
        (image_path, images), (label_path, labels) = arrays
        idx.check_images(images.shape, images.dtype, str(image_path))
        idx.check_labels(labels.shape, labels.dtype, str(label_path))
        if len(images) != len(labels):
            raise IdxFormatError(
                f"{image_path}: {len(images)} images but {label_path.name} has {len(labels)} labels"
            )
        if split == "letters":
            if len(labels) and labels.min() == 0:
                raise IdxFormatError(f"{label_path}: label 0 in EMNIST letters (labels are 1..26)")
            labels = labels - 1
        # EMNIST keeps each image transposed: (n, cols, rows) -> upright (n, rows, cols)
        splits[part] = FoundSplit(
            images.transpose(0, 2, 1), labels, str(image_path), str(label_path)
        )
    return Found(spec, f"emnist-{split}", EMNIST_CLASSES[split], splits, files)


def _from_zip(archive: Path, member: str) -> tuple[np.ndarray, RawFile]:
    """An IDX .gz member of EMNIST's gzip.zip: the zip entry checked by `pipeline.bounded`, the
    IDX header's claim against the member's bytes on disk (one ratio for zip and gzip)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = bounded.members(zf, file_size(archive), str(archive), error=SourceError,
                                    suffix="")  # fmt: skip
            if member not in infos:
                raise SourceError(f"{archive}: has no member {member}")
            info = infos[member]
            with zf.open(info) as stream:
                return idx.read_idx(
                    archive / member,
                    stream,
                    stored=info.compress_size,
                    compressed=info.compress_type != zipfile.ZIP_STORED,
                )
    except bounded.READ_ERRORS as exc:
        raise SourceError(f"{archive}: not a readable zip archive ({exc})") from None


def _through_torchvision(name: str, split: str | None, root: Path, spec: str) -> Found:
    """Another torchvision dataset, through torchvision itself (the optional extra)."""
    try:
        import torchvision.datasets as tv  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a CUDA build failing to load its libraries
        reason = " ".join(str(exc).split())[:120]
        raise SourceError(
            f"{spec}: {name} is read through torchvision, which does not import here "
            f"({type(exc).__name__}: {reason}); install the extra: {EXTRA_HINT}"
        ) from None
    cls = getattr(tv, name, None)
    if not isinstance(cls, type):
        raise SourceError(f"{spec}: torchvision has no dataset {name!r}")
    splits = {}
    classes: list[str] | None = None
    for part in ("train", "test"):
        dataset = _open(cls, root, part, split, spec)
        images = np.asarray(getattr(dataset, "data", None))
        labels = np.asarray(getattr(dataset, "targets", getattr(dataset, "labels", None)))
        if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
            images = images.transpose(0, 2, 3, 1)  # (n, channels, rows, cols) -> channels last
        splits[part] = FoundSplit(images, labels.astype(np.int64), f"{root}/{name}")
        classes = [str(c) for c in getattr(dataset, "classes", [])] or None
    return Found(spec, name.lower(), classes, splits, [])


def _open(cls: type, root: Path, part: str, split: str | None, spec: str) -> Any:
    try:
        try:
            return cls(str(root), train=part == "train", download=False)
        except TypeError:  # datasets with a `split` argument (SVHN, ...)
            return cls(str(root), split=split or part, download=False)
    except Exception as exc:  # torchvision's own errors: RuntimeError, FileNotFoundError, ...
        reason = " ".join(str(exc).split())[:160]
        raise SourceError(f"{spec}: torchvision cannot read its {part} split ({reason})") from None
