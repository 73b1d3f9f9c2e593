"""The emitter against a real broker that stops answering in the middle of a send
(SIGSTOP, then SIGCONT), and a large spool re-sent in chunks."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support import reserved, used, wait_until
from tokenquota.config import EmitterSettings, KafkaSettings
from tokenquota.embedded import EmbeddedBroker
from tokenquota.kafka_probe import partition_highwaters, seek_to_start
from tokenquota.producers import Emitter
from tokenquota.producers.spool import Spool, SpooledMessage
from tokenquota.schemas import Event, decode, encode
from tokenquota.topics import ensure_topics

pytestmark = pytest.mark.integration

SEGMENT = re.compile(r"usage\.spool(\.\d+)?")


async def read_all(kafka: KafkaSettings) -> list[Event]:
    """Every event in the usage topic, partition by partition, in log order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(kafka.usage_topic, p) for p in range(kafka.partitions)]
        consumer.assign(partitions)
        seek_to_start(consumer, partitions)
        # (the fetch highwater: the embedded broker answers end_offsets() wrongly)
        highwaters = await partition_highwaters(kafka, kafka.usage_topic)
        ends = {tp: highwaters[tp.partition] for tp in partitions}
        events: list[Event] = []
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                for message in (await consumer.getmany(tp, timeout_ms=10_000)).get(tp, []):
                    assert message.value is not None
                    events.append(decode(message.value))
        return events
    finally:
        await consumer.stop()


def first_seen(events: list[Event]) -> list[str]:
    """Event ids in the order of their first appearance (the ledger drops the repeats)."""
    return list(dict.fromkeys(str(e.event_id) for e in events))


def stopped(pid: int) -> bool:
    """True once every thread of `pid` is stopped. kill(SIGSTOP) returns before that: each
    thread stops when next scheduled, and until then the broker may still answer."""
    try:
        stats = [(task / "stat").read_text() for task in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:  # a thread ended while we looked
        return False
    return all(stat.rsplit(")", 1)[1].split()[0] == "T" for stat in stats)


def unread_bytes(port: int) -> int:
    """Bytes clients sent to the server on 127.0.0.1:`port` that it has not read yet (the
    receive queues of its established connections, from /proc/net/tcp)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if int(local.rsplit(":", 1)[1], 16) == port and state == "01":  # ESTABLISHED
            total += int(queues.split(":")[1], 16)
    return total


async def test_a_call_in_flight_when_the_broker_stops_answering_keeps_its_place(
    tmp_path: Path,
) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")
    kafka = KafkaSettings(
        bootstrap_servers=broker.start(),
        usage_topic="pause.usage",
        dlq_topic="pause.dlq",
        partitions=3,
    )
    try:
        await ensure_topics(kafka)
        options = EmitterSettings(linger_ms=0, send_timeout=2, retry_interval=0.2)
        hold = reserved("alice", 100)
        settle = used("alice", 80, rid=hold.reservation_id)
        others = [used(f"session-{i}", i) for i in range(30)]
        async with Emitter(kafka, options, tmp_path / "spool") as emitter:
            assert await emitter.emit(used("warm-up", 1)) == "acked"
            assert broker.pid is not None
            pid, waiting = broker.pid, unread_bytes(broker.port)

            async def broker_stopped() -> bool:
                return stopped(pid)

            async def hold_at_the_broker() -> bool:
                # The reservation's produce request (uncompressed: its bytes whole) waits
                # at the stopped broker: its round is in flight and gets no answer.
                return unread_bytes(broker.port) - waiting >= len(encode(hold))

            os.kill(pid, signal.SIGSTOP)
            try:
                await wait_until(broker_stopped, 10, "the broker to stop (SIGSTOP)")
                first = asyncio.create_task(emitter.emit(hold))
                await wait_until(hold_at_the_broker, 5, "the reservation's request in flight")
                assert not first.done()
                second = asyncio.create_task(emitter.emit_many([settle, *others]))
                deliveries = [await first, *await second]
            finally:
                os.kill(pid, signal.SIGCONT)
            # Neither got an answer within send_timeout: both are spooled, in emit order.
            assert set(deliveries) == {"spooled"}
            await emitter.flush(timeout=30)
            assert await emitter.emit(used("after", 1)) == "acked"
        arrived = await read_all(kafka)
        seen = first_seen(arrived)
        assert set(seen) >= {str(e.event_id) for e in [hold, settle, *others]}
        alice = [i for i in seen if i in {str(hold.event_id), str(settle.event_id)}]
        assert alice == [str(hold.event_id), str(settle.event_id)]
    finally:
        broker.stop()


async def test_a_large_spool_is_re_sent_in_order_and_emptied(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    events = [used(f"session-{i % 50}", i) for i in range(30_000)]
    spool = Spool(tmp_path / "spool", 1 << 30, segment_bytes=4 << 20)
    for start in range(0, len(events), 1000):
        spool.append(
            [SpooledMessage(e.session_id.encode(), encode(e)) for e in events[start : start + 1000]]
        )
    assert len([p for p in (tmp_path / "spool").iterdir() if SEGMENT.fullmatch(p.name)]) > 1
    spool.close()
    async with Emitter(kafka_settings, EmitterSettings(), tmp_path / "spool") as emitter:
        await emitter.flush(timeout=60)
        assert emitter.spooled_bytes == 0
    arrived = await read_all(kafka_settings)
    seen = first_seen(arrived)
    assert sorted(seen) == sorted(str(e.event_id) for e in events)
    for session in ("session-0", "session-49"):
        emitted = [str(e.event_id) for e in events if e.session_id == session]
        assert [i for i in seen if i in set(emitted)] == emitted
    segments = [p for p in (tmp_path / "spool").iterdir() if SEGMENT.fullmatch(p.name)]
    assert [p.stat().st_size for p in segments] == [0]  # one segment left, and it is empty
