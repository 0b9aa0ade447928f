"""Where raw images come from: one reader per form, one validation path, one canonical result.

    embedded                       the MNIST packaged with the pipeline (checksummed)
    idx:DIR                        DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    torchvision:NAME[/SPLIT]:ROOT  torchvision's on-disk layout, ROOT/NAME/raw/... (torchvision.py)
    npz:FILE                       Keras mnist.npz: x_train, y_train, x_test, y_test
    csv:TRAIN,TEST                 label then pixels per row, header optional
    images:DIR                     DIR/{train,test}/<class>/*.png|jpg (ImageFolder)

`load()` parses the spec, lets the form's reader return its arrays as found, and passes them
through `base.validate()`, which every source shares: the prepare stage receives the same
`RawDataset` (uint8 pixels, uint8 labels) whatever the form, so the same images give the same
shard set. `carve_val()` then takes a validation split from train if asked. `stream()` reads
one split a chunk at a time instead, with the same checks (stream.py): what `predict` reads.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.data.sources import csv, idx, images, npz, torchvision
from pipeline.data.sources.base import SPLITS, RawDataset, RawFile, RawSplit, not_utf8, validate
from pipeline.data.sources.idx import EMBEDDED_DIR, EMBEDDED_SHA256, SPLIT_FILES
from pipeline.data.sources.split import carve_val
from pipeline.data.sources.stream import SplitChunks, SplitStream, checked
from pipeline.errors import ConfigError, SourceError

__all__ = [
    "EMBEDDED_DIR",
    "EMBEDDED_SHA256",
    "SPLIT_FILES",
    "RawDataset",
    "RawFile",
    "RawSplit",
    "SplitStream",
    "carve_val",
    "load",
    "parse_shape",
    "resolve",
    "stream",
]

FORMS = "embedded, idx:DIR, torchvision:NAME[/SPLIT]:ROOT, npz:FILE, csv:TRAIN,TEST, images:DIR"
# IDX directories whose name says which dataset they hold: canonical name and class names
KNOWN_IDX = {
    "mnist": ("mnist", torchvision.DIGITS),
    "fashionmnist": ("fashionmnist", torchvision.FASHION_CLASSES),
    "kmnist": ("kmnist", torchvision.KMNIST_CLASSES),
}
# folder names that say nothing about the dataset: the name is taken from the parent
GENERIC_DIRS = {"raw", "data", "dataset", "datasets", "idx", "gz", "gzip", "files", "download"}


def _spec_error(spec: str, why: str) -> SourceError:
    return SourceError(f"{why}; expected one of: {FORMS}", param="source", value=spec)


def _local(spec: str, where: str, *, follow: bool = True) -> Path:
    """The path `where` names, `~` expanded; with `follow`, absolute with symlinks resolved.
    A symlink loop, an unknown user's `~user`, a name that is not UTF-8 (the manifest records
    the path and names the dataset after it) are the spec's error."""
    try:
        path = Path(where).expanduser()
        path = path.resolve() if follow else path
    except (RuntimeError, OSError) as exc:  # RuntimeError: Python < 3.13's loop and ~user
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SourceError(
            f"{where!r}: cannot resolve ({reason})", param="source", value=spec
        ) from None
    for text in (where, str(path)):
        shown = not_utf8(text)
        if shown is not None:
            raise SourceError(
                ("" if text == where else f"(resolved: {shown}) ")
                + "a name that is not valid UTF-8 (the manifest records it); rename it",
                param="source",
                value=not_utf8(spec),
            )
    return path


def _path(spec: str, where: str, *, directory: bool) -> Path:
    path = _local(spec, where, follow=False)  # as written: a file's name may name the dataset
    if directory and not path.is_dir():
        raise SourceError("not a directory", param="source", value=spec)
    if not directory and not path.is_file():
        raise SourceError("not a file", param="source", value=spec)
    return path


def resolve(spec: str | None) -> str:
    """The normalized spec (absolute paths): what a manifest records as its source."""
    spec = spec or "embedded"
    if spec == "embedded":
        return spec
    kind, _, rest = spec.partition(":")
    if kind == "torchvision":
        name, sep, root = rest.partition(":")
        if not sep or not name or not root:
            raise _spec_error(spec, "torchvision needs NAME[/SPLIT]:ROOT")
        return f"torchvision:{name}:{_local(spec, root)}"
    if kind == "csv":
        parts = rest.split(",")
        if len(parts) != 2 or not all(parts):
            raise _spec_error(spec, "csv needs two files, TRAIN,TEST")
        return "csv:" + ",".join(str(_local(spec, p)) for p in parts)
    if kind in ("idx", "npz", "images") and rest:
        return f"{kind}:{_local(spec, rest)}"
    raise _spec_error(spec, "not a source")


def _idx_identity(directory: Path) -> tuple[str, list[str] | None]:
    """A dataset name (and known class names) for an IDX directory, from its path."""
    folder = directory.resolve()
    while folder.name.lower() in GENERIC_DIRS and folder.parent != folder:
        folder = folder.parent  # ROOT/FashionMNIST/raw -> FashionMNIST
    key = re.sub(r"[^a-z0-9]", "", folder.name.lower())
    if key in KNOWN_IDX:
        return KNOWN_IDX[key][0], list(KNOWN_IDX[key][1])
    return folder.name or "dataset", None


def _csv_name(train: Path) -> str:
    stem = re.sub(r"(^|[_\-.])(train|training)([_\-.]|$)", "", train.stem.lower()).strip("_-.")
    return stem or train.resolve().parent.name


def parse_shape(text: str) -> tuple[int, ...]:
    """ "28x28" or "32x32x3" -> (rows, cols[, channels])."""
    parts = text.lower().split("x")
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SourceError(
            "expected ROWSxCOLS or ROWSxCOLSxCHANNELS", param="image_shape", value=text
        )
    return tuple(int(p) for p in parts)


def load(
    spec: str | None,
    *,
    name: str | None = None,
    classes: list[str] | None = None,
    image_shape: tuple[int, ...] | None = None,
    val_fraction: float | None = None,
) -> RawDataset:
    """Read, validate and normalize the source `spec` (see the module docstring); with
    `val_fraction`, carve a stratified val split from train."""
    spec = spec or "embedded"
    normalized = resolve(spec)
    kind, _, rest = spec.partition(":")
    if image_shape is not None and kind != "csv":
        raise SourceError(
            "only a csv source needs it; other forms carry their shape",
            param="image_shape",
            value="x".join(map(str, image_shape)),
        )
    if spec == "embedded":
        found = idx.read_directory(EMBEDDED_DIR, "embedded", "mnist")
        found.classes = list(torchvision.DIGITS)
    elif kind == "idx":
        directory = _path(spec, rest, directory=True)
        found = idx.read_directory(directory, normalized, "")
        found.name, found.classes = _idx_identity(directory)
    elif kind == "torchvision":
        dataset, _, root = rest.partition(":")
        dataset, _, split = dataset.partition("/")
        found = torchvision.read(
            dataset, split or None, _path(spec, root, directory=True), normalized
        )
    elif kind == "npz":
        found = npz.read(_path(spec, rest, directory=False), normalized)
    elif kind == "csv":
        train, test = (_path(spec, p, directory=False) for p in rest.split(","))
        found = csv.read(train, test, normalized, image_shape)
        found.name = _csv_name(train)
    else:  # images: resolve() admits nothing else
        found = images.read(_path(spec, rest, directory=True), normalized)
    raw = validate(found, name=name, classes=classes)
    return carve_val(raw, val_fraction) if val_fraction else raw


@contextmanager
def stream(
    spec: str | None, split: str, rows: int, *, image_shape: tuple[int, ...] | None = None
) -> Iterator[SplitStream]:
    """One split of the source `spec`, `rows` samples at a time, checked as `load` checks it
    (stream.py): its labels against the source's class names, or as class indices if it names
    none (`SplitStream.classes` is None); `image_shape` as for `load`. Every form streams but
    the datasets read through torchvision itself (CIFAR10, ...; torchvision holds them whole):
    loaded, then chunked."""
    spec = spec or "embedded"
    resolve(spec)
    if split not in SPLITS:
        raise ConfigError(
            f"{spec} has no such split ({', '.join(SPLITS)})", param="split", value=split
        )
    kind, _, rest = spec.partition(":")
    with _form_stream(spec, kind, rest, split, rows, image_shape) as found:
        yield checked(split, found, rows)


def _form_stream(
    spec: str, kind: str, rest: str, split: str, rows: int, image_shape: tuple[int, ...] | None
) -> contextlib.AbstractContextManager[SplitChunks]:
    if spec == "embedded":
        idx.check_embedded_split(EMBEDDED_DIR, split)  # its checksums before any sample
        return idx.stream_split(EMBEDDED_DIR, split, rows, classes=torchvision.DIGITS)
    if kind == "idx":
        directory = _path(spec, rest, directory=True)
        return idx.stream_split(directory, split, rows, classes=_idx_identity(directory)[1])
    if kind == "npz":
        return npz.stream(_path(spec, rest, directory=False), split, rows)
    if kind == "csv":
        files = [_path(spec, p, directory=False) for p in rest.split(",")]
        return csv.stream(files[SPLITS.index(split)], rows, image_shape)
    if kind == "images":
        return images.stream(_path(spec, rest, directory=True), split, rows)
    dataset, _, root = rest.partition(":")
    name, _, part = dataset.partition("/")
    found = torchvision.stream(name, part or None, _path(spec, root, directory=True), spec)
    return _whole(spec, split, rows) if found is None else found(split, rows)


@contextmanager
def _whole(spec: str, split: str, rows: int) -> Iterator[SplitChunks]:
    raw = load(spec)
    data = raw.splits[split]
    n = len(data.images)
    chunks = (
        (data.images[at : at + rows].reshape(-1, *raw.image_shape), data.labels[at : at + rows])
        for at in range(0, n, rows)
    )
    yield SplitChunks((n, *raw.image_shape), chunks, spec, classes=raw.classes)
