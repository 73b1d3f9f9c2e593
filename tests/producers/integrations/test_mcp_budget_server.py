"""The budget MCP server's view of a budget tree: `check_budget` and `usage_report` of a
session in a tree show every node from the tenant down and name the tightest; a session
in no tree reads as it always has; `tokenquota mcp-server --account` is checked."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from typer.testing import CliRunner

from tests.producers.integrations.mcp_support import proxy_env, text_of
from tests.support import budget, set_budget, wait_for_usage, wait_until
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


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
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
            assert other.is_error and "bills its sessions to account" in text_of(other)


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
