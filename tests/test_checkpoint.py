"""Checkpoint files: typed metadata, bounds checked before reading, refusals that name the fault."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import TrainConfig
from pipeline.data import Manifest
from pipeline.errors import CheckpointError
from pipeline.training import checkpoint
from pipeline.training import trainer as train
from pipeline.training.checkpoint import MAX_FILE_BYTES
from pipeline.training.checkpoint_meta import CheckpointMeta

TINY = TrainConfig(hidden=(4,), epochs=1, lr=1.0)


@pytest.fixture(scope="module")
def saved(slice_shards: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    return train.train(slice_shards.directory, run_dir, TINY).checkpoint


def write_npz(path: Path, meta: object, **arrays: np.ndarray) -> Path:
    with path.open("wb") as f:
        text = meta if isinstance(meta, str) else json.dumps(meta)
        np.savez(f, meta=np.array(text), **arrays)  # type: ignore[arg-type]
    return path


def test_meta_round_trips_as_a_frozen_dataclass(saved: Path) -> None:
    ckpt = checkpoint.load(saved)
    meta = ckpt.meta
    assert isinstance(meta, CheckpointMeta) and meta.config == TINY
    assert CheckpointMeta.from_json(meta.to_json()) == meta
    with pytest.raises(AttributeError):
        meta.epoch = 5  # type: ignore[misc]
    assert (meta.epoch, meta.step, meta.sizes) == (1, 0, (784, 4, 10))
    assert [w.shape for w in ckpt.weights] == [(784, 4), (4, 10)]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("config", None, "field 'config' is missing"),
        ("config", [1], "field 'config'"),
        ("config", {"hidden": "many"}, "field 'config'"),
        ("epoch", -1, "field 'epoch'"),
        ("epoch", "1", "field 'epoch'"),
        ("step", 1.5, "field 'step'"),
        ("loss_sum", "nan", "field 'loss_sum'"),
        ("samples", None, "field 'samples' is missing"),
        ("best_epoch", 2, "field 'best_epoch': 2 is beyond epoch 1"),
        ("best_accuracy", "high", "field 'best_accuracy'"),
        ("seconds_total", None, "field 'seconds_total' is missing"),
        ("history_sha256", "ab" * 31, "field 'history_sha256'"),
        ("format", 1, "field 'history' is missing"),
        ("format", True, "format True"),
        ("sizes", [784, 0, 10], "field 'sizes'"),
        ("classes", [0, 1], "field 'classes'"),
        ("manifest_sha256", 7, "field 'manifest_sha256'"),
        ("loader", [], "field 'loader'"),
        ("format", 3, "format 3"),
    ],
)
def test_every_meta_field_is_validated(
    saved: Path, tmp_path: Path, field: str, value: object, needle: str
) -> None:
    ckpt = checkpoint.load(saved)
    doc = ckpt.meta.to_json()
    if value is None:
        del doc[field]
    else:
        doc[field] = value
    arrays = {"w0": ckpt.weights[0], "b0": ckpt.biases[0], "w1": ckpt.weights[1]}
    path = write_npz(tmp_path / "c.npz", doc, **arrays, b1=ckpt.biases[1])
    with pytest.raises(CheckpointError, match=needle) as caught:
        checkpoint.load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_meta_that_is_not_json_says_so(saved: Path, tmp_path: Path) -> None:
    ckpt = checkpoint.load(saved)
    path = write_npz(tmp_path / "c.npz", "{not json", w0=ckpt.weights[0], b0=ckpt.biases[0])
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    message = str(caught.value)
    assert "its meta is not JSON" in message and "missing" not in message


def test_arrays_must_fit_their_meta(saved: Path, tmp_path: Path) -> None:
    ckpt = checkpoint.load(saved)
    doc = ckpt.meta.to_json()
    w0, b0, w1, b1 = ckpt.weights[0], ckpt.biases[0], ckpt.weights[1], ckpt.biases[1]
    cases = {
        "layer 1 has shapes": {"w0": w0, "b0": b0, "w1": w1[:3], "b1": b1},
        "no layer": {"w0": w0, "b0": b0},
        "unknown": {"w0": w0, "b0": b0, "w1": w1, "b1": b1, "w2": w1},
        "float16": {"w0": w0.astype(np.float16), "b0": b0, "w1": w1, "b1": b1},
        "its config says": {
            k: v.astype(np.float64) for k, v in {"w0": w0, "b0": b0, "w1": w1, "b1": b1}.items()
        },
    }
    for needle, arrays in cases.items():
        path = write_npz(tmp_path / "c.npz", doc, **arrays)
        with pytest.raises(CheckpointError, match=needle):
            checkpoint.load(path)


def test_a_file_larger_than_any_checkpoint_is_refused_unread(tmp_path: Path) -> None:
    """A sparse file of the size: refused from its size, before a byte is read."""
    path = tmp_path / "huge.npz"
    with path.open("wb") as f:
        f.write(b"PK\x03\x04")
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(CheckpointError, match=f"more than the {MAX_FILE_BYTES:,} it may hold"):
        checkpoint.load(path)


def test_declared_shapes_are_checked_against_the_bytes(saved: Path, tmp_path: Path) -> None:
    """A member whose npy header claims a huge array (the bytes are not there) is refused
    from its header, before numpy allocates it."""
    ckpt = checkpoint.load(saved)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("meta.npy", _npy(np.array(json.dumps(ckpt.meta.to_json()))))
        z.writestr("w0.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(CheckpointError, match="w0 is not the size its header says"):
        checkpoint.load(path)


def test_compressed_members_are_refused(saved: Path, tmp_path: Path) -> None:
    """np.savez writes members stored: a deflated one could inflate beyond what it says."""
    ckpt = checkpoint.load(saved)
    path = tmp_path / "deflated.npz"
    with path.open("wb") as f:
        np.savez_compressed(f, meta=np.array(json.dumps(ckpt.meta.to_json())), w0=ckpt.weights[0])
    with pytest.raises(CheckpointError, match=r"not a plain \.npy array"):
        checkpoint.load(path)


def test_an_overlong_meta_is_refused(saved: Path, tmp_path: Path) -> None:
    path = write_npz(tmp_path / "c.npz", "x" * (checkpoint.MAX_META_CHARS + 1))
    with pytest.raises(CheckpointError, match="meta is not a bounded JSON text"):
        checkpoint.load(path)


def test_a_directory_or_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "none.npz")
    with pytest.raises(CheckpointError, match="is a directory, not a regular file"):
        checkpoint.load(tmp_path)
    os.mkfifo(tmp_path / "fifo.npz")  # never opened for a blocking read: no hang
    with pytest.raises(CheckpointError, match="is a FIFO"):
        checkpoint.load(tmp_path / "fifo.npz")


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_storage_does_not_import_compute() -> None:
    """Reading a checkpoint loads neither numba nor the network until one is asked for."""
    code = (
        "import sys\n"
        "import pipeline.training.checkpoint, pipeline.runs.rundir, pipeline.metrics\n"
        "loaded = [m for m in ('numba', 'pipeline.nn.network', 'pipeline.nn.sparse_step',\n"
        "          'pipeline.data.loader') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# --- what a checkpoint holds: finite numbers, a size that does not grow with the epochs -------

MOMENTUM = TrainConfig(hidden=(4,), epochs=2, lr=0.1, batch_size=30, optimizer="momentum")


def rewrite(path: Path, member: str, value: float) -> None:
    """The checkpoint's own bytes as np.savez writes them, one number of `member` replaced: what
    a diverged or damaged file holds."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays[member] = arrays[member].copy()
    arrays[member].flat[3] = value
    with path.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


def pipeline_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipeline", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)


@pytest.mark.parametrize(
    ("member", "value", "kind"),
    [("w0", np.nan, "NaN"), ("b1", np.inf, "inf"), ("state_slot0_0", -np.inf, "inf")],
)
def test_non_finite_numbers_are_refused_by_train_and_evaluate(
    slice_shards: Manifest, tmp_path: Path, member: str, value: float, kind: str
) -> None:
    """A NaN or inf weight, bias or optimizer buffer is never resumed, trained on, saved again
    or scored: `train --resume` and `evaluate` each say one line naming the member (no numpy
    warning), exit 1, and write nothing."""
    run_dir = tmp_path / "run"
    last = train.train(slice_shards.directory, run_dir, replace(MOMENTUM, epochs=1)).checkpoint
    rewrite(last, member, value)
    before = sorted(p.name for p in run_dir.rglob("*"))
    data = ["--data", str(slice_shards.directory), "--run-dir", str(run_dir)]
    recipe = ["--hidden", "4", "--lr", "0.1", "--batch-size", "30", "--optimizer", "momentum"]
    for args in (["train", *data, *recipe, "--epochs", "2", "--resume"], ["evaluate", *data]):
        done = pipeline_cli(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr == (
            f"error: {last}: member {member!r} holds non-finite values (1 {kind}); refused\n"
        )
        assert sorted(p.name for p in run_dir.rglob("*")) == before  # nothing written
    with pytest.raises(CheckpointError, match=f"member {member!r} holds non-finite values"):
        checkpoint.load(last)


def test_a_non_finite_network_is_never_written(saved: Path, tmp_path: Path) -> None:
    ckpt = checkpoint.load(saved)
    ckpt.network.weights[1][0, 0] = np.nan
    with pytest.raises(
        CheckpointError,
        match=r"member 'w1' holds non-finite values \(1 NaN\); refusing to write it",
    ):
        checkpoint.save(tmp_path / "c.npz", ckpt.network, ckpt.meta)
    assert not list(tmp_path.iterdir())  # not even a temporary


def test_a_checkpoint_does_not_grow_with_the_epochs(slice_shards: Manifest, tmp_path: Path) -> None:
    """The epochs' records live in metrics.jsonl alone: checkpoint-e0001 and -e0040 differ by
    the digits of a few numbers in the meta (4 bytes a character), not by 39 epochs' records
    (a checkpoint that carried the history grew ~0.5 kB an epoch, a run's disk use with the
    square of its epochs)."""
    config = TrainConfig(hidden=(4,), epochs=40, lr=1.0, batch_size=1000)
    train.train(slice_shards.directory, tmp_path / "run", config)
    sizes = [p.stat().st_size for p in sorted((tmp_path / "run" / "checkpoints").iterdir())]
    assert len(sizes) == 40 and max(sizes) - min(sizes) <= 4 * 40, sizes
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 40


def test_a_format_1_checkpoint_with_its_history_inside_still_loads(saved: Path) -> None:
    """Checkpoints written before the history moved out: its summary and the sha256 of the
    metrics.jsonl lines that version wrote from it are derived."""
    history = [
        {"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.8, "seconds": 1.5, "seconds_total": 1.5},
        {"epoch": 2, "train_loss": 0.4, "val_accuracy": 0.9, "seconds": 1.0, "seconds_total": 2.5},
        {"epoch": 3, "train_loss": 0.3, "val_accuracy": 0.9, "seconds": 1.0, "seconds_total": 3.5},
    ]
    doc = checkpoint.load(saved).meta.to_json()
    for name in ("seconds_total", "best_epoch", "best_accuracy", "history_sha256"):
        del doc[name]
    meta = CheckpointMeta.from_json({**doc, "format": 1, "epoch": 3, "history": history})
    assert (meta.seconds_total, meta.best_epoch, meta.best_accuracy) == (3.5, 2, 0.9)
    lines = "".join(json.dumps(r) + "\n" for r in history).encode()
    assert meta.history_sha256 == hashlib.sha256(lines).hexdigest()
