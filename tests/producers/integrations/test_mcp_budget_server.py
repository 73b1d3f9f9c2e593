"""The budget MCP server's view of a budget tree: `check_budget` and `usage_report` of a
session in a tree show every node from the tenant down and name the tightest; a session
in no tree reads as it always has; `tokenquota mcp-server --account` is checked; the
account a call bills is the client's (argument, `_meta` or header) at or below
`mcp.account`, as for the hooks."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp_types import RequestParamsMeta
from typer.testing import CliRunner

from tests.producers.integrations.mcp_support import proxy_env, text_of
from tests.support import budget, fetch_value, set_budget, wait_for_usage, wait_until
from tokenquota import cli
from tokenquota.config import ReservationSettings, Settings
from tokenquota.producers import TokenQuota
from tokenquota.producers.budgets import set_account_budget
from tokenquota.producers.integrations import mcp_budget_server
from tokenquota.producers.integrations.mcp_budget_server import create_budget_server
from tokenquota.schemas import ApiCost, Source, utc_now

SESSION, ACCOUNT, TEAM = "alice-1", "acme/research/alice", "acme/research"
RULE = "an account path is 1 to 8 segments of 1 to 64 characters"

#: What the tools answered before budget trees, for a session in none.
CHECK_KEYS = {
    "session_id", "available_tokens", "binding_limit", "tokens_used_today", "tokens_held",
    "alert",
}  # fmt: skip
REPORT_KEYS = {
    "session_id", "known", "limits", "tokens_used_today", "tokens_used_month",
    "tokens_used_total", "tokens_held", "available_tokens", "binding_limit", "utilization",
    "daily_alert", "monthly_alert", "total_alert", "reservations_accepted",
    "reservations_rejected", "overage_tokens", "updated_at", "as_of", "account", "usd",
}  # fmt: skip
NODE_KEYS = [
    "account", "known", "daily_limit", "monthly_limit", "hard_limit", "tokens_used_today",
    "tokens_used_month", "tokens_used_total", "tokens_held", "available_tokens",
    "binding_limit", "utilization", "reservations_accepted", "reservations_rejected",
    "updated_at", "daily_usd_limit", "monthly_usd_limit", "total_usd_limit", "usd_used_today",
    "usd_used_month", "usd_used_total", "usd_held", "available_usd",
]  # fmt: skip


def _settings(pipeline_settings: Settings) -> Settings:
    return pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )


async def _call(
    client: Client, tool: str, arguments: dict[str, Any], meta: RequestParamsMeta | None = None
) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, meta=meta)
    assert not result.is_error, text_of(result)
    content: dict[str, Any] = result.structured_content
    assert content is not None
    return content


@pytest.mark.integration
async def test_a_tree_sessions_budget_shows_every_node_and_names_the_tightest(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = _settings(pipeline_settings)
    worker = start_worker()
    team_limit, tenant_limit, session_limit = 1_000, 5_000, 10_000
    async with TokenQuota(settings) as quota:
        for node, limit in (("acme", tenant_limit), (TEAM, team_limit)):
            await set_account_budget(
                quota, node, daily_limit=limit, monthly_limit=limit, hard_limit=limit,
                actor="tests",
            )  # fmt: skip
        # The session: more room than its team, and a daily USD limit of its own.
        limit = session_limit
        await quota.emit(
            budget(SESSION, utc_now(), daily=limit, monthly=limit, hard=limit, account=ACCOUNT,
                   usd=("1.00", None, None))
        )  # fmt: skip

        async def session_budget_applied() -> bool:
            metrics = await quota.session_metrics(SESSION)
            return metrics.limits.hard_limit == limit and metrics.account == ACCOUNT

        await wait_until(session_budget_applied, 60, "the session's budget", [worker])

        async with Client(create_budget_server(settings, quota=quota)) as client:
            held = await _call(
                client, "reserve_tokens", {"session_id": SESSION, "tokens": 300, "account": ACCOUNT}
            )
            await _call(
                client,
                "record_usage",
                {"session_id": SESSION, "input_tokens": 120, "output_tokens": 80,
                 "reservation_id": held["reservation_id"]},
            )  # fmt: skip
            await _call(
                client,
                "record_usage",
                {"session_id": SESSION, "input_tokens": 30, "output_tokens": 20,
                 "account": ACCOUNT},
            )  # fmt: skip
            open_hold = await _call(
                client, "reserve_tokens", {"session_id": SESSION, "tokens": 250, "account": ACCOUNT}
            )
            assert open_hold["status"] == "accepted"
            used, holding, cost = 120 + 80 + 30 + 20, 250, Decimal("0.25")
            await quota.emit(
                ApiCost(
                    session_id=SESSION,
                    account=ACCOUNT,
                    source=Source(component="sdk", name="tests"),
                    api="openai",
                    model="gpt-4o",
                    input_tokens=120,
                    output_tokens=80,
                    cost_usd=cost,
                    price_source="test",
                )
            )

            async def all_applied() -> bool:
                session = await quota.session_metrics(SESSION)
                team = (await quota.account_metrics(TEAM))[-1]
                return (
                    session.usd is not None
                    and session.usd.used_total == cost
                    and (team.tokens_used_total, team.tokens_held) == (used, holding)
                )

            await wait_until(all_applied, 60, "the usage, the hold and the cost", [worker])

            check = await _call(client, "check_budget", {"session_id": SESSION})
            assert check.keys() == CHECK_KEYS | {
                "daily_usd_limit", "monthly_usd_limit", "total_usd_limit", "usd_used_today",
                "usd_used_month", "usd_used_total", "usd_held", "available_usd",
                "account", "tree", "tightest", "tree_available_tokens",
            }  # fmt: skip
            assert check["tightest"] == TEAM
            # The session's own figures, as before.
            assert check["available_tokens"] == session_limit - used - holding
            assert (check["tokens_used_today"], check["tokens_held"]) == (used, holding)
            # Its USD: the ApiCost spent, nothing priced is held.
            assert (check["daily_usd_limit"], check["monthly_usd_limit"]) == ("1", None)
            assert check["usd_used_today"] == check["usd_used_total"] == str(cost)
            assert (check["usd_held"], check["available_usd"]) == ("0", str(1 - cost))
            # The tree, tenant first; the team leaves the least.
            assert check["account"] == ACCOUNT
            tree = check["tree"]
            assert [node["account"] for node in tree] == ["acme", TEAM, ACCOUNT]
            assert all(list(node) == NODE_KEYS for node in tree)
            for node, node_limit in zip(tree, (tenant_limit, team_limit, None), strict=True):
                limits = (node["daily_limit"], node["monthly_limit"], node["hard_limit"])
                assert limits == (node_limit, node_limit, node_limit), node["account"]
                usage = (node["tokens_used_today"], node["tokens_used_month"])
                assert usage == (used, used), node["account"]
                assert (node["tokens_used_total"], node["tokens_held"]) == (used, holding)
                assert node["usd_used_total"] == str(cost) and node["usd_held"] == "0"
                assert node["daily_usd_limit"] is None and node["available_usd"] is None
                expected = None if node_limit is None else node_limit - used - holding
                assert node["available_tokens"] == expected, node["account"]
                assert node["reservations_accepted"] == 2, node["account"]
            team = tree[1]
            assert team["binding_limit"] == "hard_limit"
            assert Decimal(team["utilization"]) == Decimal(used) / team_limit
            assert check["tree_available_tokens"] == team_limit - used - holding

            # Low priority stops at each level's critical threshold.
            team_limits = (await quota.account_metrics(TEAM))[-1].limits
            assert team_limits is not None
            critical = team_limits.critical_threshold
            low = await _call(client, "check_budget", {"session_id": SESSION, "priority": "low"})
            assert low["tree_available_tokens"] == int(team_limit * critical) - used - holding

            report = await _call(client, "usage_report", {"session_id": SESSION})
            assert report.keys() == REPORT_KEYS | {"tree", "tightest"}
            assert (report["account"], report["tightest"]) == (ACCOUNT, TEAM)
            assert report["tree"] == tree
            assert report["tokens_used_total"] == used and report["tokens_held"] == holding

        # A session no event has reached, on a server started with --account: its tree is
        # the configured one, where the team's usage is alice's.
        env = proxy_env(settings, MCP_TOKEN_BUDGET_PER_REQUEST="300")
        server = StdioServerParameters(
            command=sys.executable,
            args=["-m", "tokenquota", "mcp-server", "--account", "acme/research/bob"],
            env=env,
            cwd=Path.cwd(),
        )
        async with Client(server, cache=None, read_timeout_seconds=90) as client:
            fresh = await _call(client, "check_budget", {"session_id": "bob-1"})
            assert (fresh["account"], fresh["tightest"]) == ("acme/research/bob", TEAM)
            assert [node["available_tokens"] for node in fresh["tree"]] == [
                tenant_limit - used - holding,
                team_limit - used - holding,
                None,
            ]
            assert fresh["tree"][2]["tokens_used_total"] == 0
            assert fresh["tree_available_tokens"] == min(
                fresh["available_tokens"], team_limit - used - holding
            )
            assert "daily_usd_limit" not in fresh  # bob-1 has no USD limits
            other = await client.call_tool(
                "reserve_tokens", {"session_id": "bob-1", "tokens": 1, "account": ACCOUNT}
            )
            assert other.is_error
            assert text_of(other) == (
                "Error executing tool reserve_tokens: account 'acme/research/alice' from the "
                "argument account is not allowed: an account named by the client must be "
                "'acme/research/bob' or below it (mcp.account)"
            )


@pytest.mark.integration
async def test_a_session_in_no_tree_reads_as_before(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "solo", 2_000)
        async with Client(create_budget_server(settings, quota=quota)) as client:
            held = await _call(client, "reserve_tokens", {"session_id": "solo", "tokens": 500})
            await _call(
                client,
                "record_usage",
                {"session_id": "solo", "input_tokens": 300, "output_tokens": 100,
                 "reservation_id": held["reservation_id"]},
            )  # fmt: skip
            await wait_for_usage(quota, "solo", 400)
            check = await _call(client, "check_budget", {"session_id": "solo"})
            assert check == {
                "session_id": "solo",
                "available_tokens": 2_000 - 400,
                "binding_limit": "hard_limit",
                "tokens_used_today": 400,
                "tokens_held": 0,
                "alert": "none",
            }
            report = await _call(client, "usage_report", {"session_id": "solo"})
            assert report.keys() == REPORT_KEYS
            assert report["account"] is None
            assert (report["tokens_used_total"], report["available_tokens"]) == (400, 1_600)


def test_mcp_server_account_is_checked_and_reaches_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[tuple[str | None, str | None]] = []

    class Server:
        def run(self, transport: str, **kwargs: Any) -> None:
            pass

    def create(settings: Settings, **kwargs: Any) -> Server:
        served.append((settings.mcp.session_id, settings.mcp.account))
        return Server()

    monkeypatch.setattr(mcp_budget_server, "create_budget_server", create)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    args = ["mcp-server", "--session", "agent-7", "--account", "acme/research/alice"]
    ran = CliRunner().invoke(cli.app, args)
    assert ran.exit_code == 0, ran.output
    assert served == [("agent-7", "acme/research/alice")]
    bad = CliRunner().invoke(cli.app, ["mcp-server", "--account", "bad//path"])
    assert bad.exit_code == 2, bad.output
    assert served == [("agent-7", "acme/research/alice")]  # no server started
    assert f"--account 'bad//path': {RULE}" in bad.output


def _meta(session: str, account: str) -> RequestParamsMeta:
    """A request `_meta` naming `session` and `account` (mcp.account_meta_key)."""
    return cast(RequestParamsMeta, {"tokenquota/session": session, "tokenquota/account": account})


def _refusal(tool: str, account: str, origin: str) -> str:
    return (
        f"Error executing tool {tool}: account {account!r} from {origin} is not allowed: an "
        f"account named by the client must be {TEAM!r} or below it (mcp.account)"
    )


@contextlib.asynccontextmanager
async def _over_http(server: MCPServer[Any], headers: dict[str, str]) -> AsyncIterator[Client]:
    """A client of `server`, served over streamable HTTP in this process, sending `headers`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
    http_server = uvicorn.Server(config)
    serving = asyncio.create_task(http_server.serve(sockets=[listener]))

    async def started() -> bool:
        assert not serving.done(), "the HTTP server stopped"
        return http_server.started

    try:
        await wait_until(started, 10, "the budget server over HTTP")
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
            ) as client,
        ):
            yield client
    finally:
        http_server.should_exit = True
        await asyncio.wait_for(serving, 10)
        listener.close()


async def _accounts_of(settings: Settings, session: str) -> list[str]:
    """The accounts the usage events of `session` name, each once."""
    found = await fetch_value(
        settings.database,
        "SELECT array_agg(DISTINCT payload->>'account') FROM usage_events WHERE session_id = $1",
        session,
    )
    return list(found or [])


@pytest.mark.integration
async def test_a_configured_account_admits_the_accounts_a_client_names_below_it(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    base = _settings(pipeline_settings)
    settings = base.model_copy(update={"mcp": base.mcp.model_copy(update={"account": TEAM})})
    worker = start_worker()
    async with TokenQuota(settings) as quota:
        server = create_budget_server(settings, quota=quota)
        async with Client(server) as client:
            # The argument: a node below mcp.account is billed; a node beside it is refused.
            alice = await _call(
                client,
                "reserve_tokens",
                {"session_id": "r-alice", "tokens": 100, "account": ACCOUNT},
            )
            outside = await client.call_tool(
                "reserve_tokens", {"session_id": "r-ops", "tokens": 100, "account": "acme/ops"}
            )
            assert outside.is_error
            assert text_of(outside) == _refusal(
                "reserve_tokens", "acme/ops", "the argument account"
            )
            # A settlement bills its reservation's account; naming another is refused.
            settle = {"session_id": "r-alice", "input_tokens": 30, "output_tokens": 10}
            rid = alice["reservation_id"]
            moved = await client.call_tool(
                "record_usage", {**settle, "reservation_id": rid, "account": TEAM}
            )
            assert moved.is_error
            assert f"reservation {rid} was made for account {ACCOUNT!r}" in text_of(moved)
            await _call(client, "record_usage", {**settle, "reservation_id": rid})

            # No argument: the request's _meta account, checked the same way.
            bob = "acme/research/bob"
            held = await client.call_tool(
                "reserve_tokens", {"tokens": 100}, meta=_meta("r-bob", bob)
            )
            assert not held.is_error, text_of(held)
            await _call(
                client,
                "record_usage",
                {"session_id": "r-bob", "input_tokens": 20, "output_tokens": 5,
                 "reservation_id": held.structured_content["reservation_id"]},
            )  # fmt: skip
            meta_outside = await client.call_tool(
                "reserve_tokens",
                {"session_id": "r-ops", "tokens": 1},
                meta=_meta("r-ops", "acme/ops"),
            )
            assert meta_outside.is_error
            assert text_of(meta_outside) == _refusal(
                "reserve_tokens", "acme/ops", "the request _meta key 'tokenquota/account'"
            )
            # The argument wins over _meta; with neither, mcp.account is billed.
            await _call(
                client,
                "record_usage",
                {"input_tokens": 3, "output_tokens": 2, "account": ACCOUNT},
                meta=_meta("r-alice", "acme/ops"),
            )
            await _call(
                client,
                "record_usage",
                {"session_id": "r-team", "input_tokens": 4, "output_tokens": 1},
            )

        # Over streamable HTTP, the header names the account.
        carol = "acme/research/carol"
        async with _over_http(server, {"X-Tokenquota-Account": carol}) as client:
            await _call(
                client,
                "record_usage",
                {"session_id": "r-carol", "input_tokens": 6, "output_tokens": 1},
            )
        async with _over_http(server, {"X-Tokenquota-Account": "acme/ops"}) as client:
            refused = await client.call_tool(
                "record_usage", {"session_id": "r-ops", "input_tokens": 1, "output_tokens": 1}
            )
            assert refused.is_error
            assert text_of(refused) == _refusal(
                "record_usage", "acme/ops", "the HTTP header 'X-Tokenquota-Account'"
            )

        for session, used in (("r-alice", 45), ("r-bob", 25), ("r-team", 5), ("r-carol", 7)):
            await wait_for_usage(quota, session, used)
        assert await _accounts_of(settings, "r-alice") == [ACCOUNT]
        assert await _accounts_of(settings, "r-bob") == [bob]
        assert await _accounts_of(settings, "r-team") == [TEAM]
        assert await _accounts_of(settings, "r-carol") == [carol]
        assert await _accounts_of(settings, "r-ops") == []  # every refusal emitted nothing
        assert (await quota.session_metrics("r-alice")).account == ACCOUNT
        assert worker.exit_code() is None
