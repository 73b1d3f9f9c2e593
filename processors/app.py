"""The faust-streaming worker: consume the usage topic in batches, project, then acknowledge.

A batch is whatever has arrived (whole fetches, up to about `worker.batch_size`), so a
lone reservation is decided at once and a backlog goes through in bulk. Kept thin on
purpose: decode, route bad messages to the DLQ, `apply_batch` in one PostgreSQL
transaction (retried with backoff while the database fails), and only then
acknowledge the batch's offsets. Correctness rests on the ledger, not on faust's
exactly-once mode or its tables, neither of which is used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import faust
from faust.types import TP, Message, StreamT
from mode import CrashingSupervisor
from mode.types.signals import BaseSignalT

from tokenquota.config import Settings
from tokenquota.gc_settings import BATCH_THRESHOLDS, bulk_gc
from tokenquota.projections import (
    DATABASE_FAILURES,
    LogRecord,
    PoisonHandler,
    apply_batch_isolating,
    connect,
)
from tokenquota.projections.state import log_time
from tokenquota.schemas import EventDecodeError, decode

from .batch_consumer import BatchApp, BatchConsumer, Fetch
from .batching import Backlog, take_ready
from .dlq import DeadLetter, dead_letter_headers
from .heartbeat import Heartbeat
from .metrics import (
    DEAD_LETTERS,
    forget_lag,
    lags_after,
    observe_batch,
    observe_lag,
    observe_stages,
)

__all__ = ["Projector", "create_app"]

log = logging.getLogger("tokenquota.worker")
#: Kafka's timestamp type of a record stamped by the broker (0 is the producer's CreateTime).
_LOG_APPEND_TIME = 1


class Projector:
    """Applies batches of raw messages to the projections; owns one database connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: asyncpg.Connection | None = None
        self.applied = 0
        self.duplicates = 0
        self.dead_letters = 0
        self.heartbeat = Heartbeat(settings)
        self._seen: set[tuple[str, int]] = set()

    def split(self, messages: Sequence[Any]) -> tuple[list[LogRecord], list[DeadLetter]]:
        """Decode faust messages; invalid ones become dead letters with their reason."""
        records: list[LogRecord] = []
        bad: list[DeadLetter] = []
        # Records produced together share their timestamp: make its datetime once.
        last_ms, stamped = -1, log_time(0)
        for message in messages:
            if (message.topic, message.partition) not in self._seen:
                self._seen.add((message.topic, message.partition))
                log.info(
                    "projecting %s[%d] from offset %d (log clock: %s)",
                    message.topic,
                    message.partition,
                    message.offset,
                    "the broker's append times"
                    if message.timestamp_type == _LOG_APPEND_TIME
                    else "the producers' record timestamps (the broker does not stamp them)",
                )
            value: bytes = message.value if message.value is not None else b""
            try:
                event = decode(value)
            except EventDecodeError as exc:
                bad.append(
                    DeadLetter(
                        message.key,
                        value,
                        message.topic,
                        message.partition,
                        message.offset,
                        str(exc),
                    )
                )
                continue
            ms = round(message.timestamp * 1000)  # faust gives milliseconds as float seconds
            if ms != last_ms:
                last_ms, stamped = ms, log_time(ms)
            records.append(
                LogRecord(event, value, message.topic, message.partition, message.offset, stamped)
            )
        return records, bad

    async def apply(
        self, records: list[LogRecord], bad: list[DeadLetter], on_poison: PoisonHandler
    ) -> None:
        """Apply in one transaction, retrying with backoff until the database takes it.

        An event the projections can never hold is handed to `on_poison` and skipped
        (see apply_batch_isolating); only a failing server or connection is retried.
        """
        delay = 0.1
        started = time.perf_counter()
        while True:
            try:
                conn = await self._connection()
                result = await apply_batch_isolating(
                    conn,
                    records,
                    schema=self.settings.database.schema_name,
                    skipped=[(d.topic, d.partition, d.offset) for d in bad],
                    on_poison=on_poison,
                    # A batch must run on from its partitions' checkpoints without a hole
                    # (LogGapError, fatal, otherwise): see projections/continuity.py.
                    contiguous=True,
                )
            except DATABASE_FAILURES as exc:
                log.warning(
                    "batch of %d not applied (%s); retrying in %.1f s", len(records), exc, delay
                )
                await self._drop_connection()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.worker.retry_backoff_max)
                continue
            self.applied += result.applied
            self.duplicates += result.duplicates
            observe_batch(result, time.perf_counter() - started)
            self.heartbeat.batch_applied(result.applied)
            log.debug(
                "batch: %d applied, %d duplicates, %d dead letters",
                result.applied,
                result.duplicates,
                len(bad),
            )
            return

    async def close(self) -> None:
        """Close the database connection."""
        await self._drop_connection()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            db = self.settings.database
            conn = await connect(db.dsn(), db.schema_name)
            # The batch's statements are prepared once and run with new arrays each time;
            # planned anew each time (PostgreSQL's choice for them), the write of all the
            # projections took 1.5-2 ms more per batch, its transaction 9 % longer
            # (strict reservations, 100 callers). Their plans are key look-ups and
            # upserts whatever the arrays hold.
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


@dataclass(frozen=True, slots=True)
class _Batch:
    messages: list[Message]
    records: list[LogRecord]
    bad: list[DeadLetter]
    #: Seconds per stage so far (see metrics.STAGES), summed over the messages.
    stages: dict[str, float]
    decoded_at: float

    @staticmethod
    def taken(fetches: list[Fetch], projector: Projector) -> _Batch:
        """Fetches decoded into one batch, their stages so far timed."""
        taken_at = time.time()
        messages = fetches[0] if len(fetches) == 1 else [m for f in fetches for m in f]
        records, bad = projector.split(messages)
        decoded_at = time.time()
        stages = {
            "broker": sum(f.since_stamped for f in fetches),
            "queued": sum(len(f) * (taken_at - f.handed_at) for f in fetches),
            "decode": len(messages) * (decoded_at - taken_at),
        }
        return _Batch(messages, records, bad, stages, decoded_at)

    @staticmethod
    def joined(batches: list[_Batch]) -> _Batch:
        """One batch of `batches`, in order."""
        if len(batches) == 1:
            return batches[0]
        stages: dict[str, float] = {}
        for batch in batches:
            for stage, seconds in batch.stages.items():
                stages[stage] = stages.get(stage, 0.0) + seconds
        return _Batch(
            [m for b in batches for m in b.messages],
            [r for b in batches for r in b.records],
            [d for b in batches for d in b.bad],
            stages,
            batches[-1].decoded_at,
        )


def create_app(settings: Settings) -> faust.App:
    """A faust app with one agent projecting `kafka.usage_topic` into PostgreSQL."""
    kafka, worker = settings.kafka, settings.worker
    if kafka.bootstrap_servers is None:
        raise ValueError("kafka.bootstrap_servers is not set (KAFKA_BOOTSTRAP_SERVERS)")
    brokers = [f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")]
    # faust's default is "<app id>-data" in the working directory, and it makes only the
    # last level of the path.
    datadir = settings.data_dir.resolve() / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = BatchApp(
        worker.group_id,
        broker=brokers,
        web_enabled=False,
        datadir=str(datadir),
        topic_disable_leader=True,
        topic_allow_declare=False,
        store="memory://",
        broker_session_timeout=worker.session_timeout,
        broker_heartbeat_interval=max(worker.session_timeout / 4, 0.5),
        broker_commit_interval=worker.commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=5,
    )
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    app.fetch_max_wait = worker.fetch_max_wait
    app.batch_topics = frozenset({kafka.usage_topic})
    usage = app.topic(kafka.usage_topic, **raw)  # type: ignore[arg-type]
    dlq = app.topic(kafka.dlq_topic, **raw)  # type: ignore[arg-type]
    projector = Projector(settings)

    async def project(stream: StreamT[bytes]) -> None:
        # The agent subscribes the topic, but its messages never reach this stream: the
        # consumer hands whole fetches to `consumer.fetches` (see batch_consumer). A
        # batch is what has arrived, so one event goes through at once and a backlog in
        # bulk; what arrives while a batch is applied is decoded meanwhile and applied
        # next, all of it in one transaction.
        aiter(stream.channel)  # subscribes, as iterating would
        consumer = cast(BatchConsumer, app.consumer)
        ready: Backlog[_Batch] = Backlog(worker.batch_size)

        async def take() -> None:
            while True:
                fetches = await take_ready(consumer.fetches, worker.batch_size, worker.batch_within)
                for fetch in fetches:
                    consumer.track(fetch)
                batch = _Batch.taken(fetches, projector)
                await ready.put(batch, len(batch.messages))

        async def apply() -> None:
            while True:
                batches = await ready.take()
                started = time.time()
                waited = sum(len(b.messages) * (started - b.decoded_at) for b in batches)
                batch = _Batch.joined(batches)
                for letter in batch.bad:
                    await _dead_letter(dlq, letter, worker.retry_backoff_max)
                projector.dead_letters += len(batch.bad)
                if batch.bad:
                    DEAD_LETTERS.labels("invalid").inc(len(batch.bad))

                async def poison(record: LogRecord, reason: str, batch: _Batch = batch) -> None:
                    key = next(
                        m.key
                        for m in batch.messages
                        if (m.partition, m.offset) == (record.partition, record.offset)
                    )
                    letter = DeadLetter(
                        key, record.payload, record.topic, record.partition, record.offset, reason
                    )
                    await _dead_letter(dlq, letter, worker.retry_backoff_max)
                    projector.dead_letters += 1
                    DEAD_LETTERS.labels("poison").inc()

                await projector.apply(batch.records, batch.bad, poison)
                consumer.ack_all(batch.messages)  # only now, after the transaction has committed
                count = len(batch.messages)
                stages = {
                    **batch.stages,
                    "waiting": waited,
                    "transaction": count * (time.time() - started),
                }
                observe_stages(stages, count)
                observe_lag(worker.group_id, lags_after(batch.messages, consumer.highwater))

        try:
            # The app is up by now: all of it is frozen out of collection.
            with bulk_gc(BATCH_THRESHOLDS):
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(take())
                    tasks.create_task(apply())
                    tasks.create_task(projector.heartbeat.run())
        finally:
            await projector.close()

    # Crashing, not faust's default of restarting the agent: a restarted agent would go
    # on with the next fetch, past the batch the crash dropped. Stopped, the worker is
    # restarted by its supervisor and fetches from the committed offset.
    app.agent(usage, name="tokenquota.project", supervisor_strategy=CrashingSupervisor)(project)

    def forget_revoked(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs["revoked"]
        forget_lag(worker.group_id, revoked)

    app.on_partitions_revoked.connect(forget_revoked)

    app.projector = projector  # type: ignore[attr-defined]
    return app


async def _dead_letter(dlq: faust.TopicT, letter: DeadLetter, backoff_max: float) -> None:
    delay = 0.1
    while True:
        try:
            pending = await dlq.send(
                key=letter.key, value=letter.value, headers=dead_letter_headers(letter)
            )
            await pending
        except Exception as exc:  # the broker is failing; never skip a message
            log.warning(
                "dead letter for %s[%d]@%d not sent (%s); retrying",
                letter.topic,
                letter.partition,
                letter.offset,
                exc,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, backoff_max)
            continue
        log.warning(
            "message %s[%d]@%d sent to the DLQ: %s",
            letter.topic,
            letter.partition,
            letter.offset,
            letter.reason,
        )
        return
