"""Reading and validating IDX files, the format MNIST is distributed in.

Layout: two zero bytes, a type code, the number of dimensions; one big-endian uint32 per
dimension; then the data, row-major. Every check runs before an array is returned, so a
truncated or mislabelled file is an error, never a short or shifted dataset.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import IdxFormatError, SourceError
from pipeline.fsutil import read_file

# type code -> big-endian numpy dtype (the IDX spec's table)
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
READ_BLOCK = 1 << 22  # a .gz file is inflated this many bytes at a time


def read_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file, `.gz` or raw.

    A `.gz` file is inflated no further than one byte past what its header claims, a block
    at a time: memory follows the data really there, never a claimed or a bomb's size.
    """
    if path.suffix != ".gz":
        return read_file(path, error=SourceError)
    if not path.is_file():  # missing, a device, a FIFO: read_file says which, never blocks
        read_file(path, error=SourceError)
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4)
            if len(head) == 4 and head[:2] == b"\0\0" and head[2] in IDX_DTYPES:
                head += f.read(4 * head[3])
            claimed = _claimed_bytes(head)
            parts, size = [head], len(head)
            while size <= claimed and (part := f.read(min(READ_BLOCK, claimed + 1 - size))):
                parts.append(part)
                size += len(part)
            return b"".join(parts)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IdxFormatError(f"{path}: not a complete gzip file ({exc})") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _claimed_bytes(head: bytes) -> int:
    """The file size an IDX header claims (the header alone when it is not one)."""
    if len(head) < 4 or head[2] not in IDX_DTYPES or len(head) < 4 + 4 * head[3]:
        return len(head)
    dims: tuple[int, ...] = struct.unpack(f">{head[3]}I", head[4 : 4 + 4 * head[3]])
    itemsize: int = np.dtype(IDX_DTYPES[head[2]]).itemsize
    return len(head) + math.prod(dims) * itemsize


def parse(data: bytes, name: str) -> np.ndarray:
    """Validate an IDX header against the byte count and return the array (read-only view)."""
    if len(data) < 4:
        raise IdxFormatError(f"{name}: {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise IdxFormatError(f"{name}: bad IDX magic number 0x{data[:4].hex()}")
    dtype = np.dtype(IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise IdxFormatError(f"{name}: bad IDX header ({ndim} dimensions in {len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    # Python ints: a crafted header must not wrap around int64 and pass the length check
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes"
        raise IdxFormatError(
            f"{name}: {len(data)} bytes but the header {list(dims)} needs {expected} ({what})"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def parse_images(data: bytes, name: str) -> np.ndarray:
    """(n, rows, cols) uint8 images."""
    images = parse(data, name)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(
            f"{name}: expected 3-D unsigned-byte images, found {images.ndim}-D {images.dtype}"
        )
    if 0 in images.shape[1:]:
        raise IdxFormatError(f"{name}: images of size {images.shape[1:]} hold no pixels")
    return images


def parse_labels(data: bytes, name: str, n_classes: int) -> np.ndarray:
    """(n,) uint8 labels, each in [0, n_classes)."""
    labels = parse(data, name)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxFormatError(
            f"{name}: expected 1-D unsigned-byte labels, found {labels.ndim}-D {labels.dtype}"
        )
    if labels.size and int(labels.max()) >= n_classes:
        bad = int(np.argmax(labels >= n_classes))
        raise IdxFormatError(
            f"{name}: label {labels[bad]} at index {bad} is out of range for {n_classes} classes"
        )
    return labels
