"""The event mix the pipeline, lag and replay benchmarks send, and how they watch progress."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import asyncpg

from tokenquota.projections import quote_schema
from tokenquota.schemas import BudgetSet, Event, Source, TokenReserved, TokenUsed, utc_now

__all__ = ["MIX", "applied", "budgets", "usage", "wait_applied"]

SOURCE = Source(component="sdk", name="bench")

#: Described in every table's conditions.
MIX = (
    "one BudgetSet per session, then per 10 events: 1 TokenReserved, the TokenUsed "
    "settling it, 8 unreserved TokenUsed"
)


def budgets(sessions: int) -> list[Event]:
    """One BudgetSet per session, with limits no benchmark reaches."""
    return [
        BudgetSet(
            session_id=f"session-{i}",
            source=SOURCE,
            daily_limit=10**12,
            monthly_limit=10**12,
            hard_limit=10**12,
            warning_threshold=Decimal("0.8"),
            critical_threshold=Decimal("0.95"),
        )
        for i in range(sessions)
    ]


def usage(count: int, sessions: int, start: int = 0) -> Iterator[Event]:
    """`count` events of the mix, round-robin over the sessions; occurred_at is now."""
    for n in range(start, start + count):
        session = f"session-{n % sessions}"
        step = (n // sessions) % 10
        now = utc_now()
        if step == 0:
            yield TokenReserved(
                session_id=session, source=SOURCE, occurred_at=now,
                reservation_id=_reservation(n), tokens=1000,
                expires_at=now + timedelta(minutes=5),
            )  # fmt: skip
        else:
            yield TokenUsed(
                session_id=session, source=SOURCE, occurred_at=now,
                reservation_id=_reservation(n - sessions) if step == 1 else None,
                model="gpt-4o", input_tokens=n % 4000, output_tokens=n % 700,
                operation="chat", counted_by="provider",
            )  # fmt: skip


def _reservation(n: int) -> uuid.UUID:
    return uuid.UUID(int=n + 1)


async def applied(conn: asyncpg.Connection, schema: str, topic: str) -> int:
    """Messages of `topic` applied in `schema` (its checkpoints; offsets start at 0)."""
    total = await conn.fetchval(
        f"SELECT coalesce(sum(next_offset), 0) FROM {quote_schema(schema)}.partition_checkpoints "  # noqa: S608
        "WHERE topic = $1",
        topic,
    )
    return int(total)


async def wait_applied(
    conn: asyncpg.Connection, schema: str, topic: str, target: int, timeout: float, what: str
) -> float:
    """Poll until `target` messages of `topic` are applied; return when (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while (done := await applied(conn, schema, topic)) < target:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: {done:,} of {target:,} applied after {timeout:.0f} s")
        await asyncio.sleep(0.02)
    return time.perf_counter()
