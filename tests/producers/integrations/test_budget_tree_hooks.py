"""Budget trees through the hooks: a session of an account used through the orchestrator,
a memory store, an LLM API, an MCP tool and the budget MCP server is billed at its
nodes, and none of its events is dead-lettered (each names the session's account)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from mcp import Client

from tests.producers.integrations.mcp_support import text_of
from tests.producers.integrations.test_memory import DictStorage, Memory
from tests.support import fetch_value, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.kafka_probe import partition_highwaters
from tokenquota.llm_stub import running_fake_llm
from tokenquota.producers import (
    APIConfig,
    McpMeter,
    TokenQuota,
    current_account,
    integrate_with_external_apis,
    integrate_with_memory,
    kilocode_token_budget,
    route_with_token_budget,
    session_scope,
    track_memory_operation,
)
from tokenquota.producers.integrations.mcp_budget_server import create_budget_server

SESSION, ACCOUNT = "tree-hooks", "hooks/team/alice"
RULE = "an account path is 1 to 8 segments of 1 to 64 characters"


def test_a_scope_carries_its_sessions_account_and_an_argument_overrides_it() -> None:
    assert current_account() is None
    with session_scope("s", account="acme/team"):
        assert current_account() == "acme/team"
        assert current_account("acme/other") == "acme/other"
        with session_scope("t"):
            assert current_account() is None  # the account is the scope's session's
        assert current_account() == "acme/team"
    with pytest.raises(ValueError, match=f"account 'acme//x' is not an account path: {RULE}"):
        current_account("acme//x")
    with pytest.raises(ValueError, match=RULE), session_scope("s", account=""):
        pass


async def dead_lettered(settings: Settings) -> int:
    """How many messages the test's DLQ topic holds (from the fetch highwater: the
    embedded broker answers end_offsets() wrongly)."""
    return sum((await partition_highwaters(settings.kafka, settings.kafka.dlq_topic)).values())


@pytest.mark.integration
async def test_a_tree_session_through_every_hook_is_billed_at_its_nodes(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    worker = start_worker()

    async def plan(goal: str) -> dict[str, Any]:
        return {"plan": goal, "usage": {"input_tokens": 20, "output_tokens": 5}}

    async def echo() -> str:
        return "hello"

    async with TokenQuota(settings) as quota, running_fake_llm() as fake:
        llm = openai.AsyncOpenAI(api_key="sk-test", base_url=f"{fake.url}/v1")
        try:
            with session_scope(SESSION, account=ACCOUNT):
                # The orchestrator: held tokens, then a task reserving its own (2 + 2 events).
                assert await kilocode_token_budget(SESSION, "plan", 100, quota=quota)
                await route_with_token_budget(SESSION, plan, "held", task_id="plan", quota=quota)
                await route_with_token_budget(SESSION, plan, "own", quota=quota)
                # A memory store and a hand-recorded operation (2 TokenUsed, no reservation).
                storage = await integrate_with_memory(DictStorage(), quota=quota)
                await storage.store(Memory("budgets are exact"))
                await track_memory_operation("note", "x", 7, quota=quota)
                # An LLM API: reservation, settlement, ApiCost (3).
                api = await integrate_with_external_apis(APIConfig("openai", llm), quota=quota)
                await api.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=50
                )
                # An MCP tool without mcp.account takes the scope's (2).
                meter = McpMeter(settings, quota=quota)
                await meter.meter(SESSION, "echo", {}, echo, lambda text: (text, True))
        finally:
            await llm.close()

        # The budget server: the account as an argument (2 + 1), checked.
        async with Client(create_budget_server(settings, quota=quota)) as client:
            bad = await client.call_tool(
                "reserve_tokens", {"session_id": SESSION, "tokens": 10, "account": "a//b"}
            )
            malformed = f"'a//b' from the argument account is not an account path: {RULE}"
            assert bad.is_error and malformed in text_of(bad)
            held = await client.call_tool(
                "reserve_tokens", {"session_id": SESSION, "tokens": 100, "account": ACCOUNT}
            )
            assert not held.is_error, text_of(held)
            settle = {"session_id": SESSION, "input_tokens": 30, "output_tokens": 10}
            rid = held.structured_content["reservation_id"]
            settled = await client.call_tool("record_usage", {**settle, "reservation_id": rid})
            assert not settled.is_error, text_of(settled)
            plain = await client.call_tool("record_usage", {**settle, "account": ACCOUNT})
            assert not plain.is_error, text_of(plain)
        # ...or mcp.account as its default, and no account outside it allowed (1 + 1).
        mcp = settings.mcp.model_copy(update={"account": ACCOUNT})
        configured = settings.model_copy(update={"mcp": mcp})
        async with Client(create_budget_server(configured, quota=quota)) as client:
            other = await client.call_tool(
                "reserve_tokens", {"session_id": SESSION, "tokens": 10, "account": "hooks/other"}
            )
            assert other.is_error
            assert f"must be {ACCOUNT!r} or below it (mcp.account)" in text_of(other)
            held = await client.call_tool("reserve_tokens", {"session_id": SESSION, "tokens": 50})
            assert not held.is_error, text_of(held)
            rid = held.structured_content["reservation_id"]
            settled = await client.call_tool("record_usage", {**settle, "reservation_id": rid})
            assert not settled.is_error, text_of(settled)

        count = "SELECT count(*) FROM usage_events WHERE session_id = $1"

        async def all_applied() -> bool:
            return bool(await fetch_value(settings.database, count, SESSION) == 16)

        await wait_until(all_applied, 60, "the session's 16 events", [worker])
        named = await fetch_value(
            settings.database, f"{count} AND payload->>'account' = $2", SESSION, ACCOUNT
        )
        assert named == 16
        session = await quota.session_metrics(SESSION)
        assert session.account == ACCOUNT and session.tokens_held == 0
        nodes = await quota.account_metrics(ACCOUNT)
        assert [n.account for n in nodes] == ["hooks", "hooks/team", ACCOUNT]
        assert {n.tokens_used_total for n in nodes} == {session.tokens_used_total}
        assert session.tokens_used_total > 0
        assert await dead_lettered(settings) == 0
