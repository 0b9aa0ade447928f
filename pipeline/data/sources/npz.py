"""`npz:FILE`: the Keras `mnist.npz` layout, arrays `x_train`, `y_train`, `x_test`, `y_test`.

Images (n, rows, cols) or (n, rows, cols, channels), uint8 or float in [0, 1]; labels (n,)
or (n, 1) integers. An optional `classes` array of strings names the classes. The file is a
zip of .npy members, read by `pipeline.bounded`: each member's declared sizes and its .npy
header (shape, dtype) are checked against the bytes really there before it is read, without
pickle; an archive naming one array twice (`x_train.npy` and `x_train`) is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline import bounded
from pipeline.data.sources.base import Found, FoundSplit, RawFile, file_size
from pipeline.errors import SourceError

KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


def read(path: Path, spec: str) -> Found:
    stored = file_size(path)
    wanted = [key for pair in KEYS.values() for key in pair]
    try:
        with path.open("rb") as f:
            arrays = bounded.read_npz(
                f, stored, str(path), error=SourceError, names=[*wanted, "classes"],
                required=wanted,
            )  # fmt: skip
            f.seek(0)  # the digest of the very bytes read (a replaced file keeps its inode)
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except bounded.READ_ERRORS as exc:
        raise SourceError(
            f"{path}: not a readable npz file ({' '.join(str(exc).split())})"
        ) from None

    splits = {}
    for split, (x, y) in KEYS.items():
        labels = arrays[y]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        splits[split] = FoundSplit(arrays[x], labels, f"{path}:{x}", f"{path}:{y}")
    classes = None
    if "classes" in arrays:
        if arrays["classes"].ndim != 1 or arrays["classes"].dtype.kind != "U":
            raise SourceError(f"{path}:classes: expected a 1-D array of strings")
        classes = [str(c) for c in arrays["classes"]]
    return Found(spec, path.stem, classes, splits, [RawFile(path.name, digest, stored)])
