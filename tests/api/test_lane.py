"""The reservation routes through the fast lane: the same authorization, errors and
metrics as every other route (no worker needed: these are refused before a decision)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.api.support import api_client
from tokenquota.api import hash_token
from tokenquota.config import Settings
from tokenquota.sections import ApiSettings, ApiToken

pytestmark = pytest.mark.integration

VIEWER = {"Authorization": "Bearer read-secret"}
ADMIN = {"Authorization": "Bearer admin-secret"}


def with_tokens(settings: Settings, database: Any, rate_limit: float = 1000) -> Settings:
    api = ApiSettings(
        tokens=(
            ApiToken(name="viewer", role="read", sha256=hash_token("read-secret")),
            ApiToken(name="ops", role="admin", sha256=hash_token("admin-secret")),
        ),
        rate_limit=rate_limit,
        rate_burst=3 if rate_limit < 1 else 1000,
    )
    return settings.model_copy(update={"database": database, "api": api})


async def test_every_write_route_needs_an_admin_token(
    migrated_database: object, settings: Settings
) -> None:
    rid = uuid.uuid4()
    writes: list[tuple[str, Any]] = [
        ("/v1/reservations", {"session_id": "s", "tokens": 1}),
        (f"/v1/reservations/{rid}/settle", {"input_tokens": 1, "output_tokens": 1}),
        (f"/v1/reservations/{rid}/release", None),
        ("/v1/events", []),
    ]
    async with api_client(with_tokens(settings, migrated_database)) as client:
        for path, body in writes:
            missing = await client.post(path, json=body)
            assert missing.status_code == 401, (path, missing.text)
            assert missing.json()["error"] == "unauthorized"
            assert missing.headers["WWW-Authenticate"] == "Bearer"
            viewer = await client.post(path, json=body, headers=VIEWER)
            assert viewer.status_code == 403, (path, viewer.text)
            assert "role read" in viewer.json()["detail"]


async def test_errors_answer_in_the_api_shape_and_requests_are_timed_by_route(
    migrated_database: object, settings: Settings
) -> None:
    async with api_client(with_tokens(settings, migrated_database)) as client:
        unknown = await client.post(f"/v1/reservations/{uuid.uuid4()}/release", headers=ADMIN)
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
        invalid = await client.post(
            "/v1/reservations", json={"session_id": "s", "tokens": -1}, headers=ADMIN
        )
        assert invalid.status_code == 422
        assert invalid.json()["errors"][0]["path"] == "body.tokens"
        not_json = await client.post("/v1/reservations", content=b"{", headers=ADMIN)
        assert not_json.status_code == 422 and not_json.json()["error"] == "invalid"
        bad_settle = await client.post(
            f"/v1/reservations/{uuid.uuid4()}/settle", json={"input_tokens": 1}, headers=ADMIN
        )
        assert bad_settle.status_code == 422
        assert bad_settle.json()["errors"][0]["path"] == "body.output_tokens"
        # Not a reservation id: the lane leaves it to FastAPI, which answers the same way.
        malformed = await client.post("/v1/reservations/not-an-id/release", headers=ADMIN)
        assert malformed.status_code == 422 and malformed.json()["error"] == "invalid"
        assert malformed.json()["errors"][0]["path"] == "path.reservation_id"
        metrics = (await client.get("/metrics", headers=ADMIN)).text
        for route, status in (
            ("/v1/reservations/{reservation_id}/release", 404),
            ("/v1/reservations", 422),
            ("/v1/reservations/{reservation_id}/settle", 422),
        ):
            series = f'method="POST",route="{route}",status="{status}"'
            assert f"http_request_duration_seconds_count{{{series}}}" in metrics, series


async def test_the_reservation_routes_are_rate_limited(
    migrated_database: object, settings: Settings
) -> None:
    async with api_client(with_tokens(settings, migrated_database, rate_limit=0.1)) as client:
        rid = uuid.uuid4()
        answers = [
            await client.post(f"/v1/reservations/{rid}/release", headers=ADMIN) for _ in range(4)
        ]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        assert int(answers[-1].headers["Retry-After"]) >= 1
