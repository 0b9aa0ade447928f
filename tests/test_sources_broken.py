"""Every broken form of every source, through `pipeline prepare`: exit 1, one `error:` line
naming the file (or option) and what is wrong, no traceback, nothing written.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import idx_bytes, write_idx_dir

# a builder writes a broken source under a directory and returns
# (the --source spec, extra CLI args, the text the error must contain, the path it must name)
Broken = tuple[str, list[str], str, Path | str]
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (12, 6, 6), np.uint8)
LABELS = (np.arange(12) % 3).astype(np.uint8)


def npz(d: Path, **arrays: object) -> Path:
    base = {"x_train": IMAGES, "y_train": LABELS, "x_test": IMAGES[:4], "y_test": LABELS[:4]}
    path = d / "data.npz"
    np.savez(path, **{**base, **arrays})  # type: ignore[arg-type]
    return path


def npz_lying_header(d: Path) -> Broken:
    """A .npy member whose header claims 10^9 images over the 12 it holds."""
    path = d / "lying.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, array in {
            "x_train": IMAGES,
            "y_train": LABELS,
            "x_test": IMAGES,
            "y_test": LABELS,
        }.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            data = buffer.getvalue()
            if key == "x_train":
                header = np.lib.format.header_data_from_array_1_0(array)
                header["shape"] = (10**9, 6, 6)
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(head, header)
                data = head.getvalue() + array.tobytes()
            zf.writestr(f"{key}.npy", data)
    return f"npz:{path}", [], "claims [1000000000, 6, 6]", f"{path}:x_train"


def csv_file(d: Path, name: str, text: str | bytes) -> Path:
    path = d / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def good_rows(n: int = 6, pixels: int = 4) -> str:
    return "".join(f"{i % 2}," + ",".join(["0"] * pixels) + "\n" for i in range(n))


def csv_pair(d: Path, train: str | bytes, name: str = "train.csv") -> Broken:
    test = csv_file(d, "test.csv", good_rows())
    path = csv_file(d, name, train)
    return f"csv:{path},{test}", [], "", path


def png_bomb(d: Path, side: int = 4000) -> Path:
    """A PNG whose header claims side x side pixels in a hundred bytes (4000: within
    MAX_PIXELS; 10000: past Pillow's warning, 20000: past its DecompressionBombError)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    path = d / "train" / "a" / "bomb.png"
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def folder(d: Path, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """A good image folder: classes a and b, 3 grey 6x6 images each in train, 1 in test."""
    for split, count in (("train", 3), ("test", 1)):
        for cls in ("a", "b"):
            (d / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = (sizes or {}).get(f"{split}/{cls}/{i}.png", (6, 6))
                Image.fromarray(RNG.integers(0, 256, size[::-1], np.uint8)).save(
                    d / split / cls / f"{i}.png"
                )
    return d


def idx_dir(d: Path) -> Path:
    return write_idx_dir(d / "idx", (IMAGES, LABELS), (IMAGES[:4], LABELS[:4]))


def gz_bomb(d: Path) -> Broken:
    """An IDX header claiming 10^6 images of 1000x1000 in a tiny .gz file."""
    directory = idx_dir(d)
    path = directory / "train-images-idx3-ubyte.gz"
    head = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10**6, 1000, 1000)
    path.write_bytes(gzip.compress(head + bytes(100)))
    return f"idx:{directory}", [], "more than a compressed file of", path


def emnist_root(d: Path, *, letters_zero: bool = False, members: bool = True) -> Path:
    raw = d / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for part, n in (("train", 12), ("test", 4)):
            stem = f"gzip/emnist-letters-{part}"
            labels = LABELS[:n] + (0 if letters_zero else 1)
            zf.writestr(f"{stem}-images-idx3-ubyte.gz", gzip.compress(idx_bytes(IMAGES[:n])))
            if members:
                zf.writestr(f"{stem}-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(labels)))
    (raw / "gzip.zip").write_bytes(buffer.getvalue())
    return d


BROKEN: dict[str, Callable[[Path], Broken]] = {
    # --- the spec itself
    "unknown-form": lambda d: ("hdf5:/x", [], "expected one of: embedded", "--source"),
    "csv-one-file": lambda d: (f"csv:{d}/a.csv", [], "csv needs two files", "--source"),
    "torchvision-no-root": lambda d: ("torchvision:MNIST", [], "NAME[/SPLIT]:ROOT", "--source"),
    "npz-missing-file": lambda d: (f"npz:{d}/none.npz", [], "not a file", "--source"),
    "shape-for-npz": lambda d: (
        f"npz:{npz(d)}",
        ["--image-shape", "6x6"],
        "only a csv",
        "--image-shape",
    ),
    "name-not-utf8": lambda d: (
        csv_pair(d, good_rows())[0],
        ["--name", os.fsdecode(b"x\xff")],  # as argv carries it
        "--name x\\xff: not valid UTF-8",
        "--name",
    ),
    "classes-not-utf8": lambda d: (
        csv_pair(d, good_rows())[0],
        ["--classes", os.fsdecode(b"a,b\xff")],
        "--classes a,b\\xff: not valid UTF-8",
        "--classes",
    ),
    # --- idx
    "idx-gz-bomb": gz_bomb,
    # --- npz
    "npz-not-a-zip": lambda d: (
        f"npz:{csv_file(d, 'x.npz', 'hello')}",
        [],
        "not a readable npz",
        "x.npz",
    ),
    "npz-missing-key": lambda d: (f"npz:{_without(npz(d), 'y_test')}", [], "no y_test", "data.npz"),
    "npz-objects": lambda d: (f"npz:{_pickled(d)}", [], "holds Python objects", "obj.npz:x_train"),
    "npz-lying-header": npz_lying_header,
    "npz-float-labels": lambda d: (
        f"npz:{npz(d, y_train=LABELS.astype(float))}",
        [],
        "expected 1-D integers",
        "y_train",
    ),
    "npz-float-pixel-out-of-range": lambda d: (
        f"npz:{npz(d, x_test=np.full((4, 6, 6), 1.5))}",
        [],
        "outside [0, 1]",
        "x_test",
    ),
    "npz-int-pixel-out-of-range": lambda d: (
        f"npz:{npz(d, x_train=IMAGES.astype(np.int16) + 1)}",
        [],
        "outside 0..255",
        "x_train",
    ),
    "npz-nan": lambda d: (
        f"npz:{npz(d, x_test=np.full((4, 6, 6), np.nan))}",
        [],
        "outside [0, 1]",
        "x_test",
    ),
    "npz-count-mismatch": lambda d: (
        f"npz:{npz(d, y_train=LABELS[:11])}",
        [],
        "12 images but 11 labels",
        "y_train",
    ),
    "npz-flat-images": lambda d: (
        f"npz:{npz(d, x_train=IMAGES.reshape(12, 36))}",
        [],
        "images of shape [36]",
        "x_train",
    ),
    "npz-empty-split": lambda d: (
        f"npz:{npz(d, x_test=IMAGES[:0], y_test=LABELS[:0])}",
        [],
        "holds no images",
        "x_test",
    ),
    "npz-shapes-differ": lambda d: (
        f"npz:{npz(d, x_test=IMAGES[:4, :5])}",
        [],
        "differ in shape",
        "data.npz",
    ),
    "npz-negative-label": lambda d: (
        f"npz:{npz(d, y_test=np.array([0, 1, -1, 2]))}",
        [],
        "label -1 at index 2",
        "y_test",
    ),
    # --- csv
    "csv-kaggle-test": lambda d: (
        (
            *csv_pair(d, "pixel0,pixel1,pixel2,pixel3\n0,0,0,0\n")[:2],
            "has no label column",
            "train.csv",
        )
    ),
    "csv-ragged": lambda d: (*csv_pair(d, good_rows() + "1,0,0,0\n")[:2], "line 7", "train.csv"),
    "csv-not-a-number": lambda d: (
        (
            *csv_pair(d, good_rows() + "1,0,x,0,0\n")[:2],
            "could not convert string 'x' to float64 at line 7",
            "train.csv",
        )
    ),
    "csv-pixel-300": lambda d: (
        (*csv_pair(d, good_rows() + "1,0,300,0,0\n")[:2], "outside 0..255", "train.csv")
    ),
    "csv-float-1.5": lambda d: (
        (
            *csv_pair(d, good_rows() + "1,0,1.5,0.5,0\n")[:2],
            "floats must lie in [0, 1]",
            "train.csv",
        )
    ),
    "csv-label-inf": lambda d: (
        (*csv_pair(d, good_rows() + "inf,0,0,0,0\n")[:2], "line 7: label inf is not a", "train.csv")
    ),
    "csv-label-1e30": lambda d: (
        (*csv_pair(d, good_rows() + "1e30,0,0,0,0\n")[:2], "label 1e+30 is not a", "train.csv")
    ),
    "csv-label-256": lambda d: (
        (*csv_pair(d, good_rows() + "256,0,0,0,0\n")[:2], "label 256 is not a", "train.csv")
    ),
    "csv-labels-only": lambda d: (
        (*csv_pair(d, "0\n1\n0\n")[:2], "line 1: a label but no pixels", "train.csv")
    ),
    "csv-line-too-long": lambda d: (
        (
            *csv_pair(d, good_rows() + "1," + "0," * 2**21 + "0\n")[:2],
            "line 7 is longer than 4,194,304 characters",
            "train.csv",
        )
    ),
    "csv-float-255.0": lambda d: (
        (
            *csv_pair(d, good_rows() + "1,0.0,255.0,0.0,0.0\n")[:2],
            "line 7: pixel 255 in a file of float pixels",
            "train.csv",
        )
    ),
    "csv-label-2.5": lambda d: (
        (*csv_pair(d, good_rows() + "2.5,0,0,0,0\n")[:2], "line 7: label 2.5", "train.csv")
    ),
    "csv-mixed-kinds": lambda d: (
        (
            *csv_pair(d, good_rows() + "1,0,200,0,0\n1,0,0.5,0,0\n")[:2],
            "in a file of float pixels",
            "train.csv",
        )
    ),
    "csv-not-square": lambda d: (
        (*csv_pair(d, "0,1,2,3\n1,1,2,3\n")[:2], "3 pixels per row is not a square", "train.csv")
    ),
    "csv-header-only": lambda d: (*csv_pair(d, "label,pixel0\n")[:2], "no data rows", "train.csv"),
    "csv-empty": lambda d: (*csv_pair(d, "")[:2], "empty file", "train.csv"),
    "csv-binary": lambda d: (
        (*csv_pair(d, b"\x89PNG\r\n\xff\xfe\x00")[:2], "not a text file", "train.csv")
    ),
    "csv-shape-mismatch": lambda d: (
        csv_pair(d, good_rows())[0],
        ["--image-shape", "3x3"],
        "do not make images of [3, 3]",
        "train.csv",
    ),
    # --- image folders
    "images-no-train": lambda d: (f"images:{d}", [], "no train/ folder", str(d)),
    "images-empty-class": lambda d: (
        f"images:{_mkdir(folder(d) / 'train' / 'c')}",
        [],
        "no image files",
        "train/c",
    ),
    "images-not-an-image": lambda d: (
        f"images:{_write(folder(d) / 'train' / 'a' / '9.png', b'no png')}",
        [],
        "not an image Pillow can read",
        "train/a/9.png",
    ),
    "images-sizes-differ": lambda d: (
        f"images:{folder(d, {'test/b/0.png': (7, 6)})}",
        [],
        "7x6 pixels",
        "test/b/0.png",
    ),
    "images-test-class-unknown": lambda d: (
        f"images:{_mkdir(folder(d) / 'test' / 'z')}",
        [],
        "class 'z' has no folder",
        "test/z",
    ),
    "images-16-bit": lambda d: (
        f"images:{_save16(folder(d) / 'train' / 'b' / '7.png')}",
        [],
        "I;16",
        "train/b/7.png",
    ),
    "images-bomb": lambda d: (f"images:{_root(png_bomb(folder(d)))}", [], "claims", "bomb.png"),
    "images-bomb-pillow-warns": lambda d: (
        f"images:{_root(png_bomb(folder(d), 10000))}",
        [],
        "10000x10000 pixels, more than the 16,777,216",
        "bomb.png",
    ),
    "images-bomb-pillow-raises": lambda d: (
        f"images:{_root(png_bomb(folder(d), 20000))}",
        [],
        "more than 16,777,216 pixels",
        "bomb.png",
    ),
    "images-class-not-utf8": lambda d: (
        f"images:{_not_utf8(folder(d) / 'train' / 'b').parents[1]}",
        [],
        "class folder 'b\\xff': the name is not valid UTF-8",
        "train",
    ),
    "images-dir-not-utf8": lambda d: (
        f"images:{_not_utf8(folder(d / 'x'))}",
        [],
        "src/x\\xff: a name that is not valid UTF-8",
        "--source",
    ),
    # --- torchvision layouts
    "tv-no-raw-folder": lambda d: (f"torchvision:MNIST:{d}", [], "no such directory", "MNIST/raw"),
    "tv-emnist-no-split": lambda d: (
        f"torchvision:EMNIST:{emnist_root(d)}",
        [],
        "EMNIST needs a split",
        "--source",
    ),
    "tv-emnist-missing-member": lambda d: (
        f"torchvision:EMNIST/letters:{emnist_root(d, members=False)}",
        [],
        "has no member",
        "gzip.zip",
    ),
    "tv-emnist-letters-label-0": lambda d: (
        f"torchvision:EMNIST/letters:{emnist_root(d, letters_zero=True)}",
        [],
        "label 0",
        "emnist-letters-train-labels",
    ),
    "tv-emnist-bad-zip": lambda d: (
        f"torchvision:EMNIST/letters:{_badzip(d)}",
        [],
        "not a readable zip",
        "gzip.zip",
    ),
    "tv-mnist-with-split": lambda d: (
        f"torchvision:MNIST/x:{_tv_mnist(d)}",
        [],
        "has no splits",
        "--source",
    ),
    "tv-qmnist-bad-part": lambda d: (
        f"torchvision:QMNIST/test7:{_mkdir(d / 'QMNIST' / 'raw')}",
        [],
        "test7",
        "--source",
    ),
    "tv-other-without-torchvision": lambda d: (
        f"torchvision:CIFAR10:{d}",
        [],
        "mnist-pipeline[torchvision]",
        "CIFAR10",
    ),
}


def _paths(form: str, where: Callable[[Path, str], str], expected: str) -> Callable[[Path], Broken]:
    """A spec of `form` whose path (csv: paths) `where` makes under the test's directory."""

    def build(d: Path) -> Broken:
        return form.format(where(d, "a"), where(d, "b")), [], expected, "--source"

    return build


# every path of every form goes through one resolution: a loop, an unknown user: one line
PATH_FORMS = {"idx": "idx:{}", "npz": "npz:{}", "images": "images:{}", "csv": "csv:{},{}"}
PATH_FORMS["torchvision"] = "torchvision:MNIST:{}"
for _kind, _form in PATH_FORMS.items():
    BROKEN[f"{_kind}-symlink-loop"] = _paths(
        _form, lambda d, name: str(_loop(d, name)), "cannot resolve (Symlink loop"
    )
    BROKEN[f"{_kind}-unknown-user"] = _paths(
        _form, lambda d, name: f"~nouser-x9/{name}", "cannot resolve (Could not determine home"
    )


def _not_utf8(path: Path) -> Path:
    """`path` renamed with a byte that is not UTF-8 appended: the new path."""
    new = os.fsencode(path) + b"\xff"
    os.rename(path, new)
    return Path(os.fsdecode(new))


def _loop(d: Path, name: str) -> Path:
    """A path that is a symlink loop: d/name -> d/name.back -> d/name."""
    (d / name).symlink_to(d / f"{name}.back")
    (d / f"{name}.back").symlink_to(d / name)
    return d / name


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path.parents[1]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path.parents[2]


def _root(path: Path) -> Path:
    return path.parents[2]


def _save16(path: Path) -> Path:
    Image.fromarray(np.full((6, 6), 40000, np.uint16)).save(path)
    return path.parents[2]


def _without(path: Path, key: str) -> Path:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != key}
    np.savez(path, **arrays)
    return path


def _pickled(d: Path) -> Path:
    path = d / "obj.npz"
    objects = np.empty(12, object)
    objects[:] = [np.zeros((6, 6))] * 12
    np.savez(path, x_train=objects, y_train=LABELS, x_test=IMAGES[:4], y_test=LABELS[:4])
    return path


def _badzip(d: Path) -> Path:
    (d / "EMNIST" / "raw").mkdir(parents=True)
    (d / "EMNIST" / "raw" / "gzip.zip").write_bytes(b"PK\x03\x04 truncated")
    return d


def _tv_mnist(d: Path) -> Path:
    write_idx_dir(d / "MNIST" / "raw", (IMAGES, LABELS), (IMAGES[:4], LABELS[:4]))
    return d


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_source_is_one_line(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    spec, extra, expected, named = BROKEN[case](src)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "--out", str(out), "--source", spec, *extra])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert str(named) in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing written
