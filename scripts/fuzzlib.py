"""What source fuzzing needs besides the forms: a `Form`, the byte-level mutations every form
shares, and one case run through the CLI in this process, its outcome classified
(scripts/fuzz_sources.py runs the forms).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import peak_rss_mib, reset_peak_rss, rss_mib
from typer.testing import CliRunner

from pipeline.cli import app

Mutation = Callable[[bytes, random.Random], bytes]


@dataclass(frozen=True)
class Form:
    name: str
    # a good input written under a directory: the CLI's argv on it, the files to mutate
    write: Callable[[Path], tuple[list[str], list[Path]]]
    mutations: Sequence[Mutation]


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)  # ok, error, fail
    errors: Counter[str] = field(default_factory=Counter)  # error lines, numbers and paths out
    failures: list[str] = field(default_factory=list)
    peak_mib: float = 0.0  # the highest of the process's peak RSS during one case's command
    growth_mib: float = 0.0  # the most one case's command raised it above the RSS it started at
    seconds: float = 0.0


# --- mutations every form shares: bytes ------------------------------------------------------


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def interesting_byte(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    value = rng.choice(b'\x00\xff\x7f\x80\n\r,."-0e')
    return data[:at] + bytes([value]) + data[at + 1 :]


def delete_range(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[at + rng.randint(1, 64) :]


def insert_random(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]


def duplicate_range(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data) + 1)
    piece = data[start : start + rng.randint(1, 256)]
    at = rng.randrange(len(data) + 1)
    return data[:at] + piece + data[at:]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


BYTES: list[Mutation] = [
    flip_bits,
    interesting_byte,
    delete_range,
    insert_random,
    duplicate_range,
    truncate,
]


# --- running ----------------------------------------------------------------------------------


def outcome(stderr: str, exit_code: int, exception: BaseException | None, wrote: list[str]) -> str:
    """ "ok", "error: <kind>", or "fail: <why>" for anything the contract does not allow
    (`wrote`: the files the command added)."""
    if exception is not None and not isinstance(exception, SystemExit):
        return f"fail: {type(exception).__name__}: {exception}"
    if exit_code == 0:
        return "ok"
    lines = stderr.splitlines()
    if exit_code != 1 or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"fail: exit {exit_code}, stderr {stderr[-400:]!r}"
    if wrote:
        return f"fail: wrote {wrote} and failed"
    # the kind: the line without its paths and numbers
    return "error: " + re.sub(r"\S*/\S*|-?\d[\d,.e+-]*", "_", lines[0][len("error: ") :])


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir()}


def run_case(
    form: Form, template: Path, seed: int, case: int, work: Path, max_mib: float
) -> tuple[str, str, float]:
    """(outcome, what was done, how far the command raised the RSS above its start, MiB) of
    case `case`: a mutated copy, in `work`, of the form's good input under `template` (src/;
    its argv and files in case.json). Raising it by more than `max_mib` is a failure too."""
    rng = random.Random(f"{seed}:{form.name}:{case}")
    spec = json.loads((template / "case.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template / "src", work / "src", symlinks=True)
    target = work / "src" / rng.choice(spec["files"])
    data, done = target.read_bytes(), []
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(form.mutations)
        data = mutation(data, rng)
        done.append(mutation.__name__)
    target.write_bytes(data)
    argv = [a.replace(str(template / "src"), str(work / "src")) for a in spec["argv"]]
    before_files = _files(work / "src")
    reset_peak_rss()  # the peak of this command alone, not of the cases or mutations before it
    before = rss_mib()
    result = CliRunner().invoke(app, argv)
    growth = peak_rss_mib() - before
    wrote = sorted(_files(work / "src") - before_files)
    verdict = outcome(result.stderr, result.exit_code, result.exception, wrote)
    if growth > max_mib and not verdict.startswith("fail"):
        verdict = f"fail: raised the RSS by {growth:.0f} MiB, more than {max_mib:.0f}"
    return verdict, f"{target}: {done}", growth


def run_form(
    form: Form,
    count: int,
    seed: int,
    scratch: Path,
    only: int | None = None,
    max_mib: float = 300.0,
) -> Tally:
    """Cases 0..count-1 of `form` (or case `only`, its files kept) under `scratch`; a case
    whose command raises the RSS by more than `max_mib` fails."""
    template = scratch / f"{form.name}-template"
    (template / "src").mkdir(parents=True)
    argv, files = form.write(template / "src")
    names = [str(f.relative_to(template / "src")) for f in files]
    (template / "case.json").write_text(json.dumps({"argv": argv, "files": names}))
    tally, start = Tally(), time.perf_counter()
    for case in range(count) if only is None else [only]:
        work = scratch / (f"{form.name}-case-{case}" if only is not None else f"{form.name}-case")
        result, what, growth = run_case(form, template, seed, case, work, max_mib)
        tally.growth_mib = max(tally.growth_mib, growth)
        tally.peak_mib = max(tally.peak_mib, peak_rss_mib())
        kind = result.partition(":")[0]
        tally.outcomes[kind] += 1
        if kind == "error":
            tally.errors[result] += 1
        elif kind == "fail":
            tally.failures.append(f"{form.name} case {case} ({what}): {result}")
        elif only is None:
            shutil.rmtree(work)
    tally.seconds = time.perf_counter() - start
    return tally
