"""The read models over HTTP: every endpoint answers the dashboard's numbers as JSON."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.api.support import api_client
from tests.support import used, wait_until
from tokenquota.api import hash_token
from tokenquota.config import Settings
from tokenquota.schemas import ApiCost, Source, TokenReserved, encode, utc_now
from tokenquota.sections import ApiSettings, ApiToken

pytestmark = pytest.mark.integration

_SOURCE = Source(component="external_api", name="reads-test")


def _cost(session: str, api: str, model: str, usd: str) -> dict[str, Any]:
    event = ApiCost(
        session_id=session, source=_SOURCE, occurred_at=utc_now(), api=api, model=model,
        input_tokens=100, output_tokens=20, cost_usd=Decimal(usd), price_source="test",
    )  # fmt: skip
    return dict(json.loads(encode(event)))


async def test_every_read_endpoint_answers_json_with_the_applied_numbers(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    async with api_client(pipeline_settings) as client:
        budget = {"daily_limit": 1_000, "monthly_limit": 5_000, "hard_limit": 9_000}
        assert (await client.put("/v1/sessions/rd1/budget", json=budget)).status_code == 200
        events = [json.loads(encode(used("rd1", n, utc_now()))) for n in (300, 550)]
        events += [_cost("rd1", "openai", "gpt-4o", "0.25"), _cost("rd2", "anthropic", "c", "1")]
        ingested = await client.post("/v1/events", json=events)
        assert ingested.json()["accepted"] == 4, ingested.text

        async def usage_applied() -> bool:
            seen = (await client.get("/v1/sessions/rd1")).json()
            return bool(seen["windows"]["daily"]["used"] == 850)

        # The client's check below refuses 500 tokens only once the 850 used are applied;
        # before that it would pass and the worker would refuse it (a second rejection).
        await wait_until(usage_applied, 60, "the usage applied")
        granted = await client.post("/v1/reservations", json={"session_id": "rd1", "tokens": 50})
        assert granted.status_code == 201, granted.text
        refused = await client.post("/v1/reservations", json={"session_id": "rd1", "tokens": 500})
        assert refused.status_code == 429  # refused by the client's check: never in the log
        # One the worker refuses: a TokenReserved from a producer that did not check first.
        over = TokenReserved(
            session_id="rd1", source=_SOURCE, occurred_at=utc_now(), reservation_id=uuid.uuid4(),
            tokens=500, expires_at=utc_now() + timedelta(minutes=5),
        )  # fmt: skip
        assert (await client.post("/v1/events", json=[json.loads(encode(over))])).status_code == 200

        async def applied() -> bool:
            decided = (await client.get("/v1/decisions", params={"session_id": "rd1"})).json()
            if len(decided) < 2:
                return False
            rows = (await client.get("/v1/costs", params={"by": "api"})).json()
            return {r["api_name"]: Decimal(r["cost_usd"]) for r in rows} == {
                "anthropic": Decimal(1),
                "openai": Decimal("0.25"),
            }

        await wait_until(applied, 60, "the events and both decisions applied")

        session = (await client.get("/v1/sessions/rd1")).json()
        assert session["windows"]["daily"] | {"utilization": None, "alert": None} == {
            "used": 850,
            "limit": 1_000,
            "remaining": 150,
            "utilization": None,
            "alert": None,
        }
        # 85% is past the warning threshold; the worker's refusal made it exhausted.
        assert session["windows"]["daily"]["alert"] == "exhausted"
        assert session["outstanding_reservations"] == 1 and session["tokens_held"] == 50
        assert Decimal(session["cost_usd"]) == Decimal("0.25")
        unknown = await client.get("/v1/sessions/nobody-here")
        assert unknown.status_code == 404 and "nobody-here" in unknown.json()["detail"]

        overview = (await client.get("/v1/overview")).json()
        assert overview["sessions_active_today"] >= 2 and overview["tokens_today"] >= 850
        assert {p["partition"] for p in overview["lag"]} == set(
            range(pipeline_settings.kafka.partitions)
        )
        assert overview["broker_error"] is None and overview["dlq_depth"] == 0

        daily = await client.get("/v1/reports/daily")
        assert daily.headers["content-type"] == "application/json"
        rows = {r["session_id"]: r for r in daily.json()["sessions"]}
        assert rows["rd1"]["tokens_used"] == 850 and rows["rd1"]["accepted"] == 1
        assert rows["rd1"]["rejected"] == 1 and Decimal(rows["rd2"]["cost_usd"]) == 1
        bad_date = await client.get("/v1/reports/daily", params={"date": "2026-02-30"})
        assert bad_date.status_code == 422
        empty = (await client.get("/v1/reports/daily", params={"date": "2001-01-01"})).json()
        assert empty["sessions"] == [] and empty["tokens_used"] == 0

        by_model = (await client.get("/v1/costs", params={"by": "model"})).json()
        assert {r["model"] for r in by_model} == {"gpt-4o", "c"}
        assert (await client.get("/v1/costs", params={"by": "planet"})).status_code == 422
        top = (await client.get("/v1/top", params={"by": "cost", "limit": 1})).json()
        assert [t["session_id"] for t in top] == ["rd2"]

        decisions = (await client.get("/v1/decisions", params={"session_id": "rd1"})).json()
        assert sorted(d["status"] for d in decisions) == ["accepted", "rejected"]
        rejected = next(d for d in decisions if d["status"] == "rejected")
        assert (rejected["reason"], rejected["available_tokens"]) == ("daily_limit", 100)

        alerts = (await client.get("/v1/alerts", params={"session_id": "rd1"})).json()
        assert {(a["window_name"], a["level"]) for a in alerts} == {
            ("daily", "warning"),
            ("daily", "exhausted"),
        }

        logs = (await client.get("/v1/sessions/rd1/integration-logs")).json()
        actions = {row["action"] for row in logs}
        assert len(logs) >= 5 and {"reservation_accepted", "reservation_rejected"} <= actions

        audit = (await client.get("/v1/audit", params={"session_id": "rd1"})).json()
        assert [row["event_type"] for row in audit] == ["BudgetSet"]
        assert audit[0]["actor"].startswith("os:")  # no tokens: the API's OS user
        for path, params in (
            ("/v1/decisions", {"session_id": "nobody"}),
            ("/v1/alerts", {"session_id": "nobody"}),
            ("/v1/audit", {"session_id": "nobody"}),
            ("/v1/sessions/nobody/integration-logs", {}),
        ):
            answer = await client.get(path, params=params)
            assert answer.status_code == 404 and answer.json()["error"] == "not_found", path

        metrics = (await client.get("/metrics")).text
        assert 'route="/v1/sessions/{session_id}"' in metrics
        assert "nobody-here" not in metrics  # route templates, never raw paths


async def test_inconsistent_budgets_are_refused_with_the_reason(
    pipeline_settings: Settings,
) -> None:
    limits = {"daily_limit": 500, "monthly_limit": 100, "hard_limit": 1_000}
    thresholds = {"warning_threshold": "0.9", "critical_threshold": "0.9"}
    ordered = {"daily_limit": 1, "monthly_limit": 2, "hard_limit": 3}
    async with api_client(pipeline_settings) as client:
        over = await client.put("/v1/sessions/b1/budget", json=limits)
        crossed = await client.put("/v1/sessions/b1/budget", json=ordered | thresholds)
    assert over.status_code == 422
    assert over.json() == {
        "error": "invalid",
        "errors": [
            {
                "path": "body",
                "reason": "Value error, limits must satisfy daily_limit <= monthly_limit <= "
                "hard_limit, got 500 / 100 / 1000",
            }
        ],
    }
    assert crossed.status_code == 422
    assert crossed.json()["errors"] == [
        {
            "path": "body",
            "reason": "Value error, warning_threshold must be below critical_threshold, "
            "got 0.9 and 0.9",
        }
    ]


async def test_a_budget_set_with_a_token_names_it_in_the_audit_trail(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    tokens = (ApiToken(name="ops", role="admin", sha256=hash_token("ops-secret")),)
    configured = pipeline_settings.model_copy(update={"api": ApiSettings(tokens=tokens)})
    ops = {"Authorization": "Bearer ops-secret"}
    start_worker()
    async with api_client(configured) as client:
        budget = {"daily_limit": 10, "monthly_limit": 20, "hard_limit": 30}
        put = await client.put("/v1/sessions/au1/budget", json=budget, headers=ops)
        assert put.status_code == 200, put.text
        audit = await client.get("/v1/audit", params={"session_id": "au1"}, headers=ops)
    assert audit.status_code == 200, audit.text
    assert [(row["event_type"], row["actor"]) for row in audit.json()] == [
        ("BudgetSet", "token:ops")
    ]
