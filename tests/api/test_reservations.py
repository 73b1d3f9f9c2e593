"""Reservations over HTTP: the rules and errors of reserve(), with the numbers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.api.support import api_client
from tests.support import wait_until
from tokenquota.api import hash_token
from tokenquota.config import ReservationSettings, Settings
from tokenquota.projections import connect
from tokenquota.sections import ApiSettings, ApiToken

pytestmark = pytest.mark.integration


async def test_reserve_settle_release_and_refusals(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    async with api_client(settings) as client:
        budget = {"daily_limit": 1_000, "monthly_limit": 2_000, "hard_limit": 2_000}
        assert (await client.put("/v1/sessions/r1/budget", json=budget)).status_code == 200
        granted = await client.post("/v1/reservations", json={"session_id": "r1", "tokens": 600})
        assert granted.status_code == 201, granted.text
        body = granted.json()
        assert body["status"] == "accepted" and body["tokens"] == 600

        refused = await client.post("/v1/reservations", json={"session_id": "r1", "tokens": 900})
        assert refused.status_code == 429
        assert refused.json() | {"detail": ""} == {
            "error": "quota_exceeded",
            "detail": "",
            "session_id": "r1",
            "requested": 900,
            "available": 400,
            "limit": 1_000,
            "window": "daily_limit",
            "refused_by": None,
        }
        rid = body["reservation_id"]
        settled = await client.post(
            f"/v1/reservations/{rid}/settle", json={"input_tokens": 300, "output_tokens": 100}
        )
        assert settled.status_code == 200 and settled.json()["delivery"] == "acked"
        again = await client.post(f"/v1/reservations/{rid}/release")
        assert again.status_code == 409 and "already settled" in again.json()["detail"]

        async def used_400() -> bool:
            report = (await client.get("/v1/sessions/r1")).json()
            return bool(report["windows"]["total"]["used"] == 400)

        await wait_until(used_400, 60, "the settlement applied")
        # A reservation this process does not hold is found through the worker's record.
        other = await client.post(
            "/v1/reservations", json={"session_id": "r1", "tokens": 100, "priority": "high"}
        )
        other_id = other.json()["reservation_id"]
        client_state = client._transport.app.state.api  # type: ignore[attr-defined]
        client_state.reservations.clear()
        released = await client.post(f"/v1/reservations/{other_id}/release")
        assert released.status_code == 200, released.text
        unknown = await client.post(f"/v1/reservations/{uuid.uuid4()}/release")
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"

        await client.put(
            "/v1/sessions/r2/budget",
            json={"daily_limit": 100, "monthly_limit": 100, "hard_limit": 100},
        )
        hard = await client.post("/v1/reservations", json={"session_id": "r2", "tokens": 500})
        assert hard.status_code == 409 and hard.json()["window"] == "hard_limit"
        invalid = await client.post("/v1/reservations", json={"session_id": "r2", "tokens": 0})
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["path"] == "body.tokens"


async def test_the_log_names_the_token_that_reserved_settled_or_released(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    tokens = tuple(
        ApiToken(name=name, role="admin", sha256=hash_token(f"{name}-secret"))
        for name in ("ops", "ci")
    )
    configured = pipeline_settings.model_copy(update={"api": ApiSettings(tokens=tokens)})
    ops, ci = ({"Authorization": f"Bearer {name}-secret"} for name in ("ops", "ci"))
    start_worker()
    async with api_client(configured) as client:
        budget = {"daily_limit": 1_000, "monthly_limit": 2_000, "hard_limit": 3_000}
        put = await client.put("/v1/sessions/src1/budget", json=budget, headers=ops)
        assert put.status_code == 200, put.text
        ids = []
        for _ in range(2):
            granted = await client.post(
                "/v1/reservations", json={"session_id": "src1", "tokens": 10}, headers=ops
            )
            assert granted.status_code == 201, granted.text
            ids.append(granted.json()["reservation_id"])
        settled = await client.post(
            f"/v1/reservations/{ids[0]}/settle",
            json={"input_tokens": 3, "output_tokens": 2},
            headers=ci,
        )
        assert settled.status_code == 200, settled.text
        client._transport.app.state.api.reservations.clear()  # type: ignore[attr-defined]
        released = await client.post(f"/v1/reservations/{ids[1]}/release", headers=ci)
        assert released.status_code == 200, released.text

    async def sources() -> list[tuple[str, str, str]]:
        conn = await connect(configured.database.dsn(), configured.database.schema_name)
        try:
            rows = await conn.fetch(
                "SELECT event_type, payload->>'reservation_id' AS rid, "
                "payload->'source'->>'name' AS name FROM usage_events "
                "WHERE session_id = 'src1' AND event_type <> 'BudgetSet'"
            )
        finally:
            await conn.close()
        return sorted((r["event_type"], r["rid"], r["name"]) for r in rows)

    async def all_applied() -> bool:
        return len(await sources()) == 4

    await wait_until(all_applied, 60, "both reservations and their closing applied")
    assert await sources() == sorted(
        [
            ("TokenReserved", ids[0], "http-api:ops"),
            ("TokenReserved", ids[1], "http-api:ops"),
            ("TokenUsed", ids[0], "http-api:ci"),
            ("TokenUsed", ids[1], "http-api:ci"),
        ]
    )


async def test_the_account_may_come_from_a_header_when_the_body_names_none(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    header = "X-Tokenquota-Account"
    async with api_client(settings) as client:

        async def reserve(body: dict[str, Any], account: str) -> Any:
            return await client.post(
                "/v1/reservations",
                json={"tokens": 10, **body},
                headers={header: account},
            )

        granted = await reserve({"session_id": "hd1"}, "acme/research/alice")
        assert granted.status_code == 201, granted.text
        same = await reserve(
            {"session_id": "hd1", "account": "acme/research/alice"}, "acme/research/alice"
        )
        assert same.status_code == 201, same.text
        differs = await reserve({"session_id": "hd2", "account": "acme/ops"}, "acme/research")
        assert differs.status_code == 422
        assert differs.json() == {
            "error": "invalid",
            "errors": [
                {
                    "path": f"header.{header}",
                    "reason": "the header names account 'acme/research', the body 'acme/ops': "
                    "name the session's account once, or the same in both",
                }
            ],
        }
        malformed = await reserve({"session_id": "hd2"}, "acme//x")
        assert malformed.status_code == 422
        assert malformed.json()["errors"] == [
            {
                "path": f"header.{header}",
                "reason": "'acme//x' is not an account path: an account path is 1 to 8 "
                "segments of 1 to 64 characters, separated by '/', without control characters",
            }
        ]
    conn = await connect(settings.database.dsn(), settings.database.schema_name)
    try:
        rows = await conn.fetch(
            "SELECT session_id, account FROM reservations ORDER BY requested_at"
        )
    finally:
        await conn.close()
    assert [tuple(row) for row in rows] == [("hd1", "acme/research/alice")] * 2
