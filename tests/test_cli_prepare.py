"""`pipeline prepare` and `pipeline verify` through typer's CliRunner (and, where a real
separate process matters, through `python -m pipeline`).

Every bad input ends with exit code 1 and exactly one stderr line, "error: ...", naming the
file or option at fault; bad usage ends with exit code 2; never a traceback.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from pipeline import fsutil
from pipeline.cli import app
from pipeline.data import MANIFEST, Manifest, ShardInfo, open_set, sources
from tests.conftest import (
    REPO,
    assert_clean,
    flip_chunk_byte,
    idx_bytes,
    random_split,
    run_size_limited,
    snapshot,
    write_idx_dir,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")
IMAGES, LABELS = sources.SPLIT_FILES["train"]
TEST_IMAGES, TEST_LABELS = sources.SPLIT_FILES["test"]


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_error(result: Result, *named: str | Path, code: int = 1) -> str:
    """Exit `code`, exactly one stderr line starting with "error:", naming each of `named`."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for name in named:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of a rich table as cells (box-drawing separators removed)."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


# --- prepare and verify, the good path ------------------------------------------------------


def test_prepare_and_verify(tmp_path: Path, small_idx: Path) -> None:
    out = tmp_path / "shards"
    result = invoke("prepare", "--out", out, "--source", f"idx:{small_idx}", "--shard-size", "100")

    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    # off a terminal: one plain line per split, then the summary table
    assert "prepare train: 250 samples written" in result.stdout
    assert "prepare test: 60 samples written" in result.stdout
    rows = table_rows(result.stdout)
    assert [row[:4] for row in rows] == [
        ["train", "250", "3", f"{sum(s.bytes for s in manifest(out, 'train')):,}"],
        ["test", "60", "1", f"{sum(s.bytes for s in manifest(out, 'test')):,}"],
    ]
    assert all(float(row[4]) >= 0 for row in rows)  # seconds per split
    assert "written in" in result.stdout
    assert_clean(out)

    again = invoke("prepare", "--out", out, "--source", f"idx:{small_idx}", "--shard-size", "100")
    assert again.exit_code == 0, again.stderr
    assert "already up to date" in again.stdout
    assert "samples written" not in again.stdout

    checked = invoke("verify", out)
    assert checked.exit_code == 0, checked.stderr
    assert checked.stderr == ""
    rows = table_rows(checked.stdout)
    expected = [
        [split, shard.file, f"{shard.samples:,}", "ok"]
        for split in ("train", "test")
        for shard in manifest(out, split)
    ]
    assert rows == expected


def test_a_warning_is_a_json_object_with_json_logs(tmp_path: Path, small_idx: Path) -> None:
    """Every line is JSON with --log-format json, a warning too (issue 19)."""
    out = tmp_path / "shards"
    args: list[str | Path] = ["prepare", "--out", out, "--source", f"idx:{small_idx}"]
    assert invoke(*args).exit_code == 0
    (out / "train-00007-0123abcd.h5").write_bytes(b"a user's shard")  # left alone, with a warning
    plain = invoke(*args)
    assert plain.stderr.startswith("warning: ") and "left alone" in plain.stderr
    result = invoke(*args, "--log-format", "json")
    assert result.exit_code == 0 and result.stdout == ""
    [warning] = [json.loads(line) for line in result.stderr.splitlines()]
    assert warning["event"] == "warning" and "train-00007-0123abcd.h5" in warning["message"]


def manifest(out: Path, split: str) -> list[ShardInfo]:
    return open_set(out).split(split).shards


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip"])
def test_prepare_compression_option(tmp_path: Path, small_idx: Path, compression: str) -> None:
    out = tmp_path / compression
    result = invoke(
        "prepare", "--out", out, "--source", f"idx:{small_idx}", "--compression", compression
    )
    assert result.exit_code == 0, result.stderr
    assert open_set(out).compression == compression
    assert invoke("verify", out).exit_code == 0


def test_prepare_fashion_mnist(tmp_path: Path) -> None:
    """Debian's Fashion-MNIST (package dataset-fashion-mnist) through --source, unchanged."""
    assert FASHION.is_dir(), "install it: apt-get install -y dataset-fashion-mnist"
    out = tmp_path / "fashion"
    result = invoke("prepare", "--out", out, "--source", f"idx:{FASHION}")
    assert result.exit_code == 0, result.stderr
    assert "fashionmnist shard set" in result.stdout

    manifest = open_set(out)
    assert manifest.name == "fashionmnist"
    assert manifest.classes == [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    assert manifest.raw["source"]["spec"] == f"idx:{FASHION}"
    # Fashion-MNIST is balanced: 6,000 and 1,000 images per class
    assert manifest.split("train").label_histogram == [6000] * 10
    assert manifest.split("test").label_histogram == [1000] * 10
    for file in manifest.raw["source"]["files"]:
        content = gzip.decompress((FASHION / file["name"]).read_bytes())
        assert file["bytes"] == len(content)

    checked = invoke("verify", out)
    assert checked.exit_code == 0, checked.stderr
    assert len(table_rows(checked.stdout)) == 7


def test_prepare_as_a_real_process_records_its_command(tmp_path: Path, small_idx: Path) -> None:
    out = tmp_path / "shards"
    args = ["prepare", "--out", str(out), "--source", f"idx:{small_idx}", "--shard-size", "100"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "\x1b[" not in done.stdout  # plain output in a pipe: no escape sequences, no bar
    doc = json.loads((out / MANIFEST).read_text())
    expected = "pipeline " + " ".join(args)
    assert doc["provenance"]["command"] == expected
    for shard in doc["splits"]["train"]["shards"]:
        with h5py.File(out / shard["file"], "r") as f:
            assert f.attrs["command"] == expected


# --- bad input: exit 1, one line ------------------------------------------------------------


def good_source(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    return write_idx_dir(tmp_path / "src", random_split(rng, 30), random_split(rng, 10), gz=False)


def put(directory: Path, stem: str, data: bytes) -> Path:
    (directory / stem).write_bytes(data)
    return directory / stem


def wrong_magic(d: Path) -> Path:
    return put(d, IMAGES, b"\x01\x02\x08\x03" + idx_bytes(np.zeros((30, 28, 28), np.uint8))[4:])


def unknown_type(d: Path) -> Path:
    return put(d, LABELS, b"\x00\x00\x05\x01" + idx_bytes(np.zeros(30, np.uint8))[4:])


def truncated(d: Path) -> Path:
    return put(d, TEST_IMAGES, idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-10])


def truncated_gzip(d: Path) -> Path:
    (d / IMAGES).unlink()
    stream = gzip.compress(idx_bytes(np.zeros((30, 28, 28), np.uint8)))
    return put(d, f"{IMAGES}.gz", stream[:-30])


def trailing(d: Path) -> Path:
    return put(d, LABELS, idx_bytes(np.zeros(30, np.uint8)) + b"\x00\x00")


def images_2d(d: Path) -> Path:
    return put(d, IMAGES, idx_bytes(np.zeros((30, 784), np.uint8)))


def labels_2d(d: Path) -> Path:
    return put(d, TEST_LABELS, idx_bytes(np.zeros((10, 1), np.uint8)))


def count_mismatch(d: Path) -> Path:
    put(d, LABELS, idx_bytes(np.zeros(29, np.uint8)))
    return d / IMAGES


def label_out_of_range(d: Path) -> Path:
    labels = np.zeros(30, np.uint8)
    labels[-1] = 200
    return put(d, LABELS, idx_bytes(labels))


def empty_split(d: Path) -> Path:
    put(d, TEST_LABELS, idx_bytes(np.zeros(0, np.uint8)))
    return put(d, TEST_IMAGES, idx_bytes(np.zeros((0, 28, 28), np.uint8)))


def missing_file(d: Path) -> Path:
    (d / TEST_LABELS).unlink()
    return d


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (wrong_magic, "magic"),
        (unknown_type, "magic"),
        (truncated, "truncated"),
        (truncated_gzip, "gzip"),
        (trailing, "trailing bytes"),
        (images_2d, "3-D"),
        (labels_2d, "1-D"),
        (count_mismatch, "30 images but"),
        (label_out_of_range, "label 200 at index 29"),
        (empty_split, "no images"),
        (missing_file, f"missing IDX file {TEST_LABELS}"),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_bad_idx_source(tmp_path: Path, damage: Callable[[Path], Path], expected: str) -> None:
    source = good_source(tmp_path)
    named = damage(source)
    out = tmp_path / "out"

    result = invoke("prepare", "--out", out, "--source", f"idx:{source}")

    assert expected in assert_error(result, named)
    assert not out.exists()  # validated before anything was written


def test_missing_source_directory(tmp_path: Path) -> None:
    result = invoke("prepare", "--out", tmp_path / "out", "--source", f"idx:{tmp_path}/none")
    assert_error(result, "--source", f"{tmp_path}/none")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["idx:", "tar:/data", "mnist"])
def test_bad_source_spec(tmp_path: Path, spec: str) -> None:
    assert_error(invoke("prepare", "--out", tmp_path / "out", "--source", spec), "--source", spec)


def test_bad_classes(tmp_path: Path, small_idx: Path) -> None:
    source = f"idx:{small_idx}"
    result = invoke("prepare", "--out", tmp_path / "o", "--source", source, "--classes", "a,a")
    assert_error(result, "--classes")
    # fewer class names than the labels need: the label file is named
    result = invoke("prepare", "--out", tmp_path / "o", "--source", source, "--classes", "a,b")
    assert_error(result, small_idx / f"{LABELS}.gz", "out of range")


def test_output_under_a_regular_file(tmp_path: Path, small_idx: Path) -> None:
    (tmp_path / "file").write_text("keep")
    out = tmp_path / "file" / "sub"
    result = invoke("prepare", "--out", out, "--source", f"idx:{small_idx}")
    assert_error(result, out)
    assert (tmp_path / "file").read_text() == "keep"


def test_different_options_need_force(tmp_path: Path, small_idx: Path) -> None:
    out = tmp_path / "shards"
    assert invoke("prepare", "--out", out, "--source", f"idx:{small_idx}").exit_code == 0
    before = snapshot(out)
    result = invoke("prepare", "--out", out, "--source", f"idx:{small_idx}", "--shard-size", "7")
    assert_error(result, out, "--force")
    assert snapshot(out) == before

    forced = invoke(
        "prepare", "--out", out, "--source", f"idx:{small_idx}", "--shard-size", "70", "--force"
    )
    assert forced.exit_code == 0, forced.stderr
    assert [s.samples for s in manifest(out, "train")] == [70, 70, 70, 40]
    assert_clean(out)


def test_prepare_while_locked(tmp_path: Path, small_idx: Path) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    with fsutil.dir_lock(out, what="prepare"):
        result = invoke("prepare", "--out", out, "--source", f"idx:{small_idx}")
    assert "another prepare is writing here" in assert_error(result, out)
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_full_disk(
    tmp_path: Path, small_idx: Path, mount_tmpfs: Callable[[Path, str], bool]
) -> None:
    """The embedded MNIST onto a 2 MB file system: one line, nothing left behind."""
    disk = tmp_path / "disk"
    out = disk / "shards"
    if mount_tmpfs(disk, "size=2m"):
        result = invoke("prepare", "--out", out)
        assert "No space left on device" in assert_error(result, out)
    else:  # no mount rights: the same failure, EFBIG instead of ENOSPC, in a real process
        done = run_size_limited(1 << 21, "prepare", "--out", str(out))
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.splitlines()) == 1
        assert done.stderr.startswith(f"error: {out}: ")
    assert [p.name for p in out.iterdir()] == [".lock"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--shard-size", "0"], "--shard-size"),
        (["--shard-size", "many"], "--shard-size"),
        (["--compression", "zstd"], "--compression"),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str], option: str) -> None:
    out = tmp_path / "out"
    result = invoke("prepare", "--out", out, *args)
    assert result.exit_code == 2
    assert option in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_prepare_without_out_is_usage(tmp_path: Path) -> None:
    result = invoke("prepare")
    assert result.exit_code == 2
    assert "--out" in result.stderr


# --- verify finds problems ------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path, small_idx: Path) -> Path:
    out = tmp_path / "shards"
    result = invoke("prepare", "--out", out, "--source", f"idx:{small_idx}", "--shard-size", "100")
    assert result.exit_code == 0, result.stderr
    return out


def test_verify_names_a_flipped_shard(prepared: Path) -> None:
    victim = manifest(prepared, "train")[1]
    flip_chunk_byte(prepared / victim.file, "images", chunk=0)

    result = invoke("verify", prepared)

    line = assert_error(result, prepared / victim.file, "sha256")
    assert line.startswith("error: 1 problem(s)")
    statuses = {row[1]: row[3] for row in table_rows(result.stdout)}
    assert statuses.pop(victim.file).startswith("sha256 differs")
    assert set(statuses.values()) == {"ok"}


def test_verify_names_a_missing_shard(prepared: Path) -> None:
    victim = manifest(prepared, "test")[0]
    (prepared / victim.file).unlink()
    assert_error(invoke("verify", prepared), prepared / victim.file, "missing")


def test_verify_names_a_truncated_shard(prepared: Path) -> None:
    victim = manifest(prepared, "train")[2]
    with (prepared / victim.file).open("r+b") as f:
        f.truncate(victim.bytes // 2)
    assert_error(invoke("verify", prepared), prepared / victim.file, "size")


def test_verify_counts_every_problem(prepared: Path) -> None:
    for shard in manifest(prepared, "train"):
        (prepared / shard.file).unlink()
    assert "3 problem(s)" in assert_error(invoke("verify", prepared))


@pytest.mark.parametrize("content", [None, "[]", '{"schema_version": 2}'])
def test_verify_a_directory_without_a_valid_manifest(prepared: Path, content: str | None) -> None:
    if content is None:
        (prepared / MANIFEST).unlink()
    else:
        (prepared / MANIFEST).write_text(content)
    assert_error(invoke("verify", prepared), prepared / MANIFEST)


def test_verify_a_missing_directory(tmp_path: Path) -> None:
    assert_error(invoke("verify", tmp_path / "none"), tmp_path / "none")


def test_verify_the_real_mnist(mnist_shards: Manifest) -> None:
    result = invoke("verify", mnist_shards.directory)
    assert result.exit_code == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row[2] for row in rows] == ["10,000"] * 7
    assert {row[3] for row in rows} == {"ok"}
