"""Read-model latency at scale: every dashboard query over a ledger of 1,000,000 events.

The events go through the real pipeline code: emitted to the broker by the Emitter and
applied by `replay_into` (the worker's fold and store, all projections, the rollups
included). Then each read model is called through `AsyncTokenDashboard`, one call at a
time, with random sessions and days. Beside it, in the same run and on the same data,
the bare baseline: the same numbers summed straight from the ledger (`usage_events`), as
a dashboard without rollups would, and one round trip (`SELECT 1`) as the floor.

Run: .venv/bin/python -m benchmarks.analytics [--events N] [--sessions S] [--samples K]
Starts an embedded broker and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL
are set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from itertools import islice

import asyncpg
from rich.console import Console
from rich.table import Table

from benchmarks.analytics_workload import MIX, budgets, events, session_ids
from benchmarks.report import percentile_ms
from benchmarks.servers import default_partitions, pipeline
from tokenquota.config import Settings
from tokenquota.dashboard import AsyncTokenDashboard
from tokenquota.producers import Emitter
from tokenquota.projections import analytics
from tokenquota.projections.replay import replay_into

CHUNK = 10_000
#: The issue's targets: p99 per read model, and the whole daily report.
READ_P99_MS = 50.0
DAILY_REPORT_MS = 1000.0

_TOKENS = "(payload->>'input_tokens')::bigint + (payload->>'output_tokens')::bigint"
#: The baseline: the same numbers from the ledger, as a dashboard without rollups reads them.
_LEDGER_SESSION = f"""
    SELECT sum({_TOKENS}) FILTER (WHERE occurred_at >= $2) AS today, sum({_TOKENS}) AS total,
           sum((payload->>'cost_usd')::numeric) AS cost
      FROM usage_events WHERE session_id = $1 AND event_type IN ('TokenUsed', 'ApiCost')
"""  # noqa: S608 - constants
_LEDGER_DAY = f"""
    SELECT session_id, sum({_TOKENS}) FILTER (WHERE event_type = 'TokenUsed') AS tokens,
           sum((payload->>'cost_usd')::numeric) AS cost,
           count(*) FILTER (WHERE event_type = 'TokenReserved') AS reservations
      FROM usage_events WHERE occurred_at >= $1 AND occurred_at < $2 GROUP BY session_id
"""  # noqa: S608 - constants
_LEDGER_COSTS = """
    SELECT payload->>'api' AS api, sum((payload->>'cost_usd')::numeric) AS cost
      FROM usage_events WHERE event_type = 'ApiCost' AND occurred_at >= $1 GROUP BY 1
"""
_LEDGER_TOP = f"""
    SELECT session_id, sum({_TOKENS}) AS tokens FROM usage_events
     WHERE event_type = 'TokenUsed' AND occurred_at >= $1
     GROUP BY session_id ORDER BY tokens DESC LIMIT 10
"""  # noqa: S608 - constants

Query = Callable[[], Awaitable[object]]


async def load(
    settings: Settings, total: int, sessions: int, days: int = 30
) -> tuple[float, float]:
    """Emit the budgets and `total` events dated over the last `days` days, then fold them
    with replay; (emit s, fold s)."""
    kafka, db = settings.kafka, settings.database
    assert kafka.bootstrap_servers is not None
    now = datetime.now(UTC)
    started = time.perf_counter()
    async with Emitter(kafka, settings.emitter, settings.data_dir / "spool") as emitter:
        await emitter.emit_many(budgets(sessions))
        stream = events(total, sessions, now, days)
        while chunk := list(islice(stream, CHUNK)):
            deliveries = await emitter.emit_many(chunk)
            assert deliveries[-1] == "acked", deliveries[-1]
    emitted = time.perf_counter()
    report = await replay_into(kafka.bootstrap_servers, kafka.usage_topic, db.dsn(), db.schema_name)
    # Plus the DefaultsSet provisioning put on each partition.
    if report.events != total + sessions + kafka.partitions:
        raise RuntimeError(f"replay read {report.events:,} events, expected {total + sessions:,}")
    return emitted - started, time.perf_counter() - emitted


async def sample(query: Query, samples: int) -> list[float]:
    """Seconds per call, `samples` calls one after the other (after one warm-up call)."""
    await query()
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        await query()
        out.append(time.perf_counter() - start)
    return out


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    async with pipeline(partitions=args.partitions, worker=False) as (settings, servers):
        emit_s, fold_s = await load(settings, args.events, args.sessions)
        db = settings.database
        pool = await asyncpg.create_pool(
            db.dsn(), min_size=1, max_size=2, server_settings={"search_path": db.schema_name}
        )
        try:
            async with pool.acquire() as conn:
                await conn.execute("ANALYZE")
                counts = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM usage_events) AS events,"
                    " (SELECT count(*) FROM reservations) AS reservations,"
                    " (SELECT count(*) FROM alert_outbox) AS alerts"
                )
            ours, ledger = await measure(settings, pool, rng, args)
        finally:
            await pool.close()
    assert counts is not None
    print_tables(ours, ledger)
    Console(width=120).print(
        f"conditions: {counts['events']:,} events in the ledger ({args.sessions:,} sessions; "
        f"{MIX}); {counts['reservations']:,} reservations, {counts['alerts']:,} alerts; "
        f"loaded by the Emitter in {emit_s:.0f} s and folded by replay in {fold_s:.0f} s "
        f"({args.partitions} partitions); calls one at a time through AsyncTokenDashboard "
        f"on a pool of 2 connections, {args.samples} samples each after one warm-up "
        f"(daily report and the ledger sums: {args.slow_samples}), random session and day; "
        f"{servers}; python {platform.python_version()}, {os.cpu_count()} cores"
    )


async def measure(
    settings: Settings, pool: asyncpg.Pool, rng: random.Random, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Latency samples of each read model, and of the ledger-sum baseline."""
    dashboard = AsyncTokenDashboard.from_pool(pool, settings)
    sessions = session_ids(args.sessions)
    today = datetime.now(UTC).date()

    def session() -> str:
        return rng.choice(sessions)

    def day() -> date:
        return today - timedelta(days=rng.randrange(30))

    async def overview_sql() -> object:
        async with pool.acquire() as conn:
            return await analytics.system_overview(
                conn,  # type: ignore[arg-type]  # a pool proxy acts as a connection
                topic=settings.kafka.usage_topic,
                highwaters=None,
            )

    fast: dict[str, Query] = {
        "session metrics": lambda: dashboard.get_session_metrics(session()),
        "system overview (SQL only)": overview_sql,
        "system overview (with broker lag)": dashboard.get_system_overview,
        "top sessions by tokens": lambda: dashboard.top_sessions("tokens", 10, day()),
        "top sessions by cost": lambda: dashboard.top_sessions("cost", 10, day()),
        "costs by api (30 days)": lambda: dashboard.costs("api"),
        "costs by model (30 days)": lambda: dashboard.costs("model"),
        "costs by day (30 days)": lambda: dashboard.costs("day"),
        "recent decisions": lambda: dashboard.recent_decisions(),
        "recent decisions of a session": lambda: dashboard.recent_decisions(session()),
        "recent alerts": lambda: dashboard.recent_alerts(),
        "integration logs of a session": lambda: dashboard.integration_logs(session()),
        "audit trail of a session": lambda: dashboard.audit(session()),
    }
    try:
        ours = {name: await sample(query, args.samples) for name, query in fast.items()}
        ours[f"daily report ({args.sessions:,} sessions)"] = await sample(
            lambda: dashboard.generate_daily_report(day()), args.slow_samples
        )
    finally:
        await dashboard.close()  # its broker probe; the pool is ours

    async def fetch(sql: str, *params: object) -> object:
        async with pool.acquire() as conn:
            return await conn.fetch(sql, *params)

    def start_of(d: date) -> datetime:
        return datetime(d.year, d.month, d.day, tzinfo=UTC)

    ledger: dict[str, Query] = {
        "round trip (SELECT 1)": lambda: fetch("SELECT 1"),
        "session metrics from the ledger": lambda: fetch(
            _LEDGER_SESSION, session(), start_of(today)
        ),
        "top sessions from the ledger": lambda: fetch(_LEDGER_TOP, start_of(day())),
        "costs by api from the ledger": lambda: fetch(
            _LEDGER_COSTS, start_of(today - timedelta(days=29))
        ),
        "daily report from the ledger": lambda: _ledger_day(fetch, start_of(day())),
    }
    baseline = {
        name: await sample(query, args.samples if "trip" in name else args.slow_samples)
        for name, query in ledger.items()
    }
    return ours, baseline


async def _ledger_day(fetch: Callable[..., Awaitable[object]], start: datetime) -> object:
    return await fetch(_LEDGER_DAY, start, start + timedelta(days=1))


def print_tables(ours: dict[str, list[float]], ledger: dict[str, list[float]]) -> None:
    """Our read models with their targets, then the baseline."""
    console = Console(width=120)
    table = Table(title="analytics: read-model latency over the rollups (tokenquota)")
    for column in ("read model", "samples", "p50 ms", "p99 ms", "max ms", "target", "met"):
        table.add_column(column, justify="left" if column == "read model" else "right")
    for name, samples in ours.items():
        daily = name.startswith("daily report")
        target = DAILY_REPORT_MS if daily else READ_P99_MS
        p50, p99 = percentile_ms(samples, 0.5), percentile_ms(samples, 0.99)
        worst = max(samples) * 1000 if daily else p99
        table.add_row(
            name, f"{len(samples):,}", f"{p50:.1f}", f"{p99:.1f}",
            f"{max(samples) * 1000:.1f}",
            f"{'max' if daily else 'p99'} <= {target:,.0f} ms", "yes" if worst <= target else "NO",
        )  # fmt: skip
    console.print(table)
    base = Table(title="baseline: the same numbers summed from the ledger (usage_events)")
    for column in ("query", "samples", "p50 ms", "p99 ms", "max ms"):
        base.add_column(column, justify="left" if column == "query" else "right")
    for name, samples in ledger.items():
        base.add_row(
            name, f"{len(samples):,}", f"{percentile_ms(samples, 0.5):.1f}",
            f"{percentile_ms(samples, 0.99):.1f}",
            f"{max(samples) * 1000:.1f}",
        )  # fmt: skip
    console.print(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument(
        "--partitions", type=int, default=default_partitions(), help="default: as `tokenquota dev`"
    )
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--slow-samples", type=int, default=20)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
