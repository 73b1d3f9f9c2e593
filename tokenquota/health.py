"""`check_integration_health()`: is the pipeline working, and if not, what is wrong.

Each component is `ok`, `degraded` (working, but needs a look) or `down` (not working),
with a reason that names what was found:

- broker: reachable and the usage topic exists (down otherwise);
- database: reachable and migrated (down otherwise);
- worker: some worker process wrote its status within the last WORKER_SILENT seconds
  (down when none did: nothing would be applied); down too when a partition's checkpoint
  is before the log's first offset (retention or delete-records removed messages before
  they were applied: the worker stops at every restart until the gap is accepted with
  `tokenquota checkpoints accept-gap`); lag per partition (highwater minus the
  projections' next offset) above LAG_DEGRADED, or events waiting while the last batch
  is older than STALE_BATCH seconds, make it degraded;
- dlq: dead letters that arrived after the last review make it degraded (each needs a
  look: `tokenquota dlq show`, then `tokenquota dlq ack` marks them reviewed);
- spool: bytes this host's emitters have not had acknowledged by Kafka make it degraded.

The overall status is the worst of them. Every probe has a timeout, so the check answers
within a few seconds even when a server is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from .config import Settings, load_settings
from .errors import IntegrationError
from .kafka_probe import LogBounds, partition_bounds, partition_highwaters
from .producers.spool_depth import pending_bytes
from .projections import schema_drift
from .projections.dead_letters import reviewed_offsets, unreviewed
from .projections.log_gaps import gap_of

__all__ = [
    "LAG_DEGRADED",
    "STALE_BATCH",
    "WORKER_SILENT",
    "ComponentHealth",
    "HealthStatus",
    "IntegrationHealth",
    "check_integration_health",
    "check_integration_health_async",
]

_T = TypeVar("_T")
HealthStatus = Literal["ok", "degraded", "down"]
#: Events waiting in one partition above which the worker is degraded.
LAG_DEGRADED = 10_000
#: Seconds without a batch, while events wait, after which the worker is degraded.
STALE_BATCH = 60.0
#: Seconds without a status write after which a worker process counts as gone.
WORKER_SILENT = 15.0
_TIMEOUT = 3.0
_ORDER: tuple[HealthStatus, ...] = ("ok", "degraded", "down")


class ComponentHealth(BaseModel):
    """One component's state, why, and what was measured."""

    model_config = ConfigDict(frozen=True)

    status: HealthStatus
    reason: str
    details: dict[str, Any] = Field(default_factory=dict)


class IntegrationHealth(BaseModel):
    """The pipeline's state: the worst of its components'."""

    model_config = ConfigDict(frozen=True)

    status: HealthStatus
    broker: ComponentHealth
    database: ComponentHealth
    worker: ComponentHealth
    dlq: ComponentHealth
    spool: ComponentHealth
    checked_at: datetime


def _worst(*states: HealthStatus) -> HealthStatus:
    return max(states, key=_ORDER.index)


async def _answer(probe: Awaitable[_T]) -> _T | IntegrationError:
    """What a broker probe found, or why it could not."""
    try:
        return await probe
    except IntegrationError as exc:
        return exc


@dataclass(frozen=True, slots=True)
class _Database:
    health: ComponentHealth
    #: partition -> next offset of the usage topic (None: not known)
    checkpoints: dict[int, int] | None = None
    workers: list[asyncpg.Record] = field(default_factory=list)
    #: partition -> offset of the DLQ up to which an operator reviewed it
    reviewed: dict[int, int] = field(default_factory=dict)


async def _database(settings: Settings) -> _Database:
    db = settings.database
    try:
        conn = await asyncpg.connect(
            db.dsn(), timeout=_TIMEOUT, server_settings={"search_path": db.schema_name}
        )
    except Exception as exc:  # any failure to connect is the answer here
        reason = f"PostgreSQL unreachable: {exc}" if str(exc) else "PostgreSQL unreachable"
        return _Database(ComponentHealth(status="down", reason=reason))
    try:
        drift = await asyncio.wait_for(schema_drift(conn, db.schema_name), _TIMEOUT)
        if drift:
            reason = (
                f"schema {db.schema_name} is not migrated ({drift[0]}): run `tokenquota migrate`"
            )
            return _Database(ComponentHealth(status="down", reason=reason))
        checkpoints = await conn.fetch(
            "SELECT kafka_partition, next_offset FROM partition_checkpoints WHERE topic = $1",
            settings.kafka.usage_topic,
        )
        workers = await conn.fetch(
            "SELECT member, seen_at, last_batch_at, events_applied,"
            " extract(epoch FROM now() - seen_at)::float8 AS silent_for,"
            " extract(epoch FROM now() - last_batch_at)::float8 AS batch_age"
            " FROM worker_status WHERE group_id = $1 ORDER BY seen_at DESC",
            settings.worker.group_id,
        )
        reviewed = await reviewed_offsets(conn, settings.kafka.dlq_topic)
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        reason = f"PostgreSQL query failed: {exc}"
        return _Database(ComponentHealth(status="down", reason=reason))
    finally:
        await conn.close()
    return _Database(
        ComponentHealth(status="ok", reason=f"reachable, schema {db.schema_name} migrated"),
        {r["kafka_partition"]: r["next_offset"] for r in checkpoints},
        workers,
        reviewed,
    )


def _worker(
    settings: Settings,
    bounds: dict[int, LogBounds] | None,
    checkpoints: dict[int, int] | None,
    workers: list[asyncpg.Record],
) -> ComponentHealth:
    group = settings.worker.group_id
    if checkpoints is None:
        return ComponentHealth(status="down", reason="unknown: the database cannot be read")
    lag = None
    if bounds is not None:
        lag = {p: max(b.end - checkpoints.get(p, 0), 0) for p, b in sorted(bounds.items())}
    waiting = sum(lag.values()) if lag is not None else None
    alive = [w for w in workers if w["silent_for"] <= WORKER_SILENT]
    last_batch = min((w["batch_age"] for w in workers if w["batch_age"] is not None), default=None)
    details: dict[str, Any] = {
        "group_id": group,
        "members": [w["member"] for w in alive],
        "lag": lag,
        "events_waiting": waiting,
        "last_batch_age_seconds": None if last_batch is None else round(last_batch, 3),
    }
    topic = settings.kafka.usage_topic
    gaps = [
        gap
        for p, b in sorted((bounds or {}).items())
        if (gap := gap_of(topic, p, checkpoints.get(p), b.first)) is not None
    ]
    if gaps:
        details["log_gaps"] = [
            {"partition": g.partition, "from_offset": g.checkpoint, "to_offset": g.first}
            for g in gaps
        ]
        first = gaps[0]
        return ComponentHealth(
            status="down",
            reason=f"partition {first.partition}: {first} left the log before they were "
            "applied (retention or delete-records), so the worker stops at every restart; "
            "check with `tokenquota checkpoints show`, then accept the loss with "
            f"`tokenquota checkpoints accept-gap --partition {first.partition}`"
            + (f" ({len(gaps)} partitions have such a gap)" if len(gaps) > 1 else ""),
            details=details,
        )
    if not alive:
        if waiting:
            return ComponentHealth(
                status="down",
                reason=f"no worker of group {group} is running; {waiting:,} events waiting",
                details=details,
            )
        return ComponentHealth(
            status="down",
            reason=f"no worker of group {group} is running (no event is waiting yet)",
            details=details,
        )
    if lag is None:
        return ComponentHealth(
            status="degraded",
            reason=f"{len(alive)} worker(s) running; lag unknown (the broker cannot be asked)",
            details=details,
        )
    worst = max(lag.items(), key=lambda item: item[1], default=(0, 0))
    if worst[1] > LAG_DEGRADED:
        return ComponentHealth(
            status="degraded",
            reason=f"partition {worst[0]} is {worst[1]:,} events behind ({waiting:,} in all)",
            details=details,
        )
    if waiting and (last_batch is None or last_batch > STALE_BATCH):
        return ComponentHealth(
            status="degraded",
            reason=f"{waiting:,} events waiting and no batch applied for "
            f"{'ever' if last_batch is None else f'{last_batch:.0f} s'}",
            details=details,
        )
    return ComponentHealth(
        status="ok",
        reason=f"{len(alive)} worker(s) running, {waiting:,} events waiting",
        details=details,
    )


async def check_integration_health_async(settings: Settings | None = None) -> IntegrationHealth:
    """Probe the broker, the database, the worker, the DLQ and the local spool."""
    settings = settings or load_settings()
    kafka = settings.kafka
    usage, dlq, facts = await asyncio.gather(
        # (the bounds cost what the highwaters alone do: a probe of its own starts from
        # offset 0 either way)
        _answer(partition_bounds(kafka, kafka.usage_topic, timeout=_TIMEOUT)),
        _answer(partition_highwaters(kafka, kafka.dlq_topic, timeout=_TIMEOUT)),
        _database(settings),
    )
    if isinstance(usage, IntegrationError):
        broker = ComponentHealth(status="down", reason=str(usage))
        bounds = None
    else:
        broker = ComponentHealth(
            status="ok",
            reason=f"reachable, {kafka.usage_topic} has {len(usage)} partitions",
            details={"bootstrap_servers": kafka.bootstrap_servers, "partitions": len(usage)},
        )
        bounds = usage
    dead = _dead_letters(kafka.dlq_topic, dlq, facts.reviewed)
    waiting = pending_bytes(settings.spool_dir)
    spool = ComponentHealth(
        status="degraded" if waiting else "ok",
        reason=(
            f"{waiting:,} bytes in {settings.spool_dir} not yet acknowledged by Kafka"
            if waiting
            else f"{settings.spool_dir} holds nothing unsent"
        ),
        details={"directory": str(settings.spool_dir), "bytes": waiting},
    )
    worker = _worker(settings, bounds, facts.checkpoints, facts.workers)
    database = facts.health
    return IntegrationHealth(
        status=_worst(broker.status, database.status, worker.status, dead.status, spool.status),
        broker=broker,
        database=database,
        worker=worker,
        dlq=dead,
        spool=spool,
        checked_at=datetime.now(UTC),
    )


def _dead_letters(
    topic: str, highwaters: dict[int, int] | IntegrationError, reviewed: dict[int, int]
) -> ComponentHealth:
    """Degraded while dead letters wait for a look (`tokenquota dlq show`, then `ack`)."""
    if isinstance(highwaters, IntegrationError):
        return ComponentHealth(status="degraded", reason=f"DLQ depth unknown: {highwaters}")
    total = sum(highwaters.values())
    depth = unreviewed(highwaters, reviewed)
    details = {"depth": depth, "total": total}
    if depth:
        reason = (
            f"{depth:,} unreviewed messages in {topic}: see `tokenquota dlq show`, then "
            "`tokenquota dlq ack`"
        )
        return ComponentHealth(status="degraded", reason=reason, details=details)
    reason = f"{topic} holds {total:,} reviewed messages" if total else f"{topic} is empty"
    return ComponentHealth(status="ok", reason=reason, details=details)


def check_integration_health(settings: Settings | None = None) -> IntegrationHealth:
    """check_integration_health_async, for code that runs no event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(check_integration_health_async(settings))
    raise RuntimeError(
        "check_integration_health blocks; inside a running event loop await "
        "check_integration_health_async instead"
    )
