"""Fuzz the inputs the CLI reads: mutated files through `pipeline prepare` (csv, png, npz) and
`pipeline evaluate --checkpoint` (checkpoint), each outcome a clean success or exactly one
`error:` line (exit 1, no traceback, no warning, nothing written), within an RSS bound.

    .venv/bin/python scripts/fuzz_sources.py --count 400 --seed 0 [--form npz] [--case 17]

A form (FORMS) writes a small good input once (checkpoint: a run trained for an epoch); each
case copies it, applies one to three mutations drawn from the form's list to one of its files,
and runs its command on it in this process (typer's CliRunner). Case k of a form draws from its
own seeded generator, so `--form F --case k` replays it (and keeps its files). Prints per form
the outcome counts, the most frequent error kinds, the highest peak RSS of one case (the peak
is reset before each) and the most one case added to the RSS it started at; a case adding more
than --max-case-mib fails; exits 1 if any case failed. A new form is one more `Form` in FORMS:
a writer and its mutations (the byte-level ones, and running a case, are in fuzzlib.py; the
zip- and .npy-level ones in fuzzlib_npz.py).
"""

from __future__ import annotations

import argparse
import io
import random
import re
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from benchlib import table
from fuzzlib import BYTES, Form, flip_bits, run_form, truncate
from fuzzlib_npz import NPZ, npy_labels
from PIL import Image

from pipeline.config import TrainConfig
from pipeline.data import prepare as data_prepare
from pipeline.data import sources
from pipeline.training import trainer


def prepare(d: Path, spec: str) -> list[str]:
    return ["prepare", "--out", str(d / "out"), "--source", spec]


# --- csv: text-level mutations ----------------------------------------------------------------

TOKENS = [
    "", " ", "-1", "256", "255.0", "1e30", "-1e30", "inf", "-inf", "nan", "0.5", "1.0", "0.0",
    "1", "x", '"', '""', '"7"', "\ufeff", "1_0", "0x10", "9" * 40, "1e-400", "+0", "-0", "1,2",
]  # fmt: skip


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "surrogateescape").split("\n")


def _joined(lines: list[str]) -> bytes:
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def csv_cell(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    cells = lines[i].split(",")
    cells[rng.choice([0, rng.randrange(len(cells))])] = rng.choice(TOKENS)  # often the label
    lines[i] = ",".join(cells)
    return _joined(lines)


def csv_lines(data: bytes, rng: random.Random) -> bytes:
    """Delete, duplicate, swap, blank, widen or narrow a line."""
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    match rng.randrange(6):
        case 0:
            del lines[i]
        case 1:
            lines.insert(j, lines[i])
        case 2:
            lines[i], lines[j] = lines[j], lines[i]
        case 3:
            lines.insert(i, rng.choice(["", "  ", ",", '""']))
        case 4:
            lines[i] += ",0" * rng.randint(1, 3)
        case _:
            lines[i] = lines[i].rpartition(",")[0]
    return _joined(lines)


def csv_whole(data: bytes, rng: random.Random) -> bytes:
    """A change to the whole file: a BOM, CRLF, a header, float pixels, quotes, labels alone,
    an overlong line."""
    lines = _lines(data)
    match rng.randrange(7):
        case 0:
            return "\ufeff".encode() + data
        case 1:
            return data.replace(b"\n", b"\r\n")
        case 2:
            width = len(lines[0].split(","))
            header = rng.choice(["label", "pixel0", "a", '"label"'])
            return (
                ",".join([header] + [f"pixel{k}" for k in range(width - 1)]) + "\n"
            ).encode() + data
        case 3:  # floats as pandas or %g write them: 1.0 or 1, 0.5...
            scale = rng.choice([255.0, 1.0])
            return re.sub(rb"(?<=,)(\d+)", lambda m: repr(int(m[1]) / scale).encode(), data)
        case 4:
            return _joined([",".join(f'"{cell}"' for cell in line.split(",")) for line in lines])
        case 5:
            return _joined([line.partition(",")[0] for line in lines])
        case _:  # longer than csv.MAX_LINE_CHARS (4 MiB)
            lines[rng.randrange(len(lines))] = "1," + "0," * (2**21 + 8) + "0"
            return _joined(lines)


def write_csv(d: Path) -> tuple[list[str], list[Path]]:
    rng = np.random.default_rng(1)
    paths = []
    for split, n in (("train", 18), ("test", 6)):
        pixels = rng.integers(0, 256, (n, 16))
        rows = [f"{k % 3}," + ",".join(map(str, row)) for k, row in enumerate(pixels)]
        header = ["label," + ",".join(f"pixel{k}" for k in range(16))] if split == "train" else []
        path = d / f"digits_{split}.csv"
        path.write_text("\n".join(header + rows) + "\n")
        paths.append(path)
    return prepare(d, "csv:" + ",".join(map(str, paths))), paths


# --- png: chunk-level mutations ----------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each chunk of a well-formed PNG; [] if not one."""
    out, at = [], len(PNG_MAGIC)
    while at + 8 <= len(data) and data.startswith(PNG_MAGIC):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        out.append((kind, data[at + 8 : at + 8 + length]))
        at += 12 + length
    return out


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
        for kind, payload in chunks
    )
    return PNG_MAGIC + body


def png_header(data: bytes, rng: random.Random) -> bytes:
    """IHDR's width, height, bit depth, colour type or interlace changed, its CRC right."""
    chunks = _chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return flip_bits(data, rng)
    fields = list(struct.unpack(">IIBBBBB", chunks[0][1]))
    k = rng.randrange(7)
    if k < 2:  # a side: tiny, off by one, huge (a bomb), beyond 2^31
        fields[k] = rng.choice([0, 1, fields[k] + 1, 5000, 20000, 65535, 2**31 - 1, 2**32 - 1])
    else:
        fields[k] = rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255])
    chunks[0] = (b"IHDR", struct.pack(">IIBBBBB", *fields))
    return _png(chunks)


def png_data(data: bytes, rng: random.Random) -> bytes:
    """Image data damaged under a right CRC: bytes flipped, cut, or a chunk dropped."""
    chunks = _chunks(data)
    if not chunks:
        return truncate(data, rng)
    i = rng.randrange(len(chunks))
    kind, payload = chunks[i]
    match rng.randrange(3):
        case 0:
            chunks[i] = (kind, flip_bits(payload, rng))
        case 1:
            chunks[i] = (kind, truncate(payload, rng))
        case _:
            del chunks[i]
    return _png(chunks)


def png_other(data: bytes, rng: random.Random) -> bytes:
    """Another image in its place: another format, mode or size."""
    mode, fmt = rng.choice(
        [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("1", "PNG"), ("P", "GIF"), ("I;16", "PNG"),
         ("F", "TIFF"), ("I", "TIFF"), ("CMYK", "JPEG"), ("L", "BMP"), ("LA", "PNG")]
    )  # fmt: skip
    size = rng.choice([(6, 6), (6, 6), (7, 6), (1, 1)])
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, fmt)
    return buffer.getvalue()


def write_png(d: Path) -> tuple[list[str], list[Path]]:
    rng = np.random.default_rng(2)
    paths = []
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("a", "b", "c"):
            (d / split / cls).mkdir(parents=True)
            for k in range(n):
                path = d / split / cls / f"{k:03d}.png"
                Image.fromarray(rng.integers(0, 256, (6, 6), np.uint8)).save(path)
                paths.append(path)
    return prepare(d, f"images:{d}"), paths


# --- npz and checkpoint: zip- and .npy-level mutations (fuzzlib_npz.py) ---------------------


def write_npz(d: Path) -> tuple[list[str], list[Path]]:
    """A Keras-layout npz: x_train (12, 6, 6) uint8, y_train (12,) of 3 classes, 4 tests."""
    images = np.random.default_rng(3).integers(0, 256, (12, 6, 6), np.uint8)
    labels = (np.arange(12) % 3).astype(np.uint8)
    path = d / "digits.npz"
    np.savez(path, x_train=images, y_train=labels, x_test=images[:4], y_test=labels[:4])
    return prepare(d, f"npz:{path}"), [path]


def write_checkpoint(d: Path) -> tuple[list[str], list[Path]]:
    """A run trained for an epoch on the npz form's data; its checkpoint is mutated."""
    _, (npz,) = write_npz(d)
    raw = sources.load(f"npz:{npz}", name="digits")
    shards = data_prepare.prepare(d / "shards", raw, shard_size=8).manifest
    trainer.train(shards, d / "run", TrainConfig(hidden=(8,), epochs=1))
    (checkpoint,) = (d / "run").glob("**/*.npz")
    return ["evaluate", "--run-dir", str(d / "run"), "--checkpoint", str(checkpoint)], [checkpoint]


FORMS = [
    Form("csv", write_csv, [*BYTES, csv_cell, csv_cell, csv_lines, csv_lines, csv_whole]),
    Form("png", write_png, [*BYTES, png_header, png_header, png_data, png_data, png_other]),
    Form("npz", write_npz, [*BYTES, *NPZ, *NPZ, npy_labels, npy_labels, npy_labels]),
    Form("checkpoint", write_checkpoint, [*BYTES, *NPZ, *NPZ]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="cases per form")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--form", action="append", choices=[f.name for f in FORMS])
    parser.add_argument("--case", type=int, help="replay one case, keeping its files")
    parser.add_argument("--top", type=int, default=6, help="error kinds shown per form")
    parser.add_argument("--max-case-mib", type=float, default=300.0, help="RSS one case may add")
    args = parser.parse_args(argv)
    forms = [f for f in FORMS if not args.form or f.name in args.form]
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-sources-"))
    rows, failures = [], []
    for form in forms:
        tally = run_form(form, args.count, args.seed, scratch, args.case, args.max_case_mib)
        count = sum(tally.outcomes.values())
        rows.append(
            [form.name, str(count)]
            + [str(tally.outcomes[k]) for k in ("ok", "error", "fail")]
            + [f"{tally.peak_mib:.0f}", f"{tally.growth_mib:.0f}", f"{tally.seconds:.1f}"]
        )
        failures += tally.failures
        for kind, n in tally.errors.most_common(args.top):
            print(f"{form.name:>5} {n:5d}  {kind[:110]}")
    header = ["form", "cases", "ok", "error", "fail", "peak RSS MiB", "+ of one case", "s"]
    print(table(header, rows))
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if args.case is None and not failures:
        shutil.rmtree(scratch)
    else:
        print(f"files kept in {scratch}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
