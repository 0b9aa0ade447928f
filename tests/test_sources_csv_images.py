"""CSV and image sources read as written (issue 19): a byte order mark is no header, pixels
are typed by how the file writes them, a line's memory is bounded, an image's pixels are
bounded by us, names that are not UTF-8; (tests/test_fuzz_sources.py fuzzes them).
Broken forms refused with one line are in test_sources_broken.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import sources
from pipeline.data.sources.images import MAX_PIXELS, read_image
from pipeline.errors import SourceError

# 6 images of 2x2 pixels, labels 0, 1, 2, 0, 1, 2
PIXELS = np.array([[0, 1, 128, 255], [1, 1, 0, 0], [3, 2, 1, 0]] * 2, np.uint8)
LABELS = np.arange(6) % 3


def rows(pixels: list[list[str]] | np.ndarray, labels: np.ndarray = LABELS) -> str:
    return "".join(
        f"{y}," + ",".join(map(str, p)) + "\n" for y, p in zip(labels, pixels, strict=True)
    )


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding, newline="")
    return path


def load(tmp_path: Path, train: str, encoding: str = "utf-8") -> sources.RawDataset:
    test = write(tmp_path / "test.csv", rows(PIXELS))
    return sources.load(f"csv:{write(tmp_path / 'train.csv', train, encoding)},{test}")


@pytest.mark.parametrize(
    "first",
    ["0,0,1,128,255", '"0","0","1","128","255"', " 0 ,0,1,128,255"],
    ids=["plain", "quoted", "spaced"],
)
def test_a_byte_order_mark_or_quotes_do_not_make_the_first_row_a_header(
    tmp_path: Path, first: str
) -> None:
    """Headerless files whose first row starts with a BOM (Excel's "CSV UTF-8") or a quoted
    label: every row is data."""
    text = first + "\n" + rows(PIXELS[1:], LABELS[1:])
    raw = load(tmp_path, text, encoding="utf-8-sig")
    np.testing.assert_array_equal(raw.splits["train"].images, PIXELS)
    np.testing.assert_array_equal(raw.splits["train"].labels, LABELS)
    # a header still is one, BOM or not
    raw = load(tmp_path, "label,p0,p1,p2,p3\n" + rows(PIXELS), encoding="utf-8-sig")
    np.testing.assert_array_equal(raw.splits["train"].images, PIXELS)


def test_a_first_row_missing_its_label_is_refused_not_taken_for_a_header(
    tmp_path: Path,
) -> None:
    """`,0,1,128,255`: an empty label before numbers is a broken data row, refused naming the
    file (it was taken for a header and the image silently dropped); a header whose first
    name is empty (`,p0,p1,...`) still is one."""
    with pytest.raises(SourceError, match=r"train\.csv"):
        load(tmp_path, ",0,1,128,255\n" + rows(PIXELS[1:], LABELS[1:]))
    raw = load(tmp_path, ",p0,p1,p2,p3\n" + rows(PIXELS))
    np.testing.assert_array_equal(raw.splits["train"].images, PIXELS)


def test_pixels_are_typed_by_how_they_are_written_not_by_their_values(tmp_path: Path) -> None:
    binary = PIXELS.clip(0, 1)
    # written as floats (pandas writes 1.0): floats in [0, 1], 1.0 is 255
    as_floats = [[f"{v:.1f}" for v in row] for row in binary]
    assert (
        load(tmp_path, rows(as_floats)).splits["train"].images.tolist() == (binary * 255).tolist()
    )
    # written as integers: bytes, 1 is 1
    assert load(tmp_path, rows(binary)).splits["train"].images.tolist() == binary.tolist()
    # %g writes 1.0 as 1 and 0.5 as 0.5: one float anywhere types the whole file
    g = [[f"{v:g}" for v in row] for row in binary]
    g[5][3] = "0.5"
    expected = binary * 255
    expected[5, 3] = 128  # rint(0.5 * 255)
    assert load(tmp_path, rows(g)).splits["train"].images.tolist() == expected.tolist()
    # ... also when the float comes blocks (1024 rows) after the integer-written ones
    many = np.tile(binary, (200, 1))  # 1200 rows
    text = rows(many, np.arange(1200) % 3) + "0,0.5,0,0,0\n"
    images = load(tmp_path, text).splits["train"].images
    assert images[:1200].tolist() == (many * 255).tolist() and images[1200].tolist() == [
        128,
        0,
        0,
        0,
    ]
    # floats beyond [0, 1] are refused, even whole ones, wherever they are
    with pytest.raises(SourceError, match=r"line 1: pixel 128 in a file of float pixels"):
        load(tmp_path, rows([[f"{v:.1f}" for v in row] for row in PIXELS]))
    ints = rows(np.tile(PIXELS, (171, 1))[:1024], np.arange(1024) % 3)  # one whole block
    floats = "0,0,0,0,0\n" * 3 + "0,0.5,0,0,0\n"  # the float on line 1028
    with pytest.raises(
        SourceError, match=r"line 1: pixel 255 in a file of float pixels \(line 1028"
    ):
        load(tmp_path, ints + floats)


LONG_LINE = """
import sys
from pathlib import Path
from pipeline.data import sources
from pipeline.errors import SourceError
Path("/proc/self/clear_refs").write_text("5")  # the peak RSS (VmHWM) from here on
try:
    sources.load(sys.argv[1])
except SourceError as exc:
    print(exc)
status = Path("/proc/self/status").read_text()
print(next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM")) // 1024)
"""


def test_a_long_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A 20 MB line: one line's error, the peak RSS within 40 MiB of a load that fails at once
    (before: ~14x the line, 280 MB more; a 300 MB line peaked at 6.5 GB)."""
    nothing = "csv:/nonexistent/a.csv,/nonexistent/b.csv"
    base = subprocess.run(
        [sys.executable, "-c", LONG_LINE, nothing], capture_output=True, text=True, check=True
    )
    train = tmp_path / "train.csv"
    with train.open("w") as f:
        f.write(rows(PIXELS) + "1," + "0," * 10_000_000 + "0\n")
    spec = f"csv:{train},{write(tmp_path / 'test.csv', rows(PIXELS))}"
    result = subprocess.run(
        [sys.executable, "-c", LONG_LINE, spec], capture_output=True, text=True, check=True
    )
    message, peak = result.stdout.splitlines()
    assert message == f"{train}: line 7 is longer than 4,194,304 characters; " + (
        "a row holds one image (label, then pixels)"
    )
    assert int(peak) < 40 + int(base.stdout.splitlines()[-1]), (peak, base.stdout)


def test_a_file_name_that_is_not_utf8_is_read(tmp_path: Path) -> None:
    """An image file's name is only hashed (as its bytes): it need not be UTF-8."""
    for split, count in (("train", 2), ("test", 1)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                name = os.fsencode(tmp_path / split / cls / f"{i}") + b"\xff.png"
                Image.fromarray(np.full((3, 3), 40 * i, np.uint8)).save(os.fsdecode(name))
    raw = sources.load(f"images:{tmp_path}")
    assert raw.classes == ["a", "b"] and raw.splits["train"].images.shape == (4, 9)


def test_read_image_is_one_file_to_uint8(tmp_path: Path) -> None:
    grey, rgb = np.arange(12, dtype=np.uint8).reshape(3, 4), np.zeros((3, 4, 3), np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.gif")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), grey)
    assert read_image(tmp_path / "g.png", "RGB").shape == (3, 4, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "p.gif"), rgb)
    # a header past our bound is refused before decoding
    Image.new("1", (MAX_PIXELS + 1, 1)).save(tmp_path / "wide.png")
    with pytest.raises(SourceError, match=r"wide.png: 16777217x1 pixels, more than the 16,777,216"):
        read_image(tmp_path / "wide.png")
