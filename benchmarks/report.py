"""Printing a throughput benchmark: tokenquota's reader beside the raw baseline."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["machine", "percentile_ms", "print_throughput"]


def percentile_ms(samples: list[float], q: float, empty: float | None = None) -> float:
    """The `q` quantile of `samples` (seconds), in milliseconds (nearest rank); `empty`
    when there are none, if given (otherwise no samples is an error)."""
    if not samples and empty is not None:
        return empty
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def print_throughput(
    title: str,
    role: str,
    events: int,
    ours: tuple[str, float],
    baseline: tuple[str, float],
    conditions: str,
    target: float | None = None,
) -> None:
    """A table of (name, seconds) for `events` events, as events/s and as a ratio; with
    `target`, a line saying whether ours reached that ratio of the baseline."""
    table = Table(title=title)
    for column in (role, "seconds", "events/s", "ratio"):
        table.add_column(column, justify="left" if column == role else "right")
    for name, seconds in (ours, baseline):
        table.add_row(
            name, f"{seconds:.1f}", f"{events / seconds:,.0f}", f"{baseline[1] / seconds:.2f}"
        )
    console = Console()
    console.print(table)
    if target is not None:
        ratio = baseline[1] / ours[1]
        console.print(
            f"target: {ours[0]} >= {target:.2f} of {baseline[0]}: {ratio:.2f}, "
            + ("met" if ratio >= target else "NOT met")
        )
    console.print(f"conditions: {conditions}")


def machine() -> str:
    """Where and when a figure was measured: commit, UTC time, CPU, python."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        if _git(root, "status", "--porcelain", "--untracked-files=no"):
            commit += " plus uncommitted changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (
        f"commit {commit}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {_cpu()}, "
        f"{os.cpu_count()} cores; python {platform.python_version()}"
    )


def _git(root: Path, *args: str) -> str:
    git = shutil.which("git")
    if git is None:
        raise OSError("git is not on PATH")
    done = subprocess.run(
        [git, *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
