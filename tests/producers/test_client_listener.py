"""The client after PostgreSQL restarts: its LISTEN connection comes back, a start that
found it down can be tried again, a connection it broke fails as IntegrationError.

The restart tests restart a PostgreSQL of their own (the session's one is shared by
every test); the broker is the session's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.support import BROKEN_CONNECTION, set_budget, settings_env, used, wait_until
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
from tokenquota.producers import reservations as reservations_module
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


async def test_a_start_that_finds_postgres_down_can_be_tried_again(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    # Found by the fault campaign: a producer restarted while PostgreSQL was down tried
    # start() again until it passed; the failed start had closed the emitter, so every
    # emit after it raised "this Emitter is closed" and nothing it sent was recorded.
    postgres = EmbeddedPostgres(data_dir=tmp_path / "pgdata", log_path=tmp_path / "postgres.log")
    settings = Settings(
        kafka=kafka_settings,
        database=DatabaseSettings(url=SecretStr(postgres.dsn), schema_name="later"),
        emitter=EmitterSettings(spool_dir=tmp_path / "spool"),
        data_dir=tmp_path / "data",
    )
    quota = TokenQuota(settings)
    try:
        with pytest.raises(IntegrationError, match="cannot connect to PostgreSQL"):
            await quota.start()
        await asyncio.to_thread(postgres.start)
        await quota.start()
        assert await quota.emit(used("later", 5)) == "acked"
    finally:
        await quota.close()
        await asyncio.to_thread(postgres.stop)


@pytest.mark.parametrize("failure", BROKEN_CONNECTION)
async def test_a_read_on_a_connection_broken_by_a_restart_is_an_integration_error(
    pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    # Found by the fault campaign: an MCP tool call read its session's room on a pooled
    # connection that a PostgreSQL shutdown had left mid-operation; asyncpg raised
    # InternalClientError, which escaped the client as it is (the meter turns only
    # IntegrationError into a tool error), and the producer process crashed.
    async def broken(conn: object, session_ids: object) -> None:
        raise failure

    async with TokenQuota(pipeline_settings) as quota:
        monkeypatch.setattr(reservations_module, "sessions_metrics", broken)
        with pytest.raises(IntegrationError, match="PostgreSQL unreachable"):
            await quota.session_metrics("broken-read")
        monkeypatch.undo()
        assert not (await quota.session_metrics("broken-read")).known  # the next one works
