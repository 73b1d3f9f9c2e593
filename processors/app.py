"""The faust-streaming worker: consume the usage topic in batches, project, then acknowledge.

A batch is whatever has arrived (up to `worker.batch_size`), so a lone reservation is
decided at once and a backlog goes through in bulk. Kept thin on purpose: decode,
route bad messages to the DLQ, `apply_batch` in one
PostgreSQL transaction (retried with backoff while the database fails), and only then
acknowledge the batch's offsets. Correctness rests on the ledger, not on faust's
exactly-once mode or its tables, neither of which is used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import asyncpg
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import ChannelT, EventT, StreamT

from tokenquota.config import Settings, fold_config
from tokenquota.gc_settings import bulk_gc
from tokenquota.projections import LogRecord, apply_batch, connect
from tokenquota.schemas import EventDecodeError, decode

from .dlq import DeadLetter, dead_letter_headers

__all__ = ["Projector", "create_app", "take_ready"]

log = logging.getLogger("tokenquota.worker")
_T = TypeVar("_T")


class Projector:
    """Applies batches of raw messages to the projections; owns one database connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = fold_config(settings)
        self._conn: asyncpg.Connection | None = None
        self.applied = 0
        self.duplicates = 0
        self.dead_letters = 0
        self._seen: set[tuple[str, int]] = set()

    def split(self, messages: Sequence[Any]) -> tuple[list[LogRecord], list[DeadLetter]]:
        """Decode faust messages; invalid ones become dead letters with their reason."""
        records: list[LogRecord] = []
        bad: list[DeadLetter] = []
        for message in messages:
            if (message.topic, message.partition) not in self._seen:
                self._seen.add((message.topic, message.partition))
                log.info(
                    "projecting %s[%d] from offset %d",
                    message.topic,
                    message.partition,
                    message.offset,
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
            records.append(
                LogRecord(event, value, message.topic, message.partition, message.offset)
            )
        return records, bad

    async def apply(self, records: list[LogRecord], bad: list[DeadLetter]) -> None:
        """Apply in one transaction, retrying with backoff until the database takes it."""
        delay = 0.1
        while True:
            try:
                conn = await self._connection()
                result = await apply_batch(
                    conn,
                    records,
                    self.config,
                    schema=self.settings.database.schema_name,
                    skipped=[(d.topic, d.partition, d.offset) for d in bad],
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning(
                    "batch of %d not applied (%s); retrying in %.1f s", len(records), exc, delay
                )
                await self._drop_connection()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.worker.retry_backoff_max)
                continue
            self.applied += result.applied
            self.duplicates += result.duplicates
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
            self._conn = await connect(db.dsn(), db.schema_name)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


@dataclass(frozen=True, slots=True)
class _Batch:
    events: list[EventT[bytes]]
    records: list[LogRecord]
    bad: list[DeadLetter]


async def take_ready(queue: asyncio.Queue[_T], most: int, linger: float) -> list[_T]:
    """Wait for one event, then take what else is queued, up to `most` events.

    With `linger` > 0, a batch that is not full waits that long once for more events.
    """
    events = [await queue.get()]
    if linger > 0 and queue.qsize() < most - 1:
        await asyncio.sleep(linger)
    while len(events) < most and not queue.empty():
        events.append(queue.get_nowait())
    return events


def _bound_fetch_wait(seconds: float) -> None:
    """Make faust's consumers wait at most `seconds` on an empty fetch.

    faust builds its aiokafka consumer with `fetch_max_wait_ms=1500` and no setting to
    change it; a broker that holds an empty fetch for the whole wait (the embedded
    Tansu broker does) then delays every event that arrives meanwhile by up to 1.5 s,
    which is the whole latency of a strict reservation.
    """
    thread = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread, "_tokenquota_original", thread._create_worker_consumer)

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = int(seconds * 1000)  # read by consumer.start()
        return consumer

    thread._tokenquota_original = original  # type: ignore[attr-defined]
    thread._create_worker_consumer = create  # type: ignore[method-assign]


def create_app(settings: Settings) -> faust.App:
    """A faust app with one agent projecting `kafka.usage_topic` into PostgreSQL."""
    kafka, worker = settings.kafka, settings.worker
    if kafka.bootstrap_servers is None:
        raise ValueError("kafka.bootstrap_servers is not set (KAFKA_BOOTSTRAP_SERVERS)")
    brokers = [f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")]
    _bound_fetch_wait(worker.fetch_max_wait)
    app = faust.App(
        worker.group_id,
        broker=brokers,
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        store="memory://",
        broker_session_timeout=worker.session_timeout,
        broker_heartbeat_interval=max(worker.session_timeout / 4, 0.5),
        broker_commit_interval=worker.commit_interval,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=5,
        stream_buffer_maxsize=max(worker.batch_size * 2, 4096),
    )
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    usage = app.topic(kafka.usage_topic, **raw)  # type: ignore[arg-type]
    dlq = app.topic(kafka.dlq_topic, **raw)  # type: ignore[arg-type]
    projector = Projector(settings)

    async def project(stream: StreamT[bytes]) -> None:
        # Not `async for` over the stream, nor `stream.take()`: both pay faust's per-event
        # path (processors, sensors, current_event) and take() waits out its whole window
        # before each batch. Reading the channel's queue directly gives batches of what is
        # there, so one event goes through at once and a backlog goes through in bulk, and
        # the next batch is decoded while the previous one is being applied.
        channel = cast("ChannelT[bytes]", aiter(stream.channel))  # subscribes, as iterating would
        queue = channel.queue
        ready: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=1)

        async def take() -> None:
            while True:
                events = await take_ready(queue, worker.batch_size, worker.batch_within)
                records, bad = projector.split([e.message for e in events])
                await ready.put(_Batch(events, records, bad))

        async def apply() -> None:
            while True:
                batch = await ready.get()
                for letter in batch.bad:
                    await _dead_letter(dlq, letter, worker.retry_backoff_max)
                projector.dead_letters += len(batch.bad)
                await projector.apply(batch.records, batch.bad)
                for event in batch.events:  # only now, after the transaction has committed
                    event.ack()

        try:
            with bulk_gc():  # the app is up by now: freeze all of it out of collection
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(take())
                    tasks.create_task(apply())
        finally:
            await projector.close()

    app.agent(usage, name="tokenquota.project")(project)

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
