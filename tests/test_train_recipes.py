"""Training with recipes: presets, exact resume with optimizer and dropout state, a val split
that chooses the checkpoint and stops early, and the original recipe left as it was."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import TrainConfig
from pipeline.data import Manifest, prepare, sources
from pipeline.errors import ConfigError
from pipeline.events import STEP, Event, Events
from pipeline.report import evaluate
from pipeline.runs.rundir import RunDir, checkpoint_name
from pipeline.training import checkpoint, presets
from pipeline.training import trainer as train

# sha256 of the weights + biases of TrainConfig(hidden=(16,), epochs=1, lr=1.0, shuffle=True)
# on `slice_shards`, trained by the code at tag base-v2 (before recipes existed)
BASE_V2_DIGEST = "1fd1ab15a50903793030d07c0d55d1e3735617400171f94dba8590f84d20e652"
RECIPE = presets.resolve(
    "fast", hidden=(48, 32), epochs=3, batch_size=32, lr=0.1, checkpoint_every=7
)


def final_state(run_dir: Path) -> tuple[list[np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    ckpt = checkpoint.load(RunDir(run_dir).newest_checkpoint())  # type: ignore[arg-type]
    return ckpt.network.weights + ckpt.network.biases, ckpt.state, ckpt.meta.to_json()


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if "seconds" not in k} for x in lines]


def test_presets_resolve_and_options_override() -> None:
    fast = presets.resolve("fast")
    assert (fast.activation, fast.loss, fast.optimizer, fast.schedule) == (
        "relu",
        "cross_entropy",
        "momentum",
        "cosine",
    )
    assert fast.hidden == (512, 512) and fast.batch_size == 256 and fast.preset == "fast"
    assert not fast.is_original
    mine = presets.resolve("fast", dropout=0.1, hidden=[64], lr=None)
    assert (mine.dropout, mine.hidden, mine.lr) == (0.1, (64,), fast.lr)
    original = presets.resolve("original")
    assert original == TrainConfig() and original.is_original
    assert presets.resolve("best").to_json()["max_norm"] == 3.5
    with pytest.raises(ConfigError) as err:
        presets.resolve("fastest")
    assert err.value.param == "preset"
    for bad in ({"activation": "gelu"}, {"dropout": 1.0}, {"momentum": -0.1}, {"step_epochs": 0}):
        with pytest.raises(ConfigError) as err:
            presets.resolve("fast", **bad)
        assert err.value.param == next(iter(bad))


def test_recipe_run_learns_and_checkpoints_its_state(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    result = train.train(slice_shards.directory, tmp_path / "run", RECIPE)
    records = metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["test_accuracy"] > 0.8  # 3,000 training images, 3 epochs
    weights, state, meta = final_state(tmp_path / "run")
    assert meta["config"] == RECIPE.to_json()  # the resolved values, not only the name
    assert meta["recipe"] == "mlp-relu-cross_entropy-momentum"
    assert meta["optimizer"]["step_count"] == 3 * -(-3000 // 32)
    assert meta["dropout_counter"] > 0
    assert sorted(state) == [f"slot0_{i}" for i in range(6)]  # a momentum buffer per parameter
    assert all(not np.all(a == 0) for a in state.values())
    assert result.network.activation == "relu" and result.network.loss == "cross_entropy"
    again = train.train(slice_shards.directory, tmp_path / "again", RECIPE)
    for a, b in zip(weights, again.network.weights + again.network.biases, strict=True):
        assert np.array_equal(a, b)


class Interrupt(Exception):
    pass


class StopAfter:
    """Raises after `blocks` progress reports: a run stopped mid-epoch, like a kill."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks

    def __call__(self, event: Event) -> None:
        if event.name == STEP:
            self.blocks -= 1
            if self.blocks == 0:
                raise Interrupt


@pytest.mark.parametrize("optimizer", ["nesterov", "adamw"])
def test_interrupted_recipe_resumes_bit_identically(
    slice_shards: Manifest, tmp_path: Path, optimizer: str
) -> None:
    """Train N steps in one go vs train k, stop, load, train N - k: identical weights,
    optimizer state, dropout position and metrics (mid-epoch and at an epoch's end)."""
    config = dataclasses.replace(RECIPE, optimizer=optimizer, input_dropout=0.1, max_norm=2.0)
    train.train(slice_shards.directory, tmp_path / "full", config)
    with pytest.raises(Interrupt):  # stopped inside epoch 2, after a mid-epoch checkpoint
        train.train(slice_shards.directory, tmp_path / "part", config, events=Events(StopAfter(7)))
    kept = [p.name for p in RunDir(tmp_path / "part").all_checkpoints()]
    assert kept[0] == "checkpoint-e0001-s0000000.npz"
    assert kept[-1].startswith("checkpoint-e0001-s") and kept[-1] != kept[0]
    resumed = train.train(slice_shards.directory, tmp_path / "part", config, resume=True)
    assert resumed.resumed_from is not None
    full, part = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    for a, b in zip(
        full[0] + list(full[1].values()), part[0] + list(part[1].values()), strict=True
    ):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert full[2]["dropout_counter"] == part[2]["dropout_counter"]
    assert full[2]["optimizer"] == part[2]["optimizer"]
    assert metrics(tmp_path / "full") == metrics(tmp_path / "part")
    # from an epoch-end checkpoint too: drop the last epoch and train it again
    (tmp_path / "part" / "checkpoints" / "checkpoint-e0003-s0000000.npz").unlink()
    train.train(slice_shards.directory, tmp_path / "part", config, resume=True)
    for a, b in zip(full[0], final_state(tmp_path / "part")[0], strict=True):
        assert np.array_equal(a, b)


def test_a_resume_may_not_change_the_recipe(slice_shards: Manifest, tmp_path: Path) -> None:
    config = dataclasses.replace(RECIPE, epochs=1)
    train.train(slice_shards.directory, tmp_path / "run", config)
    changed = dataclasses.replace(config, dropout=0.5)
    with pytest.raises(ConfigError, match=r"dropout 0\.2 -> 0\.5"):
        train.train(slice_shards.directory, tmp_path / "run", changed, resume=True)


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory: pytest.TempPathFactory, mnist_slice_idx: Path) -> Manifest:
    """The real-MNIST slice with its last 500 training images moved into a "val" split."""
    raw = sources.load(
        f"idx:{mnist_slice_idx}", name="mnist-val", classes=[str(d) for d in range(10)]
    )
    tr = raw.splits["train"]
    splits = {
        "train": sources.RawSplit(tr.images[:2500], tr.labels[:2500]),
        "val": sources.RawSplit(tr.images[2500:], tr.labels[2500:]),
        "test": raw.splits["test"],
    }
    out = tmp_path_factory.mktemp("val-shards")
    return prepare.prepare(out, dataclasses.replace(raw, splits=splits), shard_size=1000).manifest


def test_val_split_chooses_the_checkpoint_and_stops_early(
    val_shards: Manifest, tmp_path: Path
) -> None:
    assert "val" in val_shards.splits
    # a rate far too high for plain SGD on sigmoid/MSE wanders: val accuracy peaks early
    config = presets.resolve(
        "fast", hidden=(16,), epochs=12, lr=3.0, optimizer="sgd", schedule="constant",
        dropout=0.0, batch_size=16, patience=2,
    )  # fmt: skip
    result = train.train(val_shards.directory, tmp_path / "run", config)
    history = result.history
    vals = [r["val_accuracy"] for r in history]
    best = int(np.argmax(vals)) + 1
    assert len(history) == best + 2 < 12  # stopped two epochs after the best
    assert result.checkpoint.name == checkpoint_name(best, 0)
    chosen = checkpoint.load(result.checkpoint)
    assert chosen.meta.epoch == best
    newest = RunDir(tmp_path / "run").newest_checkpoint()
    assert newest is not None and checkpoint.load(newest).meta.best_epoch == best
    report = evaluate.evaluate(tmp_path / "run")  # reports the chosen epoch, not the last
    assert report.doc["checkpoint"]["file"].endswith(checkpoint_name(best, 0))
    assert report.doc["history"] == history  # the curves: the whole run
    # resuming the stopped run trains nothing more
    again = train.train(val_shards.directory, tmp_path / "run", config, resume=True)
    assert again.history == history


def test_without_a_val_split_the_last_epoch_is_the_result(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    config = dataclasses.replace(RECIPE, epochs=2, patience=1)
    result = train.train(slice_shards.directory, tmp_path / "run", config)
    assert len(result.history) == 2 and "val_accuracy" not in result.history[0]
    assert result.checkpoint.name == checkpoint_name(2, 0)


def test_original_recipe_still_trains_through_its_kernel(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    """The default config is the original recipe: no optimizer state, a sigmoid/MSE network,
    and weights bit-identical to those the code before recipes produced (their sha256 was
    taken on tag base-v2 with this config on this slice)."""
    config = TrainConfig(hidden=(16,), epochs=1, lr=1.0, shuffle=True)
    assert config.is_original and config.preset == "original"
    result = train.train(slice_shards.directory, tmp_path / "run", config)
    weights, state, meta = final_state(tmp_path / "run")
    assert state == {} and meta["recipe"] == "mlp-sigmoid-mse-sgd"
    assert (result.network.activation, result.network.loss) == ("sigmoid", "mse")
    assert meta["optimizer"] == {"name": "sgd", "lr": 1.0, "step_count": 0}
    digest = hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()
    assert digest == BASE_V2_DIGEST


def test_cli_preset_with_overrides_records_the_resolved_config(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    args = ["train", "--data", str(slice_shards.directory), "--run-dir", str(tmp_path / "run")]
    args += ["--preset", "fast", "--hidden", "32", "--epochs", "1", "--optimizer", "adam"]
    result = CliRunner().invoke(app, [*args, "--lr", "0.001"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    expected = presets.resolve("fast", hidden=(32,), epochs=1, optimizer="adam", lr=0.001)
    assert saved == expected.to_json()
    assert saved["preset"] == "fast" and saved["dropout"] == 0.2 and saved["batch_size"] == 256


@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("--activation", "gelu", "--activation"),
        ("--dropout", "1.5", "--dropout"),
        ("--preset", "fastest", "--preset"),
        ("--optimizer", "lbfgs", "--optimizer"),
        ("--max-norm", "-1", "--max-norm"),
    ],
)
def test_cli_bad_recipe_options_are_one_line(
    slice_shards: Manifest, tmp_path: Path, option: str, value: str, flag: str
) -> None:
    args = ["train", "--data", str(slice_shards.directory), "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, option, value])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], lines
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
