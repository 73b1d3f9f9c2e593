"""One connection to the configured schema, for the operator commands that read and write
a few tables directly, failing with the error an operator can act on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from .config import Settings
from .errors import IntegrationError
from .projections import connect

__all__ = ["schema_connection"]


@contextlib.asynccontextmanager
async def schema_connection(settings: Settings, tables: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to `settings`' schema, closed on leaving. IntegrationError when
    PostgreSQL cannot be reached, and when a table is missing: the message names
    `tables` (what the caller uses) and `tokenquota migrate`."""
    db = settings.database
    try:
        conn = await connect(db.dsn(), db.schema_name)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise IntegrationError(f"PostgreSQL unreachable: {exc or type(exc).__name__}") from None
    try:
        yield conn
    except asyncpg.UndefinedTableError:
        raise IntegrationError(
            f"schema {db.schema_name} has no {tables} table: run `tokenquota migrate`"
        ) from None
    finally:
        await conn.close()
