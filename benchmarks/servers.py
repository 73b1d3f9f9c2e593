"""Servers for the benchmarks: the configured ones, or embedded ones started and stopped here.

An embedded PostgreSQL is new for each run, and a new cluster has no WAL segment files to
reuse: it makes each one as its WAL reaches it, writing 16 MB of zeros and syncing them.
Measured here (issue 18, RESULTS.md), such a file held up the commit that reached it by
40 to 70 ms, every 4 to 5 s at 3,600 events/s, and was most of the tail of the lag and
reservation latencies. A server that has been running reuses the files of WAL it no
longer needs instead. So `pipeline` first makes `WAL_RECYCLED_MB` of segment
files on an embedded server and has a checkpoint keep them for reuse (`recycle_wal`),
unless asked for a fresh one (`fresh_wal`); a configured server is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
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

__all__ = [
    "WAL_RECYCLED_MB",
    "default_partitions",
    "kafka_servers",
    "pipeline",
    "recycle_wal",
    "settings_env",
]

#: WAL made ahead on an embedded server, in segment files a checkpoint keeps for reuse:
#: about what the lag benchmark writes (some 1.7 kB per event).
WAL_RECYCLED_MB = 1024


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


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables for a benchmark's `tokenquota worker`."""
    worker_data = str(settings.data_dir / "worker")
    return {**process_env(settings), "TOKENQUOTA_DATA_DIR": worker_data, "LOG_LEVEL": "WARNING"}


async def recycle_wal(dsn: str, megabytes: int = WAL_RECYCLED_MB) -> None:
    """Have the server at `dsn` hold `megabytes` of WAL segment files for reuse, as a busy
    one that has been running does (with the default max_wal_size of 1 GB it keeps about
    that much): each file is switched to once, then a checkpoint renames them into the
    segments to come, and min_wal_size (ALTER SYSTEM) keeps as many at the checkpoints
    after. max_wal_size is raised while they are made (so that no checkpoint recycles them
    on the way: there would be fewer), then reset."""
    conn = await asyncpg.connect(dsn)
    try:
        segment = int(
            await conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        )
        await conn.execute(f"ALTER SYSTEM SET min_wal_size = '{megabytes}MB'")
        await conn.execute(f"ALTER SYSTEM SET max_wal_size = '{4 * megabytes}MB'")
        await conn.execute("SELECT pg_reload_conf()")
        for _ in range(megabytes * 2**20 // segment):
            # The transaction id makes its commit write a record, after the switch: into
            # the next file, so the next switch has something to switch from.
            await conn.execute("SELECT pg_switch_wal(), txid_current()")
        await conn.execute("CHECKPOINT")
        await conn.execute("ALTER SYSTEM RESET max_wal_size")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def database_url(folder: Path, *, fresh_wal: bool = False) -> AsyncIterator[tuple[str, str]]:
    """(DSN, description): DATABASE_URL, or an embedded PostgreSQL 18 with its WAL files
    made ahead for reuse (`recycle_wal`) unless `fresh_wal`."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured, "configured PostgreSQL"
        return
    server = EmbeddedPostgres(folder / "postgres", folder / "postgres.log")
    with server:
        dsn = server.start()
        if fresh_wal:
            yield dsn, "embedded PostgreSQL 18 (a new cluster: WAL files made as reached)"
            return
        await recycle_wal(dsn)
        yield (
            dsn,
            f"embedded PostgreSQL 18 ({WAL_RECYCLED_MB:,} MB of WAL files made ahead for reuse)",
        )


@contextlib.asynccontextmanager
async def pipeline(
    partitions: int | None = None,
    worker: bool = True,
    worker_env: dict[str, str] | None = None,
    *,
    fresh_wal: bool = False,
) -> AsyncIterator[tuple[Settings, str]]:
    """Settings for a fresh topic and schema on (embedded) servers, with a worker running
    (`worker_env`: more environment variables for it); `partitions` by default as
    `tokenquota dev` has them (`default_partitions`). An embedded PostgreSQL gets its WAL
    files made ahead for reuse (`recycle_wal`) unless `fresh_wal`."""
    partitions = default_partitions() if partitions is None else partitions
    async with contextlib.AsyncExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="tq-bench-"))
        servers, broker = stack.enter_context(kafka_servers())
        dsn, postgres = await stack.enter_async_context(
            database_url(Path(folder), fresh_wal=fresh_wal)
        )
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
