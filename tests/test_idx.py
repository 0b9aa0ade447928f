"""The IDX reader and the sources: real IDX bytes written by the tests, good and broken.

Every broken input must raise the specific exception (IdxFormatError for malformed content,
SourceError for missing or unusable sources) with a message naming the file or option.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import sources
from pipeline.data.sources import idx
from pipeline.errors import IdxFormatError, SourceError
from tests.conftest import SHARED_MNIST, idx_bytes, random_split, write_idx_dir

IMAGES, LABELS = sources.SPLIT_FILES["train"]
TEST_IMAGES, TEST_LABELS = sources.SPLIT_FILES["test"]


def header(type_code: int, dims: tuple[int, ...]) -> bytes:
    """An IDX header written by hand: two zero bytes, type code, dimension count, sizes."""
    return struct.pack(">BBBB", 0, 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@pytest.fixture
def good_dir(tmp_path: Path) -> Path:
    """A valid raw (uncompressed) source: 40 train and 12 test 28x28 images."""
    rng = np.random.default_rng(3)
    return write_idx_dir(tmp_path / "src", random_split(rng, 40), random_split(rng, 12), gz=False)


def replace_file(directory: Path, stem: str, data: bytes, *, gz: bool) -> Path:
    """Put `data` under `stem` (replacing a .gz or raw copy already there); return its path."""
    for old in (directory / stem, directory / f"{stem}.gz"):
        old.unlink(missing_ok=True)
    path = directory / (f"{stem}.gz" if gz else stem)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def load_raises(directory: Path, error: type[Exception], named: Path | str) -> str:
    """Load `directory` as a source; it must raise `error` naming `named`; return the message."""
    with pytest.raises(error) as info:
        sources.load(f"idx:{directory}")
    assert type(info.value) is error
    message = str(info.value)
    assert str(named) in message, message
    assert "\n" not in message
    return message


# --- good files -----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_good_source_reads_back_exactly(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(11)
    train, test = random_split(rng, 50), random_split(rng, 20)
    directory = write_idx_dir(tmp_path / "digits", train, test, gz=gz)

    raw = sources.load(f"idx:{directory}")

    assert raw.name == "digits"
    assert raw.classes == [str(d) for d in range(10)]
    assert raw.source == f"idx:{directory.resolve()}"
    assert raw.image_shape == (28, 28)
    for split, (images, labels) in (("train", train), ("test", test)):
        assert raw.splits[split].images.dtype == np.uint8
        np.testing.assert_array_equal(raw.splits[split].images, images.reshape(len(images), -1))
        np.testing.assert_array_equal(raw.splits[split].labels, labels)
    # each input file with the sha256 and length of its decompressed content
    expected = {
        stem + (".gz" if gz else ""): idx_bytes(array)
        for stem, array in (
            (IMAGES, train[0]),
            (LABELS, train[1]),
            (TEST_IMAGES, test[0]),
            (TEST_LABELS, test[1]),
        )
    }
    assert {f.name: (f.sha256, f.bytes) for f in raw.files} == {
        name: (hashlib.sha256(data).hexdigest(), len(data)) for name, data in expected.items()
    }


def test_parse_returns_big_endian_arrays_of_every_type_code() -> None:
    values = np.array([[1, -2, 3], [-4, 5, -6]])
    for code, dtype in idx.IDX_DTYPES.items():
        data = (values.clip(0) if np.dtype(dtype).kind == "u" else values).astype(dtype)
        array = idx.parse(header(code, (2, 3)) + data.tobytes(), "x")
        np.testing.assert_array_equal(array, data)
        assert array.dtype == np.dtype(dtype)


def test_class_names_and_dataset_name_can_be_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    directory = write_idx_dir(
        tmp_path / "three", random_split(rng, 30, classes=3), random_split(rng, 9, classes=3)
    )
    raw = sources.load(f"idx:{directory}", name="tri", classes=["a", "b", "c"])
    assert (raw.name, raw.classes) == ("tri", ["a", "b", "c"])


def test_fashion_mnist_directory_name_selects_its_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    directory = write_idx_dir(
        tmp_path / "fashion-mnist", random_split(rng, 20), random_split(rng, 5)
    )
    raw = sources.load(f"idx:{directory}")
    assert raw.name == "fashionmnist"  # the canonical name, as torchvision:FashionMNIST gives
    assert raw.classes[0] == "T-shirt/top"
    assert raw.classes[9] == "Ankle boot"


# --- broken IDX content ---------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_wrong_magic(good_dir: Path, gz: bool) -> None:
    data = bytearray(idx_bytes(np.zeros((40, 28, 28), np.uint8)))
    data[0] = 0x01  # the first two bytes must be zero
    path = replace_file(good_dir, IMAGES, bytes(data), gz=gz)
    message = load_raises(good_dir, IdxFormatError, path)
    assert "magic" in message


def test_unknown_type_code(good_dir: Path) -> None:
    path = replace_file(good_dir, IMAGES, header(0x07, (40, 28, 28)) + bytes(40 * 784), gz=False)
    assert "0x00000703" in load_raises(good_dir, IdxFormatError, path)


def test_header_shorter_than_four_bytes(good_dir: Path) -> None:
    path = replace_file(good_dir, LABELS, b"\x00\x00", gz=False)
    assert "too short" in load_raises(good_dir, IdxFormatError, path)


def test_header_cut_inside_the_dimension_sizes(good_dir: Path) -> None:
    path = replace_file(good_dir, IMAGES, header(0x08, (40, 28, 28))[:9], gz=False)
    load_raises(good_dir, IdxFormatError, path)


def test_zero_dimensions(good_dir: Path) -> None:
    path = replace_file(good_dir, LABELS, b"\x00\x00\x08\x00", gz=False)
    load_raises(good_dir, IdxFormatError, path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_truncated_data(good_dir: Path, gz: bool) -> None:
    """One byte short: an error, never a dataset one image (or one pixel) shorter."""
    images, _ = random_split(np.random.default_rng(1), 40)
    path = replace_file(good_dir, IMAGES, idx_bytes(images)[:-1], gz=gz)
    message = load_raises(good_dir, IdxFormatError, path)
    assert "truncated" in message


def test_truncated_gzip_stream(good_dir: Path) -> None:
    """A .gz file cut short (an interrupted download): the gzip stream itself is incomplete."""
    images, _ = random_split(np.random.default_rng(1), 40)
    stream = gzip.compress(idx_bytes(images), mtime=0)
    path = good_dir / f"{IMAGES}.gz"
    (good_dir / IMAGES).unlink()
    path.write_bytes(stream[: len(stream) // 2])
    message = load_raises(good_dir, IdxFormatError, path)
    assert "gzip" in message


def test_file_that_is_not_gzip_under_a_gz_name(good_dir: Path) -> None:
    (good_dir / LABELS).unlink()
    path = good_dir / f"{LABELS}.gz"
    path.write_bytes(b"this is not a gzip stream at all")
    load_raises(good_dir, IdxFormatError, path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_trailing_bytes(good_dir: Path, gz: bool) -> None:
    labels = np.zeros(40, np.uint8)
    path = replace_file(good_dir, LABELS, idx_bytes(labels) + b"\x00", gz=gz)
    assert "trailing" in load_raises(good_dir, IdxFormatError, path)


def test_header_sizes_whose_product_overflows_int64(good_dir: Path) -> None:
    """65536**4 wraps to 0 in int64: the length check must still see an impossible size."""
    path = replace_file(good_dir, IMAGES, header(0x08, (65536,) * 4), gz=False)
    load_raises(good_dir, IdxFormatError, path)


@pytest.mark.parametrize("shape", [(40, 784), (40, 28, 28, 1)], ids=["2-D", "4-D"])
def test_images_that_are_not_3d(good_dir: Path, shape: tuple[int, ...]) -> None:
    path = replace_file(good_dir, IMAGES, idx_bytes(np.zeros(shape, np.uint8)), gz=True)
    message = load_raises(good_dir, IdxFormatError, path)
    assert f"{len(shape)}-D" in message


def test_images_that_are_not_unsigned_bytes(good_dir: Path) -> None:
    data = header(0x0C, (40, 28, 28)) + np.zeros((40, 28, 28), ">i4").tobytes()
    path = replace_file(good_dir, IMAGES, data, gz=False)
    assert "found 3-D >i4" in load_raises(good_dir, IdxFormatError, path)


def test_images_without_pixels(good_dir: Path) -> None:
    path = replace_file(good_dir, IMAGES, header(0x08, (40, 0, 28)), gz=False)
    assert "no pixels" in load_raises(good_dir, IdxFormatError, path)


@pytest.mark.parametrize("shape", [(40, 1), (1, 40)], ids=["column", "row"])
def test_labels_with_two_dimensions(good_dir: Path, shape: tuple[int, ...]) -> None:
    path = replace_file(good_dir, LABELS, idx_bytes(np.zeros(shape, np.uint8)), gz=False)
    assert "2-D" in load_raises(good_dir, IdxFormatError, path)


def test_labels_that_are_not_unsigned_bytes(good_dir: Path) -> None:
    data = header(0x0B, (40,)) + np.zeros(40, ">i2").tobytes()
    path = replace_file(good_dir, LABELS, data, gz=False)
    load_raises(good_dir, IdxFormatError, path)


@pytest.mark.parametrize("n_labels", [39, 41])
def test_image_and_label_counts_disagree(good_dir: Path, n_labels: int) -> None:
    replace_file(good_dir, LABELS, idx_bytes(np.zeros(n_labels, np.uint8)), gz=False)
    message = load_raises(good_dir, IdxFormatError, good_dir / IMAGES)
    assert f"40 images but {LABELS} has {n_labels} labels" in message


def test_out_of_range_label(good_dir: Path) -> None:
    labels = np.zeros(12, np.uint8)
    labels[7] = 10  # ten classes: 0..9
    path = replace_file(good_dir, TEST_LABELS, idx_bytes(labels), gz=True)
    with pytest.raises(SourceError) as info:
        sources.load(f"idx:{good_dir}", classes=[str(d) for d in range(10)])
    assert f"{path}: label 10 at index 7 is out of range for 10 classes" in str(info.value)


def test_unnamed_classes_follow_the_largest_label(tmp_path: Path) -> None:
    """An IDX directory of no known dataset: its classes are named by their label numbers,
    and a label that leaves a class without train samples is taken for corruption."""
    images = np.zeros((39, 28, 28), np.uint8)
    train = (images, (np.arange(39) % 13).astype(np.uint8))
    test = (images[:5], np.array([0, 12, 3, 4, 5], np.uint8))
    directory = write_idx_dir(tmp_path / "raw", train, test)
    raw = sources.load(f"idx:{directory}")
    assert raw.classes == [str(k) for k in range(13)]
    assert raw.name == tmp_path.name  # "raw" names nothing: the parent folder does

    labels = train[1].copy()
    labels[labels == 7] = 6  # class 7 gone: label 8 now skips over it
    path = replace_file(directory, LABELS, idx_bytes(labels), gz=False)
    message = load_raises(directory, SourceError, path)
    assert "label 8 at index 8 leaves class 7 without a train sample" in message


def test_label_out_of_range_for_fewer_classes(good_dir: Path) -> None:
    """The range follows the class names given, not a fixed ten."""
    with pytest.raises(SourceError, match=re.escape(str(good_dir / LABELS))):
        sources.load(f"idx:{good_dir}", classes=["a", "b", "c"])


def test_empty_split(good_dir: Path) -> None:
    replace_file(good_dir, TEST_IMAGES, idx_bytes(np.zeros((0, 28, 28), np.uint8)), gz=False)
    replace_file(good_dir, TEST_LABELS, idx_bytes(np.zeros(0, np.uint8)), gz=False)
    assert "no images" in load_raises(good_dir, SourceError, good_dir / TEST_IMAGES)


def test_train_and_test_image_shapes_differ(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    directory = write_idx_dir(
        tmp_path / "mixed", random_split(rng, 20), random_split(rng, 5, shape=(14, 14))
    )
    assert "differ in shape" in load_raises(directory, SourceError, directory)


# --- missing or unusable sources ------------------------------------------------------------


@pytest.mark.parametrize("stem", [IMAGES, LABELS, TEST_IMAGES, TEST_LABELS])
def test_missing_idx_file(good_dir: Path, stem: str) -> None:
    (good_dir / stem).unlink()
    message = load_raises(good_dir, SourceError, good_dir)
    assert f"missing IDX file {stem}" in message


def test_idx_file_that_is_a_directory_counts_as_missing(good_dir: Path) -> None:
    (good_dir / LABELS).unlink()
    (good_dir / LABELS).mkdir()
    assert f"missing IDX file {LABELS}" in load_raises(good_dir, SourceError, good_dir)


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match=re.escape(str(missing))) as info:
        sources.load(f"idx:{missing}")
    assert type(info.value) is SourceError
    assert info.value.param == "source"


def test_source_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_bytes(b"")
    with pytest.raises(SourceError, match="not a directory"):
        sources.load(f"idx:{file}")


@pytest.mark.parametrize("spec", ["idx:", "idx", "hdf5:/data", "/data/mnist", "Embedded"])
def test_bad_source_spec(spec: str) -> None:
    with pytest.raises(SourceError, match="expected one of: embedded, idx:DIR") as info:
        sources.load(spec)
    assert type(info.value) is SourceError
    assert (info.value.param, info.value.value) == ("source", spec)


@pytest.mark.parametrize("classes", [["only"], ["a", "b", "a"]], ids=["one", "duplicate"])
def test_bad_class_names(good_dir: Path, classes: list[str]) -> None:
    with pytest.raises(SourceError, match="distinct class names") as info:
        sources.load(f"idx:{good_dir}", classes=classes)
    assert info.value.param == "classes"


# --- the embedded MNIST ---------------------------------------------------------------------


def shared_readme_md5() -> dict[str, str]:
    """The md5 table of ../shared/datasets/README.md: file (without .gz) -> md5."""
    text = (SHARED_MNIST.parent / "README.md").read_text()
    rows = re.findall(r"^\| ([\w-]+)\.gz \| [\d,]+ \| ([0-9a-f]{32}) \|$", text, re.MULTILINE)
    return dict(rows)


def test_embedded_checksums_match_the_shared_copy_and_its_readme() -> None:
    md5 = shared_readme_md5()
    assert sorted(md5) == sorted(sources.EMBEDDED_SHA256)
    for stem, sha in sources.EMBEDDED_SHA256.items():
        shared = gzip.decompress((SHARED_MNIST / f"{stem}.gz").read_bytes())
        embedded = gzip.decompress((sources.EMBEDDED_DIR / f"{stem}.gz").read_bytes())
        assert embedded == shared
        assert hashlib.sha256(shared).hexdigest() == sha
        assert hashlib.md5(shared).hexdigest() == md5[stem]


def test_embedded_mnist_loads(real_mnist: sources.RawDataset) -> None:
    assert real_mnist.name == "mnist"
    assert real_mnist.source == "embedded"
    assert real_mnist.image_shape == (28, 28)
    assert {s: len(d.images) for s, d in real_mnist.splits.items()} == {
        "train": 60_000,
        "test": 10_000,
    }
    assert {f.name: f.sha256 for f in real_mnist.files} == {
        f"{stem}.gz": sha for stem, sha in sources.EMBEDDED_SHA256.items()
    }
    assert sources.load("embedded").files == real_mnist.files


def test_damaged_embedded_mnist_fails_its_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid IDX file with one label changed (still in range): only the checksum can tell."""
    copy = tmp_path / "embedded"
    shutil.copytree(sources.EMBEDDED_DIR, copy)
    target = copy / f"{LABELS}.gz"
    data = bytearray(gzip.decompress(target.read_bytes()))
    data[8 + 100] = (data[8 + 100] + 1) % 10
    target.chmod(0o644)
    target.write_bytes(gzip.compress(bytes(data), mtime=0))
    assert idx.parse(bytes(data), "still a valid IDX file").max() < 10

    monkeypatch.setattr(sources, "EMBEDDED_DIR", copy)
    with pytest.raises(SourceError, match=re.escape(str(target))) as info:
        sources.load(None)
    assert "checksum mismatch" in str(info.value)
    # streamed (predict --source embedded): refused before any sample is handed out
    with (
        pytest.raises(SourceError, match="checksum mismatch"),
        sources.stream(None, "train", 100) as found,
    ):
        next(found.chunks)

    # the same files as an ordinary idx: source are accepted: the checksums are MNIST's only
    assert sources.load(f"idx:{copy}").splits["train"].labels[100] == data[8 + 100]
