"""Every source form on real files the tests write: the same MNIST images stored as IDX, npz,
CSV, a PNG folder and torchvision's layouts read back as the same arrays and prepare to the
same content; RGB and odd sizes; every broken form refused with one line naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data import open_set, prepare, sources
from pipeline.data.sources import torchvision as tv
from pipeline.errors import ConfigError, SourceError
from tests.conftest import idx_bytes, write_idx_dir

TRAIN, TEST = 300, 100


@pytest.fixture(scope="module")
def few(real_mnist: sources.RawDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """300 train and 100 test real MNIST images: (n, 28, 28) uint8 and (n,) uint8 labels."""
    train, test = real_mnist.splits["train"], real_mnist.splits["test"]
    return {
        "train": (train.images[:TRAIN].reshape(-1, 28, 28), train.labels[:TRAIN]),
        "test": (test.images[:TEST].reshape(-1, 28, 28), test.labels[:TEST]),
    }


# --- writers: the forms users arrive with ---------------------------------------------------


def write_npz(path: Path, data: dict[str, tuple[np.ndarray, np.ndarray]], **extra: object) -> Path:
    arrays = {}
    for split, (images, labels) in data.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
    np.savez_compressed(path, **arrays, **extra)  # type: ignore[arg-type]
    return path


def write_csv(
    directory: Path,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    header: bool,
    floats: bool = False,
) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, (images, labels) in data.items():
        flat = images.reshape(len(images), -1)
        lines = []
        if header:
            lines.append(",".join(["label"] + [f"pixel{i}" for i in range(flat.shape[1])]))
        for label, row in zip(labels, flat, strict=True):
            cells = [repr(float(v) / 255) for v in row] if floats else [str(v) for v in row]
            lines.append(",".join([str(label), *cells]))
        path = directory / f"mnist_{split}.csv"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return "csv:" + ",".join(paths)


def write_folder(
    directory: Path,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: list[str],
    suffix: str = ".png",
) -> Path:
    """torchvision's ImageFolder layout; files named by their index keep the original order."""
    for split, (images, labels) in data.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = directory / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}{suffix}")
    return directory


def write_torchvision(root: Path, name: str, files: dict[str, bytes]) -> Path:
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        (raw / file).write_bytes(gzip.compress(data, mtime=0) if file.endswith(".gz") else data)
    return root


def mnist_files(data: dict[str, tuple[np.ndarray, np.ndarray]], *, gz: bool) -> dict[str, bytes]:
    files = {}
    for split, (images, labels) in data.items():
        image_stem, label_stem = sources.SPLIT_FILES[split]
        suffix = ".gz" if gz else ""
        files[image_stem + suffix], files[label_stem + suffix] = (
            idx_bytes(images),
            idx_bytes(labels),
        )
    return files


def assert_same(raw: sources.RawDataset, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for split, (images, labels) in data.items():
        np.testing.assert_array_equal(raw.splits[split].images, images.reshape(len(images), -1))
        np.testing.assert_array_equal(raw.splits[split].labels, labels)
        assert raw.splits[split].images.dtype == raw.splits[split].labels.dtype == np.uint8


def stored(out: Path) -> dict[str, tuple[str, str]]:
    """Per split, what a model would see: sha256 of all images and of all targets, in order."""
    import h5py

    manifest = open_set(out)
    content = {}
    for split, info in manifest.splits.items():
        images, targets = hashlib.sha256(), hashlib.sha256()
        for shard in info.shards:
            with h5py.File(manifest.path(shard), "r") as f:
                images.update(f["images"][:].tobytes())
                targets.update(f["targets"][:].tobytes())
        content[split] = (images.hexdigest(), targets.hexdigest())
    return content


# --- the same images in every form ------------------------------------------------------------


def test_every_form_gives_the_same_arrays_and_the_same_shards(tmp_path: Path, few) -> None:
    digits = [str(d) for d in range(10)]
    specs = {
        "idx": f"idx:{write_idx_dir(tmp_path / 'idx', few['train'], few['test'])}",
        "npz": f"npz:{write_npz(tmp_path / 'digits.npz', few)}",
        "npz-float32": "npz:"
        + str(
            write_npz(
                tmp_path / "f32.npz",
                {s: (i.astype(np.float32) / 255, y) for s, (i, y) in few.items()},
            )
        ),
        "npz-float64-channel": "npz:"
        + str(
            write_npz(
                tmp_path / "f64.npz", {s: (i[..., None] / 255.0, y) for s, (i, y) in few.items()}
            )
        ),
        "csv": write_csv(tmp_path / "csv", few, header=False),
        "csv-kaggle-header": write_csv(tmp_path / "kaggle", few, header=True),
        "csv-floats": write_csv(tmp_path / "csvf", few, header=False, floats=True),
        "png": f"images:{write_folder(tmp_path / 'png', few, digits)}",
        "torchvision": "torchvision:MNIST:"
        + str(write_torchvision(tmp_path / "tv", "MNIST", mnist_files(few, gz=True))),
    }
    contents, identities = {}, {}
    for form, spec in specs.items():
        raw = sources.load(spec)
        assert raw.classes == digits, form
        assert raw.image_shape == (28, 28), form
        assert_same(raw, few)
        out = tmp_path / f"shards-{form}"
        identities[form] = prepare.prepare(out, raw, shard_size=128).manifest.identity
        contents[form] = stored(out)
    assert all(c == contents["idx"] for c in contents.values())
    # the content identity runs and reports record: one set, whatever form it came in
    assert set(identities.values()) == {identities["idx"]}, identities


def test_names_come_from_the_source(tmp_path: Path, few) -> None:
    assert sources.load(f"npz:{write_npz(tmp_path / 'mnist.npz', few)}").name == "mnist"
    assert sources.load(write_csv(tmp_path / "c", few, header=False)).name == "mnist"
    folder = write_folder(tmp_path / "letters", few, list("abcdefghij"))
    raw = sources.load(f"images:{folder}")
    assert (raw.name, raw.classes) == ("letters", list("abcdefghij"))
    named = sources.load(f"images:{folder}", name="x", classes=[str(d) for d in range(10)])
    assert (named.name, named.classes[0]) == ("x", "0")
    classes = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "8", "9"])
    npz = write_npz(tmp_path / "named.npz", few, classes=classes)
    assert sources.load(f"npz:{npz}").classes[:2] == ["zero", "one"]


# --- torchvision's layouts ----------------------------------------------------------------------


def test_torchvision_mnist_family_and_fashion_from_raw_idx(tmp_path: Path, few) -> None:
    """Plain and gzipped copies side by side, as a torchvision download leaves them."""
    files = mnist_files(few, gz=True) | mnist_files(few, gz=False)
    root = write_torchvision(tmp_path, "FashionMNIST", files)
    write_torchvision(tmp_path, "KMNIST", files)
    raw = sources.load(f"torchvision:FashionMNIST:{root}")
    assert (raw.name, raw.classes) == ("fashionmnist", tv.FASHION_CLASSES)
    assert raw.source == f"torchvision:FashionMNIST:{root.resolve()}"
    assert_same(raw, few)
    kmnist = sources.load(f"torchvision:kmnist:{root}")  # the name in any case
    assert (kmnist.name, kmnist.classes[:2]) == ("kmnist", ["o", "ki"])


@pytest.mark.parametrize("split", ["balanced", "letters", "byclass"])
@pytest.mark.parametrize("packed", [False, True], ids=["extracted", "gzip.zip"])
def test_torchvision_emnist(tmp_path: Path, few, split: str, packed: bool) -> None:
    """EMNIST stores images transposed; letters' labels run 1..26. Read from extracted files
    or straight from the downloaded gzip.zip."""
    offset = 1 if split == "letters" else 0
    files = {}
    for part, (images, labels) in few.items():
        stem = f"emnist-{split}-{part}"
        files[f"{stem}-images-idx3-ubyte.gz"] = idx_bytes(images.transpose(0, 2, 1).copy())
        files[f"{stem}-labels-idx1-ubyte.gz"] = idx_bytes(labels + np.uint8(offset))
    if packed:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data in files.items():
                zf.writestr(f"gzip/{name}", gzip.compress(data, mtime=0))
        files = {"gzip.zip": buffer.getvalue()}
    root = write_torchvision(tmp_path, "EMNIST", files)
    raw = sources.load(f"torchvision:EMNIST/{split}:{root}")
    assert raw.name == f"emnist-{split}"
    assert raw.classes == tv.EMNIST_CLASSES[split]
    assert len(raw.classes) == {"balanced": 47, "letters": 26, "byclass": 62}[split]
    assert_same(raw, few)  # upright again, labels from 0


def test_torchvision_qmnist_label_rows(tmp_path: Path, few) -> None:
    files = {}
    for part, (images, labels) in few.items():
        rows = np.zeros((len(labels), 8), ">i4")
        rows[:, 0], rows[:, 5] = labels, 99  # column 0 is the class; the rest is provenance
        header = bytes([0, 0, 0x0C, 2]) + np.array(rows.shape, ">u4").tobytes()
        files[f"qmnist-{part}-images-idx3-ubyte.gz"] = idx_bytes(images)
        files[f"qmnist-{part}-labels-idx2-int.gz"] = header + rows.tobytes()
    root = write_torchvision(tmp_path, "QMNIST", files)
    assert_same(sources.load(f"torchvision:QMNIST:{root}"), few)
    first = sources.load(f"torchvision:QMNIST/test10k:{root}")
    assert first.name == "qmnist-test10k"
    assert_same(first, few)  # the first 10,000 of the test file: here all 100
    with pytest.raises(SourceError, match="the test split holds no images"):
        sources.load(f"torchvision:QMNIST/test50k:{root}")  # the rest: nothing here


# --- colour, sizes and the val split -------------------------------------------------------------


def test_rgb_images_and_odd_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = {
        "train": (
            rng.integers(0, 256, (40, 8, 12, 3), np.uint8),
            np.arange(40, dtype=np.uint8) % 4,
        ),
        "test": (rng.integers(0, 256, (8, 8, 12, 3), np.uint8), np.arange(8, dtype=np.uint8) % 4),
    }
    folder = write_folder(tmp_path / "rgb", data, ["a", "b", "c", "d"])
    raw = sources.load(f"images:{folder}")
    assert raw.image_shape == (8, 12, 3)
    assert_same(raw, {s: (i.reshape(len(i), -1), y) for s, (i, y) in data.items()})
    npz = sources.load(f"npz:{write_npz(tmp_path / 'rgb.npz', data)}")
    assert npz.image_shape == (8, 12, 3)
    assert_same(npz, data)
    spec = write_csv(tmp_path / "csv", data, header=True)
    assert_same(sources.load(spec, image_shape=(8, 12, 3)), data)


def test_a_grey_image_among_colour_ones_is_read_as_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (6, 5, 5, 3), np.uint8)
    folder = write_folder(
        tmp_path / "mixed",
        {"train": (colour, np.arange(6) % 2), "test": (colour[:2], np.arange(2))},
        ["x", "y"],
    )
    grey = rng.integers(0, 256, (5, 5), np.uint8)
    Image.fromarray(grey).save(folder / "train" / "x" / "zz.png")
    raw = sources.load(f"images:{folder}")
    last = raw.splits["train"].images[-1].reshape(5, 5, 3)
    assert raw.image_shape == (5, 5, 3)
    assert (last == grey[..., None]).all()


def test_val_split_is_stratified_deterministic_and_disjoint(tmp_path: Path, few) -> None:
    spec = f"idx:{write_idx_dir(tmp_path / 'idx', few['train'], few['test'])}"
    raw = sources.load(spec, val_fraction=0.2)
    train, val = raw.splits["train"], raw.splits["val"]
    counts = np.bincount(few["train"][1], minlength=10)
    np.testing.assert_array_equal(
        np.bincount(val.labels, minlength=10), np.floor(counts * 0.2 + 0.5).astype(int)
    )
    assert len(train.labels) + len(val.labels) == TRAIN
    # together they are the original train split, each part in file order
    rows = {r.tobytes() for r in few["train"][0].reshape(TRAIN, -1)}
    assert {r.tobytes() for r in (*train.images, *val.images)} == rows
    again = sources.load(spec, val_fraction=0.2)
    np.testing.assert_array_equal(again.splits["val"].images, val.images)
    np.testing.assert_array_equal(raw.splits["test"].images, few["test"][0].reshape(TEST, -1))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001])
def test_bad_val_fraction(tmp_path: Path, few, fraction: float) -> None:
    raw = sources.load(f"idx:{write_idx_dir(tmp_path / 'idx', few['train'], few['test'])}")
    with pytest.raises(ConfigError) as info:
        sources.carve_val(raw, fraction)
    assert (info.value.param, info.value.value) == ("val_fraction", fraction)


def test_fashion_mnist_through_idx_and_torchvision_layout_is_one_set(tmp_path: Path) -> None:
    """Debian's Fashion-MNIST as it is, and the same files in torchvision's layout (a
    download's .gz files beside their extracted copies): one name, classes and content."""
    fashion = Path("/usr/share/datasets/fashion-mnist")
    assert fashion.is_dir(), "install it: apt-get install -y dataset-fashion-mnist"
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for file in fashion.iterdir():
        (raw / file.name).symlink_to(file)
        (raw / file.stem).write_bytes(gzip.decompress(file.read_bytes()))
    outs = {}
    for form, spec in (("idx", f"idx:{fashion}"), ("tv", f"torchvision:FashionMNIST:{tmp_path}")):
        result = CliRunner().invoke(
            app, ["prepare", "--out", str(tmp_path / form), "--source", spec]
        )
        assert result.exit_code == 0, result.stderr
        outs[form] = open_set(tmp_path / form)
    assert outs["idx"].name == outs["tv"].name == "fashionmnist"
    assert outs["idx"].classes == outs["tv"].classes == tv.FASHION_CLASSES
    assert outs["idx"].split("train").label_histogram == [6000] * 10
    assert stored(tmp_path / "idx") == stored(tmp_path / "tv")
    assert outs["idx"].identity == outs["tv"].identity


def test_csv_with_quotes_crlf_and_blank_lines_reads_the_same(tmp_path: Path, few) -> None:
    plain = write_csv(tmp_path / "plain", few, header=True)
    paths = []
    for path in plain.removeprefix("csv:").split(","):
        lines = Path(path).read_text().splitlines()
        quoted = [",".join(f'"{cell}"' for cell in line.split(",")) for line in lines]
        target = tmp_path / Path(path).name
        target.write_bytes(("\r\n".join([*quoted[:5], "", *quoted[5:]]) + "\r\n").encode())
        paths.append(str(target))
    assert_same(sources.load("csv:" + ",".join(paths)), few)
