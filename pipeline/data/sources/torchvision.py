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

import contextlib
import string
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import bounded
from pipeline.data.sources import idx
from pipeline.data.sources.base import Found, FoundSplit, RawFile, file_size
from pipeline.data.sources.stream import Chunk, SplitChunks
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


def stream(
    name: str, split: str | None, root: Path, spec: str
) -> Callable[[str, int], AbstractContextManager[SplitChunks]] | None:
    """What streams a part ("train", "test") of NAME, `rows` samples at a time, checked as
    `read` checks it; None for the datasets read through torchvision itself."""
    canonical = next((n for n in NATIVE if n.lower() == name.lower()), None)
    if canonical is None:
        return None
    raw = _raw(canonical, split, root, spec)
    if canonical in MNIST_LIKE:
        classes = MNIST_LIKE[canonical]
        return lambda part, rows: idx.stream_split(raw, part, rows, classes=classes)
    if canonical == "QMNIST":
        test = _qmnist_test(split or "test", spec)
        return lambda part, rows: _qmnist_stream(raw, part, test, rows)
    emnist = _emnist_split(split, spec)
    return lambda part, rows: _emnist_stream(raw, part, emnist, rows)


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


def _qmnist_test(test: str, spec: str) -> str:
    if test not in QMNIST_SPLITS:
        raise SourceError(
            f"QMNIST test part {test!r}; choose one of {QMNIST_SPLITS}", param="source", value=spec
        )
    return test


@contextmanager
def _qmnist_files(raw: Path, part: str) -> Iterator[tuple[idx.Header, idx.Header]]:
    """A QMNIST part's two files, open, their headers checked (the labels are (n, 8) integer
    rows: column 0 is the class, the others QMNIST's provenance)."""
    image_path = idx.find(raw, f"qmnist-{part}-images-idx3-ubyte")
    label_path = idx.find(raw, f"qmnist-{part}-labels-idx2-int")
    with idx.opened(image_path) as images, idx.opened(label_path) as table:
        idx.check_images(images.dims, images.dtype, str(image_path))
        if len(table.dims) != 2 or table.dtype.kind != "i" or table.dims[1] < 1:
            raise IdxFormatError(
                f"{label_path}: expected 2-D integer label rows, found "
                f"{len(table.dims)}-D {table.dtype} {list(table.dims)}"
            )
        if images.dims[0] != table.dims[0]:
            raise IdxFormatError(
                f"{image_path}: {images.dims[0]} images but {label_path.name} has "
                f"{table.dims[0]} rows"
            )
        yield images, table


def _qmnist_window(part: str, test: str) -> slice:
    """The test file holds 60k; test10k/test50k are its first 10k / the rest."""
    if part == "test" and test != "test":
        return slice(0, 10_000) if test == "test10k" else slice(10_000, None)
    return slice(None)


def _qmnist(raw: Path, test: str, spec: str, files: list[RawFile]) -> Found:
    _qmnist_test(test, spec)
    splits = {}
    for part in ("train", "test"):
        with _qmnist_files(raw, part) as (images, table):
            x, y = idx.whole(images, table, _qmnist_window(part, test))
            files += [h.reader.record(h.path.name) for h in (images, table)]
        splits[part] = FoundSplit(x, y[:, 0], str(images.path), str(table.path))
    name = "qmnist" if test == "test" else f"qmnist-{test}"
    return Found(spec, name, DIGITS, splits, files)


@contextmanager
def _qmnist_stream(raw: Path, part: str, test: str, rows: int) -> Iterator[SplitChunks]:
    with _qmnist_files(raw, part) as (images, table):
        window = _qmnist_window(part, test)
        n = len(range(images.dims[0])[window])
        chunks = ((x, y[:, 0]) for x, y in idx.pair_chunks(images, table, rows, window))
        yield SplitChunks((n, *images.dims[1:]), chunks, str(images.path), str(table.path), DIGITS)


def _emnist_split(split: str | None, spec: str) -> str:
    if split not in EMNIST_CLASSES:
        raise SourceError(
            f"EMNIST needs a split, one of {'/'.join(EMNIST_CLASSES)}", param="source", value=spec
        )
    return split


@contextmanager
def _emnist_files(raw: Path, split: str, part: str) -> Iterator[tuple[idx.Header, idx.Header]]:
    """An EMNIST part's two IDX files, extracted or inside raw/gzip.zip, open and checked."""
    with contextlib.ExitStack() as files:
        headers = []
        for kind in ("images-idx3", "labels-idx1"):
            stem = f"emnist-{split}-{part}-{kind}-ubyte"
            try:
                found = idx.opened(idx.find(raw, stem))
            except SourceError as exc:
                if not (raw / "gzip.zip").is_file() or "missing IDX file" not in str(exc):
                    raise
                found = _zip_member(raw / "gzip.zip", f"gzip/{stem}.gz")
            headers.append(files.enter_context(found))
        images, labels = headers
        idx.check_pair(images, labels)
        yield images, labels


def _upright(chunk: Chunk, split: str, labels_path: Path) -> Chunk:
    """EMNIST keeps each image transposed: (k, cols, rows) -> upright (k, rows, cols); the
    letters split's labels 1..26 become 0..25."""
    images, labels = chunk
    if split == "letters":
        if len(labels) and labels.min() == 0:
            raise IdxFormatError(f"{labels_path}: label 0 in EMNIST letters (labels are 1..26)")
        labels = labels - 1
    return images.transpose(0, 2, 1), labels


def _emnist(raw: Path, split: str | None, spec: str, files: list[RawFile]) -> Found:
    split = _emnist_split(split, spec)
    splits = {}
    for part in ("train", "test"):
        with _emnist_files(raw, split, part) as (images, labels):
            x, y = _upright(idx.whole(images, labels), split, labels.path)
            files += [h.reader.record(h.path.name) for h in (images, labels)]
        splits[part] = FoundSplit(x, y, str(images.path), str(labels.path))
    return Found(spec, f"emnist-{split}", EMNIST_CLASSES[split], splits, files)


@contextmanager
def _emnist_stream(raw: Path, part: str, split: str, rows: int) -> Iterator[SplitChunks]:
    with _emnist_files(raw, split, part) as (images, labels):
        upright = (images.dims[0], images.dims[2], images.dims[1])  # (n, rows, cols)
        chunks = (_upright(c, split, labels.path) for c in idx.pair_chunks(images, labels, rows))
        classes = EMNIST_CLASSES[split]
        yield SplitChunks(upright, chunks, str(images.path), str(labels.path), classes)


@contextmanager
def _zip_member(archive: Path, member: str) -> Iterator[idx.Header]:
    """An IDX .gz member of EMNIST's gzip.zip, open: the zip entry checked by
    `pipeline.bounded`, the IDX header's claim against the member's bytes on disk (one ratio
    for zip and gzip)."""
    with contextlib.ExitStack() as files:
        try:
            zf = files.enter_context(zipfile.ZipFile(archive))
            infos = bounded.members(zf, file_size(archive), str(archive), error=SourceError,
                                    suffix="")  # fmt: skip
            if member not in infos:
                raise SourceError(f"{archive}: has no member {member}")
            info = infos[member]
            compressed = info.compress_type != zipfile.ZIP_STORED
            stream = files.enter_context(zf.open(info))
            opened = idx.opened(archive / member, stream, stored=info.compress_size,
                                compressed=compressed)  # fmt: skip
            header = files.enter_context(opened)
        except bounded.READ_ERRORS as exc:
            raise SourceError(f"{archive}: not a readable zip archive ({exc})") from None
        yield header


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
