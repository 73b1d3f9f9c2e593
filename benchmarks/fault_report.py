"""What a fault campaign did and found (`benchmarks.faults`), and its printed table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from benchmarks.fault_oracle import Invariant
from benchmarks.report import machine

__all__ = ["Report", "print_report"]


@dataclass
class Report:
    """What a campaign did and found."""

    seed: int
    seconds: float
    invariants: list[Invariant] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return all(i.held for i in self.invariants)

    def first_violation(self) -> str | None:
        """The first broken invariant and its first cases, or None."""
        for inv in self.invariants:
            if not inv.held:
                cases = "\n  ".join(inv.violations[:5])
                more = len(inv.violations) - 5
                return f"{inv.name}:\n  {cases}" + (f"\n  ... and {more} more" if more > 0 else "")
        return None


def print_report(report: Report) -> None:
    """The campaign's table."""
    table = Table(title=f"fault campaign, seed {report.seed}, {report.seconds:.0f} s of load")
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in report.events.items():
        table.add_row(name, f"{count:,}")
    for name, count in sorted(report.faults.items()):
        table.add_row(f"fault: {name}", str(count))
    for inv in report.invariants:
        table.add_row(
            f"invariant: {inv.name}", f"{inv.checked:,} " + ("held" if inv.held else "BROKEN")
        )
    console = Console()
    console.print(table)
    for note in report.notes:
        console.print(note)
    problem = report.first_violation()
    console.print(
        "result: every invariant held"
        if problem is None
        else f"result: FAILED (seed {report.seed}); first broken invariant: {problem}"
    )
    console.print(f"conditions: {machine()}")
