"""Helpers shared by tests: event builders, waiting on conditions, table snapshots."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenquota.config import DatabaseSettings, Settings
from tokenquota.embedded import WorkerProcess, process_env
from tokenquota.kafka_probe import seek_to_start
from tokenquota.producers.reservations import TokenQuota
from tokenquota.projections import PROJECTION_TABLES, LogRecord, connect
from tokenquota.schemas import (
    DEFAULTS_SESSION,
    ApiCost,
    BudgetSet,
    Event,
    Priority,
    Source,
    TokenReserved,
    TokenUsed,
    encode,
    utc_now,
)

__all__ = [
    "BROKEN_CONNECTION",
    "T0",
    "budget",
    "consumer_from_start",
    "cyclic_garbage",
    "fetch_value",
    "live_workload",
    "log_records",
    "node_budget",
    "reserved",
    "set_budget",
    "settings_env",
    "snapshot",
    "used",
    "wait_for_usage",
    "wait_until",
]

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
#: What asyncpg raises on a pooled connection a PostgreSQL shutdown broke (seen by the
#: fault campaign): every read must turn each into IntegrationError.
BROKEN_CONNECTION = (
    asyncpg.InternalClientError("cannot switch to state 11; another operation (2) is in progress"),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
)
SOURCE = Source(component="sdk", name="tests")


def cyclic_garbage(work: Callable[[], object]) -> int:
    """How many objects `work` left in reference cycles: it runs with the collector off,
    and what a collection then finds was garbage only the collector could free."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        work()
        return gc.collect()
    finally:
        if enabled:
            gc.enable()


def budget(
    session: str,
    at: datetime = T0,
    *,
    daily: int = 10_000,
    monthly: int = 100_000,
    hard: int = 1_000_000,
    warning: str = "0.8",
    critical: str = "0.95",
    account: str | None = None,
    usd: tuple[str | None, str | None, str | None] = (None, None, None),
) -> BudgetSet:
    """A BudgetSet for `session` (of `account`); `usd`: its daily, monthly, total USD limits."""
    daily_usd, monthly_usd, total_usd = (None if v is None else Decimal(v) for v in usd)
    return BudgetSet(
        daily_usd_limit=daily_usd,
        monthly_usd_limit=monthly_usd,
        total_usd_limit=total_usd,
        session_id=session,
        source=SOURCE,
        account=account,
        occurred_at=at,
        daily_limit=daily,
        monthly_limit=monthly,
        hard_limit=hard,
        warning_threshold=Decimal(warning),
        critical_threshold=Decimal(critical),
    )


def node_budget(
    account: str,
    at: datetime = T0,
    *,
    daily: int = 10_000,
    monthly: int = 100_000,
    hard: int = 1_000_000,
    warning: str = "0.8",
    critical: str = "0.95",
    usd: tuple[str | None, str | None, str | None] = (None, None, None),
) -> BudgetSet:
    """A BudgetSet for the budget tree node `account`."""
    event = budget(DEFAULTS_SESSION, at, daily=daily, monthly=monthly, hard=hard,
                   warning=warning, critical=critical, account=account, usd=usd)  # fmt: skip
    return event.model_copy(update={"target": "account"})


def reserved(
    session: str,
    tokens: int,
    at: datetime = T0,
    *,
    priority: Priority = "normal",
    ttl: timedelta = timedelta(minutes=5),
    task: str | None = None,
    rid: uuid.UUID | None = None,
    account: str | None = None,
    usd: str | None = None,
) -> TokenReserved:
    """A TokenReserved for `session` (of `account`), priced at `usd` dollars if given."""
    return TokenReserved(
        reserved_usd=None if usd is None else Decimal(usd),
        price_source=None if usd is None else "tests",
        session_id=session,
        task_id=task,
        source=SOURCE,
        account=account,
        occurred_at=at,
        reservation_id=rid or uuid.uuid4(),
        tokens=tokens,
        priority=priority,
        expires_at=at + ttl,
    )


def used(
    session: str,
    tokens: int,
    at: datetime = T0,
    *,
    rid: uuid.UUID | None = None,
    task: str | None = None,
    output: int = 0,
    account: str | None = None,
) -> TokenUsed:
    """A TokenUsed of `tokens` input (+ `output`) tokens for `session` (of `account`)."""
    return TokenUsed(
        session_id=session,
        task_id=task,
        source=SOURCE,
        account=account,
        occurred_at=at,
        reservation_id=rid,
        model="gpt-4o",
        input_tokens=tokens,
        output_tokens=output,
        operation="test",
        counted_by="provider",
    )


def log_records(
    events: Sequence[Event],
    *,
    at: Callable[[int, Event], datetime] | None = None,
    topic: str = "usage",
    partition: int = 0,
    first_offset: int = 0,
) -> list[LogRecord]:
    """`events` as consecutive records of one partition. The record timestamp (the log
    time) is `at(index, event)`, by default the event's own occurred_at (an honest clock)."""
    return [
        LogRecord(
            event,
            encode(event),
            topic,
            partition,
            first_offset + i,
            at(i, event) if at is not None else event.occurred_at,
        )
        for i, event in enumerate(events)
    ]


def live_workload(sessions: int = 12) -> list[Event]:
    """Every event type over `sessions` sessions: budgets, reservations settled by usage
    (some low priority, with tasks), API costs; spread over days, so windows roll."""
    events: list[Event] = []
    for s in range(sessions):
        session = f"replay-{s}"
        at = T0 + timedelta(minutes=s)
        events.append(budget(session, at, daily=2000 + s * 100, monthly=50_000, hard=90_000))
        for i in range(15):
            moment = at + timedelta(hours=i * 5)
            hold = reserved(
                session,
                150 + i * 10,
                moment,
                task=f"task-{i % 3}",
                priority="low" if i % 4 == 0 else "normal",
            )
            events.append(hold)
            events.append(
                used(
                    session,
                    100 + i * 13,
                    moment + timedelta(seconds=1),
                    rid=hold.reservation_id,
                    task=f"task-{i % 3}",
                    output=i,
                )
            )
            events.append(
                ApiCost(
                    session_id=session,
                    source=SOURCE,
                    occurred_at=moment,
                    api="openai",
                    model="gpt-4o",
                    input_tokens=100,
                    output_tokens=i,
                    cost_usd=Decimal("0.0012345678") * (i + 1),
                    price_source="test",
                    rate_limit_remaining=1000 - i,
                )
            )
    return events


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    processes: Sequence[WorkerProcess] = (),
) -> None:
    """Poll `check` until it is true; fail with `what` after `timeout` seconds, or at once
    when one of `processes` has exited (with the end of its log)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        for process in processes:
            if process.exit_code() is not None:
                tail = process.log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{process.name} exited while waiting for {what}:\n{tail}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def consumer_from_start(
    servers: str | None, topics: Sequence[tuple[str, int]]
) -> AIOKafkaConsumer:
    """A started consumer of every partition of `topics` ((name, partitions) each), each
    at offset 0 (`seek_to_start`)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    partitions = [TopicPartition(name, p) for name, count in topics for p in range(count)]
    consumer.assign(partitions)
    seek_to_start(consumer, partitions)
    return consumer


async def fetch_value(database: DatabaseSettings, sql: str, *args: Any) -> Any:
    """One value from the test's schema."""
    conn = await connect(database.dsn(), database.schema_name)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def snapshot(database: DatabaseSettings) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection table's rows, sorted, for row-for-row comparison."""
    conn = await connect(database.dsn(), database.schema_name)
    try:
        tables = {}
        for table in PROJECTION_TABLES:
            rows = await conn.fetch(f"SELECT * FROM {table}")  # noqa: S608 - constant names
            tables[table] = sorted((tuple(r.values()) for r in rows), key=repr)
        return tables
    finally:
        await conn.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a `tokenquota` process use `settings`' servers."""
    return {**process_env(settings), "LOG_LEVEL": "INFO"}  # tests read the worker's INFO lines


async def set_budget(quota: TokenQuota, session: str, limit: int) -> None:
    """Give `session` a budget of `limit` tokens in every window; wait until it applies."""
    await quota.emit(budget(session, utc_now(), daily=limit, monthly=limit, hard=limit))

    async def applied() -> bool:
        return (await quota.session_metrics(session)).limits.hard_limit == limit

    await wait_until(applied, 60, f"the budget of {session}")


async def wait_for_usage(quota: TokenQuota, session: str, total: int) -> None:
    """Wait until `session` has used exactly `total` tokens and holds none."""

    async def reached() -> bool:
        metrics = await quota.session_metrics(session)
        return metrics.tokens_used_total >= total and metrics.tokens_held == 0

    await wait_until(reached, 60, f"{total} tokens used by {session}")
    metrics = await quota.session_metrics(session)
    assert (metrics.tokens_used_total, metrics.tokens_held) == (total, 0)
