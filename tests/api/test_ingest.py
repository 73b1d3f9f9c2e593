"""POST /v1/events: each item validated on its own; the valid ones applied."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.support import api_client
from tests.support import fetch_value, used, wait_until
from tokenquota.config import Settings
from tokenquota.schemas import encode, utc_now

pytestmark = pytest.mark.integration


async def test_valid_items_are_applied_and_invalid_ones_answered_with_field_paths(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    good = [json.loads(encode(used("ingest", n, utc_now()))) for n in (10, 20, 30)]
    bad_tokens = {**good[0], "event_id": good[0]["event_id"][:-1] + "0", "input_tokens": -5}
    missing = {k: v for k, v in good[1].items() if k != "occurred_at"}
    missing["event_id"] = good[1]["event_id"][:-1] + "0"
    body = [good[0], bad_tokens, good[1], "not an object", missing, good[2]]
    async with api_client(pipeline_settings) as client:
        answer = await client.post("/v1/events", json=body)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["accepted"], result["invalid"]) == (3, 3)
        statuses = [item["status"] for item in result["results"]]
        assert statuses == ["accepted", "invalid", "accepted", "invalid", "invalid", "accepted"]
        assert result["results"][0]["delivery"] == "acked"
        assert result["results"][1]["errors"][0]["path"] == "input_tokens"
        assert result["results"][3]["errors"] == [
            {"path": "<event>", "reason": "must be a JSON object"}
        ]
        assert result["results"][4]["errors"][0]["path"] == "occurred_at"

        async def applied() -> bool:
            total = await fetch_value(
                pipeline_settings.database,
                "SELECT tokens_used_total FROM session_token_budgets WHERE session_id = 'ingest'",
            )
            return bool(total == 60)

        await wait_until(applied, 60, "the three valid events applied")
        # A batch with nothing wrong (validated in one pass): every item answered in order.
        more = [json.loads(encode(used("ingest", n, utc_now()))) for n in (1, 2, 3, 4)]
        answer = await client.post("/v1/events", json=more)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["accepted"], result["invalid"]) == (4, 0)
        assert [(r["index"], r["event_id"], r["delivery"]) for r in result["results"]] == [
            (i, event["event_id"], "acked") for i, event in enumerate(more)
        ]

        async def applied_more() -> bool:
            total = await fetch_value(
                pipeline_settings.database,
                "SELECT tokens_used_total FROM session_token_budgets WHERE session_id = 'ingest'",
            )
            return bool(total == 70)

        await wait_until(applied_more, 60, "the batch of four applied")
        assert (await client.post("/v1/events", json={"not": "a list"})).status_code == 400
        too_many = await client.post("/v1/events", json=[good[0]] * 5_001)
        assert too_many.status_code == 413 and too_many.json()["error"] == "too_large"
