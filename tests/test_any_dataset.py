"""Other datasets through the whole CLI with no code change: 8x8 grey with 10 classes (npz),
28x28 with 47 classes (EMNIST balanced in torchvision's layout), 32x32 RGB with 10 classes
(a PNG folder); a val split scored per epoch and evaluated; `pipeline show`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from pipeline.cli import app
from pipeline.data import open_set
from tests.conftest import idx_bytes

TINY = ["--epochs", "2", "--hidden", "16", "--batch-size", "10"]


def invoke(*args: str | Path) -> Result:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def learnable(rng: np.random.Generator, n: int, shape: tuple[int, ...], k: int):
    """Images whose mean brightness band gives the class: (n, *shape) uint8, (n,) uint8."""
    labels = (np.arange(n) % k).astype(np.uint8)
    base = (labels.astype(np.float64) + 0.5) * (255 / k)
    noise = rng.normal(0, 4, (n, *shape))
    images = np.clip(base.reshape(-1, *[1] * len(shape)) + noise, 0, 255).astype(np.uint8)
    return images, labels


def eight_by_eight(tmp_path: Path) -> str:
    rng = np.random.default_rng(1)
    (x, y), (xt, yt) = learnable(rng, 400, (8, 8), 10), learnable(rng, 100, (8, 8), 10)
    np.savez(tmp_path / "digits8.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    return f"npz:{tmp_path / 'digits8.npz'}"


def emnist_balanced(tmp_path: Path) -> str:
    rng = np.random.default_rng(2)
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    for part, n in (("train", 47 * 8), ("test", 47 * 2)):
        images, labels = learnable(rng, n, (28, 28), 47)
        stem = f"emnist-balanced-{part}"
        (raw / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (raw / f"{stem}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return f"torchvision:EMNIST/balanced:{tmp_path}"


def rgb_folder(tmp_path: Path) -> str:
    rng = np.random.default_rng(3)
    classes = [f"c{k}" for k in range(10)]
    for part, n in (("train", 200), ("test", 50)):
        images, labels = learnable(rng, n, (32, 32, 3), 10)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = tmp_path / "rgb" / part / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return f"images:{tmp_path / 'rgb'}"


@pytest.mark.parametrize(
    ("make", "shape", "classes"),
    [
        (eight_by_eight, [8, 8], 10),
        (emnist_balanced, [28, 28], 47),
        (rgb_folder, [32, 32, 3], 10),
    ],
    ids=["8x8-10", "28x28-47", "32x32x3-10"],
)
def test_train_and_evaluate_any_shape(tmp_path, make, shape: list[int], classes: int) -> None:
    source = make(tmp_path)
    run_dir = tmp_path / "run"
    invoke("run", "--run-dir", run_dir, "--source", source, "--val-fraction", "0.25", *TINY)

    manifest = open_set(run_dir / "shards")
    assert manifest.image_shape == shape
    assert manifest.n_classes == classes
    assert set(manifest.splits) == {"train", "val", "test"}
    history = json.loads((run_dir / "report.json").read_text())["history"]
    assert len(history) == 2
    for record in history:  # scored on val each epoch; test waits for evaluate
        assert 0.0 <= record["val_accuracy"] <= 1.0
        assert "test_accuracy" not in record

    val = invoke("evaluate", "--run-dir", run_dir, "--split", "val")
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["split"], report["samples"]) == ("val", manifest.split("val").samples)
    assert len(report["per_class"]) == classes
    assert "val" in val.stdout


def test_run_reuses_its_val_split_and_refuses_another(tmp_path: Path) -> None:
    source = eight_by_eight(tmp_path)
    run_dir = tmp_path / "run"
    args: list[str | Path] = [
        "run",
        "--run-dir",
        run_dir,
        "--source",
        source,
        "--val-fraction",
        "0.25",
        *TINY,
    ]
    invoke(*args)
    identity = open_set(run_dir / "shards").identity
    again = invoke(*args)
    assert "already holds" in again.stdout
    assert open_set(run_dir / "shards").identity == identity
    other = CliRunner().invoke(app, [str(a) for a in args[:5]] + ["--val-fraction", "0.5", *TINY])
    assert other.exit_code == 1
    assert other.stderr.startswith("error: ") and other.stderr.count("\n") == 1
    assert "with val_fraction 0.25" in other.stderr


def test_show_summarizes_and_draws(tmp_path: Path) -> None:
    source = rgb_folder(tmp_path)
    invoke("prepare", "--out", tmp_path / "shards", "--source", source, "--val-fraction", "0.2")
    grid = tmp_path / "grid.png"
    result = invoke("show", tmp_path / "shards", "--grid", grid, "--per-class", "3")
    manifest = open_set(tmp_path / "shards")
    assert "rgb: 32x32x3 images, 10 classes" in result.stdout
    assert manifest.identity[:16] in result.stdout
    assert f"images:{(tmp_path / 'rgb').resolve()}" in result.stdout
    for cls in manifest.classes:
        assert cls in result.stdout
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 500


def test_show_of_a_missing_set_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["show", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert str(tmp_path / "none") in result.stderr
