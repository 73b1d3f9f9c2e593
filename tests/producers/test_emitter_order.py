"""The emitter's sending logic against a fake producer (pure unit tests, no Kafka): order
through failed batches, group commit, batch sizes, linger, draining the spool in chunks."""

from __future__ import annotations

import asyncio
import collections
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from tests.support import reserved, used, wait_until
from tokenquota.config import EmitterSettings, KafkaSettings
from tokenquota.errors import IntegrationError
from tokenquota.producers import Emitter, SpoolFullError
from tokenquota.producers.spool import Spool, SpooledMessage
from tokenquota.schemas import decode

PARTITIONS = {0, 1, 2}


@dataclass
class Submission:
    """A batch (or, through `send`, one record) handed to the fake, not answered yet."""

    partition: int
    records: list[tuple[bytes, bytes]]
    future: asyncio.Future[object]
    at: float


@dataclass
class FakeBroker:
    """What the fake producers' batches reached: one log per topic, in append order.

    Batches are answered in the order they were handed over, as aiokafka sends a
    partition's batches. While `stalled`, nothing is answered; `fail_first` fails the
    oldest unanswered batch as an expired one (and may still append it, as a broker that
    got the request but whose answer never came back), then answers the rest.
    """

    log: list[tuple[int, bytes]] = field(default_factory=list)
    waiting: list[Submission] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    stalled: bool = False
    down: bool = False
    fail_at: set[int] = field(default_factory=set)  # fail the n-th submission (1-based), once
    producers: int = 0

    def submit(self, partition: int, records: list[tuple[bytes, bytes]]) -> asyncio.Future[object]:
        loop = asyncio.get_running_loop()
        submission = Submission(partition, records, loop.create_future(), loop.time())
        self.submissions.append(submission)
        if len(self.submissions) in self.fail_at:
            submission.future.set_exception(KafkaConnectionError("fake: connection reset"))
            return submission.future
        self.waiting.append(submission)
        self.answer()
        return submission.future

    def answer(self) -> None:
        """Unless stalled, acknowledge every waiting batch, oldest first."""
        while self.waiting and not self.stalled:
            submission = self.waiting.pop(0)
            if not submission.future.done():
                self.log += [(submission.partition, value) for _, value in submission.records]
                submission.future.set_result(None)

    def fail_first(self, *, appended: bool) -> None:
        submission = self.waiting.pop(0)
        if appended:
            self.log += [(submission.partition, value) for _, value in submission.records]
        submission.future.set_exception(KafkaTimeoutError())
        self.stalled = False
        self.answer()

    def values(self) -> list[bytes]:
        return [value for _, value in self.log]


class FakeBatch:
    """Like aiokafka's BatchBuilder: records until `limit` bytes (the first always fits)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.records: list[tuple[bytes, bytes]] = []
        self.bytes = 61  # a record batch header
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: int | None) -> object | None:
        size = len(key) + len(value) + 21
        if self.closed or (self.records and self.bytes + size > self.limit):
            self.closed = True
            return None
        self.records.append((key, value))
        self.bytes += size
        return object()

    def close(self) -> None:
        self.closed = True

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    """The parts of AIOKafkaProducer the emitter uses."""

    def __init__(self, broker: FakeBroker, batch_limit: int) -> None:
        self.broker = broker
        self.batch_limit = batch_limit
        self.stopped = False

    async def partitions_for(self, topic: str) -> set[int]:
        return PARTITIONS

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_limit)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        assert not self.stopped, "a stopped producer was handed a batch"
        return self.broker.submit(partition, batch.records)

    async def send(self, topic: str, value: bytes, key: bytes, partition: int | None = None) -> Any:
        assert not self.stopped, "a stopped producer was handed a record"
        return self.broker.submit(partition or 0, [(key, value)])

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True


def fake_emitter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: FakeBroker, **options: Any
) -> Emitter:
    settings = EmitterSettings(**{"send_timeout": 5, "retry_interval": 0.05, **options})
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", usage_topic="t.usage", dlq_topic="t.dlq")
    emitter = Emitter(kafka, settings, tmp_path / "spool")

    async def new_producer() -> FakeProducer:
        if broker.down:
            raise KafkaConnectionError("fake: broker down")
        broker.producers += 1
        return FakeProducer(broker, settings.max_batch_bytes)

    monkeypatch.setattr(emitter, "_new_producer", new_producer)
    return emitter


async def run_until_blocked() -> None:
    """Let every ready task run until it waits (nothing here does I/O)."""
    for _ in range(20):
        await asyncio.sleep(0)


def first_seen(values: list[bytes]) -> list[str]:
    """Event ids in the order of their first appearance (the ledger drops the repeats)."""
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(str(decode(value).event_id), None)
    return list(seen)


@pytest.mark.parametrize("appended", [False, True], ids=["lost", "appended-anyway"])
async def test_a_later_call_never_overtakes_an_earlier_call_whose_batch_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, appended: bool
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=0)
    await emitter.start()
    hold = reserved("alice", 100)
    settle = used("alice", 80, rid=hold.reservation_id)
    broker.stalled = True
    first = asyncio.create_task(emitter.emit(hold))

    async def reservation_in_flight() -> bool:
        return bool(broker.waiting)

    await wait_until(reservation_in_flight, 5, "the reservation's batch")
    second = asyncio.create_task(emitter.emit(settle))
    await run_until_blocked()
    # The reservation's batch expires unanswered while the settlement is pending.
    broker.fail_first(appended=appended)
    deliveries = await asyncio.gather(first, second)
    await emitter.flush(timeout=5)
    await emitter.close()
    assert deliveries[0] == "spooled"
    assert first_seen(broker.values()) == [str(hold.event_id), str(settle.event_id)]


async def test_events_behind_a_failed_batch_are_spooled_behind_it_in_emit_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=0)
    await emitter.start()
    early = [used(f"s{i % 5}", i) for i in range(20)]
    late = [used(f"s{i % 5}", 100 + i) for i in range(20)]
    broker.stalled = True
    first = asyncio.create_task(emitter.emit_many(early))

    async def in_flight() -> bool:
        return bool(broker.waiting)

    await wait_until(in_flight, 5, "the first call's batches")
    rest = [asyncio.create_task(emitter.emit(event)) for event in late]
    await run_until_blocked()
    broker.fail_first(appended=False)  # one partition's batch fails, the others are acked
    results = await asyncio.gather(first, *rest)
    await emitter.flush(timeout=5)
    await emitter.close()
    assert "spooled" in results[0]
    assert set(results[1:]) == {"spooled"}  # behind the spooled events, not sent past them
    arrived = first_seen(broker.values())
    for session in {e.session_id for e in early}:
        emitted = [str(e.event_id) for e in early + late if e.session_id == session]
        assert [i for i in arrived if i in emitted] == emitted


async def test_concurrent_small_emits_share_one_produce_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker)
    async with emitter:
        events = [reserved(f"session-{i}", 10) for i in range(100)]
        deliveries = await asyncio.gather(*(emitter.emit(e) for e in events))
    assert deliveries == ["acked"] * 100
    assert len(broker.submissions) <= len(PARTITIONS)  # one batch per partition, not per call
    assert sorted(first_seen(broker.values())) == sorted(str(e.event_id) for e in events)


async def test_calls_queued_while_a_round_is_in_flight_share_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=0)
    async with emitter:
        broker.stalled = True
        first = asyncio.create_task(emitter.emit(used("session-0", 1)))

        async def in_flight() -> bool:
            return bool(broker.waiting)

        await wait_until(in_flight, 5, "the first round")
        stream = [
            asyncio.create_task(emitter.emit_many([used(f"session-{i}", j) for j in range(50)]))
            for i in range(10)
        ]
        await run_until_blocked()
        assert len(broker.submissions) == 1  # the next round waits for this one's answer
        broker.stalled = False
        broker.answer()
        results = await asyncio.gather(first, *stream)
    assert results[0] == "acked" and all(r == ["acked"] * 50 for r in results[1:])
    assert len(broker.submissions) <= 1 + len(PARTITIONS)  # 10 calls, one more round


async def test_a_large_call_goes_out_in_full_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    limit = 64 * 1024
    emitter = fake_emitter(tmp_path, monkeypatch, broker, max_batch_bytes=limit)
    events = [used(f"session-{i % 100}", i) for i in range(10_000)]
    async with emitter:
        assert set(await emitter.emit_many(events)) == {"acked"}
    per_partition: dict[int, list[int]] = collections.defaultdict(list)
    for submission in broker.submissions:
        size = sum(len(k) + len(v) + 21 for k, v in submission.records)
        per_partition[submission.partition].append(size)
    for sizes in per_partition.values():
        assert all(size > limit * 0.95 for size in sizes[:-1]), sizes  # all full but the last
    arrived = first_seen(broker.values())
    assert sorted(arrived) == sorted(str(e.event_id) for e in events)
    for session in ("session-0", "session-57"):
        emitted = [str(e.event_id) for e in events if e.session_id == session]
        assert [i for i in arrived if i in emitted] == emitted


async def test_a_lone_emit_waits_linger_ms_for_company(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=60)
    async with emitter:
        start = asyncio.get_running_loop().time()
        assert await emitter.emit(used("alice", 1)) == "acked"
    (submission,) = broker.submissions
    assert submission.at - start >= 0.06 - 0.002


async def test_an_emit_that_may_not_linger_starts_its_round_at_once_and_takes_the_queue_along(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=60_000)
    async with emitter:
        lingering = asyncio.create_task(emitter.emit(used("alice", 1)))
        await run_until_blocked()
        assert not lingering.done() and not broker.submissions
        urgent = await asyncio.wait_for(emitter.emit(used("alice", 2), linger=False), 5)
        assert urgent == "acked"
        assert await asyncio.wait_for(lingering, 5) == "acked"
        assert len(broker.submissions) == 1  # one round, one batch of both
        # The next lone emit lingers again.
        later = asyncio.create_task(emitter.emit(used("alice", 3)))
        await run_until_blocked()
        assert not later.done() and len(broker.submissions) == 1
        await emitter.flush(timeout=5)


async def test_flush_and_close_send_what_is_queued_without_waiting_out_the_linger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=60_000)
    await emitter.start()
    first = asyncio.create_task(emitter.emit(used("alice", 1)))
    await run_until_blocked()
    await emitter.flush(timeout=5)
    assert first.done() and first.result() == "acked"
    second = asyncio.create_task(emitter.emit(used("alice", 2)))
    await run_until_blocked()
    await asyncio.wait_for(emitter.close(), 5)
    assert second.done() and second.result() == "acked"
    assert len(broker.log) == 2


async def test_abandon_releases_the_spool_at_once_and_fails_the_waiting_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=0)
    await emitter.start()
    broker.stalled = True
    waiting = asyncio.create_task(emitter.emit(used("alice", 1)))

    async def in_flight() -> bool:
        return bool(broker.waiting)

    await wait_until(in_flight, 5, "the batch")
    emitter.abandon()
    Spool(tmp_path / "spool", 1 << 20).close()  # the lock is free without awaiting anything
    with pytest.raises(IntegrationError, match="abandoned"):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(IntegrationError, match="closed"):
        await emitter.emit(used("alice", 2))


async def test_a_call_that_cannot_be_spooled_after_a_failure_gets_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=0, spool_max_bytes=2000)
    await emitter.start()
    broker.stalled = True
    small = asyncio.create_task(emitter.emit(used("alice", 1)))

    async def in_flight() -> bool:
        return bool(broker.waiting)

    await wait_until(in_flight, 5, "the first batch")
    large = asyncio.create_task(emitter.emit_many([used("bob", i) for i in range(20)]))
    await run_until_blocked()
    broker.fail_first(appended=False)
    assert await small == "spooled"  # it fits the spool; the large call does not
    with pytest.raises(SpoolFullError, match="20 event\\(s\\) were NOT accepted"):
        await large
    await emitter.flush(timeout=5)
    await emitter.close()
    assert len(broker.log) == 1


def spooled(count: int) -> list[SpooledMessage]:
    return [SpooledMessage(f"s{i % 7}".encode(), f"event-{i}".encode()) for i in range(count)]


def assert_in_order_per_key(values: list[bytes], expected: list[SpooledMessage]) -> None:
    seen: dict[bytes, None] = dict.fromkeys(values)
    assert set(seen) == {m.value for m in expected}
    keys = {m.value: m.key for m in expected}
    for key in {m.key for m in expected}:
        assert [v for v in seen if keys[v] == key] == [m.value for m in expected if m.key == key]


async def test_a_failed_drain_resends_only_the_chunk_that_was_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlog = spooled(20_000)
    spool = Spool(tmp_path / "spool", 1 << 30)
    spool.append(backlog)
    spool.close()
    broker = FakeBroker(fail_at={3})
    emitter = fake_emitter(tmp_path, monkeypatch, broker, max_batch_bytes=64 * 1024)
    async with emitter:
        await emitter.flush(timeout=30)
        assert emitter.spooled_bytes == 0
    sent = collections.Counter(
        value for submission in broker.submissions for _, value in submission.records
    )
    assert sum(sent.values()) - len(backlog) <= 5000  # one chunk again, not the backlog
    assert_in_order_per_key(broker.values(), backlog)


def frames(batch: list[SpooledMessage]) -> bytes:
    out = b""
    for m in batch:
        payload = struct.pack(">H", len(m.key)) + m.key + m.value
        out += struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    return out


@pytest.mark.timeout(30)
async def test_a_corrupt_frame_at_the_head_of_the_spool_hides_none_of_the_events_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(frames(spooled(50)))
    data[12] ^= 0xFF  # the first frame's payload
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "usage.spool").write_bytes(bytes(data))
    broker = FakeBroker()
    async with fake_emitter(tmp_path, monkeypatch, broker) as emitter:
        await emitter.flush(timeout=10)
        assert emitter.spooled_bytes == 0
    assert_in_order_per_key(broker.values(), spooled(50)[1:])


@pytest.mark.timeout(30)
async def test_a_frame_corrupted_while_spooled_does_not_stall_the_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker(down=True)
    emitter = fake_emitter(tmp_path, monkeypatch, broker, linger_ms=0)
    await emitter.start()
    events = [used("alice", i) for i in range(5)]
    assert set(await emitter.emit_many(events[:1])) == {"spooled"}
    assert set(await emitter.emit_many(events[1:])) == {"spooled"}
    with (tmp_path / "spool" / "usage.spool").open("r+b") as handle:
        handle.seek(12)  # inside the first event's frame
        handle.write(b"\xff")
    broker.down = False
    await emitter.flush(timeout=10)
    await emitter.close()
    assert first_seen(broker.values()) == [str(e.event_id) for e in events[1:]]
