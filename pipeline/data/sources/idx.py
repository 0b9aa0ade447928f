"""The IDX format MNIST is distributed in, and the two sources made of it: `embedded`, `idx:DIR`.

Layout: two zero bytes, a type code, the number of dimensions; one big-endian uint32 per
dimension; then the data, row-major. The header is read first and its claim checked against
the file's real size (a .gz file: against what its compressed size can inflate to) before
any memory is allocated; the data is then streamed into that one buffer and the file must end
exactly there. A truncated or mislabelled file is an error, never a short or shifted dataset.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.data.sources.base import (
    Found,
    FoundSplit,
    HashingReader,
    RawFile,
    check_claim,
    file_size,
)
from pipeline.errors import IdxFormatError, SourceError

# type code -> big-endian numpy dtype (the IDX spec's table)
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

EMBEDDED_DIR = Path(__file__).parent.parent / "mnist"

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


def parse_stream(
    stream: IO[bytes], where: str, *, stored: int, compressed: bool
) -> tuple[np.ndarray, HashingReader]:
    """Read one IDX array from `stream` (`stored` bytes on disk); the stream must end after it."""
    reader = HashingReader(stream, where, error=IdxFormatError)
    head = stream.read(4)
    reader.seen(head)
    if len(head) < 4:
        raise IdxFormatError(f"{where}: {len(head)} bytes, too short for an IDX header")
    if head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES:
        raise IdxFormatError(f"{where}: bad IDX magic number 0x{head.hex()}")
    dtype, ndim = np.dtype(IDX_DTYPES[head[2]]), head[3]
    if ndim == 0:
        raise IdxFormatError(f"{where}: bad IDX header (0 dimensions)")
    dims = struct.unpack(f">{ndim}I", reader.read_exact(4 * ndim, "IDX header"))
    # Python ints: a crafted header must not wrap around int64 and pass the length check
    nbytes = math.prod(dims) * dtype.itemsize
    expected = 4 + 4 * ndim + nbytes
    if not compressed and stored != expected:
        what = "truncated" if stored < expected else "trailing bytes"
        raise IdxFormatError(
            f"{where}: {stored} bytes but the header {list(dims)} needs {expected} ({what})"
        )
    check_claim(expected, stored, compressed=compressed, where=where, error=IdxFormatError)
    buffer = bytearray(nbytes)
    reader.read_into(memoryview(buffer), "IDX data")
    reader.expect_end()
    return np.frombuffer(buffer, dtype).reshape(dims), reader


def parse(data: bytes, where: str) -> np.ndarray:
    """The array in the bytes of a whole (uncompressed) IDX file."""
    return parse_stream(io.BytesIO(data), where, stored=len(data), compressed=False)[0]


def read_idx(
    path: Path,
    stream: IO[bytes] | None = None,
    *,
    stored: int | None = None,
    compressed: bool = False,
) -> tuple[np.ndarray, RawFile]:
    """The array in an IDX file, `.gz` or raw, and the record of what was read. Or in `stream`,
    an open member of an archive: `stored` is then the member's bytes on disk and `compressed`
    whether the archive inflates them, so that one ratio limit bounds the whole chain (a
    deflated zip member holding a .gz: bytes on disk -> IDX header's claim)."""
    where = str(path)
    try:
        if stream is None:
            stored = file_size(path)
            with path.open("rb") as f:
                return _read(f, where, path.name, stored, compressed)
        assert stored is not None
        return _read(stream, where, path.name, stored, compressed)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IdxFormatError(f"{where}: not a complete gzip file ({exc})") from None
    except FileNotFoundError:
        raise SourceError(f"{where}: no such file") from None
    except OSError as exc:
        raise SourceError(f"{where}: cannot read ({exc.strerror or exc})") from None


def _read(
    f: IO[bytes], where: str, name: str, stored: int, compressed: bool
) -> tuple[np.ndarray, RawFile]:
    gz = name.endswith(".gz")
    stream: IO[bytes] = gzip.GzipFile(fileobj=f, mode="rb") if gz else f  # type: ignore[assignment]
    array, reader = parse_stream(stream, where, stored=stored, compressed=compressed or gz)
    return array, reader.record(name)


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    """(n, rows, cols) uint8 images."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(
            f"{where}: expected 3-D unsigned-byte images, found {images.ndim}-D {images.dtype}"
        )
    if 0 in images.shape[1:]:
        raise IdxFormatError(f"{where}: images of size {images.shape[1:]} hold no pixels")
    return images


def check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """(n,) uint8 labels (their range is checked against the class names later)."""
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxFormatError(
            f"{where}: expected 1-D unsigned-byte labels, found {labels.ndim}-D {labels.dtype}"
        )
    return labels


def find(directory: Path, stem: str) -> Path:
    """`stem.gz` or `stem` in `directory` (torchvision keeps both; either will do)."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise SourceError(f"{directory}: missing IDX file {stem}[.gz]")


def read_pair(image_path: Path, label_path: Path, files: list[RawFile]) -> FoundSplit:
    """One split from an images file and a labels file; appends both to `files`."""
    images, image_file = read_idx(image_path)
    labels, label_file = read_idx(label_path)
    files += [image_file, label_file]
    check_images(images, str(image_path))
    check_labels(labels, str(label_path))
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{image_path}: {len(images)} images but {label_path.name} has {len(labels)} labels"
        )
    return FoundSplit(images, labels, str(image_path), str(label_path))


def read_directory(directory: Path, source: str, name: str) -> Found:
    """The four MNIST-named IDX files of `directory` (`idx:DIR`, and `embedded`)."""
    files: list[RawFile] = []
    splits = {
        split: read_pair(find(directory, images), find(directory, labels), files)
        for split, (images, labels) in SPLIT_FILES.items()
    }
    if source == "embedded":
        for record in files:
            stem = record.name.removesuffix(".gz")
            if record.sha256 != EMBEDDED_SHA256[stem]:
                raise SourceError(
                    f"{directory / record.name}: checksum mismatch, the embedded MNIST is damaged"
                )
    return Found(source=source, name=name, classes=None, splits=splits, files=files)
