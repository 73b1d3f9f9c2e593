"""Connecting to the projection database, inside the configured PostgreSQL schema."""

from __future__ import annotations

import re

import asyncpg

__all__ = ["SCHEMA_NAME_PATTERN", "connect", "quote_schema"]

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
