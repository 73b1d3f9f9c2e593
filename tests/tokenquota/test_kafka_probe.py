"""The broker's highwaters, and where each partition's log starts, read from fetch responses."""

from __future__ import annotations

import socket

import pytest

from tests.support import used
from tokenquota.config import KafkaSettings, Settings
from tokenquota.errors import IntegrationError
from tokenquota.kafka_probe import (
    HighwaterProbe,
    LogBounds,
    partition_bounds,
    partition_highwaters,
)
from tokenquota.producers import Emitter
from tokenquota.schemas import utc_now

pytestmark = pytest.mark.integration


async def test_highwaters_count_the_messages_of_each_partition(settings: Settings) -> None:
    topic = settings.kafka.usage_topic
    assert set((await partition_highwaters(settings.kafka, topic)).values()) == {0}
    events = [used(f"s{i % 5}", 1, utc_now()) for i in range(40)]
    async with Emitter(settings.kafka, settings.emitter, settings.data_dir / "spool") as em:
        await em.emit_many(events)
    ends = await partition_highwaters(settings.kafka, topic)
    assert len(ends) == settings.kafka.partitions
    assert sum(ends.values()) == 40


async def test_a_missing_topic_or_a_closed_port_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(IntegrationError, match=r"topic no\.such\.topic does not exist"):
        await partition_highwaters(settings.kafka, "no.such.topic", timeout=3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    with pytest.raises(IntegrationError, match="unreachable"):
        await partition_highwaters(closed, "tokenquota.usage", timeout=2)


async def test_a_probe_kept_open_sees_what_was_appended_since_its_last_question(
    settings: Settings,
) -> None:
    kafka = settings.kafka
    probe = HighwaterProbe(kafka, timeout=5)
    try:
        first = await probe.highwaters(kafka.usage_topic, kafka.dlq_topic)
        assert set(first) == {kafka.usage_topic, kafka.dlq_topic}
        before = sum(first[kafka.usage_topic].values())
        events = [used(f"p{i % 3}", 1, utc_now()) for i in range(25)]
        async with Emitter(kafka, settings.emitter, settings.data_dir / "spool") as em:
            await em.emit_many(events)
        again = await probe.highwaters(kafka.usage_topic)
        assert sum(again[kafka.usage_topic].values()) == before + 25
        with pytest.raises(IntegrationError, match="does not exist"):
            await probe.highwaters("no.such.topic")
        # After an error it reconnects and answers again.
        assert (await probe.highwaters(kafka.usage_topic)) == again
    finally:
        await probe.close()


async def test_bounds_are_the_first_offset_the_log_holds_and_its_end(settings: Settings) -> None:
    kafka = settings.kafka
    assert await partition_bounds(kafka, kafka.usage_topic) == {
        p: LogBounds(first=0, end=0) for p in range(kafka.partitions)
    }
    events = [used(f"b{i % 4}", 1, utc_now()) for i in range(30)]
    async with Emitter(kafka, settings.emitter, settings.data_dir / "spool") as em:
        await em.emit_many(events)
    bounds = await partition_bounds(kafka, kafka.usage_topic)
    # Nothing has removed the start of these logs (the embedded broker can neither delete
    # records nor apply retention), so each starts at 0 and ends at its highwater.
    assert bounds == {
        p: LogBounds(first=0, end=end)
        for p, end in (await partition_highwaters(kafka, kafka.usage_topic)).items()
    }
    assert sum(b.end for b in bounds.values()) == 30
    with pytest.raises(IntegrationError, match=r"topic no\.such\.topic does not exist"):
        await partition_bounds(kafka, "no.such.topic", timeout=3)
