"""The prepare stage: a raw source -> a verified shard set, atomically and idempotently.

Order of work, so that a kill at any moment leaves a usable directory:
  1. take the directory lock; delete temporary files and orphan shards of killed runs;
  2. a complete set built from the same source with the same options: nothing to do;
  3. write each split's shards (temporary name, fsync, rename to a content-tagged name);
  4. write `manifest.json` atomically: from this instant the new set exists;
  5. delete shards no manifest refers to (the old set's, after `--force`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.shards import (
    CHUNK_ROWS,
    DATASETS,
    MANIFEST,
    SCHEMA_VERSION,
    SHARD_NAME,
    Compression,
    Manifest,
    ShardWriter,
    load_manifest,
    provenance,
)
from pipeline.data.sources import RawDataset, resolve
from pipeline.errors import ConfigError, OutputError, ShardSetError
from pipeline.fsutil import atomic_write_bytes, dir_lock, remove_stale_tmp

DEFAULT_SHARD_SIZE = 10_000
# prepare feeds the writer in blocks of this many samples, so progress moves smoothly
WRITE_BLOCK = 4096


@dataclass(frozen=True)
class PrepareResult:
    manifest: Manifest
    skipped: bool  # the directory already held this exact shard set
    seconds: float
    split_seconds: dict[str, float]  # writing each split (empty when skipped)


def _fingerprint(raw: RawDataset, shard_size: int, compression: str) -> dict[str, Any]:
    """What makes two shard sets the same: the raw content and the layout options."""
    return {
        "name": raw.name,
        "classes": raw.classes,
        "files": {f.name: f.sha256 for f in raw.files},
        "shard_size": shard_size,
        "compression": compression,
        "val_fraction": raw.val_fraction,
    }


def _existing(out: Path) -> Manifest | None:
    if not (out / MANIFEST).exists():
        return None
    try:
        return load_manifest(out)
    except ShardSetError:
        return None  # a damaged set: rebuilding it loses nothing usable


def find_set(out: Path, source: str | None, val_fraction: float = 0.0) -> Manifest | None:
    """A complete shard set in `out` built from `source` (any layout options), or None.

    Reads nothing but the manifest and the shard sizes, so it also works on a read-only volume.
    """
    existing = _existing(out)
    if existing is None or existing.raw.get("source", {}).get("spec") != resolve(source):
        return None
    if existing.raw.get("fingerprint", {}).get("val_fraction", 0.0) != (val_fraction or 0.0):
        return None  # another val split: not the set asked for
    return existing


def _remove_orphans(out: Path, keep: Manifest | None) -> None:
    referenced = set()
    if keep is not None:
        referenced = {s.file for split in keep.splits.values() for s in split.shards}
    for path in out.iterdir():
        if SHARD_NAME.match(path.name) and path.name not in referenced:
            path.unlink(missing_ok=True)


def prepare(
    out: Path,
    raw: RawDataset,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    compression: str = "none",
    force: bool = False,
    command: str = "pipeline prepare",
    on_progress: Callable[[str, int], None] | None = None,
) -> PrepareResult:
    """Write `raw` as a shard set in `out`; `on_progress(split, samples)` after each block."""
    if shard_size < 1:
        raise ConfigError("must be at least 1", param="shard_size", value=shard_size)
    if compression not in set(Compression):
        choices = ", ".join(Compression)
        raise ConfigError(f"choose one of {choices}", param="compression", value=compression)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    started = time.perf_counter()
    fingerprint = _fingerprint(raw, shard_size, compression)
    try:
        with dir_lock(out, what="prepare"):
            remove_stale_tmp(out)
            existing = _existing(out)
            if (
                existing is not None
                and existing.raw.get("fingerprint") == fingerprint
                and not force
            ):
                _remove_orphans(out, keep=existing)
                return PrepareResult(existing, True, time.perf_counter() - started, {})
            if (out / MANIFEST).exists() and not force:
                raise OutputError(
                    f"{out}: holds a different or damaged shard set; pass --force to replace it"
                )
            manifest, split_seconds = _write_set(out, raw, fingerprint, command, on_progress)
            _remove_orphans(out, keep=manifest)
    except OSError as exc:  # lock file, full disk, permissions: whatever the OS refused
        reason = " ".join(str(exc).split())  # HDF5 messages can span lines
        raise OutputError(f"{out}: cannot write the shard set ({reason})") from None
    return PrepareResult(manifest, False, time.perf_counter() - started, split_seconds)


def _write_set(
    out: Path,
    raw: RawDataset,
    fingerprint: dict[str, Any],
    command: str,
    on_progress: Callable[[str, int], None] | None,
) -> tuple[Manifest, dict[str, float]]:
    seconds: dict[str, float] = {}
    created = datetime.now(UTC).isoformat(timespec="seconds")
    stamp = {
        **provenance(command),
        "created": created,
        "dataset": raw.name,
        "source": raw.source,
        "source_files": json.dumps([vars(f) for f in raw.files]),  # names, sha256, bytes
    }
    writers: list[ShardWriter] = []
    splits: dict[str, Any] = {}
    try:
        for split, data in raw.splits.items():
            split_started = time.perf_counter()
            writer = ShardWriter(
                directory=out,
                split=split,
                n_classes=len(raw.classes),
                shard_size=fingerprint["shard_size"],
                compression=fingerprint["compression"],
                attrs=stamp,
            )
            writers.append(writer)
            for start in range(0, len(data.images), WRITE_BLOCK):
                stop = start + WRITE_BLOCK
                writer.write(data.images[start:stop], data.labels[start:stop])
                if on_progress:
                    on_progress(split, len(data.images[start:stop]))
            shards = writer.finish()
            splits[split] = {
                "samples": len(data.images),
                "label_histogram": np.bincount(data.labels, minlength=len(raw.classes)).tolist(),
                "shards": [vars(s) for s in shards],
            }
            seconds[split] = time.perf_counter() - split_started
        doc = {
            "schema_version": SCHEMA_VERSION,
            "name": raw.name,
            "classes": raw.classes,
            "features": int(np.prod(raw.image_shape)),
            "image_shape": list(raw.image_shape),
            "datasets": {name: {"dtype": dtype} for name, dtype in DATASETS.items()},
            "normalization": {"images": "float32(pixel) / float32(255)", "labels": "one-hot"},
            "layout": {
                "chunk_rows": CHUNK_ROWS,
                "compression": fingerprint["compression"],
                "fletcher32": True,
                "shard_size": fingerprint["shard_size"],
            },
            "splits": splits,
            "source": {"spec": raw.source, "files": [vars(f) for f in raw.files]},
            "fingerprint": fingerprint,
            "provenance": {**provenance(command), "created": created},
        }
        atomic_write_bytes(out / MANIFEST, (json.dumps(doc, indent=2) + "\n").encode())
    except BaseException:
        # nothing refers to this run's shards: remove them, the old set stays as it was
        for writer in writers:
            for path in writer.written:
                path.unlink(missing_ok=True)
        raise
    return load_manifest(out), seconds
