"""`predict --source` streams one split a batch at a time (`sources.stream`): every form gives
the arrays `load` gives, with the same errors, and the peak memory of a real `pipeline
predict` does not grow with the number of images."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pty
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import sources
from pipeline.errors import SourceError
from tests.conftest import REPO, idx_bytes, write_idx_dir
from tests.test_sources import (
    TEST,
    TRAIN,
    few,  # noqa: F401 (a fixture)
    mnist_files,
    write_csv,
    write_folder,
    write_npz,
    write_torchvision,
)
from tests.test_sources_npz import CLI_PEAK  # its own peak RSS, in a child

DIGITS = [str(d) for d in range(10)]
ROWS = 64  # divides neither split: a short last chunk


def streamed(spec: str, split: str, classes: list[str] = DIGITS) -> tuple[np.ndarray, ...]:
    with sources.stream(spec, split, ROWS, classes) as s:
        chunks = list(s.chunks)
        assert [len(x) for x, _ in chunks[:-1]] == [ROWS] * (len(chunks) - 1)  # batches
        assert 0 < len(chunks[-1][0]) <= ROWS
        images = np.concatenate([x for x, _ in chunks])
        labels = np.concatenate([y for _, y in chunks])
        assert s.count == len(images) and s.image_shape == (28, 28) and s.classes == classes
    return images, labels


def torchvision_native(root: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """The same images as EMNIST (letters, extracted and in gzip.zip) and QMNIST (label rows)."""
    letters, qmnist, packed = {}, {}, io.BytesIO()
    for part, (images, labels) in data.items():
        stem = f"emnist-letters-{part}"
        letters[f"{stem}-images-idx3-ubyte.gz"] = idx_bytes(images.transpose(0, 2, 1).copy())
        letters[f"{stem}-labels-idx1-ubyte.gz"] = idx_bytes(labels + np.uint8(1))
        table = np.zeros((len(labels), 8), ">i4")
        table[:, 0] = labels
        header = bytes([0, 0, 0x0C, 2]) + np.array(table.shape, ">u4").tobytes()
        qmnist[f"qmnist-{part}-images-idx3-ubyte.gz"] = idx_bytes(images)
        qmnist[f"qmnist-{part}-labels-idx2-int"] = header + table.tobytes()
    with zipfile.ZipFile(packed, "w") as zf:
        for name, content in letters.items():
            zf.writestr(f"gzip/{name}", gzip.compress(content, mtime=0))
    write_torchvision(root / "extracted", "EMNIST", letters)
    write_torchvision(root / "zipped", "EMNIST", {"gzip.zip": packed.getvalue()})
    write_torchvision(root / "q", "QMNIST", qmnist)
    return [
        f"torchvision:EMNIST/letters:{root / 'extracted'}",
        f"torchvision:EMNIST/letters:{root / 'zipped'}",
        f"torchvision:QMNIST/test10k:{root / 'q'}",
    ]


def test_every_form_streams_what_load_reads(tmp_path: Path, few) -> None:  # noqa: F811
    f32 = {s: (i.astype(np.float32) / 255, y) for s, (i, y) in few.items()}
    fortran = {s: (np.asfortranarray(i), y[:, None]) for s, (i, y) in few.items()}
    idx_dir = tmp_path / "tv" / "MNIST" / "raw"
    specs = [
        "embedded",
        f"idx:{write_torchvision(tmp_path / 'tv', 'MNIST', mnist_files(few, gz=True))}/MNIST/raw",
        f"torchvision:MNIST:{tmp_path / 'tv'}",
        f"npz:{write_npz(tmp_path / 'digits.npz', few)}",
        f"npz:{write_npz(tmp_path / 'f32.npz', f32)}",
        f"npz:{write_npz(tmp_path / 'fortran.npz', fortran)}",
        write_csv(tmp_path / "csv", few, header=True),
        write_csv(tmp_path / "csvf", few, header=False, floats=True),
        f"images:{write_folder(tmp_path / 'png', few, DIGITS)}",
        *torchvision_native(tmp_path / "native", few),
    ]
    assert idx_dir.is_dir()
    for spec in specs:
        raw = sources.load(spec)
        for split in ("train", "test"):
            images, labels = streamed(spec, split, raw.classes)
            np.testing.assert_array_equal(images, raw.splits[split].images, err_msg=spec)
            np.testing.assert_array_equal(labels, raw.splits[split].labels, err_msg=spec)
            assert images.dtype == labels.dtype == np.uint8
            if spec != "embedded":
                assert len(images) == {"train": TRAIN, "test": TEST}[split]


def test_a_bad_sample_late_in_the_split_is_load_s_error(tmp_path: Path, few) -> None:  # noqa: F811
    """The chunk reader applies prepare's rules with the sample's own index in the split."""
    labels = few["test"][1].copy()
    labels[90] = 12  # in the second chunk
    csv = write_csv(tmp_path / "csv", {**few, "test": (few["test"][0], labels)}, header=False)
    floats = few["test"][0].astype(np.float32) / 255
    floats[70, 3, 3] = 1.5
    npz = f"npz:{write_npz(tmp_path / 'bad.npz', {**few, 'test': (floats, few['test'][1])})}"
    (tmp_path / "cut").mkdir()
    for name, data in mnist_files(few, gz=False).items():
        (tmp_path / "cut" / name).write_bytes(data[:-5] if "t10k-images" in name else data)
    for spec, message in [
        (csv, r"mnist_test\.csv: label 12 at index 90 is out of range for 10 classes"),
        (npz, r"bad\.npz:x_test: float pixel 1\.5 at image 70 is outside \[0, 1\]"),
        (f"idx:{tmp_path / 'cut'}", r"t10k-images-idx3-ubyte: \d+ bytes but the header"),
    ]:
        with pytest.raises(SourceError, match=message):
            sources.load(spec, classes=DIGITS)
        with pytest.raises(SourceError, match=message):
            streamed(spec, "test")


def predict_peak(model: Path, spec: str, out: Path) -> int:
    args = ["predict", "--model", str(model), "--source", spec, "--format", "csv"]
    child = subprocess.run(
        [sys.executable, "-c", CLI_PEAK, *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    code, peak = map(int, child.stdout.splitlines()[-1].split())  # after predict's note
    assert code == 0, child.stderr
    return peak


def test_predict_peak_memory_does_not_grow_with_the_inputs(
    tmp_path: Path, deploy_runs: dict[str, Path], real_mnist: sources.RawDataset
) -> None:
    """2,000 vs 40,000 test images (31 MB of pixels): the same peak, within a few MiB (before:
    every split read whole, 69 vs 152 MiB). Only the test split is there: only it is read."""
    test = real_mnist.splits["test"]
    peaks = {}
    for n in (2_000, 40_000):
        images = np.resize(test.images, (n, 28, 28))  # the test set repeated
        labels = np.resize(test.labels, n)
        folder = tmp_path / str(n)
        folder.mkdir()
        image_stem, label_stem = sources.SPLIT_FILES["test"]
        (folder / image_stem).write_bytes(idx_bytes(images))
        (folder / label_stem).write_bytes(idx_bytes(labels))
        out = tmp_path / f"{n}.csv"
        peaks[n] = predict_peak(deploy_runs["tanh"], f"idx:{folder}", out)
        with out.open() as f:
            assert sum(1 for _ in f) == n + 1  # the header, then one row per image
    assert peaks[40_000] - peaks[2_000] < 6, peaks


def on_a_terminal(args: list[str]) -> str:
    """`pipeline ARGS` with stderr on a pseudo-terminal: what it drew there, colours removed."""
    main, side = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=side,
        env=env,
    )
    os.close(side)
    drawn = b""
    with contextlib.suppress(OSError):  # EIO: the child closed its side
        while data := os.read(main, 1 << 16):
            drawn += data
    os.close(main)
    assert child.wait(timeout=60) == 0, drawn
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode())


def test_the_progress_bar_knows_its_total(
    tmp_path: Path, deploy_runs: dict[str, Path], real_mnist: sources.RawDataset
) -> None:
    """A source's header count, or the image files counted by name first (before: no total)."""
    test = real_mnist.splits["test"]
    split = (test.images[:300].reshape(-1, 28, 28), test.labels[:300])
    write_idx_dir(tmp_path / "idx", split, split, gz=False)
    for i in range(12):
        (tmp_path / "png" / "sub").mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i].reshape(28, 28)).save(tmp_path / "png" / "sub" / f"{i}.png")
    model = ["predict", "--model", str(deploy_runs["tanh"]), "--batch-size", "100"]
    out = ["--format", "csv", "--out", str(tmp_path / "out.csv")]
    drawn = on_a_terminal([*model, "--source", f"idx:{tmp_path / 'idx'}", *out])
    assert "0/300" in drawn and "300/300" in drawn and "100%" in drawn, drawn
    drawn = on_a_terminal([*model, str(tmp_path / "png"), *out])
    assert "12/12" in drawn and "100%" in drawn, drawn
