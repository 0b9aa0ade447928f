"""Benchmark the prepare stage: the full embedded MNIST (train and test) with each compression.

For each setting a fresh Python process loads the embedded MNIST, prepares it into a temporary
directory and reports its wall times and peak memory (peak RSS, so earlier settings cannot
inflate later ones); it then reads the train split back in blocks of rows, as the loader does,
and reports samples/s (the shards were just written, so the page cache is warm: this measures
decoding, not the disk). The results are printed side by side in one table.

    python scripts/bench_prepare.py [--compression none --compression lzf ...] [--block 4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import peak_rss_mib

from pipeline.data import Compression
from pipeline.data.prepare import DEFAULT_SHARD_SIZE

DEFAULT_COMPRESSION = "none"  # what `pipeline prepare` uses without --compression
LIMIT_SECONDS = 10.0  # the bound for a default prepare of the full MNIST


def child(compression: str, shard_size: int, block: int, out: Path) -> dict[str, Any]:
    """One setting, in its own process: load, prepare, measure, read back."""
    from pipeline.data import prepare, shards, sources

    base = peak_rss_mib()  # the interpreter with numpy and h5py imported
    started = time.perf_counter()
    raw = sources.load(None)
    loaded = time.perf_counter()
    result = prepare.prepare(out, raw, shard_size=shard_size, compression=compression)
    written = time.perf_counter()
    peak = peak_rss_mib()
    manifest = result.manifest
    total_bytes = sum(s.bytes for split in manifest.splits.values() for s in split.shards)

    samples = 0
    read_started = time.perf_counter()
    for shard in manifest.split("train").shards:
        path = manifest.path(shard)
        with shards.open_shard(path) as f:
            for start in range(0, shard.samples, block):
                images, _ = shards.read_rows(f, path, start, min(start + block, shard.samples))
                samples += len(images)
    read_seconds = time.perf_counter() - read_started
    return {
        "compression": compression,
        "load_s": loaded - started,
        "write_s": written - loaded,
        "prepare_s": written - started,
        "base_mib": base,
        "peak_mib": peak,
        "bytes": total_bytes,
        "shards": sum(len(split.shards) for split in manifest.splits.values()),
        "read_sps": samples / read_seconds,
        "read_samples": samples,
    }


def run_setting(compression: str, shard_size: int, block: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-prepare-{compression}-") as tmp:
        command = [
            sys.executable,
            __file__,
            "--child",
            "--compression",
            compression,
            "--shard-size",
            str(shard_size),
            "--block",
            str(block),
            "--out",
            str(Path(tmp) / "shards"),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        process_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: the {compression} run failed: {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    report["process_s"] = process_seconds
    return report


def report_table(reports: list[dict[str, Any]], block: int) -> str:
    header = (
        "compression",
        "load s",
        "write s",
        "prepare s",
        "peak RSS MiB",
        "shards",
        "total bytes",
        f"read samples/s ({block}-row blocks)",
    )
    rows = [
        (
            r["compression"],
            f"{r['load_s']:.2f}",
            f"{r['write_s']:.2f}",
            f"{r['prepare_s']:.2f}",
            f"{r['peak_mib']:.0f} (base {r['base_mib']:.0f})",
            str(r["shards"]),
            f"{r['bytes']:,}",
            f"{r['read_sps']:,.0f}",
        )
        for r in reports
    ]
    return benchlib.table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--compression",
        action="append",
        choices=list(Compression),
        help="a setting to run (repeatable) [default: all]",
    )
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    parser.add_argument("--block", type=int, default=4096, help="rows per read [default: 4096]")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        report = child(args.compression[0], args.shard_size, args.block, args.out)
        print(json.dumps(report))
        return

    settings = args.compression or list(Compression)
    print(
        f"prepare of the full embedded MNIST (60,000 train + 10,000 test), shard size "
        f"{args.shard_size:,}; one fresh process per setting; python {sys.version.split()[0]}",
        flush=True,
    )
    reports = [run_setting(c, args.shard_size, args.block) for c in settings]
    print(report_table(reports, args.block))
    print(
        "load = read + check the four IDX files; prepare = load + write shards and manifest; "
        "peak RSS of the whole process (base: after imports)"
    )
    for report in reports:
        if report["compression"] == DEFAULT_COMPRESSION:
            verdict = "within" if report["prepare_s"] < LIMIT_SECONDS else "OVER"
            print(
                f"default ({DEFAULT_COMPRESSION}): prepare {report['prepare_s']:.2f} s, "
                f"{verdict} the {LIMIT_SECONDS:.0f} s bound; whole process "
                f"{report['process_s']:.2f} s with interpreter start"
            )


if __name__ == "__main__":
    main()
