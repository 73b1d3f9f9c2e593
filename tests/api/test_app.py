"""The app itself: /readyz, and every error answered in the API's JSON shape."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.support import api_client
from tests.support import wait_until
from tokenquota.api import hash_token
from tokenquota.config import KafkaSettings, Settings
from tokenquota.embedded import free_port
from tokenquota.sections import ApiSettings, ApiToken

pytestmark = pytest.mark.integration


async def test_readyz_answers_200_with_a_worker_running(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    async with api_client(pipeline_settings) as client:

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_until(ready, 60, "/readyz to answer 200")
        health = (await client.get("/readyz")).json()
        assert health["status"] in ("ok", "degraded")
        assert health["broker"]["status"] == health["database"]["status"] == "ok"


async def test_readyz_answers_503_with_the_broker_down(pipeline_settings: Settings) -> None:
    closed = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    down = pipeline_settings.model_copy(update={"kafka": closed})
    async with api_client(down) as client:
        answer = await client.get("/readyz")
    assert answer.status_code == 503, answer.text
    health = answer.json()
    assert health["status"] == "down" and health["broker"]["status"] == "down"


async def test_readyz_needs_a_token_when_tokens_are_configured(
    pipeline_settings: Settings,
) -> None:
    token = ApiToken(name="probe", role="read", sha256=hash_token("probe-secret"))
    configured = pipeline_settings.model_copy(update={"api": ApiSettings(tokens=(token,))})
    async with api_client(configured) as client:
        missing = await client.get("/readyz")
        assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
        granted = await client.get("/readyz", headers={"Authorization": "Bearer probe-secret"})
        # No worker runs, so it is down: authenticated, and answered.
        assert granted.status_code == 503 and granted.json()["worker"]["status"] == "down"


async def test_unknown_routes_and_wrong_methods_answer_the_api_error_shape(
    pipeline_settings: Settings,
) -> None:
    async with api_client(pipeline_settings) as client:
        unknown = await client.get("/v1/nothing-here")
        wrong_method = await client.delete("/v1/overview")
        missing_file = await client.get("/static/swagger-ui/no-such-file.js")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "not_found", "detail": "Not Found"}
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"error": "method_not_allowed", "detail": "Method Not Allowed"}
    assert wrong_method.headers["allow"] == "GET"
    assert missing_file.status_code == 404 and missing_file.json()["error"] == "not_found"
