"""The npz and checkpoint forms' mutations: the zip's own fields, and its .npy members rewritten
under valid CRCs (so the change reaches the readers behind zipfile): headers, label values,
member bytes, names duplicated or dropped, other codecs. A mutation that finds no readable zip
(an earlier one broke it) flips bits instead. scripts/fuzz_sources.py holds the forms.
"""

from __future__ import annotations

import functools
import io
import random
import re
import warnings
import zipfile
from collections.abc import Callable

import numpy as np
from fuzzlib import Mutation, flip_bits, truncate

Member = tuple[str, bytes, int]  # name, the bytes it holds, its zip method

EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
INT_DTYPES = ["<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", ">i8", ">u8"]
DESCRS = ["|u1", "<f4", "<f8", ">f8", "<i8", "<u8", "|b1", "<c16", "|O", "<U3", "|V4", "<M8[s]"]
SHAPES = ["()", "(0,)", "(12,)", "(12, 6, 6)", "(10**9, 6, 6)", "(1000000000, 6, 6)",
          "(4, 6, 6, 3)", "(2**62, 2**62)", "(-1, 6, 6)", "(12, 36)", "(12, 1)"]  # fmt: skip


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _members(data: bytes) -> list[Member] | None:
    """The archive's members, or None if zipfile cannot read them all."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return [(i.filename, zf.read(i), i.compress_type) for i in zf.infolist()]
    except Exception:  # any way a damaged zip fails to read: the caller flips bits instead
        return None


def _zip(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as zf:
        warnings.simplefilter("ignore")  # a duplicate name is what npz_names means to write
        for name, data, method in members:
            zf.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def on_members(change: Callable[[list[Member], random.Random], list[Member]]) -> Mutation:
    """A mutation of the archive's members, rezipped (valid CRCs); bits flipped instead if
    zipfile cannot read them."""

    @functools.wraps(change)
    def mutation(data: bytes, rng: random.Random) -> bytes:
        members = _members(data)
        return _zip(change(members, rng)) if members else flip_bits(data, rng)

    return mutation


def _new_header(members: list[Member], rng: random.Random) -> list[Member]:
    i = rng.randrange(len(members))
    name, raw, method = members[i]
    end = raw.find(b"\n") + 1
    text = raw[:end].decode("latin1")
    text = re.sub(r"'shape': \([^)]*\)", f"'shape': {rng.choice(SHAPES)}", text)
    text = re.sub(r"'descr': '[^']*'", f"'descr': '{rng.choice(DESCRS)}'", text)
    if rng.random() < 0.3:
        text = text.replace("False", "True")
    members[i] = (name, text.encode("latin1") + raw[end:], method)
    return members


@on_members
def npy_header(members: list[Member], rng: random.Random) -> list[Member]:
    """A member's .npy header with another shape or dtype, or Fortran order."""
    return _new_header(members, rng)


@on_members
def npy_labels(members: list[Member], rng: random.Random) -> list[Member]:
    """A label array (y_*; else the first member) in another integer dtype, as long, with one
    extreme value."""
    i = rng.choice([i for i, m in enumerate(members) if m[0].startswith("y_")] or [0])
    try:
        n = len(np.load(io.BytesIO(members[i][1]), allow_pickle=False))
    except Exception:  # no labels, or an earlier mutation broke them: a header instead
        return _new_header(members, rng)
    dtype = np.dtype(rng.choice(INT_DTYPES))
    info = np.iinfo(dtype)
    values = [v for v in (info.max, info.min, 2**63, 10**12, 10**9, 256, 255, -1)
              if info.min <= v <= info.max]  # fmt: skip
    array = (np.arange(n) % 3).astype(dtype)
    if n:
        array[rng.randrange(n)] = rng.choice(values)
    members[i] = (members[i][0], npy(array), members[i][2])
    return members


@on_members
def npz_member_bytes(members: list[Member], rng: random.Random) -> list[Member]:
    """A member's bytes flipped or cut, under a right CRC."""
    i = rng.randrange(len(members))
    name, raw, method = members[i]
    members[i] = (name, rng.choice([flip_bits, truncate])(raw, rng), method)
    return members


@on_members
def npz_names(members: list[Member], rng: random.Random) -> list[Member]:
    """A member dropped, or a second one loading under its name (with or without .npy)."""
    i = rng.randrange(len(members))
    if rng.random() < 0.3:
        del members[i]
    else:
        name, raw, method = members[i]
        alias = rng.choice([name.removesuffix(".npy"), name])
        members.insert(rng.randrange(len(members) + 1), (alias, raw, method))
    return members


@on_members
def npz_codec(members: list[Member], rng: random.Random) -> list[Member]:
    """Every member stored or deflated, or one under a codec numpy's npz never writes."""
    if rng.random() < 0.5:
        method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
        return [(name, raw, method) for name, raw, _ in members]
    i = rng.randrange(len(members))
    members[i] = (members[i][0], members[i][1], rng.choice([zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    return members


def zip_field(data: bytes, rng: random.Random) -> bytes:
    """A field (version, flags, method, sizes, offsets, name length) of a local, central or
    end record set to an extreme value."""
    starts = [m.start() for m in re.finditer(rb"PK(\x03\x04|\x01\x02|\x05\x06)", data)]
    if not starts:
        return flip_bits(data, rng)
    at = rng.choice(starts) + rng.choice([4, 6, 8, 10, 18, 22, 26, 28, 30, 42])
    width = rng.choice([2, 4])
    value = rng.choice(EXTREMES) % (1 << (8 * width))
    raw = bytearray(data)
    raw[at : at + width] = value.to_bytes(width, "little")[: len(raw[at : at + width])]
    return bytes(raw)


NPZ = [npy_header, npy_header, npz_member_bytes, npz_names, npz_codec, zip_field, zip_field]
