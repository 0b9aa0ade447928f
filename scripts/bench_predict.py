"""Predictions per second on the MNIST test set, side by side in one run: `pipeline predict`'s
engine (`pipeline.deploy.model.Model.forward`), ONNX Runtime on the exported model.onnx, and
PyTorch on the CPU with the same float32 weights (when it is installed); batch 1 and 256.
Then start-up: `pipeline predict` on one PNG as a whole process, against `pipeline --help`.

    python scripts/bench_predict.py [--model RUN_DIR] [--rounds 5]

Without --model it trains `--preset fast --epochs 1` into a temporary run first. Each engine
gets the same uint8 pixels and does its own normalization (/255); rounds alternate the
engines, and the best round of each is reported (the machine is shared: the load is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.data import sources
from pipeline.deploy.inputs import Batch
from pipeline.deploy.model import Model
from pipeline.deploy.onnx_export import export_onnx
from pipeline.deploy.predict import predict

PIPELINE = str(Path(sys.executable).parent / "pipeline")
Engine = Callable[[np.ndarray], np.ndarray]  # (B, 784) uint8 -> (B, classes) probabilities


def rate_ours(model: Model, pixels: np.ndarray, batch: int) -> float:
    """`pipeline predict`'s engine as the command runs it: one stream of batches."""
    started = time.perf_counter()
    stream = (
        Batch([], pixels[s : s + batch], np.empty(0, np.int64))
        for s in range(0, len(pixels), batch)
    )
    for _ in predict(model, stream):
        pass
    return len(pixels) / (time.perf_counter() - started)


def torch_engine(model: Model, threads: int) -> Engine | None:
    try:
        import torch
    except ImportError:
        return None
    network = model.ckpt.network
    acts = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
    layers: list[torch.nn.Module] = []
    for i, (w, b) in enumerate(zip(network.weights, network.biases, strict=True)):
        linear = torch.nn.Linear(*w.shape)
        linear.weight.data = torch.from_numpy(w.T.astype(np.float32).copy())
        linear.bias.data = torch.from_numpy(b.astype(np.float32))
        layers.append(linear)
        if i < len(network.weights) - 1 or network.loss == "mse":
            layers.append(acts[network.activation]())
    if network.loss == "cross_entropy":
        layers.append(torch.nn.Softmax(dim=1))
    net = torch.nn.Sequential(*layers).eval()

    def run(pixels: np.ndarray) -> np.ndarray:
        torch.set_num_threads(threads)  # process-wide: set before each call of this engine
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(torch.float32) / 255.0
            out: np.ndarray = net(x).numpy()
            return out

    return run


def onnx_engine(path: Path, shape: tuple[int, ...], threads: int) -> Engine:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(pixels: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {"images": pixels.reshape(-1, *shape)})[0]
        return out

    return run


def rate(engine: Engine, pixels: np.ndarray, batch: int) -> float:
    """Predictions per second over `pixels`, `batch` rows per call."""
    started = time.perf_counter()
    for start in range(0, len(pixels), batch):
        engine(pixels[start : start + batch])
    return len(pixels) / (time.perf_counter() - started)


def startup(model: Path, png: Path, runs: int) -> tuple[float, float]:
    """Median seconds of `pipeline predict --model M one.png` and of `pipeline --help`."""
    predict = [PIPELINE, "predict", "--model", str(model), str(png), "--format", "csv"]
    times: dict[str, list[float]] = {"predict": [], "help": []}
    for _ in range(runs):  # interleaved: both see the same load
        for name, command in (("predict", predict), ("help", [PIPELINE, "--help"])):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - started)
    return statistics.median(times["predict"]), statistics.median(times["help"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--startup-runs", type=int, default=15)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    if args.model is None:
        args.model = tmp / "run"
        command = [PIPELINE, "run", "--run-dir", str(args.model), "--preset", "fast"]
        subprocess.run([*command, "--epochs", "1"], check=True, capture_output=True)
    model = Model.load(args.model)
    onnx_file = export_onnx(args.model, tmp / "model.onnx")
    pixels = sources.load(None).splits["test"].images  # (10000, 784) uint8
    engines: dict[str, Engine | None] = {
        "pipeline predict (1 BLAS thread)": None,  # its own stream: rate_ours
        "ONNX Runtime, 2 threads": onnx_engine(onnx_file, model.image_shape, 2),
        "ONNX Runtime, 1 thread": onnx_engine(onnx_file, model.image_shape, 1),
        "PyTorch CPU, 2 threads": torch_engine(model, 2),
        "PyTorch CPU, 1 thread": torch_engine(model, 1),
    }
    sizes = "-".join(map(str, model.ckpt.meta.sizes))
    print(f"model {sizes} ({model.ckpt.meta.recipe}), MNIST test set, load {os.getloadavg()}")
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for batch, rows in ((1, 2000), (256, len(pixels))):  # batch 1 on the first 2,000 images
            for name, engine in engines.items():
                if name.startswith("pipeline predict"):
                    r = rate_ours(model, pixels[:rows], batch)
                elif engine is not None:
                    r = rate(engine, pixels[:rows], batch)
                else:
                    continue
                best[name, batch] = max(best.get((name, batch), 0.0), r)
    onnx_256 = max(best["ONNX Runtime, 2 threads", 256], best["ONNX Runtime, 1 thread", 256])
    print("\n| engine | batch 1 (pred/s) | batch 256 (pred/s) | batch 256: time / ONNX Runtime's |")
    print("| --- | ---: | ---: | ---: |")
    for name in engines:
        if (name, 1) not in best:
            print(f"| {name} | not installed | | |")
            continue
        b1, b256 = best[name, 1], best[name, 256]
        print(f"| {name} | {b1:,.0f} | {b256:,.0f} | {onnx_256 / b256:.2f} |")
    png = tmp / "one.png"
    from PIL import Image

    Image.fromarray(pixels[0].reshape(28, 28)).save(png)
    predict_s, help_s = startup(args.model, png, args.startup_runs)
    print(
        f"\nstart-up, median of {args.startup_runs}: `pipeline predict` on one PNG "
        f"{predict_s * 1000:.0f} ms, `pipeline --help` {help_s * 1000:.0f} ms "
        f"({predict_s / help_s:.2f}x); load {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
