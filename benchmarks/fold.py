"""The worker's in-process steps per event, on the benchmark mix: decode, fold, rows.

What the worker spends on each event between the fetch and PostgreSQL, without either:
decoding the payload into a `LogRecord`, folding a batch (`projections.fold`, on a state
that already holds every session, as a running worker's does) and turning the fold into
rows for the tables (`fold_writes`). Each step is timed over whole batches, best of
--rounds; the default batch is what one fetch of a loaded topic brings the worker
(about 15,000 events), --batch 200 is nearer a batch of strict reservations.

Run: .venv/bin/python -m benchmarks.fold [--batch N] [--batches B] [--rounds R]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from benchmarks.report import machine
from benchmarks.workload import MIX, budgets, usage
from tokenquota.gc_settings import BATCH_THRESHOLDS, bulk_gc
from tokenquota.projections import LogRecord, ProjectionState, fold
from tokenquota.projections.state import log_time
from tokenquota.projections.writes import fold_writes
from tokenquota.schemas import decode, encode

__all__ = ["main"]

SESSIONS = 1_000


def _best(rounds: int, work: Callable[[], object]) -> float:
    return min(_timed(work) for _ in range(rounds))


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _steps(args: argparse.Namespace, warm: int, payloads: list[bytes]) -> list[tuple[str, float]]:
    """Seconds per step over all the timed batches, best of the rounds; the first `warm`
    payloads and ten events per session after them make the state folded on."""
    count = args.batch * args.batches
    start_ms = int(time.time() * 1000)

    def records() -> list[LogRecord]:
        return [
            LogRecord(decode(p), p, "usage", 0, offset, log_time(start_ms + offset // 20))
            for offset, p in enumerate(payloads)
        ]

    every = records()
    # Every session seen, with some usage and holds, before the timed batches.
    head = warm + SESSIONS * 10
    state = fold(ProjectionState(), every[:head]).state
    batches = [every[head + i * args.batch : head + (i + 1) * args.batch]
               for i in range(args.batches)]  # fmt: skip
    timed_payloads = payloads[head : head + count]

    def decode_all() -> None:
        for offset, p in enumerate(timed_payloads):
            LogRecord(decode(p), p, "usage", 0, offset, log_time(start_ms + offset // 20))

    def fold_all() -> float:
        # Each batch on a copy of the state made beforehand, untimed: the worker folds a
        # state it loaded for that fold alone (owned), and each round starts alike.
        copies = [fold(state, []).state for _ in batches]
        return _timed(
            lambda: [fold(c, b, owned=True) for c, b in zip(copies, batches, strict=True)]
        )

    folded = [fold(state, batch) for batch in batches]

    def rows_all() -> None:
        for out in folded:
            fold_writes(out)

    return [
        ("decode into a LogRecord", _best(args.rounds, decode_all)),
        ("fold", min(fold_all() for _ in range(args.rounds))),
        ("rows for the tables (fold_writes)", _best(args.rounds, rows_all)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=15_000)
    parser.add_argument("--batches", type=int, default=4, help="batches folded per round")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    warm = budgets(SESSIONS)
    count = args.batch * args.batches
    payloads = [encode(e) for e in [*warm, *usage(count + SESSIONS * 10, SESSIONS)]]
    with bulk_gc(BATCH_THRESHOLDS):  # as the worker runs: what exists now is frozen
        steps = _steps(args, len(warm), payloads)
    table = Table(title="worker steps per event, in process (best of rounds)")
    table.add_column("step")
    table.add_column("us/event", justify="right")
    for name, seconds in steps:
        table.add_row(name, f"{seconds / count * 1e6:.2f}")
    table.add_row("sum", f"{sum(s for _, s in steps) / count * 1e6:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"conditions: {args.batches} batches of {args.batch:,} events ({MIX}) over "
        f"{SESSIONS:,} sessions, each folded on its own copy of a state holding every "
        f"session (made beforehand: the worker folds a state it loaded for that fold "
        f"alone); {args.rounds} rounds; garbage collector as the worker sets it; "
        f"{machine()}"
    )


if __name__ == "__main__":
    main()
