"""`pipeline predict`: the same argmax as `evaluate` for every MNIST test image and the same
accuracy, from a source or from PNG files; CSV/JSONL output; bad inputs one line each."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.data import Manifest, sources
from pipeline.data.loader import Loader
from pipeline.deploy import inputs
from pipeline.deploy.model import Model
from pipeline.errors import CheckpointError, SourceError
from pipeline.metrics import EVAL_BATCH, classification_report, confusion_on, inference
from pipeline.nn.network import Network
from pipeline.training import checkpoint
from tests.conftest import one_line_error

runner = CliRunner()


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, shape=(28, 28)) -> Path:
    """The images as PNGs, `folder/<label>/<index>.png` (as an MNIST export lays them out)."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.reshape(shape)).save(folder / str(label) / f"{i:05d}.png")
    return folder


@pytest.mark.parametrize("name", ["original", "fast"])
def test_predictions_equal_evaluate_on_the_mnist_test_set(
    name: str, deploy_runs: dict[str, Path], mnist_shards: Manifest
) -> None:
    run = deploy_runs[name]
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(run),
            "--source",
            "embedded",
            *("--format", "csv", "--top", "1"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["input"] for r in rows[:2]] == ["test/0", "test/1"] and len(rows) == 10000
    ours = np.array([int(r["label"]) for r in rows])

    # evaluate's own path: its loader's batches through Network.predict
    network = Model.load(run).ckpt.network
    loader = Loader(mnist_shards, "test", batch_size=EVAL_BATCH)
    with inference():  # evaluate's rule for its products (one BLAS thread)
        theirs = np.concatenate([network.predict(x) for x, _ in loader.epoch(0)])
    assert (ours == theirs).all()
    report = classification_report(confusion_on(network, loader, network.sizes[-1]))
    assert f"accuracy {report.accuracy:.2%} on 10,000 labelled" in result.stderr
    correct = int(report.confusion.trace())
    assert f"({correct:,} correct)" in result.stderr


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory, real_mnist: sources.RawDataset) -> Path:
    """The first 300 MNIST test images as PNG files, `<label>/<index>.png`."""
    test = real_mnist.splits["test"]
    return write_pngs(tmp_path_factory.mktemp("pngs"), test.images[:300], test.labels[:300])


def test_a_folder_of_pngs_predicts_as_the_source_does(
    deploy_runs: dict[str, Path], real_mnist: sources.RawDataset, pngs: Path, tmp_path: Path
) -> None:
    test, folder = real_mnist.splits["test"], pngs
    out = tmp_path / "predictions.jsonl"
    args = ["predict", "--model", str(deploy_runs["fast"]), str(folder)]
    result = runner.invoke(app, [*args, "--format", "jsonl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 300 and set(records[0]["probabilities"]) == {str(d) for d in range(10)}
    by_index = {int(Path(r["input"]).stem): r["label"] for r in records}
    labels, probs = Model.load(deploy_runs["fast"]).forward(test.images[:300])
    assert [by_index[i] for i in range(300)] == labels.tolist()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (labels == test.labels[:300]).mean()
    assert f"accuracy {accuracy:.2%} on 300 labelled" in result.stdout


def test_the_table_and_top_k(deploy_runs: dict[str, Path], pngs: Path) -> None:
    model = ["predict", "--model", str(deploy_runs["original"])]
    files = [str(pngs / "7" / "00000.png"), str(pngs / "2" / "00001.png")]
    table = runner.invoke(app, [*model, *files, "--top", "2"])
    assert table.exit_code == 0 and "top 2" in table.stdout and "00001.png" in table.stdout
    top = runner.invoke(app, [*model, files[0], "--format", "csv", "--top", "3"])
    header, row = top.stdout.splitlines()
    assert header == "input,label,class,c1,p1,c2,p2,c3,p3"
    assert row.split(",")[0].endswith("7/00000.png") and len(row.split(",")) == 9


def test_bad_inputs_are_one_line_with_the_readme_exit_code(
    deploy_runs: dict[str, Path], real_mnist: sources.RawDataset, tmp_path: Path
) -> None:
    model = ["predict", "--model", str(deploy_runs["tanh"])]
    test = real_mnist.splits["test"]
    folder = write_pngs(tmp_path / "pngs", test.images[:5], test.labels[:5])
    corrupt = folder / "4" / "00004.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really")
    out = tmp_path / "kept.csv"
    out.write_text("earlier results\n")
    assert str(corrupt) in one_line_error([*model, str(folder), "--out", str(out)], 1)
    assert out.read_text() == "earlier results\n"  # nothing already written lost
    assert not list(tmp_path.glob(".kept.csv*"))

    big = write_pngs(tmp_path / "big", test.images[:1].repeat(4, axis=1), test.labels[:1], (56, 56))
    line = one_line_error([*model, str(big)], 1)
    assert "a 56x56 grey image; the model takes 28x28 grey" in line
    resized = runner.invoke(app, [*model, str(big), "--resize"])
    assert resized.exit_code == 0, resized.output
    colour = tmp_path / "colour.png"
    Image.new("RGB", (28, 28), (200, 10, 10)).save(colour)
    assert "a 28x28 RGB image; the model takes 28x28 grey" in one_line_error(
        [*model, str(colour)], 1
    )

    (tmp_path / "empty").mkdir()
    assert "no image files" in one_line_error([*model, str(tmp_path / "empty")], 1)
    missing = one_line_error(["predict", "--model", str(tmp_path / "nope"), str(folder)], 1)
    assert "no such model" in missing
    assert "--top" in one_line_error([*model, str(folder), "--top", "0"], 2)
    assert "10 classes" in one_line_error([*model, str(folder), "--top", "11"], 2)
    assert "one of them" in one_line_error(model, 2)


def test_a_checkpoint_of_another_shape_is_refused_naming_both(
    tmp_path: Path, deploy_runs: dict[str, Path]
) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    for split in ("train", "test"):
        write_pngs(tmp_path / "rgb" / split, images, labels, (8, 8, 3))
    line = one_line_error(
        ["predict", "--model", str(deploy_runs["tanh"]), "--source", f"images:{tmp_path / 'rgb'}"],
        1,
    )
    assert "images of shape [8, 8, 3]; the model takes [28, 28]" in line


def test_folders_stream_a_batch_at_a_time(tmp_path: Path, real_mnist: sources.RawDataset) -> None:
    """The files are read lazily: a broken file after the first batch fails only there."""
    test = real_mnist.splits["test"]
    folder = write_pngs(tmp_path / "pngs", test.images[:6], np.zeros(6, np.uint8))
    (folder / "0" / "00005.png").write_bytes(b"broken")
    batches = inputs.file_batches([folder], (28, 28), ("0", "1"), 4)
    first = next(batches)
    assert first.pixels.shape == (4, 784) and (first.targets == 0).all()
    assert (first.pixels == test.images[:4]).all()  # the bytes the source holds
    with pytest.raises(SourceError, match=r"00005\.png"):
        next(batches)


def test_a_checkpoint_older_than_image_shape_is_read_as_square_grey(
    deploy_runs: dict[str, Path], tmp_path: Path
) -> None:
    """Checkpoints written before the field hold no image shape: 784 inputs are 28x28 grey;
    an input count that is no square is refused by name."""
    ckpt = Model.load(deploy_runs["tanh"]).ckpt
    old = tmp_path / "old.npz"
    checkpoint.save(old, ckpt.network, replace(ckpt.meta, image_shape=()))
    assert checkpoint.load(old).meta.image_shape == ()
    assert Model.load(old).image_shape == (28, 28)
    odd = Network.initialize([30, 4, 2], rng=np.random.default_rng(0), std=0.1, dtype="float32")
    meta = replace(ckpt.meta, image_shape=(), sizes=(30, 4, 2), classes=("a", "b"))
    checkpoint.save(old, odd, meta)
    with pytest.raises(CheckpointError, match="records no image shape"):
        Model.load(old)
