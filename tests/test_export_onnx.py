"""`pipeline export --format onnx`: the graph ONNX Runtime runs gives the pipeline's
probabilities (1e-5) and argmax (every image) on the whole MNIST test set; `run --runs
--export onnx` writes RUNS/latest/model.onnx before promotion; without the extra, one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.data import Manifest, sources
from pipeline.deploy.model import Model
from pipeline.deploy.onnx_export import OPSET, export_onnx
from tests.conftest import REPO

runner = CliRunner()
# the model in a process where `import onnx` fails, as on an install without the extra
NO_ONNX = "import sys; sys.modules['onnx'] = None; from pipeline.cli.app import app; app()"


@pytest.mark.parametrize("name", ["original", "fast", "tanh"])
def test_onnx_runtime_matches_the_pipeline_on_the_mnist_test_set(
    name: str, deploy_runs: dict[str, Path], real_mnist: sources.RawDataset, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["export", "--model", str(deploy_runs[name]), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "model.onnx"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    model = Model.load(deploy_runs[name])
    assert json.loads(meta["classes"]) == [str(d) for d in range(10)]
    assert json.loads(meta["image_shape"]) == [28, 28]
    assert meta["data_identity"] == model.ckpt.meta.data_identity
    assert meta["recipe"] == model.ckpt.meta.recipe
    logged = (model.ckpt.path.parent.parent / "metrics.jsonl").read_text().splitlines()
    last = json.loads(logged[model.ckpt.meta.epoch - 1])  # the checkpoint's epoch's record
    assert float(meta["test_accuracy"]) == last["test_accuracy"]

    pixels = real_mnist.splits["test"].images  # (10000, 784) uint8
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"images": pixels.reshape(-1, 28, 28)})
    labels, ours = model.forward(pixels)
    assert theirs.shape == (10000, 10) and theirs.dtype == np.float32
    assert np.abs(theirs - ours).max() <= 1e-5
    assert (theirs.argmax(axis=1) == labels).all()
    # the batch dimension is dynamic: one image at a time gives the same answer
    (one,) = session.run(None, {"images": pixels[:1].reshape(1, 28, 28)})
    assert np.abs(one - ours[:1]).max() <= 1e-5


def test_export_writes_atomically_beside_the_run_and_refuses_a_missing_model(
    deploy_runs: dict[str, Path], tmp_path: Path
) -> None:
    written = export_onnx(deploy_runs["tanh"], tmp_path / "m.onnx")
    assert written == tmp_path / "m.onnx" and not list(tmp_path.glob(".*"))
    result = runner.invoke(app, ["export", "--model", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none'}: no such model (a run directory, runs directory or .npz)"
    ]


def test_without_the_extra_export_is_one_line_naming_it(deploy_runs: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_ONNX, "export", "--model", str(deploy_runs["tanh"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "error: ONNX export needs the onnx extra: pip install 'mnist-pipeline[onnx]'"
    ]
    assert not (deploy_runs["tanh"] / "model.onnx").exists()


def test_scheduled_export_writes_latest_model_before_promotion(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    args = ["run", "--runs", str(runs), "--data", str(slice_shards.directory)]
    args += ["--hidden", "16", "--epochs", "1", "--export", "onnx"]
    done = subprocess.run(
        [sys.executable, "-c", NO_ONNX, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and "mnist-pipeline[onnx]" in done.stderr
    assert not runs.exists() or not any(runs.iterdir())  # refused before any training

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    exported = next(i for i, line in enumerate(lines) if line.startswith("exported: "))
    promoted = next(i for i, line in enumerate(lines) if line.startswith("promoted: "))
    assert exported < promoted
    latest = runs / "latest"
    onnx.checker.check_model(onnx.load(str(latest / "model.onnx")), full_check=True)
    model = Model.load(runs)  # a runs directory means its latest
    assert model.ckpt.path.parent.parent.resolve() == latest.resolve()

    single = runner.invoke(app, ["run", "--run-dir", str(tmp_path / "one"), "--export", "onnx"])
    assert single.exit_code == 2
    assert "--export needs --runs" in single.stderr


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_a_float64_checkpoint_exports_to_float32_within_tolerance(
    loss: str, slice_shards: Manifest, real_mnist: sources.RawDataset, tmp_path: Path
) -> None:
    """Weights trained in float64 (which float32 cannot hold exactly) cast to the graph's
    float32: ONNX Runtime's probabilities within 1e-5 of the pipeline's float64 forward pass
    (softmax, or MSE's output sigmoids), the same argmax for every image of a test slice."""
    from pipeline.config import TrainConfig
    from pipeline.training import trainer

    run = tmp_path / "run"
    config = TrainConfig(hidden=(32,), loss=loss, dtype="float64", epochs=1, batch_size=32)
    trainer.train(slice_shards.directory, run, config)
    model = Model.load(run)
    w = model.ckpt.network.weights[0]
    assert w.dtype == np.float64 and (w != w.astype(np.float32)).any()
    path = export_onnx(run, tmp_path / "model.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)

    pixels = real_mnist.splits["test"].images[:2000]  # (2000, 784) uint8
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"images": pixels.reshape(-1, 28, 28)})
    labels, ours = model.forward(pixels)
    assert theirs.dtype == np.float32
    assert np.abs(theirs - ours).max() <= 1e-5
    assert (theirs.argmax(axis=1) == labels).all()
