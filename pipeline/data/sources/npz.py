"""`npz:FILE`: the Keras `mnist.npz` layout, arrays `x_train`, `y_train`, `x_test`, `y_test`.

Images (n, rows, cols) or (n, rows, cols, channels), uint8 or float in [0, 1]; labels (n,)
or (n, 1) integers. An optional `classes` array of strings names the classes. The file is a
zip of .npy members: each member's declared sizes and its .npy header (shape, dtype) are
checked against the bytes really there before `np.load(..., allow_pickle=False)` reads it.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from pipeline.data.sources.base import Found, FoundSplit, RawFile, check_claim, file_size
from pipeline.errors import SourceError

KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


def _check_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive_bytes: int, where: str
) -> None:
    """The member's declared sizes, then its .npy header's shape and dtype, against reality."""
    check_claim(info.compress_size, archive_bytes, compressed=False, where=where, error=SourceError)
    check_claim(info.file_size, info.compress_size, compressed=info.compress_type != 0,
                where=where, error=SourceError)  # fmt: skip
    with zf.open(info) as f:
        try:
            version = npy.read_magic(f)
            header = (
                npy.read_array_header_1_0(f) if version == (1, 0) else npy.read_array_header_2_0(f)
            )
        except ValueError as exc:
            raise SourceError(f"{where}: not a .npy array ({exc})") from None
        shape, _, dtype = header
        if dtype.hasobject:
            raise SourceError(
                f"{where}: holds Python objects ({dtype}); only plain arrays are read"
            )
        claimed = math.prod(shape) * dtype.itemsize
        if claimed != info.file_size - f.tell():
            raise SourceError(
                f"{where}: its header claims {list(shape)} {dtype} ({claimed:,} bytes) but the "
                f"member holds {info.file_size - f.tell():,}"
            )


def read(path: Path, spec: str) -> Found:
    stored = file_size(path)
    wanted = [key for pair in KEYS.values() for key in pair]
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
            missing = [k for k in wanted if k not in members]
            if missing:
                raise SourceError(
                    f"{path}: no {', '.join(missing)} (found {sorted(members) or 'nothing'}; "
                    "expected x_train, y_train, x_test, y_test)"
                )
            for key in [*wanted, "classes"]:
                if key in members:
                    _check_member(zf, members[key], stored, f"{path}:{key}")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in [*wanted, "classes"] if key in members}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise SourceError(f"{path}: not a readable npz file ({exc})") from None
    except (ValueError, OSError) as exc:
        raise SourceError(f"{path}: unreadable ({' '.join(str(exc).split())})") from None

    splits = {}
    for split, (x, y) in KEYS.items():
        labels = arrays[y]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        splits[split] = FoundSplit(arrays[x], labels, f"{path}:{x}")
    classes = None
    if "classes" in arrays:
        if arrays["classes"].ndim != 1 or arrays["classes"].dtype.kind != "U":
            raise SourceError(f"{path}:classes: expected a 1-D array of strings")
        classes = [str(c) for c in arrays["classes"]]
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return Found(spec, path.stem, classes, splits, [RawFile(path.name, digest, stored)])
