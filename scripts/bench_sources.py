"""How long each source form takes to read the same MNIST, side by side in one run.

Writes the first N train and N/6 test images of the embedded MNIST as IDX (.gz), npz (uint8),
CSV (no header) and a PNG folder in a temporary directory, then times `sources.load` on each
(best of `--repeat`) and prints seconds, images per second and the ratio to IDX, with the peak
RSS growth of each load. All forms must give the same arrays; the script checks that too.

    flock /work/bench.lock .venv/bin/python scripts/bench_sources.py --images 12000
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import rss_mib, table
from PIL import Image

from pipeline.data import sources


def idx_bytes(array: np.ndarray) -> bytes:
    head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return head + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_forms(root: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    (root / "idx").mkdir()
    csvs = []
    for split, (images, labels) in data.items():
        image_stem, label_stem = sources.SPLIT_FILES[split]
        (root / "idx" / f"{image_stem}.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (root / "idx" / f"{label_stem}.gz").write_bytes(gzip.compress(idx_bytes(labels)))
        rows = np.column_stack([labels, images.reshape(len(images), -1)])
        path = root / f"mnist_{split}.csv"
        np.savetxt(path, rows, fmt="%d", delimiter=",")
        csvs.append(str(path))
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / "png" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    np.savez(root / "mnist.npz", x_train=train_x, y_train=train_y, x_test=test_x, y_test=test_y)
    return {
        "idx (.gz)": f"idx:{root / 'idx'}",
        "npz (uint8)": f"npz:{root / 'mnist.npz'}",
        "csv": "csv:" + ",".join(csvs),
        "png folder": f"images:{root / 'png'}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12_000, help="train images (test: 1/6)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    mnist = sources.load(None)
    n_train, n_test = args.images, args.images // 6
    data = {
        "train": (mnist.splits["train"].images[:n_train].reshape(-1, 28, 28),
                  mnist.splits["train"].labels[:n_train]),
        "test": (mnist.splits["test"].images[:n_test].reshape(-1, 28, 28),
                 mnist.splits["test"].labels[:n_test]),
    }  # fmt: skip
    del mnist
    with tempfile.TemporaryDirectory() as tmp:
        specs = write_forms(Path(tmp), data)
        rows, base = [], None
        for form, spec in specs.items():
            best, grown = float("inf"), 0.0
            for _ in range(args.repeat):
                before = rss_mib()
                started = time.perf_counter()
                raw = sources.load(spec)
                best = min(best, time.perf_counter() - started)
                grown = max(grown, rss_mib() - before)
                np.testing.assert_array_equal(
                    raw.splits["train"].images, data["train"][0].reshape(n_train, -1)
                )
                del raw
            base = base or best
            total = n_train + n_test
            rows.append([form, f"{best:.2f}", f"{total / best:,.0f}", f"{best / base:.1f}x",
                         f"{grown:.0f}"])  # fmt: skip
    load = os.getloadavg()[0]
    print(f"{n_train:,} train + {n_test:,} test MNIST images per form; load average {load:.1f}")
    print(table(["form", "seconds", "images/s", "vs idx", "RSS growth MiB"], rows))


if __name__ == "__main__":
    main()
