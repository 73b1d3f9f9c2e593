"""Bearer tokens, roles, the rate limit, and docs served without any internet URL."""

from __future__ import annotations

import re

import pytest

from tests.api.support import api_client
from tokenquota.api import hash_token
from tokenquota.config import Settings
from tokenquota.sections import ApiSettings, ApiToken

pytestmark = pytest.mark.integration


async def test_tokens_roles_and_rate_limit(migrated_database: object, settings: Settings) -> None:
    configured = settings.model_copy(
        update={
            "database": migrated_database,
            "api": ApiSettings(
                tokens=(
                    ApiToken(name="viewer", role="read", sha256=hash_token("read-secret")),
                    ApiToken(name="ops", role="admin", sha256=hash_token("admin-secret")),
                ),
                rate_limit=0.1,
                rate_burst=3,
            ),
        }
    )
    async with api_client(configured) as client:
        assert (await client.get("/healthz")).status_code == 200  # no token needed
        missing = await client.get("/v1/top")
        assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
        wrong = await client.get("/v1/top", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        viewer = {"Authorization": "Bearer read-secret"}
        assert (await client.get("/v1/top", headers=viewer)).status_code == 200
        write = await client.put(
            "/v1/sessions/s/budget",
            headers=viewer,
            json={"daily_limit": 1, "monthly_limit": 1, "hard_limit": 1},
        )
        assert write.status_code == 403 and "role read" in write.json()["detail"]
        await client.get("/v1/top", headers=viewer)
        await client.get("/v1/top", headers=viewer)
        limited = await client.get("/v1/top", headers=viewer)  # the 4th: past the burst
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        admin = {"Authorization": "Bearer admin-secret"}
        assert (await client.get("/v1/top", headers=admin)).status_code == 200  # its own bucket


#: Served to a read token with tokens configured, to anyone without.
_READ_ONLY_PAGES = ("/metrics", "/openapi.json", "/docs", "/static/swagger-ui/swagger-ui.css")


async def test_metrics_docs_and_openapi_need_a_read_token_when_tokens_are_configured(
    pipeline_settings: Settings,
) -> None:
    token = ApiToken(name="scraper", role="read", sha256=hash_token("scrape-secret"))
    configured = pipeline_settings.model_copy(update={"api": ApiSettings(tokens=(token,))})
    async with api_client(configured) as client:
        for path in _READ_ONLY_PAGES:
            missing = await client.get(path)
            assert missing.status_code == 401, (path, missing.text)
            assert missing.json()["error"] == "unauthorized"
            assert missing.headers["WWW-Authenticate"] == "Bearer"
            wrong = await client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
            granted = await client.get(path, headers={"Authorization": "Bearer scrape-secret"})
            assert granted.status_code == 200, (path, granted.text)
        spec = (
            await client.get("/openapi.json", headers={"Authorization": "Bearer scrape-secret"})
        ).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert spec["security"] == [{"bearer": []}]


async def test_metrics_docs_and_openapi_are_open_without_tokens(
    pipeline_settings: Settings,
) -> None:
    async with api_client(pipeline_settings) as client:
        for path in _READ_ONLY_PAGES:
            assert (await client.get(path)).status_code == 200, path
        spec = (await client.get("/openapi.json")).json()
    # The scheme is declared, and not required: without tokens no header is needed.
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in spec


async def test_docs_and_openapi_reference_only_local_files(settings: Settings) -> None:
    async with api_client(settings) as client:
        page = (await client.get("/docs")).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page) + re.findall(
            r"url: ?'([^']+)'", page
        )
        assert urls and all(u.startswith("/") for u in urls), urls
        assert "cdn" not in page.lower()
        script = await client.get("/static/swagger-ui/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        spec = (await client.get("/openapi.json")).json()
        assert {"/v1/events", "/v1/reservations", "/v1/overview"} <= set(spec["paths"])
