"""A worker stopped after its broker went away: it exits, and says what it left."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support import T0, fetch_value, settings_env, used, wait_until
from tokenquota.config import (
    DatabaseSettings,
    EmitterSettings,
    KafkaSettings,
    Settings,
    WorkerSettings,
)
from tokenquota.embedded import EmbeddedBroker, WorkerProcess
from tokenquota.processors.batch_consumer import STOP_COMMIT_TIMEOUT
from tokenquota.producers import Emitter
from tokenquota.topics import ensure_topics

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("gone", ["stopped", "frozen"])
async def test_a_worker_whose_broker_is_gone_exits_on_sigterm(
    gone: str, migrated_database: DatabaseSettings, tmp_path: Path
) -> None:
    # Its own broker, stopped (connections refused) or frozen with SIGSTOP (connections
    # open, nothing answered). Before the fix the worker still ran a minute after
    # SIGTERM, its last commit waiting for a group coordinator.
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")
    worker = WorkerProcess(log_path=tmp_path / "worker.log")
    try:
        kafka = KafkaSettings(
            bootstrap_servers=broker.start(),
            usage_topic="stop.usage",
            dlq_topic="stop.dlq",
            partitions=1,
        )
        await ensure_topics(kafka)
        settings = Settings(
            kafka=kafka,
            database=migrated_database,
            worker=WorkerSettings(group_id="stop.workers"),
            emitter=EmitterSettings(spool_dir=tmp_path / "spool"),
            data_dir=tmp_path / "data",
        )
        # Offsets committed only as it stops, so that its stop has a commit to make.
        env = {"WORKER_COMMIT_INTERVAL": "600", "LOG_LEVEL": "INFO"}
        worker.start({**settings_env(settings), **env})
        events = [used(f"session-{i % 3}", 5, T0 + timedelta(seconds=i)) for i in range(30)]
        async with Emitter(kafka, settings.emitter, tmp_path / "spool") as emitter:
            await emitter.emit_many(events)

        async def applied() -> bool:
            count = await fetch_value(migrated_database, "SELECT count(*) FROM usage_events")
            return int(count) == len(events)

        await wait_until(applied, 60, "the events applied", [worker])
        assert broker.pid is not None and worker.pid is not None
        if gone == "stopped":
            broker.stop()
        else:
            os.kill(broker.pid, signal.SIGSTOP)
        os.kill(worker.pid, signal.SIGTERM)

        async def exited() -> bool:
            return worker.exit_code() is not None

        await wait_until(exited, STOP_COMMIT_TIMEOUT + 15, "the worker to exit after SIGTERM")
        log = worker.log_path.read_text(errors="replace")
        assert worker.exit_code() == 0, log[-3000:]
        assert "stopping without committing the offsets" in log
        if gone == "stopped":  # (frozen, aiokafka logs its own commit's lost connection)
            assert "Traceback" not in log, log[-3000:]
        # What it had applied stays applied, once.
        assert await fetch_value(
            migrated_database, "SELECT sum(tokens_used_total) FROM session_token_budgets"
        ) == 5 * len(events)
    finally:
        worker.stop()
        if broker.pid is not None:
            os.kill(broker.pid, signal.SIGCONT)
        broker.stop()
