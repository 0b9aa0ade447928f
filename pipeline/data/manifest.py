"""The description of a shard set: its types, its content identity, its file and dataset names.

The manifest names every shard with its size and sha256, and says what the set holds. Its
`identity` is a hash of the CONTENT alone (class names, image shape, and per split the sample
count and the sha256 of the images' and targets' bytes in order): the same source prepared
twice, in any directory, at any time, with any shard size or compression, has one identity.
Provenance (who, when, from which files) and layout sit beside it, not inside it.

`manifest.json` itself, its one schema, writing and parsing (every field checked), is
`manifest_file`'s; the shards' real datasets are checked against its claims by `integrity`
before anything is read from them.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import __version__
from pipeline.data import pixels
from pipeline.errors import ShardSetError
from pipeline.fsutil import ReaderLock

MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-(?P<tag>[0-9a-f]{8})\.h5$")


class Compression(StrEnum):
    """HDF5 compression of the shards' datasets (none reads fastest: see the README)."""

    none = "none"
    lzf = "lzf"
    gzip = "gzip"


DATASETS = {"images": "float32", "labels": "float32", "targets": "uint8"}
NORMALIZATION = {"images": pixels.NORMALIZATION, "labels": "one-hot"}


def provenance(command: str) -> dict[str, str]:
    """Who made a file and with what: stamped into the manifest and every shard."""
    return {
        "tool": "pipeline",
        "version": __version__,
        "command": command,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
    }


@dataclass(frozen=True)
class ShardInfo:
    file: str
    samples: int
    bytes: int
    sha256: str  # of the file's bytes


@dataclass(frozen=True)
class SplitInfo:
    samples: int
    label_histogram: list[int]
    content: dict[str, str]  # "images"/"targets" -> sha256 of the split's bytes, in order
    shards: list[ShardInfo]


def content_identity(
    classes: list[str], image_shape: list[int], splits: dict[str, SplitInfo]
) -> str:
    """sha256 of what a model sees: class names, image shape, each split's data in order."""
    doc = {
        "classes": classes,
        "image_shape": image_shape,
        "normalization": NORMALIZATION,
        "splits": {name: {"samples": s.samples, **s.content} for name, s in sorted(splits.items())},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def identity_of(doc: dict[str, Any]) -> str:
    """The content identity of a manifest document's fields (for tools that edit one)."""
    splits = {
        name: SplitInfo(s["samples"], s["label_histogram"], s["content"], [])
        for name, s in doc["splits"].items()
    }
    return content_identity(doc["classes"], doc["image_shape"], splits)


@dataclass(frozen=True)
class Manifest:
    """A validated `manifest.json`, with the directory it describes."""

    directory: Path
    identity: str  # of the content: what runs, checkpoints and reports record
    name: str
    classes: list[str]
    features: int
    image_shape: list[int]
    compression: str
    chunk_rows: int  # rows per HDF5 chunk: the loader reads whole chunks
    splits: dict[str, SplitInfo]
    raw: dict[str, Any] = field(repr=False)
    # shard file -> (device, inode, size, mtime_ns, ctime_ns) of the file whose bytes were
    # checked against its sha256 when the set was opened (see integrity.open_set)
    verified: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)
    lock: ReaderLock | None = field(default=None, repr=False, compare=False)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def files(self) -> set[str]:
        return {s.file for split in self.splits.values() for s in split.shards}

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ShardSetError(f"{self.directory}: no split {name!r} (has {sorted(self.splits)})")
        return self.splits[name]

    def path(self, shard: ShardInfo) -> Path:
        return self.directory / shard.file
