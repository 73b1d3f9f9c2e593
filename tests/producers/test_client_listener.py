"""The client's LISTEN connection comes back after PostgreSQL restarts.

This test restarts a PostgreSQL of its own (the session's one is shared by every test);
the broker is the session's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.support import set_budget, settings_env, wait_until
from tokenquota.config import (
    DatabaseSettings,
    EmitterSettings,
    KafkaSettings,
    ReservationSettings,
    Settings,
    WorkerSettings,
)
from tokenquota.embedded import EmbeddedPostgres, WorkerProcess
from tokenquota.errors import IntegrationError
from tokenquota.producers import TokenQuota
from tokenquota.projections import apply_migrations, connect

pytestmark = pytest.mark.integration


async def test_decisions_arrive_by_notify_again_after_postgres_restarts(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    postgres = EmbeddedPostgres(data_dir=tmp_path / "pgdata", log_path=tmp_path / "postgres.log")
    worker = WorkerProcess(log_path=tmp_path / "worker.log")
    try:
        dsn = await asyncio.to_thread(postgres.start)
        database = DatabaseSettings(url=SecretStr(dsn), schema_name="restarted")
        conn = await connect(database.dsn(), database.schema_name)
        try:
            await apply_migrations(conn, database.schema_name)
        finally:
            await conn.close()
        settings = Settings(
            kafka=kafka_settings,
            database=database,
            worker=WorkerSettings(
                group_id=f"{kafka_settings.usage_topic}.workers",
                batch_within=0.05,
                retry_backoff_max=0.5,  # so the worker is soon back on the restarted server
            ),
            emitter=EmitterSettings(spool_dir=tmp_path / "spool", retry_interval=0.2),
            reservations=ReservationSettings(decision_timeout=60),
            data_dir=tmp_path / "data",
        )
        worker.start(settings_env(settings))
        async with TokenQuota(settings) as quota:
            await set_budget(quota, "restarted", 10_000)
            first = await quota.reserve("restarted", 100)
            assert first.status == "accepted"
            assert (quota.listening, quota.decisions_notified) == (True, 1)

            pid = postgres.pid
            await asyncio.to_thread(postgres.stop)  # by its PID; then on the same dir and port

            async def lost() -> bool:
                return not quota.listening

            await wait_until(lost, 30, "the client to see its LISTEN connection closed")
            await asyncio.to_thread(postgres.start)
            assert postgres.pid != pid

            async def listening_again() -> bool:
                return quota.listening

            await wait_until(listening_again, 60, "the LISTEN connection to come back", [worker])

            async def reserved_again() -> bool:
                try:
                    second = await quota.reserve("restarted", 100)
                except IntegrationError:  # the pool's connections died with the server
                    return False
                assert second.status == "accepted"
                return True

            await wait_until(reserved_again, 60, "a reservation on the restarted server", [worker])
            assert quota.decisions_notified == 2, "the decision was polled, not notified"
    finally:
        worker.stop()
        await asyncio.to_thread(postgres.stop)
