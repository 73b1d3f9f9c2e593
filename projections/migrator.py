"""Versioned, forward-only SQL migrations: numbered `.sql` files applied in order, once."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .database import quote_schema

__all__ = [
    "MIGRATIONS_TABLE",
    "Migration",
    "MigrationError",
    "apply_migrations",
    "load_migrations",
]

MIGRATIONS_TABLE = "tokenquota_schema_migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Serialises concurrent `tokenquota migrate` runs; an arbitrary constant ("tokenqta").
_ADVISORY_LOCK_KEY = 0x746F6B656E717461


class MigrationError(RuntimeError):
    """The migration files or the database's migration history are inconsistent."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the SQL, recorded when applied, so later edits are caught."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    def __str__(self) -> str:
        return f"{self.version:04d}_{self.name}"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations shipped with tokenquota (or in `directory`), in version order."""
    folder = directory or Path(__file__).parent / "migrations"
    migrations: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"migration file {path.name!r} must be named NNNN_lower_case_name.sql"
            )
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"two migration files share version {version:04d}")
        migrations[version] = Migration(version, match.group(2), path.read_text("utf-8"))
    return [migrations[v] for v in sorted(migrations)]


async def apply_migrations(
    conn: asyncpg.Connection,
    schema: str = "public",
    migrations: list[Migration] | None = None,
) -> list[Migration]:
    """Apply every migration not yet applied in `schema`; return those applied now.

    Each migration runs in its own transaction together with its history row, so a
    failure leaves the database at the previous version. A second run applies nothing.
    """
    todo = load_migrations() if migrations is None else migrations
    # The schema is a validated identifier (quote_schema); values always go as parameters.
    history = f"{quote_schema(schema)}.{MIGRATIONS_TABLE}"
    record = f"INSERT INTO {history} (version, name, checksum) VALUES ($1, $2, $3)"  # noqa: S608
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_schema(schema)}")
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
    try:
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {history} (
                    version    INTEGER     PRIMARY KEY,
                    name       TEXT        NOT NULL,
                    checksum   TEXT        NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )"""
        )
        rows = await conn.fetch(f"SELECT version, name, checksum FROM {history}")  # noqa: S608
        applied = {row["version"]: row for row in rows}
        known = {m.version: m for m in todo}
        for version, row in sorted(applied.items()):
            if version not in known:
                raise MigrationError(
                    f"the database has migration {version:04d}_{row['name']}, which this "
                    "version of tokenquota does not ship; upgrade tokenquota"
                )
            if row["checksum"] != known[version].checksum:
                raise MigrationError(
                    f"migration {known[version]} was edited after it was applied "
                    "(checksum differs); migrations are forward-only: add a new file instead"
                )
        done = []
        for migration in todo:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {quote_schema(schema)}")
                await conn.execute(migration.sql)
                await conn.execute(record, migration.version, migration.name, migration.checksum)
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
