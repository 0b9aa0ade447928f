"""How fast the CLI answers: `pipeline --help` against a bare two-command typer app's --help.

Both run as fresh processes of this Python, interleaved (so a change in the machine's load hits
both alike), many times; the medians and their ratio are printed. The goal: within 2x.
Also times `pipeline --version` and `pipeline verify --help`, which must stay as light.

    flock /work/bench.lock .venv/bin/python scripts/bench_cli.py [--repeat 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import table

BARE_APP = '''
import typer

app = typer.Typer()


@app.command()
def hello(name: str = "world") -> None:
    """Say hello."""


@app.command()
def bye(name: str = "world") -> None:
    """Say goodbye."""


app()
'''


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=40, help="runs of each [default: 40]")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "bare_app.py"
        bare.write_text(BARE_APP)
        commands = {
            "bare typer app --help": [sys.executable, str(bare), "--help"],
            "pipeline --help": [sys.executable, "-m", "pipeline", "--help"],
            "pipeline --version": [sys.executable, "-m", "pipeline", "--version"],
            "pipeline verify --help": [sys.executable, "-m", "pipeline", "verify", "--help"],
        }
        for command in commands.values():  # warm the OS file cache and the .pyc files
            seconds(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, command in commands.items():
                times[name].append(seconds(command))

    base = statistics.median(times["bare typer app --help"])
    rows = []
    for name, runs in times.items():
        median = statistics.median(runs)
        rows.append(
            [name, f"{median * 1000:.0f}", f"{min(runs) * 1000:.0f}", f"{median / base:.2f}"]
        )
    print(
        f"{args.repeat} runs each, interleaved; python {sys.version.split()[0]}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(table(["command", "median ms", "min ms", "x bare"], rows))
    ratio = statistics.median(times["pipeline --help"]) / base
    print(f"pipeline --help / bare typer --help: {ratio:.2f}x (goal: at most 2x)")


if __name__ == "__main__":
    main()
