"""npz archives and the zip and .npy reading under them (`pipeline.bounded`), on real archive
bytes the tests write: names, codecs, encryption, label values, layered compression, through
`pipeline prepare` and `pipeline evaluate --checkpoint` (tests/test_fuzz_sources.py fuzzes them).
"""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.sources import npz as npz_source
from tests.conftest import idx_bytes

ROOT = Path(__file__).resolve().parent.parent
IMAGES = np.random.default_rng(0).integers(0, 256, (12, 6, 6), np.uint8)
LABELS = (np.arange(12) % 3).astype(np.uint8)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def arrays(**changed: np.ndarray) -> dict[str, np.ndarray]:
    return {"x_train": IMAGES, "y_train": LABELS, "x_test": IMAGES[:4], "y_test": LABELS[:4]} | (
        changed
    )


def raw_zip(
    entries: list[tuple[str, bytes]],
    *,
    method: int = 0,
    flags: int = 0,
    alias: tuple[str, bytes, int] | None = None,
) -> bytes:
    """A zip written field by field (zipfile refuses to write what we need to read): each
    member stored as given, declared with `method` and general-purpose `flags`. `alias`:
    one more central entry (name, data, offset) whose record lies inside another's data."""
    body, central = b"", b""
    for name, data in [*entries, *([alias[:2]] if alias else [])]:
        crc, encoded = zlib.crc32(data), name.encode()
        fields = (flags, method, 0, 0, crc, len(data), len(data), len(encoded))
        offset = alias[2] if alias and name == alias[0] else len(body)
        central += (
            struct.pack("<4s6H3L5H2L", b"PK\1\2", 20, 20, *fields, 0, 0, 0, 0, 0, offset) + encoded
        )
        if offset == len(body):
            body += struct.pack("<4s5H3L2H", b"PK\3\4", 20, *fields, 0) + encoded + data
    count = len(entries) + (alias is not None)
    end = struct.pack("<4s4H2LH", b"PK\5\6", 0, 0, count, count, len(central), len(body), 0)
    return body + central + end


def one_line_error(args: list[str]) -> str:
    """Run the CLI in-process: exit 1, exactly one `error:` line, no traceback; that line."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def prepare_error(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "data.npz"
    path.write_bytes(data)
    out = tmp_path / "out"
    line = one_line_error(["prepare", "--out", str(out), "--source", f"npz:{path}"])
    assert str(path) in line
    assert not out.exists() or not any(out.iterdir())  # nothing written
    return line


# --- the reader itself ------------------------------------------------------------------------


def test_every_npy_layout_reads_as_numpy_reads_it(tmp_path: Path) -> None:
    """Column-major, big-endian, a version 2.0 header, deflated: the arrays numpy's own loader
    returns, bit for bit."""
    x_train = np.asfortranarray(IMAGES.astype(np.float64) / 255)
    version2 = io.BytesIO()
    np.lib.format.write_array(version2, IMAGES[:4], version=(2, 0))
    entries = {
        "x_train.npy": npy(x_train),
        "y_train.npy": npy(LABELS.astype(">i8")),
        "x_test.npy": version2.getvalue(),
        "y_test.npy": npy(LABELS[:4].astype(np.uint16)),
    }
    path = tmp_path / "layouts.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    found = npz_source.read(path, f"npz:{path}")
    with np.load(path) as expected:
        for split, (x, y) in npz_source.KEYS.items():
            for got, key in ((found.splits[split].images, x), (found.splits[split].labels, y)):
                assert got.dtype == expected[key].dtype and np.array_equal(got, expected[key])
    assert found.splits["train"].images.flags.f_contiguous


def test_a_negative_dimension_is_refused(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (-1, -6, 6)}
    )
    members = [(f"{k}.npy", npy(a)) for k, a in arrays().items() if k != "x_train"]
    data = raw_zip([("x_train.npy", header.getvalue() + bytes(36)), *members])
    assert "x_train is not the size its header says" in prepare_error(tmp_path, data)


# --- point 6: two members that load under one name -----------------------------------------


@pytest.mark.parametrize(
    "names",
    [("x_train", "x_train.npy"), ("x_train.npy", "x_train"), ("x_train.npy", "x_train.npy")],
    ids=["bare-first", "npy-first", "same-name"],
)
def test_an_array_named_twice_is_refused(tmp_path: Path, names: tuple[str, str]) -> None:
    """Today one of the two is size-checked and the other (here: other images) is trained on."""
    other = npy(np.full((12, 6, 6), 7, np.uint8))
    rest = [(f"{k}.npy", npy(a)) for k, a in arrays().items() if k != "x_train"]
    entries = [(names[0], npy(IMAGES)), *rest, (names[1], other)]
    line = prepare_error(tmp_path, raw_zip(entries))
    assert f"members {names[0]!r} and {names[1]!r} both load as 'x_train'" in line


# --- point 7: label values set no allocation; one ratio for layered compression ------------


@pytest.mark.parametrize(
    ("key", "labels", "shown"),
    [
        ("y_train", np.array([0, 1, 2, 0, 1, 10**9, 0, 1, 2, 0, 1, 2], np.int64), "1000000000"),
        ("y_train", np.array([0, 1, 2, 0, 1, 10**12, 0, 1, 2, 0, 1, 2], np.int64), "10000000000"),
        ("y_train", np.array([0, 1, 2, 0, 1, 2**63, 0, 1, 2, 0, 1, 2], np.uint64), str(2**63)),
        ("y_test", np.array([0, 1, 2**31 - 1, 2], np.int32), "2147483647"),
    ],
    ids=["1e9", "1e12", "uint64-2^63", "test-int32-max"],
)
def test_a_label_beyond_any_class_count_is_refused(
    tmp_path: Path, key: str, labels: np.ndarray, shown: str
) -> None:
    """Checked against the 256 classes shards can hold before a count is sized by it (today:
    a 1 GB peak, "out of memory (a smaller --hidden...)", or an OverflowError traceback)."""
    entries = [(f"{k}.npy", npy(a)) for k, a in arrays(**{key: labels}).items()]
    line = prepare_error(tmp_path, raw_zip(entries))
    assert f"data.npz:{key}: label {shown}" in line
    assert "is out of range: at most 256 classes are supported" in line


# `pipeline ARGS...` in a child that prints its exit code and its own peak RSS (VmHWM, MiB):
# the peak of this process image, not of the test process it was forked from (ru_maxrss
# carries that across exec)
CLI_PEAK = """
import sys
from pathlib import Path
from pipeline.cli import app
try:
    app(sys.argv[1:], prog_name="pipeline")
except SystemExit as exit:
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    print(exit.code, hwm // 1024)
"""


def test_a_huge_label_costs_no_memory(tmp_path: Path) -> None:
    """A real `pipeline prepare`: its own peak RSS (today 1 GB for a 10^9 label)."""
    path = tmp_path / "data.npz"
    labels = LABELS.astype(np.int64)
    labels[5] = 10**9
    np.savez_compressed(path, **arrays(y_train=labels))  # type: ignore[arg-type]
    args = ["prepare", "--out", str(tmp_path / "out"), "--source", f"npz:{path}"]
    child = subprocess.run(
        [sys.executable, "-c", CLI_PEAK, *args], cwd=ROOT, capture_output=True, text=True
    )
    lines = child.stderr.splitlines()
    code, peak = map(int, child.stdout.split())
    assert code == 1 and len(lines) == 1, lines
    assert "label 1000000000 at index 5 is out of range" in lines[0]
    assert peak < 300, f"peak RSS {peak} MiB"


def gz_of_zeros(head: bytes, nbytes: int) -> bytes:
    return gzip.compress(head + bytes(nbytes), compresslevel=9)


def test_layered_compression_has_one_ratio_limit(tmp_path: Path) -> None:
    """EMNIST's gzip.zip deflating a .gz: the IDX header's claim is bounded by the member's
    bytes on disk times one ratio, not times the ratio of each layer (today: 2 MB of shards
    from a ~1 KB zip; the issue's 1,360 bytes made 932 MB)."""
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    n = 3000  # 2.35 MB of 28x28 zeros, a .gz of ~2.3 KB, deflated again to ~0.1 KB
    with zipfile.ZipFile(raw / "gzip.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for part, count in (("train", n), ("test", 4)):
            stem = f"gzip/emnist-digits-{part}"
            head = bytes([0, 0, 8, 3]) + struct.pack(">3I", count, 28, 28)
            zf.writestr(f"{stem}-images-idx3-ubyte.gz", gz_of_zeros(head, count * 784))
            labels = gzip.compress(idx_bytes(np.zeros(count, np.uint8)))
            zf.writestr(f"{stem}-labels-idx1-ubyte.gz", labels)
    out = tmp_path / "out"
    line = one_line_error(
        ["prepare", "--out", str(out), "--source", f"torchvision:EMNIST/digits:{tmp_path}"]
    )
    assert "emnist-digits-train-images-idx3-ubyte.gz: claims 2,352,016 bytes" in line
    assert "more than a compressed file of" in line
    assert not out.exists() or not any(out.iterdir())


def test_members_sharing_their_bytes_are_refused(tmp_path: Path) -> None:
    """x_test's entry points inside x_train's data, which carries x_test's whole record: the
    members together claim more bytes than the archive holds (overlapping entries let one
    stream inflate many times). Today it is read, and x_train is the record's bytes."""
    x_test = npy(np.tile(IMAGES, (4, 1, 1)))  # (48, 6, 6): the shared bytes outweigh headers
    lone = raw_zip([("x_test.npy", x_test)])
    record = lone[: lone.index(b"PK\1\2")]  # its local header and data
    k = -(-len(record) // 36)
    carrier = np.frombuffer(record.ljust(36 * k, b"\0"), np.uint8).reshape(k, 6, 6)
    entries = [
        ("x_train.npy", npy(carrier)),
        ("y_train.npy", npy((np.arange(k) % 3).astype(np.uint8))),
        ("y_test.npy", npy(np.tile(LABELS, 4))),
    ]
    offset = raw_zip(entries).index(record)
    line = prepare_error(tmp_path, raw_zip(entries, alias=("x_test.npy", x_test, offset)))
    assert "data.npz: its members together: claims" in line


# --- point 9: codecs and encryption zipfile cannot read -------------------------------------


CODEC_CASES = {  # case: (method, flags, what the error says)
    "unknown-method": (99, 0, "compression method 99"),
    "bzip2": (zipfile.ZIP_BZIP2, 0, "compression method 12"),
    "encrypted": (0, 0x1, "is encrypted"),
    "strong-encryption": (0, 0x41, "is encrypted"),
    "patched-data": (0, 0x20, "compression method 0"),
}


@pytest.mark.parametrize("case", sorted(CODEC_CASES))
def test_an_unreadable_codec_is_one_line(tmp_path: Path, case: str) -> None:
    method, flags, needle = CODEC_CASES[case]
    entries = [(f"{k}.npy", npy(a)) for k, a in arrays().items()]
    assert needle in prepare_error(tmp_path, raw_zip(entries, method=method, flags=flags))


@pytest.mark.parametrize("case", ["unknown-method", "encrypted"])
def test_an_unreadable_checkpoint_is_one_line(tmp_path: Path, case: str) -> None:
    method, flags, needle = CODEC_CASES[case]
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(raw_zip([("w0.npy", npy(np.zeros((4, 2))))], method=method, flags=flags))
    run = tmp_path / "run"
    run.mkdir()
    line = one_line_error(["evaluate", "--run-dir", str(run), "--checkpoint", str(path)])
    assert str(path) in line and needle in line
