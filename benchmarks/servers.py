"""Servers for the benchmarks: the configured ones, or embedded ones started and stopped here."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from pydantic import SecretStr

from tokenquota.config import DatabaseSettings, Settings, load_settings
from tokenquota.embedded import (
    EmbeddedBroker,
    EmbeddedPostgres,
    WorkerProcess,
    embedded_partitions,
    process_env,
)
from tokenquota.provision import provision

__all__ = ["default_partitions", "kafka_servers", "pipeline", "settings_env"]


def default_partitions() -> int:
    """The usage topic's partitions as `tokenquota dev` creates them: kafka.partitions
    when configured or with a configured broker, else EMBEDDED_PARTITIONS."""
    kafka = load_settings().kafka
    return kafka.partitions if kafka.bootstrap_servers is not None else embedded_partitions(kafka)


@contextlib.contextmanager
def kafka_servers() -> Iterator[tuple[str, str]]:
    """(bootstrap servers, description): KAFKA_BOOTSTRAP_SERVERS, or an embedded broker."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured, f"configured broker {configured}"
        return
    with tempfile.TemporaryDirectory(prefix="tq-bench-") as folder:
        broker = EmbeddedBroker(Path(folder) / "broker.log")
        with broker:
            yield broker.start(), "embedded Tansu broker (memory storage)"


@contextlib.contextmanager
def database_url(folder: Path) -> Iterator[tuple[str, str]]:
    """(DSN, description): DATABASE_URL, or an embedded PostgreSQL 18."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured, "configured PostgreSQL"
        return
    server = EmbeddedPostgres(folder / "postgres", folder / "postgres.log")
    with server:
        yield server.start(), "embedded PostgreSQL 18"


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables for a benchmark's `tokenquota worker`."""
    worker_data = str(settings.data_dir / "worker")
    return {**process_env(settings), "TOKENQUOTA_DATA_DIR": worker_data, "LOG_LEVEL": "WARNING"}


@contextlib.asynccontextmanager
async def pipeline(
    partitions: int | None = None,
    worker: bool = True,
    worker_env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[Settings, str]]:
    """Settings for a fresh topic and schema on (embedded) servers, with a worker running
    (`worker_env`: more environment variables for it); `partitions` by default as
    `tokenquota dev` has them (`default_partitions`)."""
    partitions = default_partitions() if partitions is None else partitions
    with (
        tempfile.TemporaryDirectory(prefix="tq-bench-") as folder,
        kafka_servers() as (servers, broker),
        database_url(Path(folder)) as (dsn, postgres),
    ):
        name = f"bench_{uuid.uuid4().hex[:8]}"
        # The environment's settings (WORKER_FETCH_MAX_WAIT, EMITTER_LINGER_MS, ...) apply
        # here as in the worker, which inherits the environment: the conditions a
        # benchmark prints are the ones it ran with.
        configured = Settings()
        settings = configured.model_copy(
            update={
                "kafka": configured.kafka.model_copy(
                    update={
                        "bootstrap_servers": servers, "usage_topic": f"{name}.usage",
                        "dlq_topic": f"{name}.dlq", "partitions": partitions,
                    }
                ),
                "database": DatabaseSettings(url=SecretStr(dsn), schema_name=name),
                "worker": configured.worker.model_copy(update={"group_id": f"{name}.workers"}),
                "data_dir": Path(folder) / "data",
            }
        )  # fmt: skip
        await provision(settings)
        process = WorkerProcess(Path(folder) / "worker.log") if worker else None
        try:
            if process is not None:
                process.start({**settings_env(settings), **(worker_env or {})})
            yield settings, f"{broker}, {postgres}"
        finally:
            if process is not None:
                process.stop()
