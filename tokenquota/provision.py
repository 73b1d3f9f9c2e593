"""`tokenquota init`: topics and database migrations against configured servers."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .config import DatabaseSettings, Settings
from .errors import IntegrationError
from .log_defaults import DefaultsReport, ensure_defaults
from .projections import apply_migrations, connect, schema_drift
from .topics import TopicState, ensure_topics

__all__ = ["ProvisionReport", "migrate_database", "provision"]


@dataclass(frozen=True, slots=True)
class ProvisionReport:
    """What `init` found and did."""

    topics: list[TopicState]
    migrations_applied: list[str]
    defaults: DefaultsReport


async def migrate_database(database: DatabaseSettings) -> list[str]:
    """Apply pending migrations, then check the schema is what the code expects."""
    try:
        conn = await connect(database.dsn(), database.schema_name)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise IntegrationError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        applied = await apply_migrations(conn, database.schema_name)
        drift = await schema_drift(conn, database.schema_name)
    finally:
        await conn.close()
    if drift:
        raise IntegrationError(
            f"schema {database.schema_name!r} differs from what tokenquota expects:\n  - "
            + "\n  - ".join(drift)
        )
    return [str(m) for m in applied]


async def provision(settings: Settings, *, publish_defaults: bool = True) -> ProvisionReport:
    """Create missing topics, apply pending migrations and write the configured defaults
    into the log (see log_defaults); a second run changes nothing.

    `publish_defaults=False` (a worker starting) writes them only to a topic it created.
    """
    topics = await ensure_topics(settings.kafka)
    applied = await migrate_database(settings.database)
    usage = next(t for t in topics if t.name == settings.kafka.usage_topic)
    defaults = await ensure_defaults(
        settings, usage.partitions, created=usage.created, publish_changes=publish_defaults
    )
    return ProvisionReport(topics=topics, migrations_applied=applied, defaults=defaults)
