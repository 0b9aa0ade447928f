"""The prepare stage and `verify`, on real IDX bytes and real HDF5 files.

The full real MNIST is prepared once per session (fixture `mnist_shards`) and compared with
an independent decoding of the shared IDX files; the failure tests (kills, locks, read-only
and full file systems, corrupted shards) run on real processes, mounts and bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import pipeline
from pipeline import fsutil
from pipeline.data import (
    DATASETS,
    MANIFEST,
    SHARD_NAME,
    Manifest,
    integrity,
    open_set,
    prepare,
    read_manifest,
    shards,
    sources,
)
from pipeline.errors import LockedError, OutputError, ShardCorruptError, ShardSetError
from tests.conftest import (
    REPO,
    SHARED_MNIST,
    assert_clean,
    flip_chunk_byte,
    run_size_limited,
    snapshot,
    write_idx_dir,
)

MNIST_TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- helpers --------------------------------------------------------------------------------


def shared_idx(stem: str) -> np.ndarray:
    """An IDX file of ../shared/datasets/mnist decoded here, independently of pipeline.idx."""
    data = gzip.decompress((SHARED_MNIST / f"{stem}.gz").read_bytes())
    offset = 16 if "images" in stem else 8
    return np.frombuffer(data, np.uint8, offset=offset)


def read_split(manifest: Manifest, split: str) -> dict[str, np.ndarray]:
    """All of a split's datasets, concatenated in shard order, read with plain h5py."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in DATASETS}
    for shard in manifest.split(split).shards:
        with h5py.File(manifest.path(shard), "r") as f:
            for name in DATASETS:
                parts[name].append(f[name][()])
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def problems(directory: Path) -> list[tuple[str, str]]:
    """(file, problem) for every check of `verify` that failed."""
    manifest = read_manifest(directory)
    return [(c.file, c.problem) for c in integrity.verify(manifest) if c.problem is not None]


def assert_verifies(directory: Path) -> Manifest:
    manifest = open_set(directory)
    checks = list(integrity.verify(manifest))
    assert [c for c in checks if c.problem is not None] == []
    assert len(checks) == sum(len(s.shards) for s in manifest.splits.values())
    return manifest


def assert_sound(directory: Path) -> None:
    """The set verifies, and the directory holds it and nothing else (no orphan, no tmp)."""
    assert_verifies(directory)
    assert_clean(directory)


def shard_names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if SHARD_NAME.match(p.name)}


def edit_manifest(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = directory / MANIFEST
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


def restamp(directory: Path, file: str) -> None:
    """Make the manifest agree with a shard's current bytes (size and sha256), so that only
    the content checks (or HDF5's fletcher32) can find what was changed inside it."""
    path = directory / file

    def edit(doc: dict[str, Any]) -> None:
        for split in doc["splits"].values():
            for entry in split["shards"]:
                if entry["file"] == file:
                    entry["sha256"] = fsutil.sha256_file(path)
                    entry["bytes"] = path.stat().st_size

    edit_manifest(directory, edit)


def run_pipeline(*args: str) -> subprocess.Popen[bytes]:
    """`python -m pipeline ARGS` as a real, separate process."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_when(process: subprocess.Popen[bytes], condition: Callable[[], bool]) -> None:
    """SIGKILL `process` as soon as `condition()` holds (polled); fail if it ends first."""
    deadline = time.monotonic() + 120  # a safety net, not a speed requirement
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"prepare ended (exit {process.returncode}) before the kill: {err!r}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail("the condition for the kill never came true")
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def entries(directory: Path) -> dict[str, int]:
    """name -> inode, tolerating a directory that does not exist yet."""
    try:
        return {p.name: p.stat().st_ino for p in directory.iterdir()}
    except FileNotFoundError:
        return {}


@pytest.fixture
def small_raw(small_idx: Path) -> sources.RawDataset:
    """250 train and 60 test random images, read from real IDX files."""
    return sources.load(f"idx:{small_idx}")


@pytest.fixture
def small_set(tmp_path: Path, small_raw: sources.RawDataset) -> Path:
    """`small_raw` prepared, with the default options, into tmp_path/shards."""
    out = tmp_path / "shards"
    prepare.prepare(out, small_raw)
    return out


@pytest.fixture
def slice_copy(tmp_path: Path, slice_shards: Manifest) -> Path:
    """A private copy of the real-MNIST slice shard set (3 train + 1 test shards of 1,000
    samples; 4 chunks per shard), for tests that damage it."""
    return Path(shutil.copytree(slice_shards.directory, tmp_path / "copy"))


# --- the real MNIST, end to end -------------------------------------------------------------


def test_real_mnist_verifies(mnist_shards: Manifest) -> None:
    manifest = assert_verifies(mnist_shards.directory)
    assert [len(manifest.split(s).shards) for s in ("train", "test")] == [6, 1]
    assert_clean(mnist_shards.directory)


def test_shards_hold_raw_pixels_over_255_exactly(mnist_shards: Manifest) -> None:
    for split in ("train", "test"):
        image_stem, label_stem = sources.SPLIT_FILES[split]
        pixels = shared_idx(image_stem).reshape(-1, 784)
        labels = shared_idx(label_stem)
        data = read_split(mnist_shards, split)

        expected = pixels.astype(np.float32) / np.float32(255)
        assert data["images"].dtype == np.float32
        assert data["images"].shape == expected.shape
        # bit for bit, not approximately
        np.testing.assert_array_equal(data["images"].view(np.uint32), expected.view(np.uint32))
        assert data["images"].min() == 0.0
        assert data["images"].max() == 1.0

        assert data["labels"].dtype == np.float32
        np.testing.assert_array_equal(data["labels"], np.eye(10, dtype=np.float32)[labels])
        np.testing.assert_array_equal(data["targets"], labels)


def test_manifest_describes_the_set(mnist_shards: Manifest) -> None:
    directory = mnist_shards.directory
    text = (directory / MANIFEST).read_bytes()
    doc = json.loads(text)
    assert mnist_shards.identity == doc["identity"]

    assert doc["schema_version"] == 2
    assert doc["name"] == "mnist"
    assert doc["classes"] == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    assert doc["features"] == 784
    assert doc["image_shape"] == [28, 28]
    assert doc["datasets"] == {
        "images": {"dtype": "float32"},
        "labels": {"dtype": "float32"},
        "targets": {"dtype": "uint8"},
    }
    assert doc["normalization"]["images"] == "float32(pixel) / float32(255)"
    assert doc["normalization"]["labels"] == "one-hot"
    assert doc["layout"] == {
        "chunk_rows": 256,
        "compression": "none",
        "fletcher32": True,
        "shard_size": 10_000,
    }

    train_labels = shared_idx(sources.SPLIT_FILES["train"][1])
    histograms = {
        "train": np.bincount(train_labels, minlength=10).tolist(),
        "test": MNIST_TEST_HISTOGRAM,
    }
    for split, samples in (("train", 60_000), ("test", 10_000)):
        entry = doc["splits"][split]
        assert entry["samples"] == samples
        assert entry["label_histogram"] == histograms[split]
        assert sum(s["samples"] for s in entry["shards"]) == samples
        for index, shard in enumerate(entry["shards"]):
            path = directory / shard["file"]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert shard["file"] == f"{split}-{index:05d}-{digest[:8]}.h5"
            assert shard["sha256"] == digest
            assert shard["bytes"] == path.stat().st_size
            assert shard["samples"] == 10_000

    assert doc["source"]["spec"] == "embedded"
    readme_bytes = {  # decompressed sizes, from ../shared/datasets/README.md
        "train-images-idx3-ubyte": 47_040_016,
        "train-labels-idx1-ubyte": 60_008,
        "t10k-images-idx3-ubyte": 7_840_016,
        "t10k-labels-idx1-ubyte": 10_008,
    }
    expected_files = []
    for stem, size in readme_bytes.items():
        content = gzip.decompress((SHARED_MNIST / f"{stem}.gz").read_bytes())
        assert len(content) == size
        expected_files.append(
            {"name": f"{stem}.gz", "sha256": hashlib.sha256(content).hexdigest(), "bytes": size}
        )
    assert sorted(doc["source"]["files"], key=str) == sorted(expected_files, key=str)

    made = doc["provenance"]
    assert made["tool"] == "pipeline"
    assert made["version"] == pipeline.__version__
    assert made["command"] == "pipeline prepare"
    assert made["numpy"] == np.__version__
    assert made["h5py"] == h5py.version.version
    assert made["hdf5"] == h5py.version.hdf5_version
    assert made["python"] == ".".join(map(str, sys.version_info[:3]))
    assert datetime.fromisoformat(made["created"]).tzinfo is not None


def test_every_shard_carries_the_provenance(mnist_shards: Manifest) -> None:
    made = mnist_shards.raw["provenance"]
    for split in ("train", "test"):
        for index, shard in enumerate(mnist_shards.split(split).shards):
            with h5py.File(mnist_shards.path(shard), "r") as f:
                attrs = {k: str(v) for k, v in f.attrs.items()}
            assert attrs == {
                **made,
                "dataset": "mnist",
                "source": "embedded",
                "source_files": json.dumps(mnist_shards.raw["source"]["files"]),
                "split": split,
                "shard_index": str(index),
            }


def test_chunks_are_blocks_of_whole_rows_with_fletcher32(mnist_shards: Manifest) -> None:
    shard = mnist_shards.split("train").shards[0]
    with h5py.File(mnist_shards.path(shard), "r") as f:
        shapes = {name: (f[name].shape, f[name].chunks, str(f[name].dtype)) for name in f}
        for name in f:
            assert f[name].fletcher32
            assert f[name].compression is None
            # chunks stored in row order, back to back: a block of rows is one sequential read
            infos = [f[name].id.get_chunk_info(i) for i in range(f[name].id.get_num_chunks())]
            assert [i.chunk_offset[0] for i in infos] == list(range(0, 10_000, 256))
            for a, b in itertools.pairwise(infos):
                assert b.byte_offset == a.byte_offset + a.size
    assert shapes == {
        "images": ((10_000, 784), (256, 784), "float32"),
        "labels": ((10_000, 10), (256, 10), "float32"),
        "targets": ((10_000,), (256,), "uint8"),
    }


# --- idempotence, options, --force ----------------------------------------------------------


def test_rerun_is_a_no_op(tmp_path: Path, small_raw: sources.RawDataset) -> None:
    out = tmp_path / "shards"
    first = prepare.prepare(out, small_raw, shard_size=100)
    assert not first.skipped
    before = snapshot(out)

    again = prepare.prepare(out, small_raw, shard_size=100)

    assert again.skipped
    assert again.manifest.identity == first.manifest.identity
    assert snapshot(out) == before
    assert_clean(out)


@pytest.mark.parametrize(
    ("option", "value"),
    [("shard_size", 99), ("compression", "lzf"), ("classes", [f"c{i}" for i in range(10)])],
    ids=["shard-size", "compression", "classes"],
)
def test_different_options_without_force_change_nothing(
    tmp_path: Path, small_idx: Path, option: str, value: Any
) -> None:
    out = tmp_path / "shards"
    prepare.prepare(out, sources.load(f"idx:{small_idx}"), shard_size=100)
    before = snapshot(out)
    raw = sources.load(f"idx:{small_idx}", classes=value if option == "classes" else None)
    shard_size = value if option == "shard_size" else 100
    compression = value if option == "compression" else "none"

    with pytest.raises(OutputError, match=re.escape(str(out))) as info:
        prepare.prepare(out, raw, shard_size=shard_size, compression=compression)

    assert "--force" in str(info.value)
    assert snapshot(out) == before
    assert_verifies(out)


def test_different_source_without_force_changes_nothing(tmp_path: Path, small_set: Path) -> None:
    out = small_set
    before = snapshot(out)
    rng = np.random.default_rng(99)
    other = write_idx_dir(
        tmp_path / "other",
        (rng.integers(0, 256, (20, 28, 28), np.uint8), rng.integers(0, 10, 20, np.uint8)),
        (rng.integers(0, 256, (5, 28, 28), np.uint8), rng.integers(0, 10, 5, np.uint8)),
    )
    with pytest.raises(OutputError):
        prepare.prepare(out, sources.load(f"idx:{other}"))
    assert snapshot(out) == before


def test_force_rebuilds_and_removes_the_old_shards(
    tmp_path: Path, small_raw: sources.RawDataset
) -> None:
    out = tmp_path / "shards"
    old = prepare.prepare(out, small_raw, shard_size=100).manifest
    old_files = shard_names(out)
    assert len(old_files) == 4  # 100 + 100 + 50 train, 60 test

    new = prepare.prepare(out, small_raw, shard_size=64, force=True)

    assert not new.skipped
    assert new.manifest.identity == old.identity  # same content, another layout
    assert new.manifest.raw["layout"]["shard_size"] == 64
    assert [s.samples for s in new.manifest.split("train").shards] == [64, 64, 64, 58]
    # the train shards are all new; the test shard may be byte-identical, name and all
    assert shard_names(out).isdisjoint(f for f in old_files if f.startswith("train-"))
    assert_sound(out)


def test_force_with_the_same_options_rebuilds(
    tmp_path: Path, small_raw: sources.RawDataset
) -> None:
    out = tmp_path / "shards"
    prepare.prepare(out, small_raw, shard_size=100)
    result = prepare.prepare(out, small_raw, shard_size=100, force=True)
    assert not result.skipped
    assert_sound(out)


def wait_for_a_new_second() -> None:
    """Start just after a wall-clock second begins, so that two quick prepares share their
    `created` stamp (seconds) and hence write byte-identical shards under identical names."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


@pytest.mark.parametrize("shard_size", [100, 64], ids=["same-options", "new-options"])
def test_interrupted_force_rebuild_keeps_the_old_set(
    tmp_path: Path, small_raw: sources.RawDataset, shard_size: int
) -> None:
    """Ctrl-C in the middle of `--force` (after the train split is written): the old set,
    including shards the rebuild rewrote with identical bytes, stays complete."""
    out = tmp_path / "shards"
    wait_for_a_new_second()
    old = prepare.prepare(out, small_raw, shard_size=100).manifest

    def interrupt(split: str, samples: int) -> None:
        if split == "test":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(out, small_raw, shard_size=shard_size, force=True, on_progress=interrupt)

    assert open_set(out).identity == old.identity
    assert_sound(out)


def test_damaged_manifest_needs_force(small_set: Path, small_raw: sources.RawDataset) -> None:
    out = small_set
    (out / MANIFEST).write_text("{ not json")
    before = snapshot(out)
    with pytest.raises(OutputError, match="--force"):
        prepare.prepare(out, small_raw)
    assert snapshot(out) == before

    old = shard_names(out)
    result = prepare.prepare(out, small_raw, force=True)
    assert not result.skipped
    assert_verifies(out)
    # a manifest that cannot be read cannot prove the old shards are prepare's: they stay
    assert old <= shard_names(out)
    left = sorted(old - result.manifest.files)  # (the same second writes identical shards)
    assert not left or any(all(name in w for name in left[:3]) for w in result.warnings)


def test_set_with_a_missing_shard_is_rebuilt_with_force(
    tmp_path: Path, small_raw: sources.RawDataset
) -> None:
    out = tmp_path / "shards"
    manifest = prepare.prepare(out, small_raw, shard_size=100).manifest
    manifest.path(manifest.split("train").shards[1]).unlink()
    with pytest.raises(OutputError):
        prepare.prepare(out, small_raw, shard_size=100)
    prepare.prepare(out, small_raw, shard_size=100, force=True)
    assert_verifies(out)


def test_rerun_removes_only_its_own_leftovers(
    tmp_path: Path, small_raw: sources.RawDataset
) -> None:
    """A killed prepare's temporary (our marker) and a shard it recorded in its journal
    go; a user's `.tmp` file and a shard-looking file nobody recorded stay, named."""
    out = tmp_path / "shards"
    prepare.prepare(out, small_raw, shard_size=100)
    listed = snapshot(out)
    (out / ".train-00000.h5.4242.tmp").write_bytes(b"half a shard")
    (out / "train-00009-00c0ffee.h5").write_bytes(b"a shard a killed prepare wrote")
    (out / prepare.JOURNAL).write_text("train-00009-00c0ffee.h5\n")
    foreign = {".notes.tmp": b"a user's temporary", "train-00007-0123abcd.h5": b"a user's shard"}
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    (out / "notes.txt").write_text("not ours: stays")

    result = prepare.prepare(out, small_raw, shard_size=100)

    assert result.skipped
    after = snapshot(out)
    assert after.pop("notes.txt")
    for name, data in foreign.items():
        assert after.pop(name) and (out / name).read_bytes() == data
    assert after == listed
    assert len(result.warnings) == 1
    assert "train-00007-0123abcd.h5" in result.warnings[0]
    assert "left alone" in result.warnings[0]


def test_shards_copied_into_a_directory_without_manifest_stay(
    tmp_path: Path, small_raw: sources.RawDataset, slice_shards: Manifest
) -> None:
    """The audit's case: a user's shards in DIR, no manifest; `prepare --out DIR` (no
    --force) writes its set beside them and deletes none of them."""
    out = tmp_path / "shards"
    out.mkdir()
    theirs = {}
    for shard in slice_shards.split("train").shards:
        shutil.copy(slice_shards.path(shard), out / shard.file)
        theirs[shard.file] = (out / shard.file).read_bytes()

    result = prepare.prepare(out, small_raw, shard_size=100)

    assert not result.skipped
    for name, data in theirs.items():
        assert (out / name).read_bytes() == data
    assert any(all(name in w for name in sorted(theirs)[:3]) for w in result.warnings)
    assert_verifies(out)
    # and again, a no-op: still nothing of theirs deleted
    assert prepare.prepare(out, small_raw, shard_size=100).skipped
    assert all((out / name).read_bytes() == data for name, data in theirs.items())


def test_a_foreign_file_in_the_way_is_an_error_not_overwritten(
    tmp_path: Path, small_raw: sources.RawDataset
) -> None:
    """A file prepare did not write, under the very name of a shard it is about to write
    (prepares within one second write identical bytes, hence identical names)."""
    wait_for_a_new_second()
    name = prepare.prepare(tmp_path / "a", small_raw, shard_size=100).manifest.files.pop()
    out = tmp_path / "b"
    out.mkdir()
    (out / name).write_bytes(b"same name, someone else's bytes")

    try:
        outcome = f"beside: {prepare.prepare(out, small_raw, shard_size=100).manifest.files}"
    except OutputError as exc:
        outcome = str(exc)

    if not outcome.startswith("beside"):  # the same second: the name was wanted
        assert outcome == f"{out / name}: a file prepare did not write is in the way; move it"
    assert (out / name).read_bytes() == b"same name, someone else's bytes"


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lzf", "gzip"])
def test_compressed_shards_read_back_identically(
    tmp_path: Path, small_raw: sources.RawDataset, compression: str
) -> None:
    plain = prepare.prepare(tmp_path / "none", small_raw, shard_size=100).manifest
    packed = prepare.prepare(
        tmp_path / compression, small_raw, shard_size=100, compression=compression
    ).manifest

    assert packed.compression == compression
    assert packed.raw["layout"]["compression"] == compression
    assert_verifies(packed.directory)
    for split in ("train", "test"):
        a, b = read_split(plain, split), read_split(packed, split)
        for name in DATASETS:
            np.testing.assert_array_equal(a[name], b[name])
        expected = small_raw.splits[split].images.astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(b["images"], expected)
        for shard in packed.split(split).shards:
            with h5py.File(packed.path(shard), "r") as f:
                for name in DATASETS:
                    assert f[name].compression == compression
                    assert f[name].fletcher32
                    assert f[name].shuffle


# --- killed, locked, unwritable, full -------------------------------------------------------


def test_prepare_killed_midway_then_rerun(tmp_path: Path, real_mnist: sources.RawDataset) -> None:
    out = tmp_path / "shards"
    process = run_pipeline("prepare", "--out", str(out), "--shard-size", "2000")
    kill_when(process, lambda: any(SHARD_NAME.match(name) for name in entries(out)))

    assert shard_names(out)  # killed mid-way: some shards were already written...
    if (out / MANIFEST).exists():  # ...and a manifest, if any, must describe a complete set
        assert_verifies(out)
    else:
        with pytest.raises(ShardSetError, match="missing"):
            open_set(out)

    result = prepare.prepare(out, real_mnist, shard_size=2000)

    assert not result.skipped
    assert result.manifest.split("train").samples == 60_000
    assert len(result.manifest.split("train").shards) == 30
    assert_sound(out)


def test_force_rebuild_killed_midway_keeps_the_old_set(
    tmp_path: Path, real_mnist: sources.RawDataset
) -> None:
    out = tmp_path / "shards"
    old = prepare.prepare(out, real_mnist, shard_size=2000).manifest
    manifest_bytes = (out / MANIFEST).read_bytes()
    before = entries(out)

    process = run_pipeline("prepare", "--out", str(out), "--shard-size", "2000", "--force")
    kill_when(
        process,
        lambda: any(
            SHARD_NAME.match(name) and before.get(name) != inode
            for name, inode in entries(out).items()
        ),
    )

    assert (out / MANIFEST).read_bytes() == manifest_bytes
    assert open_set(out).identity == old.identity
    assert_verifies(out)
    # the rerun recognises the old set as complete and clears the killed run's leftovers
    assert prepare.prepare(out, real_mnist, shard_size=2000).skipped
    assert_clean(out)


def test_prepare_while_another_holds_the_lock(
    small_set: Path, small_raw: sources.RawDataset
) -> None:
    out = small_set
    before = snapshot(out)
    with fsutil.dir_lock(out, what="prepare"):
        for force in (False, True):
            with pytest.raises(LockedError, match=re.escape(str(out))) as info:
                prepare.prepare(out, small_raw, shard_size=50, force=force)
            assert "\n" not in str(info.value)
        assert snapshot(out) == before
    assert prepare.prepare(out, small_raw).skipped


def test_output_under_a_regular_file(tmp_path: Path, small_raw: sources.RawDataset) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("precious")
    for out in (blocker / "sub", blocker):
        with pytest.raises(OutputError, match=re.escape(str(out))) as info:
            prepare.prepare(out, small_raw)
        assert "\n" not in str(info.value)
    assert blocker.read_text() == "precious"


def test_read_only_output_directory(
    tmp_path: Path, small_raw: sources.RawDataset, mount_tmpfs: Callable[[Path, str], bool]
) -> None:
    """A read-only file system (root ignores permission bits, so chmod alone would not do)."""
    ro = tmp_path / "ro"
    mounted = mount_tmpfs(ro, "ro,size=1m")
    if mounted or os.geteuid() != 0:
        if not mounted:
            ro.chmod(0o500)
        targets = [ro, ro / "sub"]
    else:  # root without mount rights: a path the OS refuses for another reason
        (tmp_path / "file").write_bytes(b"")
        targets = [tmp_path / "file" / "sub"]
    try:
        for out in targets:
            with pytest.raises(OutputError, match=re.escape(str(out))) as info:
                prepare.prepare(out, small_raw)
            assert "\n" not in str(info.value)
        assert list(ro.iterdir()) == []
    finally:
        if not mounted:
            ro.chmod(0o700)


def test_unwritable_file_system_keeps_the_existing_set(
    tmp_path: Path, small_raw: sources.RawDataset, mount_tmpfs: Callable[[Path, str], bool]
) -> None:
    """A shard set on a file system that turned read-only: --force fails, the set stays."""
    disk = tmp_path / "disk"
    mounted = mount_tmpfs(disk, "size=4m")
    if not mounted and os.geteuid() == 0:  # root without mount rights: refuse by RLIMIT
        file_size_limited_prepare(tmp_path, small_raw)
        return
    out = disk / "shards"
    prepare.prepare(out, small_raw, shard_size=100)
    before = snapshot(out)
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    else:
        out.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=re.escape(str(out))) as info:
            prepare.prepare(out, small_raw, shard_size=64, force=True)
        assert "\n" not in str(info.value)
    finally:
        if not mounted:
            out.chmod(0o755)
    assert snapshot(out) == before
    assert_verifies(out)


def assert_one_line_error(stderr: str, *named: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for name in named:
        assert name in lines[0]


def test_full_disk(
    tmp_path: Path,
    small_raw: sources.RawDataset,
    real_mnist: sources.RawDataset,
    mount_tmpfs: Callable[[Path, str], bool],
) -> None:
    """The real MNIST onto a 3 MB file system that already holds a small shard set."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=3m"):
        file_size_limited_prepare(tmp_path, small_raw)  # the fallback without mount rights
        return
    out = disk / "shards"
    old = prepare.prepare(out, small_raw, shard_size=100).manifest
    before = snapshot(out)

    with pytest.raises(OutputError, match=re.escape(str(out))) as info:
        prepare.prepare(out, real_mnist, force=True)

    assert "No space left on device" in str(info.value)
    assert "\n" not in str(info.value)
    assert snapshot(out) == before  # no partial shard, no tmp file, the old set untouched
    assert open_set(out).identity == old.identity
    assert_verifies(out)

    fresh = disk / "fresh"
    with pytest.raises(OutputError, match="No space left on device"):
        prepare.prepare(fresh, real_mnist)
    assert [p.name for p in fresh.iterdir()] == [".lock"]


def file_size_limited_prepare(tmp_path: Path, small_raw: sources.RawDataset) -> None:
    out = tmp_path / "limited"
    prepare.prepare(out, small_raw, shard_size=100)
    before = snapshot(out)

    result = run_size_limited(1 << 20, "prepare", "--out", str(out), "--force")

    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, str(out), "File too large")
    assert snapshot(out) == before
    assert_verifies(out)


def test_file_size_limit(tmp_path: Path, small_raw: sources.RawDataset) -> None:
    """Writes refused by the OS mid-file (EFBIG), in a real process: a clean one-line error."""
    file_size_limited_prepare(tmp_path, small_raw)


# --- verify finds damage --------------------------------------------------------------------


def test_verify_names_a_shard_with_a_flipped_byte(slice_copy: Path) -> None:
    manifest = open_set(slice_copy)
    victim = manifest.split("train").shards[1]
    flip_chunk_byte(manifest.path(victim), "images", chunk=2)

    assert problems(slice_copy) == [(victim.file, "sha256 differs from the manifest")]
    # opening the set for reading (train, evaluate) checks the sha256 too
    with pytest.raises(ShardCorruptError, match=re.escape(f"{victim.file}: sha256 differs")):
        open_set(slice_copy)


def test_fletcher32_catches_a_flip_the_manifest_cannot(slice_copy: Path) -> None:
    manifest = open_set(slice_copy)
    victim = manifest.split("train").shards[1]
    path = manifest.path(victim)
    with h5py.File(path, "r") as f:
        good = f["images"][()]
    flip_chunk_byte(path, "images", chunk=2)
    restamp(slice_copy, victim.file)
    manifest = open_set(slice_copy)

    with shards.open_shard(path) as f:
        images, _ = shards.read_rows(f, path, 0, 512)  # chunks 0 and 1 are intact
        np.testing.assert_array_equal(images, good[:512])
        with pytest.raises(ShardCorruptError, match=re.escape(str(path))) as info:
            shards.read_rows(f, path, 512, 768)
    assert "\n" not in str(info.value)

    [(file, problem)] = problems(slice_copy)
    assert file == victim.file
    assert problem.startswith("unreadable: ")
    assert str(path) in problem


def test_verify_reports_a_deleted_shard(slice_copy: Path) -> None:
    manifest = open_set(slice_copy)
    victim = manifest.split("test").shards[0]
    manifest.path(victim).unlink()

    assert problems(slice_copy) == [(victim.file, "missing")]
    with pytest.raises(ShardSetError, match=re.escape(str(manifest.path(victim)))):
        open_set(slice_copy)


def test_verify_reports_a_truncated_shard(slice_copy: Path) -> None:
    manifest = open_set(slice_copy)
    victim = manifest.split("train").shards[2]
    path = manifest.path(victim)
    os.truncate(path, victim.bytes - 1000)

    [(file, problem)] = problems(slice_copy)
    assert file == victim.file
    assert problem == f"size {victim.bytes - 1000} bytes, manifest lists {victim.bytes}"
    with pytest.raises(ShardCorruptError, match=re.escape(str(path))):
        open_set(slice_copy)

    restamp(slice_copy, victim.file)  # even a manifest that agrees cannot make it readable
    [(file, problem)] = problems(slice_copy)
    assert file == victim.file
    assert problem.startswith("unreadable: ")


def set_value(name: str, index: tuple[int, ...], value: Callable[[np.ndarray], Any]) -> Any:
    def edit(f: h5py.File) -> None:
        f[name][index] = value(f[name][index])

    return edit


def replace_dataset(name: str, dtype: str) -> Any:
    def edit(f: h5py.File) -> None:
        data = f[name][()].astype(dtype)
        del f[name]
        f.create_dataset(name, data=data)

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (set_value("images", (300, 5), lambda v: 1.5), "image values outside [0, 1]"),
        (set_value("images", (3, 400), lambda v: -0.25), "image values outside [0, 1]"),
        (set_value("images", (7, 300), lambda v: np.nan), "image values outside [0, 1]"),
        (set_value("labels", (700,), lambda v: np.zeros_like(v)), "labels not one-hot"),
        (set_value("labels", (9,), lambda v: np.full_like(v, 0.1)), "labels not one-hot"),
        (set_value("targets", (42,), lambda v: (v + 1) % 10), "targets disagree with labels"),
        (replace_dataset("targets", "int64"), "targets is (1000,) int64, expected (1000,) uint8"),
    ],
    ids=["above-1", "below-0", "nan", "no-class", "spread", "targets", "dtype"],
)
def test_verify_checks_content_behind_a_matching_sha256(
    slice_copy: Path, edit: Callable[[h5py.File], None], expected: str
) -> None:
    manifest = open_set(slice_copy)
    victim = manifest.split("train").shards[0]
    with h5py.File(manifest.path(victim), "r+") as f:
        edit(f)
    restamp(slice_copy, victim.file)

    [(file, problem)] = problems(slice_copy)
    assert file == victim.file
    assert problem.startswith(expected)


def test_verify_checks_the_label_histogram(slice_copy: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        histogram = doc["splits"]["test"]["label_histogram"]
        histogram[0], histogram[1] = histogram[0] + 1, histogram[1] - 1

    edit_manifest(slice_copy, edit)
    [(file, problem)] = problems(slice_copy)
    assert file == "(all shards)"
    assert problem.startswith("label histogram")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "missing; is"),
        ("{ not json", "not valid JSON"),
        ('{"schema_version": 99}', "unknown schema version 99"),
        ('{"schema_version": 2}', "malformed manifest"),
    ],
    ids=["missing", "not-json", "schema", "malformed"],
)
def test_open_set_rejects_bad_manifests(
    slice_copy: Path, content: str | None, expected: str
) -> None:
    if content is None:
        (slice_copy / MANIFEST).unlink()
    else:
        (slice_copy / MANIFEST).write_text(content)
    with pytest.raises(ShardSetError, match=re.escape(str(slice_copy / MANIFEST))) as info:
        open_set(slice_copy)
    assert expected in str(info.value)


def test_open_set_of_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ShardSetError, match=re.escape(str(tmp_path / "none"))):
        open_set(tmp_path / "none")
