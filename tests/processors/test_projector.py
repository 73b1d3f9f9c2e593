"""The worker's projector against a real PostgreSQL: a failing database is retried, not skipped."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.support import fetch_value, log_records, used, wait_until
from tokenquota.config import DatabaseSettings, Settings, WorkerSettings
from tokenquota.processors import Projector
from tokenquota.projections import LogRecord, apply_migrations, connect

pytestmark = pytest.mark.integration


async def test_a_failing_database_is_retried_until_the_batch_is_applied(
    database_settings: DatabaseSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database=database_settings, worker=WorkerSettings(retry_backoff_max=0.2))
    events = [used("retry", 10 + i) for i in range(5)]
    records = log_records(events, topic="t")
    projector = Projector(settings)
    caplog.set_level(logging.WARNING, logger="tokenquota.worker")

    async def no_poison(record: LogRecord, reason: str) -> None:
        raise AssertionError(f"a failing server must not make {record} poison: {reason}")

    # The schema has no tables yet: every attempt fails inside PostgreSQL.
    applying = asyncio.create_task(projector.apply(records, [], no_poison))

    async def failed_twice() -> bool:
        return sum("not applied" in r.getMessage() for r in caplog.records) >= 2

    await wait_until(failed_twice, 30, "two failed attempts")
    assert not applying.done()
    conn = await connect(database_settings.dsn(), database_settings.schema_name)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{database_settings.schema_name}"')
        await apply_migrations(conn, database_settings.schema_name)
    finally:
        await conn.close()
    await asyncio.wait_for(applying, 30)
    await projector.close()
    total = await fetch_value(
        database_settings, "SELECT tokens_used_total FROM session_token_budgets"
    )
    assert total == sum(e.input_tokens for e in events)
    assert projector.applied == 5
