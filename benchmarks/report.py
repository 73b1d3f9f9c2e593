"""Printing a throughput benchmark: tokenquota's reader beside the raw baseline."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

__all__ = ["percentile_ms", "print_throughput"]


def percentile_ms(samples: list[float], q: float) -> float:
    """The `q` quantile of `samples` (seconds), in milliseconds (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def print_throughput(
    title: str,
    role: str,
    events: int,
    ours: tuple[str, float],
    baseline: tuple[str, float],
    conditions: str,
) -> None:
    """A table of (name, seconds) for `events` events, as events/s and as a ratio."""
    table = Table(title=title)
    for column in (role, "seconds", "events/s", "ratio"):
        table.add_column(column, justify="left" if column == role else "right")
    for name, seconds in (ours, baseline):
        table.add_row(
            name, f"{seconds:.1f}", f"{events / seconds:,.0f}", f"{baseline[1] / seconds:.2f}"
        )
    console = Console()
    console.print(table)
    console.print(f"conditions: {conditions}")
