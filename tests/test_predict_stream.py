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
from typer.testing import CliRunner

from pipeline.cli import app
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
runner = CliRunner()


def streamed(spec: str, split: str, classes: list[str] | None) -> tuple[np.ndarray, ...]:
    """The split through `sources.stream`, its chunks checked; `classes`: the source's."""
    with sources.stream(spec, split, ROWS) as s:
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
            named = not spec.startswith(("csv:", "npz:"))  # these two name no classes
            images, labels = streamed(spec, split, raw.classes if named else None)
            np.testing.assert_array_equal(images, raw.splits[split].images, err_msg=spec)
            np.testing.assert_array_equal(labels, raw.splits[split].labels, err_msg=spec)
            assert images.dtype == labels.dtype == np.uint8
            if spec != "embedded":
                assert len(images) == {"train": TRAIN, "test": TEST}[split]


def test_a_bad_sample_late_in_the_split_is_load_s_error(tmp_path: Path, few) -> None:  # noqa: F811
    """The chunk reader applies prepare's rules with the sample's own index in the split."""
    labels = few["test"][1].copy()
    labels = labels.astype(np.int64)
    labels[90] = 300  # in the second chunk: no class index (a source naming none: 0..255)
    csv = write_csv(tmp_path / "csv", {**few, "test": (few["test"][0], labels)}, header=False)
    floats = few["test"][0].astype(np.float32) / 255
    floats[70, 3, 3] = 1.5
    npz = f"npz:{write_npz(tmp_path / 'bad.npz', {**few, 'test': (floats, few['test'][1])})}"
    (tmp_path / "cut").mkdir()
    for name, data in mnist_files(few, gz=False).items():
        (tmp_path / "cut" / name).write_bytes(data[:-5] if "t10k-images" in name else data)
    for spec, message in [
        (csv, r"mnist_test\.csv: line 91: label 300 is not a class index \(0\.\.255\)"),
        (npz, r"bad\.npz:x_test: float pixel 1\.5 at image 70 is outside \[0, 1\]"),
        (f"idx:{tmp_path / 'cut'}", r"t10k-images-idx3-ubyte: \d+ bytes but the header"),
    ]:
        with pytest.raises(SourceError, match=message):
            sources.load(spec)
        with pytest.raises(SourceError, match=message):
            streamed(spec, "test", None)


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


def test_colour_is_the_dataset_s_in_a_stream_as_in_load(tmp_path: Path, few) -> None:  # noqa: F811
    """One RGB image in train, a grey test split: load reads both splits as RGB, and so does
    the stream of the test split alone (it read the test split as grey, so a model trained on
    the set refused its own test split)."""
    folder = write_folder(tmp_path / "png", few, DIGITS)
    first = next((folder / "train").rglob("*.png"))
    Image.open(first).convert("RGB").save(first)
    raw = sources.load(f"images:{folder}")
    assert raw.image_shape == (28, 28, 3)
    with sources.stream(f"images:{folder}", "test", ROWS) as s:
        assert s.image_shape == (28, 28, 3)
        images = np.concatenate([x for x, _ in s.chunks])
    np.testing.assert_array_equal(images, raw.splits["test"].images)


def test_labels_beyond_the_model_s_classes_withhold_the_accuracy_not_the_predictions(
    tmp_path: Path,
    deploy_runs: dict[str, Path],
    few,  # noqa: F811
) -> None:
    """A CSV (it names no classes) labelled 0..25 for a 10-class model: every row predicted,
    and no accuracy, saying why (it was refused: "label 10 ... out of range for 10 classes")."""
    images, _ = few["test"]
    letters = np.arange(len(images)) % 26
    csv = write_csv(
        tmp_path / "csv", {"train": few["train"], "test": (images, letters)}, header=False
    )
    out = tmp_path / "out.csv"
    args = ["--model", str(deploy_runs["tanh"]), "--source", csv, "--format", "csv"]
    result = runner.invoke(app, ["predict", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == len(images) + 1
    assert "% on" not in result.output  # no accuracy figure
    assert f"{np.sum(letters >= 10):,} labels are beyond the model's 10 classes" in result.output
    # labels within the model's classes still give the accuracy
    digits = np.arange(len(images)) % 10
    csv = write_csv(
        tmp_path / "csv10", {"train": few["train"], "test": (images, digits)}, header=False
    )
    result = runner.invoke(app, ["predict", *args[:3], csv, "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0 and "labelled inputs" in result.output, result.output


def test_a_csv_of_non_square_images_is_read_in_the_model_s_shape(tmp_path: Path) -> None:
    """A model trained on 6x4 CSV rows (prepare --image-shape 6x4) predicts that CSV: the
    stream reads rows in the model's shape (it asked for an --image-shape predict lacks)."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (60, 6, 4), np.uint8), np.arange(60) % 3
    csv = write_csv(
        tmp_path / "csv", {"train": (images, labels), "test": (images, labels)}, header=False
    )
    shards, run = tmp_path / "shards", tmp_path / "run"
    steps = [
        ["prepare", "--source", csv, "--out", str(shards), "--image-shape", "6x4"],
        [
            "train",
            "--data",
            str(shards),
            "--run-dir",
            str(run),
            "--epochs",
            "1",
            "--hidden",
            "8",
            "--batch-size",
            "10",
        ],
        ["predict", "--model", str(run), "--source", csv, "--format", "csv"],
    ]
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    assert len(result.stdout.splitlines()) == 60 + 1
