"""The defaults in the log: `tokenquota init` writes the configured ones as a DefaultsSet.

The limits of sessions without a BudgetSet (`token_limits`), the windows' time zone and
`worker.max_clock_skew` decide reservations. If the fold took them from the configuration
of whichever worker or replay runs, two workers could decide differently and a replay
after a configuration change would re-decide the past. So `init` (and `tokenquota dev`)
writes them into every partition of the usage topic as a DefaultsSet, and again whenever
the configuration no longer matches what the log holds; the fold decides with the
DefaultsSet in force at each event's place in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from .actors import os_actor
from .config import KafkaSettings, Settings, fold_config
from .errors import IntegrationError
from .projections import FoldConfig, connect
from .projections.store import defaults_from_row
from .schemas import DefaultsSet, Source, encode

__all__ = ["DefaultsReport", "defaults_event", "defaults_in_force", "ensure_defaults"]

SOURCE = Source(component="cli", name="tokenquota init")


@dataclass(frozen=True, slots=True)
class DefaultsReport:
    """What ensure_defaults found and did."""

    published: bool
    #: Why it published, or why not.
    reason: str
    #: Set when the configured defaults differ from the log's and were not written.
    warning: str | None = None


def defaults_event(config: FoldConfig) -> DefaultsSet:
    """A DefaultsSet carrying `config` (a fresh event id each time)."""
    limits = config.default_limits
    return DefaultsSet(
        source=SOURCE,
        daily_limit=limits.daily_limit,
        monthly_limit=limits.monthly_limit,
        hard_limit=limits.hard_limit,
        warning_threshold=limits.warning_threshold,
        critical_threshold=limits.critical_threshold,
        timezone=config.zone.key,
        max_clock_skew_ms=config.max_clock_skew // timedelta(milliseconds=1),
        actor=os_actor(),
    )


async def defaults_in_force(conn: asyncpg.Connection, topic: str) -> dict[int, FoldConfig]:
    """Partition -> the defaults the projections have applied there (none: built-in)."""
    rows = await conn.fetch("SELECT * FROM partition_defaults WHERE topic = $1", topic)
    return {row["kafka_partition"]: defaults_from_row(row) for row in rows}


async def ensure_defaults(
    settings: Settings, partitions: int, *, created: bool, publish_changes: bool
) -> DefaultsReport:
    """Write the configured defaults to every partition if the log needs them.

    Always when the topic was just `created`; with `publish_changes` (init, dev) also
    when a partition has none yet or the configuration differs from them. Without it (a
    worker starting) a difference is only reported: the log decides.
    """
    wanted = fold_config(settings)
    if created:
        await _publish(settings.kafka, wanted, partitions)
        return DefaultsReport(True, "written to the new topic")
    try:
        conn = await connect(settings.database.dsn(), settings.database.schema_name)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise IntegrationError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        in_force = await defaults_in_force(conn, settings.kafka.usage_topic)
    finally:
        await conn.close()
    # Rows of partitions the topic does not have (a dev data directory made with more
    # partitions) are no log's: they neither differ nor get written.
    differ = sorted(p for p, config in in_force.items() if p < partitions and config != wanted)
    missing = sorted(set(range(partitions)) - set(in_force))
    if not differ and not missing:
        return DefaultsReport(False, "unchanged")
    if not publish_changes:
        if not differ:
            return DefaultsReport(False, "not applied yet")
        warning = (
            f"the configured defaults differ from those in the log (partitions {differ}); the "
            "log's decide: run `tokenquota init` to write the configured ones"
        )
        return DefaultsReport(False, warning, warning)
    await _publish(settings.kafka, wanted, partitions)
    return DefaultsReport(True, "configuration changed" if differ else "written (none applied yet)")


async def _publish(kafka: KafkaSettings, config: FoldConfig, partitions: int) -> None:
    """One DefaultsSet (its own event id) to each partition, acknowledged by the broker."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", client_id="tokenquota-init"
    )
    try:
        async with asyncio.timeout(30):
            await producer.start()
            sent = [
                await producer.send(
                    kafka.usage_topic, encode(defaults_event(config)), key=b"*", partition=p
                )
                for p in range(partitions)
            ]
            await asyncio.gather(*sent)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise IntegrationError(
            f"writing the defaults to {kafka.usage_topic!r} failed: {exc}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
