"""Connecting to the projection database, inside the configured PostgreSQL schema."""

from __future__ import annotations

import re

import asyncpg

__all__ = [
    "DATABASE_FAILURES",
    "SCHEMA_NAME_PATTERN",
    "connect",
    "quote_schema",
    "undo_open_transaction",
]

#: A server away or failing, or a connection it broke: what is retried on a new
#: connection. (asyncpg raises InterfaceError or InternalClientError for a connection a
#: PostgreSQL shutdown dropped in the middle of an operation.)
DATABASE_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

#: Schema names are interpolated into DDL, so only plain lower-case identifiers are allowed.
SCHEMA_NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def quote_schema(schema: str) -> str:
    """The schema as a quoted SQL identifier; rejects anything but a plain identifier."""
    if not SCHEMA_NAME_PATTERN.fullmatch(schema):
        raise ValueError(
            f"invalid PostgreSQL schema name {schema!r}: use lower-case letters, digits "
            "and underscores, starting with a letter or underscore (at most 63 characters)"
        )
    return f'"{schema}"'


async def connect(dsn: str, schema: str = "public", *, timeout: float = 10.0) -> asyncpg.Connection:
    """Open a connection whose search_path is `schema`, so unqualified names land there."""
    quote_schema(schema)
    return await asyncpg.connect(dsn, timeout=timeout, server_settings={"search_path": schema})


async def undo_open_transaction(conn: asyncpg.Connection) -> None:
    """A pool's `reset`: roll back a transaction left open, nothing else.

    asyncpg's default reset (advisory unlocks, CLOSE ALL, UNLISTEN *, RESET ALL) costs a
    round trip on every release, the largest part of a short read under load. The read
    pools hold no such session state: the search_path is a startup setting, and LISTEN
    has a connection of its own.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
