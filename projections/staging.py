"""Where a replay builds (`<schema>__replay`) and how it swaps its tables in atomically.

Both replays (from the topic and from the ledger) fold into fresh tables in the staging
schema, then take the projection lock exclusively (every worker batch holds it shared),
catch up with what the worker applied meanwhile, and move the live tables to
`<schema>__previous` and the rebuilt ones into place in one transaction: readers see the
old projections or the new ones, never a half-built state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from .alert_replay import suppress_replayed_alerts
from .database import quote_schema
from .migrator import apply_migrations
from .state import LogRecord
from .store import PROJECTION_TABLES, PROJECTION_VIEWS, projection_lock_key

__all__ = [
    "BeforeSwap",
    "ReplayError",
    "ReplayReport",
    "prefetched",
    "prepare_staging",
    "skip_poison",
    "staging_schemas",
    "swap_in",
]

_T = TypeVar("_T")

#: Awaited after the read and before the swap (the worker may still be applying).
BeforeSwap = Callable[[], Awaitable[None]]


class ReplayError(Exception):
    """Replay cannot rebuild the projections faithfully (and changed nothing)."""


@dataclass(slots=True)
class ReplayReport:
    """What a replay read and rebuilt."""

    events: int = 0
    skipped: int = 0
    applied: int = 0
    end_offsets: dict[int, int] = field(default_factory=dict)


def staging_schemas(schema: str) -> tuple[str, str]:
    """The schema replay builds in, and the one the replaced tables are kept in."""
    return f"{schema[:50]}__replay", f"{schema[:50]}__previous"


async def prepare_staging(conn: asyncpg.Connection, schema: str) -> str:
    """Create an empty, migrated staging schema and make it the connection's search_path."""
    staging, _ = staging_schemas(schema)
    # The staging tables are thrown away if the server crashes mid-replay, so their
    # batches need not wait for the WAL flush; the swap does wait for it.
    await conn.execute("SET synchronous_commit TO off")
    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(staging)} CASCADE")
    await conn.execute(f"CREATE SCHEMA {quote_schema(staging)}")
    await conn.execute(f"SET search_path TO {quote_schema(staging)}")
    await apply_migrations(conn, staging)
    return staging


async def prefetched(fetch: Callable[[], Awaitable[_T | None]]) -> AsyncIterator[_T]:
    """What `fetch` returns, until None; the next is fetched while the caller handles one.

    Replay reads (and decodes) the next batch while PostgreSQL applies this one, on its
    own core; the fold itself stays strictly in log order.
    """
    upcoming = asyncio.ensure_future(fetch())
    try:
        while (item := await upcoming) is not None:
            upcoming = asyncio.ensure_future(fetch())
            yield item
    finally:
        upcoming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upcoming


def skip_poison(report: ReplayReport) -> Callable[[LogRecord, str], Awaitable[None]]:
    """An on_poison handler for replay: the live worker sent that event to the DLQ."""

    async def skip(record: LogRecord, reason: str) -> None:
        report.skipped += 1

    return skip


async def swap_in(
    conn: asyncpg.Connection,
    schema: str,
    catch_up: Callable[[], Awaitable[None]],
) -> None:
    """Catch up under the exclusive projection lock, then swap the staging tables in.

    The views move with the tables: a view is bound to its tables (not their names), so
    the live views go to `<schema>__previous` with the tables they read, and the staging
    ones, built over the rebuilt tables, become the live views.
    """
    staging, previous = staging_schemas(schema)
    live, stage, old = quote_schema(schema), quote_schema(staging), quote_schema(previous)
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO on")
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", projection_lock_key(schema)
        )
        await catch_up()
        await suppress_replayed_alerts(conn, schema, staging)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {old}")
        await _drop_replaced(conn, previous)
        for view in PROJECTION_VIEWS:
            await conn.execute(f"ALTER VIEW IF EXISTS {live}.{view} SET SCHEMA {old}")
        for table in PROJECTION_TABLES:
            await conn.execute(f"ALTER TABLE {live}.{table} SET SCHEMA {old}")
            await conn.execute(f"ALTER TABLE {stage}.{table} SET SCHEMA {live}")
        for view in PROJECTION_VIEWS:
            await conn.execute(f"ALTER VIEW {stage}.{view} SET SCHEMA {live}")
    await conn.execute(f"DROP SCHEMA IF EXISTS {stage} CASCADE")


async def _drop_replaced(conn: asyncpg.Connection, previous: str) -> None:
    """Drop what the last swap moved to `previous`: views first (they hold on to their
    tables), each as what it is (before integration_logs was a view, it was a table)."""
    rows = await conn.fetch(
        """SELECT c.relname, c.relkind::text AS relkind FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1 AND c.relname = ANY($2::text[])""",
        previous,
        [*PROJECTION_VIEWS, *PROJECTION_TABLES],
    )
    kinds = {row["relname"]: row["relkind"] for row in rows}
    old = quote_schema(previous)
    for name in (*PROJECTION_VIEWS, *PROJECTION_TABLES):
        if name in kinds:
            kind = "VIEW" if kinds[name] == "v" else "TABLE"
            await conn.execute(f"DROP {kind} {old}.{name}")
