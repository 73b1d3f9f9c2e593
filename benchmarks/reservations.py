"""Strict `reserve()` latency with concurrent callers, beside the projection read alone.

Run: .venv/bin/python -m benchmarks.reservations [--callers N] [--rounds R]
Starts an embedded broker, PostgreSQL and `tokenquota worker` unless
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set (a worker is started in any case).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable
from decimal import Decimal

from rich.console import Console
from rich.table import Table

from benchmarks.report import percentile_ms
from benchmarks.servers import pipeline
from tokenquota.config import ReservationSettings
from tokenquota.producers import TokenQuota
from tokenquota.schemas import BudgetSet, Source

SOURCE = Source(component="sdk", name="bench")


async def _timed(work: Awaitable[object]) -> float:
    start = time.perf_counter()
    await work
    return time.perf_counter() - start


async def run(args: argparse.Namespace) -> None:
    async with pipeline() as (base, servers):
        settings = base.model_copy(
            update={"reservations": ReservationSettings(decision_timeout=60)}
        )
        async with TokenQuota(settings, source=SOURCE) as quota:
            sessions = [f"caller-{i}" for i in range(args.callers)]
            for session in sessions:
                await quota.emit(
                    BudgetSet(
                        session_id=session, source=SOURCE, daily_limit=10**9,
                        monthly_limit=10**9, hard_limit=10**9,
                        warning_threshold=Decimal("0.8"), critical_threshold=Decimal("0.95"),
                    )
                )  # fmt: skip
            warm = await quota.reserve(sessions[-1], 1)  # waits for the worker to be up
            await warm.release()

            one_read = [await _timed(quota.session_metrics(sessions[0])) for _ in range(args.reads)]

            async def reader(session: str) -> list[float]:
                return [await _timed(quota.session_metrics(session)) for _ in range(args.rounds)]

            many_reads = [t for ts in await asyncio.gather(*map(reader, sessions)) for t in ts]

            async def reserver(session: str) -> list[float]:
                times = []
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    held = await quota.reserve(session, 10)
                    times.append(time.perf_counter() - start)
                    await held.release()
                return times

            started = time.perf_counter()
            reserves = [t for ts in await asyncio.gather(*map(reserver, sessions)) for t in ts]
            elapsed = time.perf_counter() - started

    table = Table(title="reservations: strict reserve() vs the projection read alone (ms)")
    for column in ("operation", "callers", "samples", "p50", "p99", "max"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    rows = [
        ("projection read", 1, one_read),
        ("projection read", args.callers, many_reads),
        ("strict reserve()", args.callers, reserves),
    ]
    for name, callers, samples in rows:
        table.add_row(
            name, str(callers), str(len(samples)), f"{percentile_ms(samples, 0.5):.1f}",
            f"{percentile_ms(samples, 0.99):.1f}",
            f"{max(samples) * 1000:.1f}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(
        f"conditions: {args.callers} concurrent callers in one process, one session each, "
        f"{args.rounds} reservations of 10 tokens per caller (each released after), "
        f"{len(reserves) / elapsed:,.0f} reservations/s overall; a client pool of 10 "
        f"connections; worker batch_within {settings.worker.batch_within} s; {servers}; "
        f"median read alone {statistics.median(one_read) * 1000:.2f} ms; "
        f"python {platform.python_version()}, {os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--reads", type=int, default=500)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
