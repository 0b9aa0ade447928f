"""The IDX format MNIST is distributed in, and the two sources made of it: `embedded`, `idx:DIR`.

Layout: two zero bytes, a type code, the number of dimensions; one big-endian uint32 per
dimension; then the data, row-major. The header is read first and its claim checked against
the file's real size (a .gz file: against what its compressed size can inflate to) before
any memory is allocated; the data is then streamed into that one buffer and the file must end
exactly there. A truncated or mislabelled file is an error, never a short or shifted dataset.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
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
from pipeline.data.sources.stream import Chunk, SplitChunks
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


def read_header(
    stream: IO[bytes], where: str, *, stored: int, compressed: bool
) -> tuple[np.dtype, tuple[int, ...], HashingReader]:
    """An IDX header read from `stream` (`stored` bytes on disk): its dtype and dimensions,
    their claim checked against the file's size, and the reader positioned at the data."""
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
    expected = 4 + 4 * ndim + math.prod(dims) * dtype.itemsize
    if not compressed and stored != expected:
        what = "truncated" if stored < expected else "trailing bytes"
        raise IdxFormatError(
            f"{where}: {stored} bytes but the header {list(dims)} needs {expected} ({what})"
        )
    check_claim(expected, stored, compressed=compressed, where=where, error=IdxFormatError)
    return dtype, dims, reader


def records(
    reader: HashingReader, dtype: np.dtype, dims: tuple[int, ...], start: int, stop: int
) -> np.ndarray:
    """Records `start` to `stop` of the array a header announced, read next from `reader`:
    (stop - start, *dims[1:]) in one buffer of that size."""
    buffer = bytearray((stop - start) * math.prod(dims[1:]) * dtype.itemsize)
    reader.read_into(memoryview(buffer), "IDX data")
    return np.frombuffer(buffer, dtype).reshape(stop - start, *dims[1:])


def parse_stream(
    stream: IO[bytes], where: str, *, stored: int, compressed: bool
) -> tuple[np.ndarray, HashingReader]:
    """Read one IDX array from `stream` (`stored` bytes on disk); the stream must end after it."""
    dtype, dims, reader = read_header(stream, where, stored=stored, compressed=compressed)
    array = records(reader, dtype, dims, 0, dims[0]).reshape(dims)  # ndim 1 records: scalars
    reader.expect_end()
    return array, reader


def parse(data: bytes, where: str) -> np.ndarray:
    """The array in the bytes of a whole (uncompressed) IDX file."""
    return parse_stream(io.BytesIO(data), where, stored=len(data), compressed=False)[0]


@dataclass(frozen=True)
class Header:
    """An open IDX file's header, its reader at the data."""

    path: Path
    dtype: np.dtype
    dims: tuple[int, ...]
    reader: HashingReader

    def records(self, start: int, stop: int) -> np.ndarray:
        """The next records, `start` to `stop` (`records`); after the last, the file must end."""
        with read_errors(str(self.path)):
            array = records(self.reader, self.dtype, self.dims, start, stop)
            if stop == self.dims[0]:
                self.reader.expect_end()
        return array


@contextmanager
def read_errors(where: str) -> Iterator[None]:
    """Damaged or unreadable bytes read in the block: one error naming the file."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IdxFormatError(f"{where}: not a complete gzip file ({exc})") from None
    except zipfile.BadZipFile as exc:  # an archive member's CRC
        raise SourceError(f"{where}: not a readable zip member ({exc})") from None
    except FileNotFoundError:
        raise SourceError(f"{where}: no such file") from None
    except OSError as exc:
        raise SourceError(f"{where}: cannot read ({exc.strerror or exc})") from None


@contextmanager
def opened(
    path: Path,
    stream: IO[bytes] | None = None,
    *,
    stored: int | None = None,
    compressed: bool = False,
) -> Iterator[Header]:
    """The header of the IDX file `path` (`.gz` or raw) and a reader at its data, open for
    the block (whose reads go under `read_errors`). Or of `stream`, an open member of an
    archive: `stored` is then the member's bytes on disk and `compressed` whether the
    archive inflates them, so that one ratio limit bounds the whole chain (a deflated zip
    member holding a .gz: bytes on disk -> IDX header's claim)."""
    where = str(path)
    with contextlib.ExitStack() as files:
        with read_errors(where):
            if stream is None:
                stored = file_size(path)
                stream = files.enter_context(path.open("rb"))
            assert stored is not None
            gz = path.name.endswith(".gz")
            if gz:
                stream = files.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))  # type: ignore[assignment]
            header = read_header(stream, where, stored=stored, compressed=compressed or gz)
        yield Header(path, *header)


def check_images(dims: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """(n, rows, cols) uint8 images (an array's shape and dtype, or a header's)."""
    if len(dims) != 3 or dtype != np.uint8:
        raise IdxFormatError(
            f"{where}: expected 3-D unsigned-byte images, found {len(dims)}-D {dtype}"
        )
    if 0 in dims[1:]:
        raise IdxFormatError(f"{where}: images of size {tuple(dims[1:])} hold no pixels")


def find(directory: Path, stem: str) -> Path:
    """`stem.gz` or `stem` in `directory` (torchvision keeps both; either will do)."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise SourceError(f"{directory}: missing IDX file {stem}[.gz]")


def check_pair(images: Header, labels: Header) -> None:
    """(n, rows, cols) uint8 images and (n,) uint8 labels, from the headers: before any
    record is read (the labels' range is checked against the class names later)."""
    check_images(images.dims, images.dtype, str(images.path))
    if len(labels.dims) != 1 or labels.dtype != np.uint8:
        raise IdxFormatError(
            f"{labels.path}: expected 1-D unsigned-byte labels, found "
            f"{len(labels.dims)}-D {labels.dtype}"
        )
    if images.dims[0] != labels.dims[0]:
        raise IdxFormatError(
            f"{images.path}: {images.dims[0]} images but {labels.path.name} has "
            f"{labels.dims[0]} labels"
        )


@contextmanager
def opened_pair(image_path: Path, label_path: Path) -> Iterator[tuple[Header, Header]]:
    """An images file and a labels file, open, their headers checked (`check_pair`)."""
    with opened(image_path) as images, opened(label_path) as labels:
        check_pair(images, labels)
        yield images, labels


def read_pair(image_path: Path, label_path: Path, files: list[RawFile]) -> FoundSplit:
    """One split from an images file and a labels file; appends both to `files`."""
    with opened_pair(image_path, label_path) as (images, labels):
        x, y = whole(images, labels)
        files += [h.reader.record(h.path.name) for h in (images, labels)]
    return FoundSplit(x, y, str(image_path), str(label_path))


def pair_chunks(
    images: Header, labels: Header, rows: int, window: slice = slice(None)
) -> Iterator[Chunk]:
    """Both files' records `rows` at a time, those within `window` yielded; each file is read
    to its end and must end there."""
    n = images.dims[0]
    low, high, _ = window.indices(n)
    for start in range(0, max(n, 1), rows):  # no records: still both ends checked
        stop = min(start + rows, n)
        x, y = images.records(start, stop), labels.records(start, stop)
        a, b = max(start, low) - start, min(stop, high) - start
        if a < b:
            yield x[a:b], y[a:b]


def whole(images: Header, labels: Header, window: slice = slice(None)) -> Chunk:
    """All records within `window` (`pair_chunks` in one chunk)."""
    for chunk in pair_chunks(images, labels, max(images.dims[0], 1), window):
        return chunk
    empty = [np.empty((0, *h.dims[1:]), h.dtype) for h in (images, labels)]
    return empty[0], empty[1]


def _pair(directory: Path, split: str) -> AbstractContextManager[tuple[Header, Header]]:
    """A split's two files of `directory` (SPLIT_FILES), open, checked (`opened_pair`)."""
    image_stem, label_stem = SPLIT_FILES[split]
    return opened_pair(find(directory, image_stem), find(directory, label_stem))


@contextmanager
def stream_split(
    directory: Path, split: str, rows: int, *, classes: list[str] | None = None
) -> Iterator[SplitChunks]:
    """A split's files (`_pair`), `rows` samples at a time, each to the end its header says."""
    with _pair(directory, split) as (images, labels):
        chunks = pair_chunks(images, labels, rows)
        yield SplitChunks(images.dims, chunks, str(images.path), str(labels.path), classes)


def check_embedded_split(directory: Path, split: str) -> None:
    """One split's embedded files read through, checksums checked, before a stream starts."""
    with _pair(directory, split) as (images, labels):
        for _ in pair_chunks(images, labels, 10_000, slice(0, 0)):  # 7.8 MB at a time
            pass  # the window holds no record: read to the ends, hashing, none kept
        check_embedded(directory, [h.reader.record(h.path.name) for h in (images, labels)])


def check_embedded(directory: Path, files: list[RawFile]) -> None:
    """The embedded MNIST's files are the ones shipped (their sha256)."""
    for record in files:
        stem = record.name.removesuffix(".gz")
        if record.sha256 != EMBEDDED_SHA256[stem]:
            raise SourceError(
                f"{directory / record.name}: checksum mismatch, the embedded MNIST is damaged"
            )


def read_directory(directory: Path, source: str, name: str) -> Found:
    """The four MNIST-named IDX files of `directory` (`idx:DIR`, and `embedded`)."""
    files: list[RawFile] = []
    splits = {
        split: read_pair(find(directory, images), find(directory, labels), files)
        for split, (images, labels) in SPLIT_FILES.items()
    }
    if source == "embedded":
        check_embedded(directory, files)
    return Found(source=source, name=name, classes=None, splits=splits, files=files)
