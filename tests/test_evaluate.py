"""The evaluate stage and `pipeline run`: reports, pictures, the quality gate, bad input."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from pipeline.cli.app import EXIT_ERROR, EXIT_GATE, app
from pipeline.config import TrainConfig
from pipeline.data import MANIFEST, Manifest, prepare, sources
from pipeline.errors import CheckpointError, ConfigError, OutputError, ShardSetError
from pipeline.fsutil import sha256_file
from pipeline.report import evaluate
from pipeline.runs import rundir
from pipeline.training import checkpoint
from pipeline.training import trainer as train
from tests import conftest
from tests.conftest import random_split, write_idx_dir

SCHEMA = json.loads((Path(evaluate.__file__).parent / "report.schema.json").read_text())
runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(slice_shards: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    train.train(slice_shards.directory, run_dir, TrainConfig(hidden=(32,), epochs=2, lr=1.0))
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def test_report_matches_an_independent_computation(
    trained_run: Path, tmp_path: Path, mnist_slice_idx: Path
) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    result = evaluate.evaluate(run_dir)
    # independent: the raw IDX bytes of the slice's test split, the plain feedforward, numpy counts
    images = np.frombuffer(
        gzip.decompress((mnist_slice_idx / "t10k-images-idx3-ubyte.gz").read_bytes()),
        np.uint8,
        offset=16,
    ).reshape(-1, 784)
    labels = np.frombuffer(
        gzip.decompress((mnist_slice_idx / "t10k-labels-idx1-ubyte.gz").read_bytes()),
        np.uint8,
        offset=8,
    )
    newest = rundir.RunDir(run_dir).newest_checkpoint()
    network = checkpoint.load(newest).network  # type: ignore[arg-type]
    predicted = network.feedforward(images.astype(np.float32) / np.float32(255))[-1].argmax(axis=1)
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (labels, predicted), 1)
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["confusion_matrix"] == expected.tolist()
    assert doc["accuracy"] == pytest.approx(float(np.mean(predicted == labels)))
    assert [row["support"] for row in doc["per_class"]] == np.bincount(
        labels, minlength=10
    ).tolist()
    assert np.array(doc["confusion_matrix"]).sum(axis=1).tolist() == [
        r["support"] for r in doc["per_class"]
    ]
    for k, row in enumerate(doc["per_class"]):
        tp = expected[k, k]
        assert row["recall"] == pytest.approx(tp / expected[k].sum())
        assert row["precision"] == pytest.approx(
            tp / expected[:, k].sum() if expected[:, k].sum() else 0.0
        )
    assert result.report.accuracy == doc["accuracy"]


def test_report_json_validates_and_links_real_pictures(trained_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    evaluate.evaluate(run_dir)
    doc = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["checkpoint"]["file"] == "checkpoints/checkpoint-e0002-s0000000.npz"
    assert doc["model"]["sizes"] == [784, 32, 10] and doc["dataset"]["trained_on_same_data"]
    assert [r["epoch"] for r in doc["history"]] == [1, 2]
    for name in ("confusion.png", "curves.png"):
        data = (run_dir / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = imread(run_dir / name)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200
        assert len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 20
    markdown = (run_dir / "report.md").read_text()
    assert markdown.startswith(f'# mnist-slice test: accuracy ("precision") {doc["accuracy"]:.2%}')
    for needle in (
        "| class | precision | recall | F1 | support |",
        "![confusion matrix](confusion.png)",
        "![learning curves](curves.png)",
        doc["checkpoint"]["sha256"],
        "## Training curve",
    ):
        assert needle in markdown


def test_named_checkpoint_and_split(trained_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    first = run_dir / "checkpoints" / "checkpoint-e0001-s0000000.npz"
    result = evaluate.evaluate(run_dir, checkpoint_path=first, split="train")
    assert result.doc["checkpoint"]["epoch"] == 1 and result.doc["samples"] == 3000
    assert result.doc["checkpoint"]["file"] == "checkpoints/checkpoint-e0001-s0000000.npz"
    assert [r["epoch"] for r in result.doc["history"]] == [1]  # the history of that checkpoint


def test_a_checkpoint_from_elsewhere_is_kept_in_the_run_dir(
    trained_run: Path, tmp_path: Path
) -> None:
    """The report's checkpoint stays: one from outside (or mid-epoch) is copied in by hash."""
    run_dir = copy_run(trained_run, tmp_path)
    outside = tmp_path / "elsewhere.npz"
    shutil.copy(run_dir / "checkpoints" / "checkpoint-e0001-s0000000.npz", outside)
    doc = evaluate.evaluate(run_dir, checkpoint_path=outside).doc
    kept = run_dir / doc["checkpoint"]["file"]
    assert kept.parent == run_dir / "checkpoints" and kept.name.startswith("evaluated-")
    assert sha256_file(kept) == doc["checkpoint"]["sha256"] == sha256_file(outside)
    # a later resume does not take the copy for the run's newest checkpoint
    assert rundir.RunDir(run_dir).newest_checkpoint() == run_dir / "checkpoints" / (
        "checkpoint-e0002-s0000000.npz"
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"just text", "not a checkpoint"),
        (None, "not a checkpoint"),  # a .npy array, not an .npz archive
        ("meta-list", "not a pipeline checkpoint"),
    ],
)
def test_foreign_checkpoint_files_are_one_line_errors(
    trained_run: Path, tmp_path: Path, content: bytes | str | None, needle: str
) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    path = tmp_path / "foreign.npz"
    if content is None:
        with path.open("wb") as f:
            np.save(f, np.zeros(3))
    elif content == "meta-list":
        with path.open("wb") as f:
            np.savez(f, meta=np.array("[1, 2]"), w0=np.zeros((784, 2)), b0=np.zeros(2))
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=needle):
        checkpoint.load(path)
    assert needle in one_line_error(
        ["evaluate", "--run-dir", str(run_dir), "--checkpoint", str(path)]
    )


def test_gate_exit_codes(trained_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    passed = runner.invoke(app, ["evaluate", "--run-dir", str(run_dir), "--min-accuracy", "0.5"])
    assert passed.exit_code == 0, passed.stderr
    assert 'accuracy ("precision")' in passed.stdout and "report.md" in passed.stdout
    (run_dir / "report.json").unlink()
    failed = runner.invoke(app, ["evaluate", "--run-dir", str(run_dir), "--min-accuracy", "0.999"])
    assert failed.exit_code == EXIT_GATE
    assert failed.stderr.strip().startswith("quality gate failed")
    assert (run_dir / "report.json").exists()  # the report is written all the same


def one_line_error(args: list[str]) -> str:
    return conftest.one_line_error(args, EXIT_ERROR)


def test_run_dir_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        evaluate.evaluate(tmp_path)
    assert "no checkpoint" in one_line_error(["evaluate", "--run-dir", str(tmp_path)])


def test_corrupt_and_truncated_checkpoints(trained_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    newest = run_dir / "checkpoints" / "checkpoint-e0002-s0000000.npz"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the first layer's weights: the zip CRC catches it
    newest.write_bytes(bytes(data))
    assert newest.name in one_line_error(["evaluate", "--run-dir", str(run_dir)])
    newest.write_bytes(bytes(data[: len(data) // 3]))
    assert newest.name in one_line_error(["evaluate", "--run-dir", str(run_dir)])
    assert not (run_dir / "report.json").exists()


def test_checkpoint_that_does_not_fit_the_data(trained_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    raw_dir = write_idx_dir(
        tmp_path / "raw8", random_split(rng, 40, (8, 8)), random_split(rng, 20, (8, 8))
    )
    small = prepare.prepare(tmp_path / "shards8", sources.load(f"idx:{raw_dir}")).manifest
    run_dir = copy_run(trained_run, tmp_path)
    with pytest.raises(CheckpointError, match="784-input"):
        evaluate.evaluate(run_dir, data_dir=small.directory)
    assert "does not fit" in one_line_error(
        ["evaluate", "--run-dir", str(run_dir), "--data", str(small.directory)]
    )


def test_empty_split(trained_run: Path, slice_shards: Manifest, tmp_path: Path) -> None:
    data = tmp_path / "shards"
    shutil.copytree(slice_shards.directory, data)
    doc = json.loads((data / MANIFEST).read_text())
    for shard in doc["splits"]["test"]["shards"]:
        (data / shard["file"]).unlink()
    doc["splits"]["test"] = {"samples": 0, "label_histogram": [0] * 10, "shards": []}
    (data / MANIFEST).write_text(json.dumps(doc))
    run_dir = copy_run(trained_run, tmp_path)
    with pytest.raises(ShardSetError, match="empty"):
        evaluate.evaluate(run_dir, data_dir=data)
    assert "empty" in one_line_error(["evaluate", "--run-dir", str(run_dir), "--data", str(data)])


@contextlib.contextmanager
def read_only_copy(source: Path, where: Path) -> Iterator[Path]:
    """`source` copied onto a tmpfs remounted read-only (unwritable even for root), or, for
    a user who may not mount, a copy whose modes forbid writing."""
    where.mkdir()
    if os.geteuid() != 0:
        shutil.copytree(source, where / "run")
        for path in [where / "run", *(where / "run").rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        yield where / "run"
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], check=True)
    try:
        shutil.copytree(source, where / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where / "run"
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_unwritable_run_dir(trained_run: Path, tmp_path: Path) -> None:
    with read_only_copy(trained_run, tmp_path / "ro") as run_dir:
        before = sorted(p.name for p in run_dir.rglob("*"))
        with pytest.raises(OutputError, match="not writable"):
            evaluate.evaluate(run_dir)
        assert "not writable" in one_line_error(["evaluate", "--run-dir", str(run_dir)])
        assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_pipeline_run_end_to_end_on_a_real_mnist_slice(
    mnist_slice_idx: Path, tmp_path: Path
) -> None:
    args = [
        "run",
        "--run-dir",
        str(tmp_path / "run"),
        "--source",
        f"idx:{mnist_slice_idx}",
        "--epochs",
        "2",
        "--hidden",
        "64",
        "--lr",
        "1",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["accuracy"] > 0.8
    last = result.stdout.strip().splitlines()[-1]
    assert f"{doc['accuracy']:.2%}" in last and str(tmp_path / "run" / "report.md") in last
    # a second run reuses the shards and the finished run: nothing is retrained
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.stderr
    assert "already holds mnist-slice" in again.stdout
    assert json.loads((tmp_path / "run" / "report.json").read_text())["accuracy"] == doc["accuracy"]


@pytest.mark.slow
def test_readme_main_job_reaches_the_recipe_accuracy(tmp_path: Path) -> None:
    """The README's main job on the full embedded MNIST: the original recipe, 10 epochs."""
    result = runner.invoke(
        app, ["run", "--run-dir", str(tmp_path / "run"), "--min-accuracy", "0.963"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["accuracy"] >= 0.963
    assert doc["model"]["sizes"] == [784, 500, 10] and len(doc["history"]) == 10


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def fashion_shards(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """The real Fashion-MNIST (Debian's files), its first 3,000/1,000 images."""
    assert FASHION.is_dir(), "install it: apt-get install -y dataset-fashion-mnist"
    raw = sources.load(f"idx:{FASHION}")
    train, test = raw.splits["train"], raw.splits["test"]
    slice_dir = write_idx_dir(
        tmp_path_factory.mktemp("fashion-idx"),
        (train.images[:3000].reshape(-1, 28, 28), train.labels[:3000]),
        (test.images[:1000].reshape(-1, 28, 28), test.labels[:1000]),
    )
    small = sources.load(f"idx:{slice_dir}", name=raw.name, classes=raw.classes)
    out = tmp_path_factory.mktemp("fashion-shards")
    return prepare.prepare(out, small, shard_size=1000).manifest


def test_a_checkpoint_of_other_data_is_refused_naming_both(
    trained_run: Path, fashion_shards: Manifest, tmp_path: Path
) -> None:
    """An MNIST model on Fashion-MNIST: same shapes, other classes; refused unless asked."""
    run_dir = copy_run(trained_run, tmp_path)
    fashion = fashion_shards.name  # the source's name for Debian's files
    assert "fashion" in fashion
    with pytest.raises(ConfigError) as caught:
        evaluate.evaluate(run_dir, data_dir=fashion_shards.directory)
    assert caught.value.param == "allow_other_data"
    line = one_line_error(
        ["evaluate", "--run-dir", str(run_dir), "--data", str(fashion_shards.directory)]
    )
    for needle in ("mnist-slice (classes 0, 1", f"{fashion} (classes T-shirt/top", "--allow"):
        assert needle in line
    assert not (run_dir / "report.json").exists()

    args = ["--run-dir", str(run_dir), "--data", str(fashion_shards.directory)]
    result = runner.invoke(app, ["evaluate", *args, "--allow-other-data"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["dataset"]["name"] == fashion and not doc["dataset"]["trained_on_same_data"]
    assert doc["dataset"]["trained_on"]["name"] == "mnist-slice"
    assert doc["classes"][0] == "T-shirt/top"
    headline = (run_dir / "report.md").read_text().splitlines()[0]
    assert headline.startswith(f"# {fashion} test: accuracy")
    assert headline.endswith("(model trained on mnist-slice)")


def test_another_shard_set_of_the_same_classes_is_refused_too(
    trained_run: Path, mnist_shards: Manifest, tmp_path: Path
) -> None:
    run_dir = copy_run(trained_run, tmp_path)
    with pytest.raises(ConfigError, match="trained on mnist-slice") as caught:
        evaluate.evaluate(run_dir, data_dir=mnist_shards.directory)
    assert "not on mnist" in str(caught.value)
    allowed = evaluate.evaluate(run_dir, data_dir=mnist_shards.directory, allow_other_data=True)
    assert allowed.doc["samples"] == 10_000
    assert "(model trained on mnist-slice)" in (run_dir / "report.md").read_text()


def test_a_killed_evaluate_leaves_nothing_behind(trained_run: Path, tmp_path: Path) -> None:
    """The next evaluate removes the half-written report files a killed one left; a train's
    temporaries (it may be running beside) are not its to remove."""
    run_dir = copy_run(trained_run, tmp_path)
    ours = [run_dir / ".curves.png.999.tmp", run_dir / "checkpoints" / ".evaluated-ab.npz.9.tmp"]
    theirs = [run_dir / ".metrics.jsonl.999.tmp", run_dir / "checkpoints" / ".checkpoint-x.9.tmp"]
    for path in ours + theirs:
        path.write_bytes(b"half")
    evaluate.evaluate(run_dir)
    assert [p.exists() for p in ours + theirs] == [False, False, True, True]
