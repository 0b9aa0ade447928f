"""`manifest.json`: the one schema of a shard set's description, written and parsed here.

`write` builds the document (schema version, identity, datasets, normalization, layout, the
splits and their shards, source, fingerprint, provenance) and replaces the file atomically;
`read` reads it with a size bound and `parse` checks every field (types, ranges, sums,
names, the identity against the content it describes) before a `Manifest` is made of it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.data.manifest import (
    DATASETS,
    MANIFEST,
    NORMALIZATION,
    SHARD_NAME,
    Compression,
    Manifest,
    ShardInfo,
    SplitInfo,
    content_identity,
)
from pipeline.errors import ShardSetError
from pipeline.fsutil import atomic_write_bytes, read_file

SCHEMA_VERSION = 2
SPLIT_NAME = re.compile(r"^[a-z]+$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# bounds no real set comes near; a claim beyond them is a damaged or hostile manifest
MAX_CLASSES = 256  # targets are uint8
MAX_SIDE, MAX_FEATURES = 1 << 14, 1 << 24
MAX_SAMPLES, MAX_CHUNK_ROWS = 1 << 40, 1 << 20
MAX_MANIFEST_BYTES = 64 << 20


# --- writing ----------------------------------------------------------------------------


def write(
    directory: Path,
    *,
    name: str,
    classes: list[str],
    image_shape: list[int],
    compression: str,
    chunk_rows: int,
    shard_size: int,
    splits: dict[str, SplitInfo],
    source: dict[str, Any],
    fingerprint: dict[str, Any],
    made_by: dict[str, str],
) -> Manifest:
    """Write `manifest.json` atomically (from this instant the set exists) and return it."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "identity": content_identity(classes, image_shape, splits),
        "name": name,
        "classes": classes,
        "features": math.prod(image_shape),
        "image_shape": image_shape,
        "datasets": {n: {"dtype": dtype} for n, dtype in DATASETS.items()},
        "normalization": NORMALIZATION,
        "layout": {
            "chunk_rows": chunk_rows,
            "compression": compression,
            "fletcher32": True,
            "shard_size": shard_size,
        },
        "splits": {s: asdict(info) for s, info in splits.items()},
        "source": source,
        "fingerprint": fingerprint,
        "provenance": made_by,
    }
    text = (json.dumps(doc, indent=2) + "\n").encode()
    atomic_write_bytes(directory / MANIFEST, text)
    return parse(directory, text)


# --- parsing ------------------------------------------------------------------------------


class _Bad(Exception):
    """A field fails its check; `parse` turns it into one ShardSetError naming the field."""


def _int(doc: Any, key: str, lo: int, hi: int) -> int:
    value = doc[key]
    if type(value) is not int or not lo <= value <= hi:  # bool is an int: refused too
        raise _Bad(f"{key} {value!r}: must be an integer in [{lo}, {hi}]")
    return value


def _ints(values: list[Any], key: str, lo: int, hi: int) -> list[int]:
    return [_int({key: v}, key, lo, hi) for v in values]


def _str(doc: Any, key: str, pattern: re.Pattern[str] | None = None) -> str:
    value = doc[key]
    if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
        raise _Bad(f"{key} {value!r}: not a valid value")
    return value


def _dict(doc: Any, key: str) -> dict[str, Any]:
    value = doc[key]
    if not isinstance(value, dict):
        raise _Bad(f"{key}: must be an object, found {type(value).__name__}")
    return value


def _list(doc: Any, key: str) -> list[Any]:
    value = doc[key]
    if not isinstance(value, list):
        raise _Bad(f"{key}: must be a list, found {type(value).__name__}")
    return value


def _split(name: str, entry: Any, n_classes: int, seen: set[str]) -> SplitInfo:
    if not isinstance(entry, dict):
        raise _Bad(f"split {name!r}: must be an object")
    samples = _int(entry, "samples", 0, MAX_SAMPLES)
    histogram = _ints(_list(entry, "label_histogram"), "label_histogram", 0, samples)
    if len(histogram) != n_classes or sum(histogram) != samples:
        raise _Bad(f"split {name!r}: label_histogram does not count {samples} samples")
    content = _dict(entry, "content")
    if set(content) != {"images", "targets"}:
        raise _Bad(f"split {name!r}: content must hash images and targets")
    for key in content:
        _str(content, key, SHA256)
    shards = []
    for index, s in enumerate(_list(entry, "shards")):
        if not isinstance(s, dict) or set(s) != {"file", "samples", "bytes", "sha256"}:
            raise _Bad(f"split {name!r}: shard entry {index} malformed")
        file = _str(s, "file", SHARD_NAME)
        match = SHARD_NAME.match(file)
        assert match is not None
        if match["split"] != name or int(match["index"]) != index or file in seen:
            raise _Bad(f"shard file {file!r}: wrong split, position or repeated")
        seen.add(file)
        shards.append(
            ShardInfo(
                file,
                _int(s, "samples", 1, MAX_SAMPLES),
                _int(s, "bytes", 1, 1 << 62),
                _str(s, "sha256", SHA256),
            )
        )
    if sum(s.samples for s in shards) != samples:
        raise _Bad(f"split {name!r}: the shards' samples do not add up to {samples}")
    return SplitInfo(samples, histogram, dict(content), shards)


def parse(directory: Path, text: bytes) -> Manifest:
    """Validate every field of a manifest's bytes; one ShardSetError names the first bad one."""
    where = directory / MANIFEST
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardSetError(f"{where}: not valid JSON ({exc})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION or type(version) is not int:
        raise ShardSetError(
            f"{where}: unknown schema version {version!r} (this pipeline reads {SCHEMA_VERSION});"
            " prepare the set again"
        )
    try:
        classes = _list(doc, "classes")
        if not 2 <= len(classes) <= MAX_CLASSES or len(set(map(str, classes))) != len(classes):
            raise _Bad(f"classes: need 2 to {MAX_CLASSES} distinct names, found {len(classes)}")
        if not all(isinstance(c, str) for c in classes):
            raise _Bad("classes: names must be strings")
        shape = _list(doc, "image_shape")
        if len(shape) not in (2, 3):
            raise _Bad(f"image_shape {shape!r}: must be [rows, cols] or [rows, cols, channels]")
        image_shape = _ints(shape, "image_shape", 1, MAX_SIDE)
        features = _int(doc, "features", 1, MAX_FEATURES)
        if features != math.prod(image_shape):
            raise _Bad(f"features {features}: image_shape {image_shape} has {math.prod(shape)}")
        datasets = _dict(doc, "datasets")
        dtypes = {k: v.get("dtype") if isinstance(v, dict) else v for k, v in datasets.items()}
        if dtypes != DATASETS:
            raise _Bad(f"datasets {dtypes}: this pipeline reads {DATASETS}")
        if doc["normalization"] != NORMALIZATION:
            raise _Bad(f"normalization {doc['normalization']!r}: not {NORMALIZATION}")
        layout = _dict(doc, "layout")
        compression = layout["compression"]
        if compression not in set(Compression):
            raise _Bad(f"compression {compression!r}: not one of {', '.join(Compression)}")
        chunk_rows = _int(layout, "chunk_rows", 1, MAX_CHUNK_ROWS)
        _int(layout, "shard_size", 1, MAX_SAMPLES)
        if layout["fletcher32"] is not True:
            raise _Bad(f"fletcher32 {layout['fletcher32']!r}: shards carry HDF5's checksum")
        entries = _dict(doc, "splits")
        if not entries:
            raise _Bad("splits: none; the set holds no data")
        seen: set[str] = set()
        splits = {}
        for name, entry in entries.items():
            if not SPLIT_NAME.match(name):
                raise _Bad(f"split name {name!r}: not lower-case letters")
            splits[name] = _split(name, entry, len(classes), seen)
        identity = _str(doc, "identity", SHA256)
        if identity != content_identity(classes, image_shape, splits):
            raise _Bad("identity: does not match the content the manifest describes")
        _str(_dict(doc, "source"), "spec")
        _dict(doc, "fingerprint")
        _dict(doc, "provenance")
        return Manifest(
            directory=directory,
            identity=identity,
            name=_str(doc, "name"),
            classes=classes,
            features=features,
            image_shape=image_shape,
            compression=compression,
            chunk_rows=chunk_rows,
            splits=splits,
            raw=doc,
        )
    except _Bad as exc:
        raise ShardSetError(f"{where}: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ShardSetError(f"{where}: malformed manifest ({what})") from None


def read(directory: Path) -> Manifest:
    """Read and parse a directory's manifest (the shards themselves are not touched)."""
    if not directory.is_dir():
        raise ShardSetError(f"{directory}: no such shard directory")
    where = directory / MANIFEST
    text = read_file(
        where,
        error=ShardSetError,
        missing=f"missing; is {directory} a prepared shard set?",
        limit=MAX_MANIFEST_BYTES,
    )
    return parse(directory, text)
