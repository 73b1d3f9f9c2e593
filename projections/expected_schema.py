"""The tables and columns the code relies on, and a check of a database against them."""

from __future__ import annotations

import asyncpg

from .database import quote_schema

__all__ = ["EXPECTED_COLUMNS", "schema_drift"]

#: table -> column -> (information_schema data_type, nullable)
EXPECTED_COLUMNS: dict[str, dict[str, tuple[str, bool]]] = {
    "usage_events": {
        "event_id": ("uuid", False),
        "event_type": ("text", False),
        "session_id": ("character varying", False),
        "task_id": ("character varying", True),
        "occurred_at": ("timestamp with time zone", False),
        "payload": ("jsonb", False),
        "topic": ("text", False),
        "kafka_partition": ("integer", False),
        "kafka_offset": ("bigint", False),
    },
    "partition_checkpoints": {
        "topic": ("text", False),
        "kafka_partition": ("integer", False),
        "next_offset": ("bigint", False),
    },
    "tokenquota_schema_migrations": {
        "version": ("integer", False),
        "name": ("text", False),
        "checksum": ("text", False),
        "applied_at": ("timestamp with time zone", False),
    },
}


async def schema_drift(conn: asyncpg.Connection, schema: str = "public") -> list[str]:
    """Differences between `schema` and EXPECTED_COLUMNS, one readable line each."""
    quote_schema(schema)
    rows = await conn.fetch(
        """SELECT table_name, column_name, data_type, is_nullable = 'YES' AS nullable
             FROM information_schema.columns
            WHERE table_schema = $1 AND table_name = ANY($2::text[])""",
        schema,
        list(EXPECTED_COLUMNS),
    )
    actual: dict[str, dict[str, tuple[str, bool]]] = {}
    for row in rows:
        actual.setdefault(row["table_name"], {})[row["column_name"]] = (
            row["data_type"],
            row["nullable"],
        )
    problems = []
    for table, columns in EXPECTED_COLUMNS.items():
        if table not in actual:
            problems.append(f"table {schema}.{table} is missing")
            continue
        for column, (data_type, nullable) in columns.items():
            found = actual[table].get(column)
            if found is None:
                problems.append(f"column {table}.{column} is missing")
            elif found != (data_type, nullable):
                problems.append(
                    f"column {table}.{column} is {_describe(found)}, expected "
                    f"{_describe((data_type, nullable))}"
                )
        for column in sorted(set(actual[table]) - set(columns)):
            problems.append(f"column {table}.{column} is not expected by the code")
    return problems


def _describe(column: tuple[str, bool]) -> str:
    return f"{column[0]} {'NULL' if column[1] else 'NOT NULL'}"
