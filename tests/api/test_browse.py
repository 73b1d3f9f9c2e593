"""The page's reads over HTTP (sessions page, timeline, tasks, APIs, whoami) and the page's
own files: served without a token, with nothing from another origin."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.api.support import api_client
from tests.support import budget, reserved, used, wait_until
from tokenquota.api import hash_token
from tokenquota.api.page import STATIC_DIR
from tokenquota.config import Settings
from tokenquota.producers import TokenQuota
from tokenquota.schemas import ApiCost, Source, utc_now
from tokenquota.sections import ApiSettings, ApiToken

_SOURCE = Source(component="external_api", name="browse-test")


@pytest.mark.integration
async def test_the_page_reads_answer_what_the_fold_applied(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    tag = uuid.uuid4().hex[:6]
    a, b, c = f"b-{tag}-a", f"b-{tag}-b", f"other-{tag}"
    now = utc_now()
    async with TokenQuota(pipeline_settings) as quota:
        for event in (
            budget(a, now, daily=1_000, monthly=10_000, hard=100_000),
            budget(b, now, daily=100, monthly=1_000, hard=10_000),
            budget(c, now, daily=10_000, monthly=10_000, hard=10_000),
            used(a, 100, now),  # 10% of its day
            used(b, 90, now, task="t1"),  # 90% of its day: the most utilized
            used(c, 5, now),
            reserved(b, 5, now, task="t1"),
            ApiCost(
                session_id=a,
                source=_SOURCE,
                occurred_at=now,
                api="openai",
                model="gpt-4o",
                input_tokens=10,
                output_tokens=2,
                cost_usd=Decimal("0.125"),
                price_source="t",
                rate_limit_remaining=99,
            ),
        ):
            await quota.emit(event)
    async with api_client(pipeline_settings) as client:

        async def applied() -> bool:
            page = (await client.get("/v1/sessions", params={"prefix": f"b-{tag}"})).json()
            decided = (await client.get("/v1/decisions", params={"session_id": b})).json()
            apis = await client.get(f"/v1/sessions/{a}/apis")
            return page["total"] == 2 and len(decided) == 1 and apis.status_code == 200

        await wait_until(applied, 60, "the events applied")  # fmt: skip

        by_use = (await client.get("/v1/sessions", params={"order": "utilization"})).json()
        assert [s["session_id"] for s in by_use["sessions"]] == [b, a, c]
        assert by_use["total"] == 3 and by_use["order"] == "utilization"
        first = by_use["sessions"][0]
        assert first["windows"]["daily"] == {
            "used": 90, "limit": 100, "remaining": 10, "utilization": "0.9000", "alert": "warning",
        }  # fmt: skip
        assert first["tokens_held"] == 5 and first["warning_threshold"] == "0.8000"
        mine = {"order": "utilization", "prefix": f"b-{tag}"}
        prefixed = (await client.get("/v1/sessions", params=mine)).json()
        assert [s["session_id"] for s in prefixed["sessions"]] == [b, a]
        by_name = (await client.get("/v1/sessions", params={"order": "name", "limit": 1})).json()
        assert [s["session_id"] for s in by_name["sessions"]] == [a]
        second = (
            await client.get("/v1/sessions", params={"order": "name", "limit": 1, "offset": 1})
        ).json()
        assert [s["session_id"] for s in second["sessions"]] == [b]
        recent = (await client.get("/v1/sessions")).json()
        assert {s["session_id"] for s in recent["sessions"]} == {a, b, c}
        # A prefix is a prefix, not a pattern: % and _ match themselves.
        none = (await client.get("/v1/sessions", params={"prefix": "b-%"})).json()
        assert none["total"] == 0 and none["sessions"] == []
        assert (await client.get("/v1/sessions", params={"order": "cost"})).status_code == 422
        assert (await client.get("/v1/sessions", params={"limit": 0})).status_code == 422

        minutes = (await client.get("/v1/timeline")).json()
        assert len(minutes["points"]) == 60
        assert (
            sum(p["tokens_used"] for p in minutes["points"]) == 100 + 90 + 5
        )  # TokenUsed (ApiCost carries money)
        assert sum(p["reservations_accepted"] for p in minutes["points"]) == 1
        hours = (await client.get("/v1/timeline", params={"scale": "hour", "hours": 3})).json()
        assert len(hours["points"]) == 3
        assert sum(p["tokens_used"] for p in hours["points"]) == 195
        assert sum(Decimal(p["cost_usd"]) for p in hours["points"]) == Decimal("0.125")
        assert (await client.get("/v1/timeline", params={"scale": "day"})).status_code == 422

        tasks = (await client.get(f"/v1/sessions/{b}/tasks")).json()
        assert [(t["task_id"], t["allocated_tokens"], t["tokens_used"]) for t in tasks] == [
            ("t1", 5, 90)
        ]
        apis = (await client.get(f"/v1/sessions/{a}/apis")).json()
        assert [(x["api_name"], x["cost_usd"], x["rate_limit_remaining"]) for x in apis] == [
            ("openai", "0.125", 99)
        ]
        for path in ("tasks", "apis"):
            missing = await client.get(f"/v1/sessions/nobody-{tag}/{path}")
            assert missing.status_code == 404, missing.text

        who = (await client.get("/v1/whoami")).json()
        assert who == {"name": "local", "role": "admin", "tokens_required": False}


async def test_the_page_and_its_files_need_no_token_but_its_data_does(
    settings: Settings,
) -> None:
    secured = settings.model_copy(
        update={
            "api": ApiSettings(
                tokens=(ApiToken(name="ops", role="read", sha256=hash_token("s3cret")),)
            )
        }
    )
    async with api_client(secured) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for asset in re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text):
            assert (await client.get(asset)).status_code == 200, asset
        assert (await client.get("/v1/sessions")).status_code == 401
        assert (await client.get("/v1/whoami")).status_code == 401
        who = await client.get("/v1/whoami", headers={"Authorization": "Bearer s3cret"})
        assert who.json() == {"name": "ops", "role": "read", "tokens_required": True}


def test_the_page_loads_nothing_from_another_origin_and_records_what_it_vendors() -> None:
    page = STATIC_DIR / "page"
    for file in page.iterdir():
        text = file.read_text()
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), file
        assert not re.search(r"""(?:fetch|import)\s*\(\s*["'`](?:https?:)?//""", text), file
    vendored = (STATIC_DIR / "vendor" / "VENDORED.md").read_text()
    row = re.search(r"\| uplot \| ([0-9.]+) \| MIT", vendored)
    assert row is not None
    banner = (STATIC_DIR / "vendor" / "uplot" / "uPlot.iife.min.js").read_text()[:80]
    assert f"(v{row.group(1)})" in banner
    assert (STATIC_DIR / "vendor" / "uplot" / "LICENSE").read_text().startswith("The MIT License")
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert f"UPLOT_VERSION := {row.group(1)}" in makefile
