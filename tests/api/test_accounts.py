"""Budget tree nodes over HTTP: a node's budget set, reservations naming an account
refused by it (and naming it), the nodes read back; the whole tree and the day's top
nodes; a path that is not one is a 422."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.api.support import api_client
from tokenquota.api import hash_token
from tokenquota.config import ReservationSettings, Settings
from tokenquota.schemas import utc_now
from tokenquota.sections import ApiSettings, ApiToken

pytestmark = pytest.mark.integration


async def test_a_node_budget_refuses_over_http_and_reads_back(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    async with api_client(settings) as client:
        budget = {"daily_limit": 1_000, "monthly_limit": 5_000, "hard_limit": 9_000}
        put = await client.put("/v1/accounts/acme/research/budget", json=budget)
        assert put.status_code == 200, put.text
        assert [(n["account"], n["daily_limit"]) for n in put.json()] == [
            ("acme", None),
            ("acme/research", 1_000),
        ]

        def ask(session: str, user: str) -> dict[str, Any]:
            return {"session_id": session, "tokens": 700, "account": f"acme/research/{user}"}

        granted = await client.post("/v1/reservations", json=ask("h-alice", "alice"))
        assert granted.status_code == 201, granted.text
        refused = await client.post("/v1/reservations", json=ask("h-bob", "bob"))
        assert refused.status_code == 429, refused.text
        assert refused.json() | {"detail": ""} == {
            "error": "quota_exceeded",
            "detail": "",
            "session_id": "h-bob",
            "requested": 700,
            "available": 300,
            "limit": 1_000,
            "window": "daily_limit",
            "refused_by": "acme/research",
        }
        nodes = (await client.get("/v1/accounts/acme/research/bob")).json()
        assert [n["account"] for n in nodes] == ["acme", "acme/research", "acme/research/bob"]
        team = nodes[1]
        assert (team["tokens_held"], team["available_tokens"], team["binding_limit"]) == (
            700,
            300,
            "daily_limit",
        )
        assert (team["reservations_accepted"], team["reservations_rejected"]) == (1, 1)

        # USD: the team may spend half a cent a month. A reservation naming its model is
        # priced (gpt-4o: 300 output tokens at $10 a million = 0.003) and holds it.
        released = await client.post(f"/v1/reservations/{granted.json()['reservation_id']}/release")
        assert released.status_code == 200, released.text
        put = await client.put(
            "/v1/accounts/acme/research/budget", json=budget | {"monthly_usd_limit": "0.005"}
        )
        assert put.status_code == 200 and put.json()[1]["monthly_usd_limit"] == "0.005", put.text

        def priced(session: str) -> dict[str, Any]:
            return ask(session, "erin") | {"tokens": 300, "output_tokens": 300, "model": "gpt-4o"}

        call = await client.post("/v1/reservations", json=priced("h-erin"))
        assert call.status_code == 201, call.text
        over = await client.post("/v1/reservations", json=priced("h-erin"))
        assert over.status_code == 429, over.text
        assert (over.json()["window"], over.json()["detail"]) == (
            "monthly_usd_limit",
            "acme/research: monthly USD 0.005000, used 0.00, held 0.003000, requested 0.003000",
        )
        settle = {"input_tokens": 0, "output_tokens": 100, "model": "gpt-4o", "cost_usd": "0.001"}
        reservation_id = call.json()["reservation_id"]
        settled = await client.post(f"/v1/reservations/{reservation_id}/settle", json=settle)
        assert settled.status_code == 200, settled.text
        # Its cost (0.001) replaced its price: 0.004 is left, the same call fits.
        again = await client.post("/v1/reservations", json=priced("h-erin"))
        assert again.status_code == 201, again.text
        team = (await client.get("/v1/accounts/acme/research")).json()[1]
        assert (team["usd_used_month"], team["usd_held"], team["available_usd"]) == (
            "0.001",
            "0.003",
            "0.001",
        )
        unknown = await client.post("/v1/reservations", json=priced("h-erin") | {"model": "nope"})
        assert unknown.status_code == 422 and unknown.json()["error"] == "unknown_model"

        bad = await client.get("/v1/accounts/acme//x")
        assert bad.status_code == 422, bad.text
        assert bad.json()["errors"][0]["path"] == "path.account", bad.json()
        bad_ask = await client.post("/v1/reservations", json=ask("h-carol", "a/b/c/d/e/f/g/h"))
        assert bad_ask.status_code == 422


async def test_the_tree_and_the_top_accounts_over_http(pipeline_settings: Settings) -> None:
    """The read models' tree, sent now and applied straight to PostgreSQL (the routes read
    the projections only), read with a read token."""
    from tests.projections import test_account_reports as tree

    now = utc_now()
    await tree.apply_tree(pipeline_settings.database, now)
    token = ApiToken(name="viewer", role="read", sha256=hash_token("read-secret"))
    settings = pipeline_settings.model_copy(update={"api": ApiSettings(tokens=(token,))})
    viewer = {"Authorization": "Bearer read-secret"}
    async with api_client(settings) as client:
        assert (await client.get("/v1/accounts")).status_code == 401
        answer = await client.get("/v1/accounts", headers=viewer)
        assert answer.status_code == 200, answer.text
        nodes = {n["account"]: n for n in answer.json()}
        assert [n["account"] for n in answer.json()][:3] == ["acme", tree.OPS, tree.DANA]
        team = nodes[tree.TEAM]
        today = tree.ALICE_IN + tree.ALICE_OUT
        same_month = (now - timedelta(days=1)).month == now.month
        assert (team["depth"], team["parent"], team["daily_limit"]) == (2, "acme", 1_000)
        assert (team["tokens_used_today"], team["tokens_held"], team["available_tokens"]) == (
            today,
            tree.BOB_HOLD,
            tree.TEAM_DAILY - today - tree.BOB_HOLD,
        )
        # Its USD window is the fuller one: $0.25 of $0.40 a month.
        assert Decimal(team["utilization"]) == Decimal("0.625")
        assert (team["monthly_usd_limit"], team["cost_usd_month"]) == ("0.4", "0.25")
        assert team["tokens_month"] == today + (tree.YESTERDAY if same_month else 0)
        assert team["reservations_refused_month"] == 1
        assert (nodes["acme"]["utilization"], nodes["acme"]["daily_limit"]) == (None, None)

        subtree = await client.get("/v1/accounts", params={"root": tree.TEAM}, headers=viewer)
        assert [n["account"] for n in subtree.json()] == [tree.TEAM, tree.ALICE, tree.BOB]

        top = await client.get(
            "/v1/reports/top-accounts",
            params={"by": "cost", "depth": 2, "under": "acme", "date": now.date().isoformat()},
            headers=viewer,
        )
        assert top.status_code == 200, top.text
        assert [(a["account"], a["cost_usd"], a["reservations_refused"]) for a in top.json()] == [
            (tree.TEAM, "0.25", 1),
            (tree.OPS, "0.1", 0),
            ("acme/rxd", "0", 0),
        ]
        tenants = await client.get("/v1/reports/top-accounts?depth=1", headers=viewer)
        assert [(a["account"], a["tokens_used"]) for a in tenants.json()] == [
            ("acme", today + tree.DANA_IN),
            ("globex", tree.GLOBEX_IN),
        ]

        for path, where in (
            ("/v1/accounts?root=acme//x", "query.root"),
            ("/v1/reports/top-accounts?under=acme//x", "query.under"),
            ("/v1/reports/top-accounts?depth=0", "query.depth"),
            ("/v1/reports/top-accounts?by=colour", "query.by"),
        ):
            bad = await client.get(path, headers=viewer)
            assert bad.status_code == 422, (path, bad.text)
            assert bad.json()["errors"][0]["path"] == where, bad.json()
        spec = (await client.get("/openapi.json", headers=viewer)).json()
        assert {"/v1/accounts", "/v1/reports/top-accounts"} <= set(spec["paths"])
