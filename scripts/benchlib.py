"""What the benchmarks share: memory readings of this process and a plain-text table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"error: no {field} in /proc/self/status (Linux only)")


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (VmHWM), in MiB."""
    return _status_mib("VmHWM")


def reset_peak_rss() -> None:
    """Start this process's peak RSS (VmHWM) afresh from its current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mib() -> float:
    """This process's resident set size now (VmRSS), in MiB."""
    return _status_mib("VmRSS")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to fit: the first left-aligned, the others right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
