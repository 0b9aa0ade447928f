"""The prepare stage: a raw source -> a verified shard set, atomically and idempotently.

Order of work, so that a kill at any moment leaves a usable directory:
  1. take the directory lock; delete our own temporaries and the files we own (below) that
     no manifest lists;
  2. a complete set built from the same source with the same options: nothing to do;
  3. write each split's shards (temporary name, fsync, rename to a content-tagged name);
  4. write `manifest.json` atomically: from this instant the new set exists;
  5. delete the files of the replaced set (after `--force`) once no reader holds the set.

Prepare deletes only what it can prove it wrote: names in its journal `.prepare-owned`
(each shard is recorded there before it gets its final name; a `--force` rebuild records the
previous manifest's shards there too) that the current manifest does not list, and
temporaries carrying fsutil's marker. Anything else (a user's shard-looking file, say) stays,
and is named in a warning.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.data import integrity, manifest, manifest_file
from pipeline.data.manifest import MANIFEST, SHARD_NAME, Compression, Manifest, SplitInfo
from pipeline.data.shards import CHUNK_ROWS, ShardWriter
from pipeline.data.sources import RawDataset, resolve
from pipeline.errors import ConfigError, OutputError, ShardSetError
from pipeline.fsutil import dir_lock, fsync, no_readers, remove_stale_tmp, sha256_file

DEFAULT_SHARD_SIZE = 10_000
# prepare feeds the writer in blocks of this many samples, so progress moves smoothly
WRITE_BLOCK = 4096
JOURNAL = ".prepare-owned"  # one file name per line: files this directory's prepares wrote


@dataclass(frozen=True)
class PrepareResult:
    manifest: Manifest
    skipped: bool  # the directory already held this exact shard set
    seconds: float
    split_seconds: dict[str, float]  # writing each split (empty when skipped)
    warnings: list[str] = field(default_factory=list)  # files left alone, deletions deferred


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
        return integrity.open_set(out, hold=False)
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


# --- what prepare owns ---------------------------------------------------------------------


def _owned(out: Path) -> set[str]:
    try:
        lines = (out / JOURNAL).read_text().split()
    except FileNotFoundError:
        return set()
    return {name for name in lines if SHARD_NAME.match(name)}


def _own(out: Path, names: set[str]) -> None:
    """Record `names` as files of ours, durably, before they exist under those names."""
    if names:
        with (out / JOURNAL).open("a") as journal:
            journal.write("".join(f"{name}\n" for name in sorted(names)))
        fsync(out / JOURNAL)


def _listed_in_manifest(out: Path) -> set[str]:
    """The shard names the directory's manifest lists, read leniently (an older schema or a
    damaged but readable one still names the files a previous prepare wrote)."""
    try:
        doc = json.loads((out / MANIFEST).read_bytes())
        names = {s["file"] for split in doc["splits"].values() for s in split["shards"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str) and SHARD_NAME.match(n)}


def _release(out: Path, current: Manifest | None, warnings: list[str]) -> None:
    """Delete the files we own that `current` does not list, unless a reader holds the set."""
    owned = _owned(out)
    doomed = sorted(n for n in owned - (current.files if current else set()) if (out / n).exists())
    if doomed:
        with no_readers(out) as free:
            if not free:
                warnings.append(
                    f"{out}: {len(doomed)} file(s) of the replaced set kept while a reader "
                    "(train, evaluate) uses them; the next prepare here removes them"
                )
                return
            for name in doomed:
                (out / name).unlink(missing_ok=True)
    (out / JOURNAL).unlink(missing_ok=True)


def _foreign(out: Path, current: Manifest, warnings: list[str]) -> None:
    others = sorted(
        p.name
        for p in out.iterdir()
        if SHARD_NAME.match(p.name) and p.name not in current.files | _owned(out)
    )
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        warnings.append(
            f"{out}: {len(others)} shard-like file(s) this set does not list and prepare did not "
            f"write, left alone: {shown}"
        )


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
    started = time.perf_counter()
    fingerprint = _fingerprint(raw, shard_size, compression)

    def up_to_date(existing: Manifest | None) -> bool:
        return existing is not None and existing.raw["fingerprint"] == fingerprint and not force

    if out.is_dir() and not os.access(out, os.W_OK):  # a read-only volume: nothing to lock
        existing = _existing(out)
        if up_to_date(existing):
            assert existing is not None
            return PrepareResult(existing, True, time.perf_counter() - started, {})
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    warnings: list[str] = []
    try:
        with dir_lock(out, what="prepare"):
            remove_stale_tmp(out)
            existing = _existing(out)
            if up_to_date(existing):
                assert existing is not None
                _release(out, existing, warnings)
                _foreign(out, existing, warnings)
                return PrepareResult(existing, True, time.perf_counter() - started, {}, warnings)
            if (out / MANIFEST).exists() and not force:
                raise OutputError(
                    f"{out}: holds a different or damaged shard set; pass --force to replace it"
                )
            _own(out, _listed_in_manifest(out))  # a previous manifest's files: ours to replace
            try:
                new, split_seconds = _write_set(out, raw, fingerprint, command, on_progress)
            except BaseException:
                # nothing refers to this run's shards: remove them, the old set stays as it was
                _release(out, _existing(out), [])
                raise
            _release(out, new, warnings)
            _foreign(out, new, warnings)
    except OSError as exc:  # lock file, full disk, permissions: whatever the OS refused
        reason = " ".join(str(exc).split())  # HDF5 messages can span lines
        raise OutputError(f"{out}: cannot write the shard set ({reason})") from None
    return PrepareResult(new, False, time.perf_counter() - started, split_seconds, warnings)


def _write_set(
    out: Path,
    raw: RawDataset,
    fingerprint: dict[str, Any],
    command: str,
    on_progress: Callable[[str, int], None] | None,
) -> tuple[Manifest, dict[str, float]]:
    seconds: dict[str, float] = {}
    created = datetime.now(UTC).isoformat(timespec="seconds")
    source_files = [vars(f) for f in raw.files]  # names, sha256, bytes
    made_by = {**manifest.provenance(command), "created": created}
    stamp = {
        **made_by,
        "dataset": raw.name,
        "source": raw.source,
        "source_files": json.dumps(source_files),
    }
    owned = _owned(out)

    def claim(path: Path, digest: str) -> bool:
        """May the writer put its file at `path`? False: an identical file is there (kept:
        a reader may hold it open); an error if a file prepare did not write is in the way."""
        if path.exists():
            if sha256_file(path) == digest:
                return False
            if path.name not in owned:
                raise OutputError(f"{path}: a file prepare did not write is in the way; move it")
        _own(out, {path.name})
        return True

    splits: dict[str, SplitInfo] = {}
    written: dict[str, tuple[tuple[int, ...], str]] = {}
    for split, data in raw.splits.items():
        split_started = time.perf_counter()
        writer = ShardWriter(
            directory=out,
            split=split,
            n_classes=len(raw.classes),
            shard_size=fingerprint["shard_size"],
            compression=fingerprint["compression"],
            attrs=stamp,
            claim=claim,
        )
        for start in range(0, len(data.images), WRITE_BLOCK):
            stop = start + WRITE_BLOCK
            writer.write(data.images[start:stop], data.labels[start:stop])
            if on_progress:
                on_progress(split, len(data.images[start:stop]))
        splits[split] = writer.finish()
        written |= writer.written
        seconds[split] = time.perf_counter() - split_started
    new = manifest_file.write(
        out,
        name=raw.name,
        classes=raw.classes,
        image_shape=list(raw.image_shape),
        compression=fingerprint["compression"],
        chunk_rows=CHUNK_ROWS,
        shard_size=fingerprint["shard_size"],
        splits=splits,
        source={"spec": raw.source, "files": source_files},
        fingerprint=fingerprint,
        made_by=made_by,
    )
    for name, (key, digest) in written.items():  # hashed as written: verified for readers
        integrity.remember(key, digest)
        new.verified[name] = key
    return new, seconds
