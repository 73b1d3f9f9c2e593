"""Event encode/decode throughput against bare `json` on the same payloads.

Run: .venv/bin/python -m benchmarks.codec [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import timedelta
from uuid import uuid4

from rich.console import Console
from rich.table import Table

from tokenquota.gc_settings import BATCH_THRESHOLDS, bulk_gc
from tokenquota.schemas import Event, Source, TokenReserved, TokenUsed, decode, encode, utc_now


def _events(count: int) -> list[Event]:
    now = utc_now()
    source = Source(component="mcp", name="bench")
    events: list[Event] = []
    for i in range(count):
        if i % 3 == 0:
            events.append(
                TokenReserved(
                    session_id=f"session-{i % 1000}",
                    source=source,
                    reservation_id=uuid4(),
                    tokens=100 + i % 500,
                    expires_at=now + timedelta(minutes=5),
                )
            )
        else:
            events.append(
                TokenUsed(
                    session_id=f"session-{i % 1000}",
                    source=source,
                    model="gpt-4o",
                    input_tokens=i % 4000,
                    output_tokens=i % 700,
                    operation="tool:search",
                    counted_by="tiktoken",
                )
            )
    return events


def _best_rate(count: int, rounds: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    events = _events(args.events)
    wire = [encode(e) for e in events]
    dicts = [json.loads(w) for w in wire]

    rows = [
        ("encode", _best_rate(args.events, args.rounds, lambda: [encode(e) for e in events]),
         _best_rate(args.events, args.rounds,
                    lambda: [json.dumps(d, separators=(",", ":")).encode() for d in dicts])),
        ("decode + validate",
         _best_rate(args.events, args.rounds, lambda: [decode(w) for w in wire]),
         _best_rate(args.events, args.rounds, lambda: [json.loads(w) for w in wire])),
    ]  # fmt: skip
    with bulk_gc(BATCH_THRESHOLDS):  # as the worker and replay decode
        rows.append(
            ("decode + validate, bulk_gc",
             _best_rate(args.events, args.rounds, lambda: [decode(w) for w in wire]),
             _best_rate(args.events, args.rounds, lambda: [json.loads(w) for w in wire]))
        )  # fmt: skip

    table = Table(title="tokenquota event codec vs bare json (events/s, best of rounds)")
    for column in ("operation", "tokenquota", "bare json", "ratio"):
        table.add_column(column, justify="right" if column != "operation" else "left")
    for name, ours, bare in rows:
        table.add_row(name, f"{ours:,.0f}", f"{bare:,.0f}", f"{ours / bare:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"conditions: {args.events:,} events (1/3 TokenReserved, 2/3 TokenUsed), "
        f"avg {sum(map(len, wire)) / len(wire):.0f} bytes, {args.rounds} rounds, "
        f"python {platform.python_version()}, {os.cpu_count()} cores; "
        "bare json does no validation, so the ratio is the price of checking every field; "
        "bulk_gc: the garbage-collector settings of the worker and replay "
        "(tokenquota.gc_settings), on both sides"
    )


if __name__ == "__main__":
    main()
