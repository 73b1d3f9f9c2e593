"""Session fixtures: one real Kafka-protocol broker and one real PostgreSQL for the run.

Backends, chosen once per session:
- default: the embedded Tansu broker and embedded PostgreSQL, started here and stopped
  at the end (only the processes started here, by PID);
- KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL: existing servers, used as they are;
- TOKENQUOTA_TEST_BACKEND=testcontainers: Apache Kafka and PostgreSQL containers
  (needs a Docker engine and `pip install 'tokenquota[testcontainers]'`).

Every test that asks for `kafka_settings` / `database_settings` gets topics and a
PostgreSQL schema of its own, removed afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from tests.support import settings_env
from tokenquota.config import (
    DatabaseSettings,
    EmitterSettings,
    KafkaSettings,
    Settings,
    WorkerSettings,
)
from tokenquota.embedded import EmbeddedBroker, EmbeddedPostgres, WorkerProcess
from tokenquota.projections import apply_migrations, connect
from tokenquota.topics import ensure_topics

WorkerStarter = Callable[..., WorkerProcess]


@dataclass(frozen=True)
class Servers:
    """Where the session's broker and PostgreSQL listen."""

    bootstrap_servers: str
    database_url: str


def _testcontainers(stack: ExitStack) -> Servers:
    try:
        import docker
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        pytest.exit(
            "TOKENQUOTA_TEST_BACKEND=testcontainers needs: "
            "pip install 'tokenquota[testcontainers]'",
            returncode=4,
        )
    try:
        docker.from_env().ping()
    except Exception as exc:
        pytest.exit(
            f"TOKENQUOTA_TEST_BACKEND=testcontainers needs a running Docker engine: {exc}",
            returncode=4,
        )
    kafka = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.7.1").with_kraft())
    postgres = stack.enter_context(PostgresContainer("postgres:17", driver=None))
    return Servers(kafka.get_bootstrap_server(), postgres.get_connection_url())


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The session's broker and PostgreSQL (see the module docstring for the backends)."""
    with ExitStack() as stack:
        if os.environ.get("TOKENQUOTA_TEST_BACKEND") == "testcontainers":
            yield _testcontainers(stack)
            return
        root: Path = tmp_path_factory.mktemp("servers")
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = stack.enter_context(EmbeddedBroker(log_path=root / "broker.log"))
            bootstrap = broker.start()
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            postgres = stack.enter_context(
                EmbeddedPostgres(data_dir=root / "pgdata", log_path=root / "postgres.log")
            )
            database_url = postgres.start()
        yield Servers(bootstrap, database_url)


@pytest.fixture
def bootstrap_servers(servers: Servers) -> str:
    """host:port of the session's broker."""
    return servers.bootstrap_servers


@pytest.fixture
def database_url(servers: Servers) -> str:
    """URL of the session's PostgreSQL (its default schema is shared: prefer database_settings)."""
    return servers.database_url


@pytest.fixture
async def kafka_settings(servers: Servers) -> AsyncIterator[KafkaSettings]:
    """Freshly created usage and DLQ topics of this test's own (3 partitions)."""
    name = f"tq-test-{uuid.uuid4().hex[:12]}"
    kafka = KafkaSettings(
        bootstrap_servers=servers.bootstrap_servers,
        usage_topic=f"{name}.usage",
        dlq_topic=f"{name}.dlq",
        partitions=3,
    )
    await ensure_topics(kafka)
    yield kafka
    admin = AIOKafkaAdminClient(bootstrap_servers=servers.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([kafka.usage_topic, kafka.dlq_topic])
    finally:
        await admin.close()


@pytest.fixture
async def database_settings(servers: Servers) -> AsyncIterator[DatabaseSettings]:
    """A PostgreSQL schema of this test's own, empty (not migrated), dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    database = DatabaseSettings(url=SecretStr(servers.database_url), schema_name=schema)
    yield database
    conn = await connect(servers.database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def migrated_database(database_settings: DatabaseSettings) -> DatabaseSettings:
    """Like database_settings, with every migration applied."""
    conn = await connect(database_settings.dsn(), database_settings.schema_name)
    try:
        await apply_migrations(conn, database_settings.schema_name)
    finally:
        await conn.close()
    return database_settings


@pytest.fixture
def settings(
    kafka_settings: KafkaSettings, database_settings: DatabaseSettings, tmp_path: Path
) -> Settings:
    """Settings pointing at this test's topics, schema and data folder (its spool: never
    the checkout's, which a test running beside it may hold); everything else default."""
    return Settings(kafka=kafka_settings, database=database_settings, data_dir=tmp_path / "data")


@pytest.fixture
def pipeline_settings(
    kafka_settings: KafkaSettings, migrated_database: DatabaseSettings, tmp_path: Path
) -> Settings:
    """Settings for a whole pipeline of this test's own: topics, schema, group, spool."""
    return Settings(
        kafka=kafka_settings,
        database=migrated_database,
        worker=WorkerSettings(group_id=f"{kafka_settings.usage_topic}.workers", batch_within=0.05),
        emitter=EmitterSettings(spool_dir=tmp_path / "spool", retry_interval=0.2, send_timeout=5),
        data_dir=tmp_path / "data",
    )


@pytest.fixture
def start_worker(pipeline_settings: Settings, tmp_path: Path) -> Iterator[WorkerStarter]:
    """Start `tokenquota worker` processes on the pipeline's settings; all stopped at the end."""
    started: list[WorkerProcess] = []

    def start(name: str = "worker", env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(log_path=tmp_path / f"{name}-{len(started)}.log")
        started.append(worker)
        worker.start({**settings_env(pipeline_settings), **(env or {})})
        return worker

    yield start
    for worker in started:
        worker.stop()


_SESSION_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say where the browser tests left this run's screenshots (the test artefacts)."""
    from tests.api.browser import ARTIFACTS

    shots = [
        shot for shot in sorted(ARTIFACTS.glob("*.png")) if shot.stat().st_mtime >= _SESSION_STARTED
    ]
    if shots:
        names = ", ".join(shot.name for shot in shots)
        terminalreporter.write_line(f"screenshots of the page ({names}): {ARTIFACTS}")
