"""Fuzz the npz readers with mutated archives: every outcome must be exit 0, or exit 1 with
exactly one `error:` line on stderr; each case's peak RSS is measured.

    python scripts/fuzz_npz.py [--count 400] [--seed 0] [--keep DIR] [--max-rss-mb 400]

Each case is a small Keras-layout npz (x_train, y_train, x_test, y_test; stored or deflated),
mutated one of two ways, then fed to `pipeline prepare --source npz:FILE` (even cases) or
`pipeline evaluate --checkpoint FILE` (odd cases, the checkpoint reader):
    member  one .npy member rewritten and the zip rebuilt with valid CRCs, so the mutation
            reaches the readers behind zipfile: header shape/dtype/order, huge or negative label
            values of any integer dtype, flipped data bytes, a second member loading under the
            same name, a missing member, a member stored with another codec
    archive the zip's own bytes: flipped bytes, a header field (flags, method, sizes, offsets,
            name length) set to an extreme value, truncation, appended or spliced bytes
The CLI is imported once; each case runs in a forked child, whose own peak RSS `os.wait4`
reports. Prints the outcome counts, the commonest error messages and the peak RSS; exits 1 if
any case broke the rule or exceeded --max-rss-mb (its file kept under --keep).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import io
import os
import re
import shutil
import sys
import tempfile
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer.main

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEYS = ("x_train", "y_train", "x_test", "y_test")
EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
INT_DTYPES = ["<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", ">i8", ">u8"]
DESCRS = ["|u1", "<f4", "<f8", ">f8", "<i8", "<u8", "|b1", "<c16", "|O", "<U3", "|V4", "<M8[s]"]
SHAPES = ["()", "(0,)", "(12,)", "(12, 6, 6)", "(10**9, 6, 6)", "(1000000000, 6, 6)",
          "(4, 6, 6, 3)", "(2**62, 2**62)", "(-1, 6, 6)", "(12, 36)", "(12, 1)"]  # fmt: skip


@dataclass
class Outcome:
    kind: str  # "ok", "error" (exit 1, one error line) or "BROKEN"
    code: int
    stderr: str
    rss_kb: int


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def base_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = int(rng.integers(3, 13))
    images = rng.integers(0, 256, (n, 6, 6), np.uint8)
    labels = (np.arange(n) % 3).astype(np.uint8)
    return {"x_train.npy": images, "y_train.npy": labels, "x_test.npy": images[:2],
            "y_test.npy": labels[:2]}  # fmt: skip


def zip_of(members: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data, method in members:
            zf.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def mutate_member(
    rng: np.random.Generator, arrays: dict[str, np.ndarray]
) -> list[tuple[str, bytes, int]]:
    """One .npy member changed (or a name duplicated, dropped, compressed otherwise)."""
    method = int(rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    rows = [(name, npy(array), method) for name, array in arrays.items()]
    i = int(rng.integers(len(rows)))
    name, data, _ = rows[i]
    how = rng.choice(["header", "labels", "flip", "duplicate", "drop", "codec"])
    if how == "header":
        head_end = data.index(b"\n") + 1
        text = data[:head_end].decode("latin1")
        text = re.sub(r"'shape': \([^)]*\)", f"'shape': {rng.choice(SHAPES)}", text)
        text = re.sub(r"'descr': '[^']*'", f"'descr': '{rng.choice(DESCRS)}'", text)
        if rng.random() < 0.3:
            text = text.replace("False", "True")
        rows[i] = (name, text.encode("latin1") + data[head_end:], method)
    elif how == "labels":
        dtype = np.dtype(str(rng.choice(INT_DTYPES)))
        info = np.iinfo(dtype)
        values = [v for v in (info.max, info.min, 2**63, 10**12, 10**9, 256, 255, -1)
                  if info.min <= v <= info.max]  # fmt: skip
        key = str(rng.choice(["y_train.npy", "y_test.npy"]))
        n = len(arrays[key])
        labels = (np.arange(n) % 3).astype(dtype)
        labels[int(rng.integers(n))] = values[int(rng.integers(len(values)))]
        rows = [(k, npy(labels) if k == key else d, m) for k, d, m in rows]
    elif how == "flip":
        raw = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
        rows[i] = (name, bytes(raw), method)
    elif how == "duplicate":
        alias = str(rng.choice([name.removesuffix(".npy"), name]))
        rows.insert(int(rng.integers(len(rows) + 1)), (alias, data, method))
    elif how == "drop":
        del rows[i]
    else:
        rows[i] = (name, data, int(rng.choice([zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])))
    return rows


def mutate_archive(rng: np.random.Generator, data: bytes) -> bytes:
    raw = bytearray(data)
    how = rng.choice(["flip", "field", "truncate", "append", "splice"])
    if how == "flip":
        for _ in range(int(rng.integers(1, 9))):
            raw[int(rng.integers(len(raw)))] = int(rng.choice([0, 0xFF, 0x7F, 0x80, 1]))
    elif how == "field":  # a header field of a local or central record, or of the end record
        starts = [m.start() for m in re.finditer(rb"PK(\x03\x04|\x01\x02|\x05\x06)", data)]
        at = int(rng.choice(starts)) + int(rng.choice([6, 8, 10, 18, 22, 26, 28, 30, 42]))
        width = int(rng.choice([2, 4]))
        value = int(rng.choice(EXTREMES)) % (1 << (8 * width))
        raw[at : at + width] = value.to_bytes(width, "little")[: len(raw[at : at + width])]
    elif how == "truncate":
        del raw[int(rng.integers(len(raw))) :]
    elif how == "append":
        raw += rng.integers(0, 256, int(rng.integers(1, 200)), np.uint8).tobytes()
    else:
        at = int(rng.integers(len(raw)))
        raw[at:at] = raw[int(rng.integers(len(raw))) :][: int(rng.integers(1, 64))]
    return bytes(raw)


def make_case(rng: np.random.Generator) -> bytes:
    arrays = base_arrays(rng)
    if rng.random() < 0.5:
        return zip_of(mutate_member(rng, arrays))
    method = int(rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    return mutate_archive(rng, zip_of([(k, npy(a), method) for k, a in arrays.items()]))


def cli() -> Any:
    """The CLI as one click command, warmed up: both commands run once here, on a missing
    file, so that what they import and cache on a first call is there before the first fork."""
    command = typer.main.get_command(importlib.import_module("pipeline.cli").app)
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryDirectory() as tmp:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(1, 2)
        try:
            for case in (0, 1):
                call(command, target(case, Path(tmp) / "none.npz", Path(tmp)))
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    return command


def call(command: Any, argv: list[str]) -> int:
    """`pipeline ARGV` here, as `python -m pipeline` would end: its exit code (a traceback
    printed, as Python prints one, for anything escaping)."""
    try:
        command.main(args=argv, prog_name="pipeline")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_cli(command: Any, argv: list[str], work: Path) -> Outcome:
    """`pipeline ARGV` in a forked child; its exit code, stderr and own peak RSS."""
    err = work / "stderr"
    pid = os.fork()
    if pid == 0:  # the child: stdout to /dev/null, stderr to a file; never returns
        code = 1
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            code = call(command, argv)
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    text = err.read_text(errors="replace")
    lines = text.strip().splitlines()
    ok_error = code == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    kind = "ok" if code == 0 and "Traceback" not in text else "error" if ok_error else "BROKEN"
    return Outcome(kind, code, text, usage.ru_maxrss)


def target(case: int, path: Path, work: Path) -> list[str]:
    if case % 2 == 0:
        return ["prepare", "--out", str(work / "out"), "--source", f"npz:{path}"]
    return ["evaluate", "--run-dir", str(work / "run"), "--checkpoint", str(path)]


def reason(stderr: str) -> str:
    """An error line without its paths and numbers: the message's shape, for counting."""
    line = stderr.strip().splitlines()[0] if stderr.strip() else "(no output)"
    line = re.sub(r"\S*/\S*", "PATH", line)
    return re.sub(r"\d[\d,]*", "N", line)[:90]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=Path("fuzz-npz-failures"))
    parser.add_argument("--max-rss-mb", type=int, default=400)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    command = cli()
    kinds: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    peak = (0, -1)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-npz-") as tmp:
        for case in range(args.count):
            work = Path(tmp) / str(case)
            (work / "run").mkdir(parents=True)
            path = work / "case.npz"
            path.write_bytes(make_case(rng))
            outcome = run_cli(command, target(case, path, work), work)
            kinds[outcome.kind] += 1
            if outcome.kind == "error":
                reasons[reason(outcome.stderr)] += 1
            peak = max(peak, (outcome.rss_kb, case))
            if outcome.kind == "BROKEN" or outcome.rss_kb > args.max_rss_mb * 1024:
                failures += 1
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, args.keep / f"case-{case}.npz")
                tail = outcome.stderr.strip().splitlines()[-3:]
                print(f"case {case}: exit {outcome.code}, {outcome.rss_kb // 1024} MB: {tail}")
            shutil.rmtree(work)
    print(
        f"{args.count} cases (seed {args.seed}): "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    )
    for line, n in reasons.most_common(12):
        print(f"  {n:5d}  {line}")
    print(f"peak RSS {peak[0] / 1024:.0f} MB (case {peak[1]}); {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
