"""The API's /metrics: what it counts of ingest and reservations, and its spool."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.support import api_client
from tests.support import used
from tokenquota.config import Settings
from tokenquota.schemas import encode, utc_now

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_ingested_events_reservations_and_the_spool(
    pipeline_settings: Settings,
) -> None:
    accepted = ("tokenquota_ingested_events_total", (("result", "accepted"),))
    invalid = ("tokenquota_ingested_events_total", (("result", "invalid"),))
    async with api_client(pipeline_settings) as client:
        # Counters are the process's: the test reads what its own requests added.
        before = _samples((await client.get("/metrics")).text)
        events = [json.loads(encode(used("mt1", 5, utc_now()))), {"event_type": "TokenUsed"}]
        ingested = await client.post("/v1/events", json=events)
        assert ingested.json()["accepted"] == 1, ingested.text
        reserved = await client.post(
            "/v1/reservations", json={"session_id": "mt1", "tokens": 1, "mode": "optimistic"}
        )
        assert reserved.json()["status"] == "pending", reserved.text
        after = _samples((await client.get("/metrics")).text)
    assert after[accepted] - before.get(accepted, 0) == 1
    assert after[invalid] - before.get(invalid, 0) == 1
    pending = ("tokenquota_http_reservations_total", (("reason", ""), ("status", "pending")))
    assert after[pending] - before.get(pending, 0) == 1
    assert after[("tokenquota_spool_bytes", ())] == 0  # the broker acked everything
