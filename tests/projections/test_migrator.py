"""Migrations against the real PostgreSQL of the session."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tokenquota.config import DatabaseSettings
from tokenquota.projections import (
    EXPECTED_COLUMNS,
    Migration,
    MigrationError,
    apply_migrations,
    connect,
    load_migrations,
    schema_drift,
)

pytestmark = pytest.mark.integration


async def test_migrating_twice_applies_everything_once_and_yields_the_expected_schema(
    database_settings: DatabaseSettings,
) -> None:
    schema = database_settings.schema_name
    conn = await connect(database_settings.dsn(), schema)
    try:
        first = await apply_migrations(conn, schema)
        assert [m.version for m in first] == [m.version for m in load_migrations()]
        assert await apply_migrations(conn, schema) == []
        assert await schema_drift(conn, schema) == []
        tables = {
            row["table_name"]
            for row in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        }
        assert tables == set(EXPECTED_COLUMNS)
        history = await conn.fetch("SELECT version, checksum FROM tokenquota_schema_migrations")
        assert {(r["version"], r["checksum"]) for r in history} == {
            (m.version, m.checksum) for m in load_migrations()
        }
    finally:
        await conn.close()


async def test_the_ledger_primary_key_drops_a_duplicate_event(
    migrated_database: DatabaseSettings,
) -> None:
    conn = await connect(migrated_database.dsn(), migrated_database.schema_name)
    insert = """INSERT INTO usage_events (event_id, event_type, session_id, occurred_at, payload,
                                          topic, kafka_partition, kafka_offset, log_time)
                VALUES ('0192f0a4-1c2b-7d3e-8f40-123456789abc', 'TokenUsed', 's', now(), '{}',
                        't', 0, $1, now())
                ON CONFLICT (event_id) DO NOTHING"""
    try:
        assert await conn.execute(insert, 1) == "INSERT 0 1"
        assert await conn.execute(insert, 2) == "INSERT 0 0"
        assert await conn.fetchval("SELECT count(*) FROM usage_events") == 1
    finally:
        await conn.close()


async def test_drift_is_reported_column_by_column(migrated_database: DatabaseSettings) -> None:
    schema = migrated_database.schema_name
    conn = await connect(migrated_database.dsn(), schema)
    try:
        await conn.execute("ALTER TABLE usage_events DROP COLUMN task_id CASCADE")
        await conn.execute("ALTER TABLE usage_events ADD COLUMN note TEXT")
        await conn.execute("ALTER TABLE usage_events ALTER COLUMN kafka_offset TYPE integer")
        await conn.execute("DROP TABLE partition_checkpoints")
        assert await schema_drift(conn, schema) == [
            "column usage_events.task_id is missing",
            "column usage_events.kafka_offset is integer NOT NULL, expected bigint NOT NULL",
            "column usage_events.note is not expected by the code",
            f"table {schema}.partition_checkpoints is missing",
            f"table {schema}.integration_logs is missing",  # the view, dropped with the column
        ]
    finally:
        await conn.close()


async def test_an_edited_migration_is_refused(migrated_database: DatabaseSettings) -> None:
    schema = migrated_database.schema_name
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in load_migrations()]
    conn = await connect(migrated_database.dsn(), schema)
    try:
        with pytest.raises(MigrationError, match="edited after it was applied"):
            await apply_migrations(conn, schema, edited)
    finally:
        await conn.close()


async def test_a_database_newer_than_the_code_is_refused(
    migrated_database: DatabaseSettings,
) -> None:
    schema = migrated_database.schema_name
    conn = await connect(migrated_database.dsn(), schema)
    try:
        with pytest.raises(MigrationError, match="does not ship; upgrade tokenquota"):
            await apply_migrations(conn, schema, load_migrations()[:-1] or [])
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_the_previous_version(
    database_settings: DatabaseSettings,
) -> None:
    schema = database_settings.schema_name
    broken = [*load_migrations(), Migration(9999, "broken", "CREATE TABLE x (; -- syntax error")]
    conn = await connect(database_settings.dsn(), schema)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError, match="syntax error"):
            await apply_migrations(conn, schema, broken)
        versions = await conn.fetch("SELECT version FROM tokenquota_schema_migrations")
        assert 9999 not in {r["version"] for r in versions}
        assert await apply_migrations(conn, schema) == []
    finally:
        await conn.close()


@pytest.mark.parametrize("name", ["1_short.sql", "0002-dash.sql", "0003_Upper.sql"])
def test_badly_named_migration_files_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"must be named NNNN_lower_case_name\.sql"):
        load_migrations(tmp_path)


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="share version 0001"):
        load_migrations(tmp_path)
