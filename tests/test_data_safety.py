"""Safety of the data (issue 9): content identity, shards verified before use, hostile
manifests and shards refused with one line, a rebuild that leaves a running train alone.

Real IDX sources, real HDF5 shards, the real CLI (typer's CliRunner) and real processes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from pipeline import fsutil
from pipeline.cli import app
from pipeline.data import open_set, prepare, sources
from pipeline.data.loader import Loader
from pipeline.data.manifest import MANIFEST, identity_of
from pipeline.errors import ShardCorruptError, ShardSetError
from tests.conftest import REPO, assert_clean, random_split, write_idx_dir


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def outcome(result: Result) -> str:
    """ "ok", or the one `error:` line; anything else (a traceback, a crash, two lines) fails."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        return "ok"
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny shard set: 40 train in 2 shards, 12 test; a run trained on it)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(5)
    raw = write_idx_dir(root / "raw", random_split(rng, 40), random_split(rng, 12))
    data = prepare.prepare(root / "set", sources.load(f"idx:{raw}"), shard_size=20).manifest
    run = root / "run"
    result = invoke(*TRAIN, "--data", data.directory, "--run-dir", run)
    assert result.exit_code == 0, result.output
    return data.directory, run


TRAIN = ("train", "--epochs", "1", "--hidden", "2", "--batch-size", "20")


def write_consistent(data: Path, doc: dict[str, Any]) -> None:
    """Write an edited manifest with the identity its (edited) content fields give."""
    doc["identity"] = identity_of(doc)
    (data / MANIFEST).write_text(json.dumps(doc))


# --- 3. content identity --------------------------------------------------------------------


def test_identity_is_the_content_not_the_moment_nor_the_place(
    tmp_path: Path, small_idx: Path
) -> None:
    raw = sources.load(f"idx:{small_idx}")
    a = prepare.prepare(tmp_path / "a", raw, shard_size=100).manifest
    time.sleep(1.1)  # another `created` second: other shard bytes, other file names
    b = prepare.prepare(tmp_path / "elsewhere" / "b", raw, shard_size=64, compression="lzf")
    assert a.files.isdisjoint(b.manifest.files)
    assert a.identity == b.manifest.identity
    again = prepare.prepare(tmp_path / "a", raw, shard_size=100, force=True).manifest
    assert again.identity == a.identity

    # one pixel of one image differs: another identity; other class names: another too
    images, labels = raw.splits["train"].images.copy(), raw.splits["train"].labels
    images[17, 300] ^= 1
    changed = sources.RawDataset(
        raw.name,
        raw.classes,
        raw.source,
        raw.image_shape,
        raw.files,
        {**raw.splits, "train": sources.RawSplit(images, labels)},
    )
    assert prepare.prepare(tmp_path / "c", changed).manifest.identity != a.identity
    renamed = sources.load(f"idx:{small_idx}", classes=[f"c{i}" for i in range(10)])
    assert prepare.prepare(tmp_path / "d", renamed).manifest.identity != a.identity


def test_verify_recomputes_the_content_behind_the_identity(tmp_path: Path, tiny: Any) -> None:
    """A manifest whose shards all match their sha256 but whose content hashes (and so its
    identity) were made for other data: verify says so."""
    data = Path(shutil.copytree(tiny[0], tmp_path / "set"))
    doc = json.loads((data / MANIFEST).read_text())
    doc["splits"]["test"]["content"]["images"] = "0" * 64
    write_consistent(data, doc)

    result = invoke("verify", data)
    assert "content differs" in outcome(result)


# --- 2. every manifest field and shard dataset, mutated: one line or a clean success -------


# fields only people read (who made the set, from which files): mutated as a whole, not each
# of their leaves, to keep the test's hundreds of CLI runs affordable on a loaded machine
INFORMATIONAL = {("provenance",), ("fingerprint",), ("source", "files")}


def fields(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every field of a JSON document, containers included (of a list: the
    first and the last element)."""
    if path:
        yield path
    if path in INFORMATIONAL:
        return
    if isinstance(doc, dict):
        children = list(doc.items())
    elif isinstance(doc, list):
        children = [(i, doc[i]) for i in sorted({0, len(doc) - 1}) if doc]
    else:
        children = []
    for key, value in children:
        yield from fields(value, (*path, key))


def mutations(value: Any) -> list[Any]:
    """Hostile replacements for one field's value (a marker object for deletion)."""
    out: list[Any] = [DELETE, "x"]
    if isinstance(value, int) and not isinstance(value, bool):
        out += [-1, 0, 2 * value, 2**63, True]
    if isinstance(value, str):
        out += ["", value + "0", 7]
    if isinstance(value, list) and value:
        out += [[], value * 2, value[:-1]]
    if isinstance(value, dict):
        out += [{}]
    return out


DELETE = object()


def mutated(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def run_three(data: Path, run: Path, scratch: Path) -> list[str]:
    """verify, train and evaluate on `data`: each outcome, checked to be ok or one line."""
    fresh = scratch / f"run-{len(list(scratch.iterdir()))}"
    return [
        outcome(invoke("verify", data)),
        outcome(invoke(*TRAIN, "--data", data, "--run-dir", fresh)),
        outcome(invoke("evaluate", "--run-dir", run, "--data", data)),
    ]


def test_every_manifest_field_mutated(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    good, run = tiny
    data = Path(shutil.copytree(good, tmp_path / "set"))
    scratch = tmp_path / "runs"
    scratch.mkdir()
    doc = json.loads((good / MANIFEST).read_text())
    tried, refused = 0, 0
    for path in fields(doc):
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        for value in mutations(parent[path[-1]]):
            (data / MANIFEST).write_text(json.dumps(mutated(doc, path, value)))
            outcomes = run_three(data, run, scratch)
            tried += 1
            refused += outcomes[0] != "ok"
            # what verify accepts, train accepts (evaluate may still refuse a checkpoint of a
            # dataset under another name: its choice, in one line)
            if outcomes[0] == "ok":
                assert outcomes[1] == "ok", (path, value, outcomes)
            shutil.rmtree(scratch)
            scratch.mkdir()
    assert tried > 200 and refused > tried // 2, (tried, refused)


def rewrite(path: Path, edit: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "r+") as f:
        edit(f)


def replace_dataset(
    name: str, array: Callable[[np.ndarray], np.ndarray]
) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        new = array(f[name][()])
        del f[name]
        f.create_dataset(name, data=new)

    return edit


SHARD_EDITS = {
    "images-missing": lambda f: f.__delitem__("images"),
    "labels-missing": lambda f: f.__delitem__("labels"),
    "targets-missing": lambda f: f.__delitem__("targets"),
    "images-narrow": replace_dataset("images", lambda a: a[:, :700]),
    "images-wide": replace_dataset("images", lambda a: np.hstack([a, a])),
    "images-fewer-rows": replace_dataset("images", lambda a: a[:-1]),
    "images-more-rows": replace_dataset("images", lambda a: np.vstack([a, a])),
    "images-float64": replace_dataset("images", lambda a: a.astype(np.float64)),
    "images-big-endian": replace_dataset("images", lambda a: a.astype(">f4")),
    "images-1d": replace_dataset("images", lambda a: a.ravel()),
    "labels-narrow": replace_dataset("labels", lambda a: a[:, :5]),
    "labels-wide": replace_dataset("labels", lambda a: np.hstack([a, a])),
    "labels-uint8": replace_dataset("labels", lambda a: a.astype(np.uint8)),
    "targets-int64": replace_dataset("targets", lambda a: a.astype(np.int64)),
    "targets-2d": replace_dataset("targets", lambda a: a[:, None]),
    "images-a-group": lambda f: (f.__delitem__("images"), f.create_group("images")),
}


@pytest.mark.parametrize("edit", SHARD_EDITS, ids=list(SHARD_EDITS))
@pytest.mark.parametrize("restamped", [False, True], ids=["as-is", "restamped"])
def test_every_shard_dataset_mutated(
    tmp_path: Path, tiny: tuple[Path, Path], edit: str, restamped: bool
) -> None:
    """A shard's datasets changed (restamped: with a manifest that lists its new size and
    sha256, so only the datasets' own checks can find it): refused by all three, one line."""
    good, run = tiny
    data = Path(shutil.copytree(good, tmp_path / "set"))
    doc = json.loads((data / MANIFEST).read_text())
    entry = doc["splits"]["train"]["shards"][1]
    rewrite(data / entry["file"], SHARD_EDITS[edit])
    if restamped:
        entry["bytes"] = (data / entry["file"]).stat().st_size
        entry["sha256"] = fsutil.sha256_file(data / entry["file"])
        (data / MANIFEST).write_text(json.dumps(doc))
    scratch = tmp_path / "runs"
    scratch.mkdir()
    outcomes = run_three(data, run, scratch)
    assert all(o.startswith("error:") and entry["file"] in o for o in outcomes), outcomes


# --- 5. shards verified before use ------------------------------------------------------------


def test_a_test_shard_copied_over_a_train_shard_is_refused(tmp_path: Path) -> None:
    """The audit's case: same size, other bytes (test data leaking into training)."""
    rng = np.random.default_rng(1)
    (train, _), (test, _) = random_split(rng, 40), random_split(rng, 20)
    every_class = np.arange(40, dtype=np.uint8) % 10
    raw = write_idx_dir(tmp_path / "raw", (train, every_class), (test, every_class[:20]))
    data = prepare.prepare(tmp_path / "set", sources.load(f"idx:{raw}"), shard_size=20).manifest
    test_shard = data.path(data.split("test").shards[0])
    victim = data.path(data.split("train").shards[1])
    assert test_shard.stat().st_size == victim.stat().st_size
    assert outcome(invoke(*TRAIN, "--data", data.directory, "--run-dir", tmp_path / "a")) == "ok"

    shutil.copyfile(test_shard, victim)

    line = outcome(invoke(*TRAIN, "--data", data.directory, "--run-dir", tmp_path / "b"))
    assert line == f"error: {victim}: sha256 differs from the manifest"
    assert not (tmp_path / "b" / "run.json").exists()
    assert outcome(invoke("evaluate", "--run-dir", tmp_path / "a", "--split", "train")) == line
    assert "sha256 differs" in outcome(invoke("verify", data.directory))


def test_the_loader_reads_only_the_file_that_was_verified(tmp_path: Path, tiny: Any) -> None:
    """A shard replaced after the set was opened (and verified) is refused when the loader
    opens it, even with identical bytes: it is not the file that was checked."""
    data = Path(shutil.copytree(tiny[0], tmp_path / "set"))
    manifest = open_set(data)
    victim = manifest.path(manifest.split("train").shards[1])
    shutil.copyfile(victim, tmp_path / "copy.h5")
    os.replace(tmp_path / "copy.h5", victim)  # same bytes, another inode
    with pytest.raises(ShardCorruptError, match=f"{victim}: changed since the set was opened"):
        list(Loader(manifest, "train", batch_size=7).epoch(0))
    assert open_set(data).identity == manifest.identity  # reopened: fine


def test_a_verified_result_is_cached_outside_the_set_and_keyed_by_the_file(
    tmp_path: Path, tiny: Any
) -> None:
    data = Path(shutil.copytree(tiny[0], tmp_path / "set"))
    cache = Path(os.environ["PIPELINE_CACHE_DIR"])
    before = set(cache.rglob("*"))
    open_set(data)  # a copy: new inodes, so new entries
    added = {p for p in set(cache.rglob("*")) - before if p.is_file()}
    assert len(added) == 3  # one per shard
    names = {p.name for p in data.iterdir()}
    open_set(data)
    assert {p for p in set(cache.rglob("*")) - before if p.is_file()} == added
    assert {p.name for p in data.iterdir()} == names  # nothing written into the set


# --- 4. a rebuild while a train reads the set ---------------------------------------------------


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300  # a safety net, not a speed requirement
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"train ended (exit {process.returncode}): {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the train never got there")
        time.sleep(0.01)


def epochs_done(run: Path) -> int:
    names = [p.name for p in (run / "checkpoints").glob("checkpoint-e*-s0000000.npz")]
    return max((int(n[12:16]) for n in names), default=0)


def test_force_rebuild_leaves_a_running_train_its_files(
    tmp_path: Path, mnist_slice_idx: Path
) -> None:
    source = f"idx:{mnist_slice_idx}"
    data, run = tmp_path / "set", tmp_path / "run"
    old = prepare.prepare(data, sources.load(source), shard_size=1000).manifest
    train = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *TRAIN[:1], "--epochs", "100000", "--hidden", "4",
         "--batch-size", "50", "--data", str(data), "--run-dir", str(run)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: epochs_done(run) >= 1, train)  # reading the set, holding it

        rebuilt = prepare.prepare(data, sources.load(source), shard_size=700, force=True)

        assert train.poll() is None
        new_train = {f for f in rebuilt.manifest.files if f.startswith("train-")}
        assert new_train.isdisjoint(old.files)
        assert any("kept while a reader" in w for w in rebuilt.warnings), rebuilt.warnings
        assert all(data.joinpath(f).exists() for f in old.files)  # the train's files stay
        # the train goes on with the data it started with, epoch after epoch (each reads
        # every train and test shard of the old set)
        done = epochs_done(run)
        wait_for(lambda: epochs_done(run) >= done + 2, train)
    finally:
        train.kill()  # (how a train stops is not this test's subject; that it read on is)
        _, err = train.communicate()
    assert train.returncode == -signal.SIGKILL
    assert b"error" not in err, err
    # once no reader is left, the next prepare deletes what it kept, and only that
    assert prepare.prepare(data, sources.load(source), shard_size=700).skipped
    assert_clean(data)
    assert not (data / prepare.JOURNAL).exists()


# --- issue 10: messages and no-ops ----------------------------------------------------------


def test_a_shard_symlinked_to_a_device_is_named_as_such(tmp_path: Path, tiny: Any) -> None:
    data = Path(shutil.copytree(tiny[0], tmp_path / "set"))
    victim = (
        data / json.loads((data / MANIFEST).read_text())["splits"]["train"]["shards"][0]["file"]
    )
    victim.unlink()
    victim.symlink_to("/dev/zero")
    line = outcome(invoke(*TRAIN, "--data", data, "--run-dir", tmp_path / "run"))
    assert line == f"error: {victim}: is a character device, not a shard file"
    assert "character device" in outcome(invoke("verify", data))


def test_an_empty_train_split_is_called_empty(tmp_path: Path, tiny: Any) -> None:
    data = Path(shutil.copytree(tiny[0], tmp_path / "set"))
    doc = json.loads((data / MANIFEST).read_text())
    doc["splits"]["train"].update(samples=0, shards=[], label_histogram=[0] * 10)
    write_consistent(data, doc)
    line = outcome(invoke(*TRAIN, "--data", data, "--run-dir", tmp_path / "run"))
    assert line.startswith(f"error: {data}") and "empty" in line and "consumers" not in line
    with pytest.raises(ShardSetError, match=f"{data}: split 'train' is empty"):
        Loader(open_set(data), "train", batch_size=1)


def test_prepare_onto_an_up_to_date_set_on_a_read_only_volume_does_nothing(
    tmp_path: Path, small_idx: Path, mount_tmpfs: Callable[[Path, str], bool]
) -> None:
    volume = tmp_path / "volume"
    mounted = mount_tmpfs(volume, "size=8m")  # root (as in CI): a real read-only volume
    args = ("prepare", "--out", volume / "set", "--source", f"idx:{small_idx}")
    assert outcome(invoke(*args)) == "ok"
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(volume)], check=True)
    else:  # a user: a directory without write permission does the same to them
        (volume / "set").chmod(0o555)

    result = invoke(*args)

    assert outcome(result) == "ok"
    assert "already up to date" in result.stdout
    assert "cannot write" in outcome(invoke(*args, "--force"))
