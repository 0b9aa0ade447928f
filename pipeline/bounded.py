"""Bounded reading of what files claim: the inflate-ratio rule, zip members, `.npy` arrays.

Every reader of compressed or archived input goes through here (the `npz:` and EMNIST
sources, training checkpoints), so each rule is written once:

- A size a file claims is checked against the bytes really on disk before anything is
  allocated for it. Compression may be layered (EMNIST's `gzip.zip` is a deflated zip of
  `.gz` files): the ratio limit then holds once for the whole chain, from the bytes on disk to
  the final claim, never per layer (two layers would square it).
- A zip member is read only if zipfile can read it without a password or an unknown codec,
  and only if its name is its own: two members that load under one name (`x.npy` and `x`)
  make an archive ambiguous, so it is refused rather than one of them silently chosen.
- A `.npy` member is read into an array of the size its header states, which was checked
  against the member's size; the member checked is the member read (no second lookup by name).
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from pipeline.errors import PipelineError

# deflate expands at most 1032:1; a compressed stream claiming more than this is lying
MAX_INFLATE_RATIO = 1100
SLACK = 4096  # headers around a tiny payload
CHUNK = 1 << 20  # bytes per read: zipfile joins a large read from many small inflates
READABLE_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
ENCRYPTED = 0x1 | 0x40  # general-purpose flags: traditional and strong encryption
PATCHED = 0x20  # compressed patched data, which zipfile cannot read
# what zipfile, zlib and numpy's header parser raise on damaged bytes
READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,  # includes UnicodeDecodeError (a member name) and bad .npy headers
    NotImplementedError,  # a zip version zipfile does not know
)


def check_claim(
    claimed: int, stored: int, *, compressed: bool, where: str, error: type[PipelineError]
) -> None:
    """A file claims `claimed` bytes and `stored` bytes on disk hold them (through any number
    of compression layers when `compressed`): refuse a lie before allocating anything (Python
    ints: a crafted header cannot wrap around)."""
    limit = stored * MAX_INFLATE_RATIO + SLACK if compressed else stored
    if claimed > limit:
        how = "a compressed file of" if compressed else "a file of"
        raise error(
            f"{where}: claims {claimed:,} bytes of data, more than {how} {stored:,} bytes can hold"
        )


def members(
    zf: zipfile.ZipFile,
    stored: int,
    where: str,
    *,
    error: type[PipelineError],
    suffix: str = ".npy",
) -> dict[str, zipfile.ZipInfo]:
    """The archive's members (`stored` bytes on disk) by the name they load under (`suffix`
    removed), each one readable and its declared sizes within the archive's bytes."""
    found: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename.removesuffix(suffix)
        if name in found:
            raise error(
                f"{where}: members {found[name].filename!r} and {info.filename!r} both load as "
                f"{name!r}; an archive must name each array once"
            )
        found[name] = info
        member = f"{where}:{info.filename}"
        if info.flag_bits & ENCRYPTED:
            raise error(f"{member}: is encrypted; only unencrypted members are read")
        if info.compress_type not in READABLE_METHODS or info.flag_bits & PATCHED:
            raise error(
                f"{member}: compression method {info.compress_type}; only stored (0) or "
                "deflated (8) members are read"
            )
        check_claim(info.file_size, info.compress_size, where=member, error=error,
                    compressed=info.compress_type != zipfile.ZIP_STORED)  # fmt: skip
    # members may not share their compressed bytes (overlapping entries inflate one stream
    # many times)
    check_claim(sum(i.compress_size for i in found.values()), stored, compressed=False,
                where=f"{where}: its members together", error=error)  # fmt: skip
    return found


@dataclass(frozen=True)
class Npy:
    """A `.npy` member's header, checked against the member's size."""

    info: zipfile.ZipInfo
    where: str  # for messages: the archive and the member
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool  # column-major data: read as shape[::-1], then transposed
    offset: int  # the header's length; the data follows

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def npy_header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, *, error: type[PipelineError]
) -> Npy:
    """The member's `.npy` header; refused unless its shape and dtype fill the member exactly
    and hold no Python objects (which only pickle could read)."""
    with zf.open(info) as f:
        try:
            version = npy_format.read_magic(f)
            read_header = {
                (1, 0): npy_format.read_array_header_1_0,
                (2, 0): npy_format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f"unknown .npy version {version}")
            shape, fortran, dtype = read_header(f)
        except (ValueError, tokenize.TokenError) as exc:  # numpy tokenizes the header text
            raise error(f"{where}: not a .npy array ({' '.join(str(exc).split())})") from None
        npy = Npy(info, where, tuple(shape), dtype, bool(fortran), f.tell())
    if dtype.hasobject:
        raise error(f"{where}: holds Python objects ({dtype}, pickled); only plain arrays are read")
    held = info.file_size - npy.offset
    if min(npy.shape, default=0) < 0 or npy.nbytes != held:
        raise error(
            f"{where} is not the size its header says: it claims {list(shape)} {dtype} "
            f"({npy.nbytes:,} bytes) but the member holds {held:,}"
        )
    return npy


@contextmanager
def npy_data(zf: zipfile.ZipFile, npy: Npy, *, error: type[PipelineError]) -> Iterator[IO[bytes]]:
    """A checked member, open at its data (the header skipped) for the block; the block must
    read the data to its end, and the member must end there."""
    with zf.open(npy.info) as f:
        if len(f.read(npy.offset)) != npy.offset:  # the header, parsed already
            raise error(f"{npy.where}: truncated inside its header")
        yield f
        if f.read(1):
            raise error(f"{npy.where}: trailing bytes after its array")


def read_rows(
    f: IO[bytes], npy: Npy, start: int, stop: int, *, error: type[PipelineError]
) -> np.ndarray:
    """Rows `start` to `stop` of a C-order member's array, read next from `f` (`npy_data`):
    (stop - start, *shape[1:]) straight into one buffer of that size."""
    array = np.empty((stop - start, *npy.shape[1:]), npy.dtype)
    into = array.reshape(-1).view(np.uint8).data  # (nbytes,) memoryview
    before = start * (array.nbytes // max(1, stop - start))  # the member's bytes read already
    done = 0
    while done < len(into):
        got = f.readinto(into[done : done + CHUNK])  # type: ignore[attr-defined]
        if not got:
            raise error(f"{npy.where}: truncated after {before + done:,} of {npy.nbytes:,} bytes")
        done += got
    return array


def read_npy(zf: zipfile.ZipFile, npy: Npy, *, error: type[PipelineError]) -> np.ndarray:
    """The array of a checked member, read straight into one buffer of the checked size."""
    c_shape = npy.shape[::-1] if npy.fortran else npy.shape  # as the bytes lie
    rows = c_shape[0] if c_shape else 1
    with npy_data(zf, npy, error=error) as f:
        array = read_rows(f, replace(npy, shape=(rows, *c_shape[1:])), 0, rows, error=error)
    array = array.reshape(c_shape)
    return array.T if npy.fortran else array


def headers(
    zf: zipfile.ZipFile,
    stored: int,
    where: str,
    *,
    error: type[PipelineError],
    names: Sequence[str] | None = None,
    required: Sequence[str] = (),
) -> dict[str, Npy]:
    """The checked `.npy` headers of the members `names` (None: every member) of an npz archive
    of `stored` bytes; those `required` must be there."""
    infos = members(zf, stored, where, error=error)
    missing = [n for n in required if n not in infos]
    if missing:
        raise error(f"{where}: no {', '.join(missing)} (its arrays: {sorted(infos) or 'none'})")
    wanted = [n for n in (infos if names is None else names) if n in infos]
    return {n: npy_header(zf, infos[n], f"{where}:{n}", error=error) for n in wanted}


def read_npz(
    source: IO[bytes],
    stored: int,
    where: str,
    *,
    error: type[PipelineError],
    names: Sequence[str] | None = None,
    required: Sequence[str] = (),
    check: Callable[[dict[str, Npy]], None] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays `names` (None: every member) of an npz archive of `stored` bytes; those
    `required` must be there. Every member and header is checked, then `check` sees the
    headers (the caller's own bounds), before the first array is allocated."""
    with zipfile.ZipFile(source) as zf:
        checked = headers(zf, stored, where, error=error, names=names, required=required)
        if check is not None:
            check(checked)
        return {n: read_npy(zf, h, error=error) for n, h in checked.items()}
