"""The emitter's limits at their boundaries: the largest event it takes (its key and value
plus a batch's framing fill emitter.max_batch_bytes), and the largest the schemas allow
fits the default (a fake broker: no servers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.producers.test_emitter_order import FakeBroker, fake_emitter
from tests.support import used
from tokenquota.config import EmitterSettings
from tokenquota.errors import IntegrationError
from tokenquota.producers.kafka_rounds import BATCH_OVERHEAD
from tokenquota.producers.spool import Spool, SpooledMessage
from tokenquota.schemas import ApiCost, Event, Source, encode, partition_key
from tokenquota.schemas.envelope import BIGINT_MAX, ID_MAX_LENGTH
from tokenquota.schemas.events import USAGE_TOKENS_MAX


def _size(event: Event) -> int:
    """The bytes of its Kafka key and value."""
    return len(partition_key(event)) + len(encode(event))


async def test_the_largest_event_fills_max_batch_bytes_and_one_byte_more_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = used("alice", 1)
    limit = _size(event) + BATCH_OVERHEAD
    broker = FakeBroker()
    async with fake_emitter(tmp_path / "a", monkeypatch, broker, max_batch_bytes=limit) as fits:
        assert await fits.emit(event) == "acked"
    small = fake_emitter(tmp_path / "b", monkeypatch, broker, max_batch_bytes=limit - 1)
    async with small:
        with pytest.raises(IntegrationError, match=rf"an event of {limit - BATCH_OVERHEAD} bytes "
                           rf"does not fit a batch of emitter.max_batch_bytes \({limit - 1}\); "
                           "none of the 1 event"):  # fmt: skip
            await small.emit(event)
    assert len(broker.log) == 1


def _largest_event() -> ApiCost:
    """Every text at its longest, in 4-byte UTF-8 characters; every number at its widest."""
    wide = "\U0001f600"
    return ApiCost(
        session_id=wide * ID_MAX_LENGTH,
        task_id=wide * ID_MAX_LENGTH,
        source=Source(component="external_api", name=wide * 100),
        account="/".join([wide * 63] * 4),
        api=wide * 100,
        model=wide * 200,
        input_tokens=USAGE_TOKENS_MAX,
        output_tokens=USAGE_TOKENS_MAX,
        cache_read_tokens=USAGE_TOKENS_MAX,
        cache_write_tokens=USAGE_TOKENS_MAX,
        cost_usd=Decimal("9999999999.9999999999"),
        price_source=wide * 200,
        request_id=wide * ID_MAX_LENGTH,
        rate_limit_remaining=BIGINT_MAX,
        rate_limit_reset=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        reservation_id=uuid.uuid4(),
    )


def test_the_largest_event_the_schemas_allow_fits_the_default_batch_and_the_spool(
    tmp_path: Path,
) -> None:
    event = _largest_event()
    size = _size(event)
    assert size == 7_339  # as the README's limits table says
    assert size + BATCH_OVERHEAD <= EmitterSettings().max_batch_bytes
    spool = Spool(tmp_path, 1 << 20)
    spool.append([SpooledMessage(partition_key(event), encode(event))])
    assert spool.read()[0][0].value == encode(event)
