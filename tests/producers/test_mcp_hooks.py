"""MCP tools under budget: the decorator and the server-wide hooks, against a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer

from tests.producers.mcp_support import session_meta, text_of, tokens
from tests.support import fetch_value, set_budget, wait_for_usage
from tokenquota.config import ReservationSettings, Settings
from tokenquota.producers import TokenQuota, mcp_token_decorator, setup_mcp_token_hooks
from tokenquota.sections import McpSettings

pytestmark = pytest.mark.integration


def metered_settings(settings: Settings, per_request: int = 1000) -> Settings:
    return settings.model_copy(
        update={
            "mcp": McpSettings(token_budget_per_request=per_request),
            "reservations": ReservationSettings(decision_timeout=60),
        }
    )


async def test_the_decorator_settles_counted_tokens_and_refuses_over_budget_calls(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = metered_settings(pipeline_settings)
    start_worker()
    async with TokenQuota(settings) as quota:
        server = MCPServer(name="notes")

        @server.tool()
        @mcp_token_decorator(settings=settings, quota=quota)
        async def shout(text: str, ctx: Context) -> str:
            """Upper-case a text."""
            return text.upper() + "!"

        only_meta = settings.model_copy(
            update={"mcp": settings.mcp.model_copy(update={"session_sources": ("meta",)})}
        )

        @server.tool()
        @mcp_token_decorator(settings=only_meta, quota=quota)
        async def whisper(text: str, ctx: Context) -> str:
            """Lower-case a text."""
            return text.lower()

        await set_budget(quota, "alice", 10_000)
        await set_budget(quota, "bob", 500)
        async with Client(server) as client:
            result = await client.call_tool(
                "shout", {"text": "hello there"}, meta=session_meta("alice")
            )
            assert not result.is_error and text_of(result) == "HELLO THERE!"
            expected = tokens({"text": "hello there"}) + tokens("HELLO THERE!")
            await wait_for_usage(quota, "alice", expected)

            refused = await client.call_tool("shout", {"text": "hi"}, meta=session_meta("bob"))
            assert refused.is_error
            message = text_of(refused)
            assert "'bob'" in message and "requested 1000 tokens" in message
            assert "500 available" in message

            missing = await client.call_tool("whisper", {"text": "hi"})
            assert missing.is_error and "no tokenquota session" in text_of(missing)

            again = await client.call_tool(
                "shout", {"text": "still up"}, meta=session_meta("alice")
            )
            assert text_of(again) == "STILL UP!"
            expected += tokens({"text": "still up"}) + tokens("STILL UP!")
            await wait_for_usage(quota, "alice", expected)
        assert (await quota.session_metrics("bob")).tokens_used_total == 0
        row = await fetch_value(
            settings.database,
            "SELECT (payload->>'counted_by') || ' ' || (payload->>'operation') FROM usage_events"
            " WHERE event_type = 'TokenUsed' AND session_id = 'alice' LIMIT 1",
        )
        assert row == "tiktoken mcp.tool:shout"


async def test_server_hooks_meter_every_tool_once_with_a_configured_session(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    base = metered_settings(pipeline_settings, per_request=200)
    settings = base.model_copy(
        update={
            "mcp": base.mcp.model_copy(
                update={"session_id": "ide", "token_budget_per_request": 200}
            )
        }
    )
    start_worker()
    async with TokenQuota(settings) as quota:
        server = MCPServer(name="tools")

        @server.tool()
        async def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        @server.tool()
        @mcp_token_decorator(settings=settings, quota=quota)
        async def repeat(word: str, times: int) -> str:
            """Repeat a word."""
            return " ".join([word] * times)

        setup_mcp_token_hooks(server, settings=settings, quota=quota)

        @server.tool()  # registered after the hooks: metered too
        async def late(x: str) -> dict[str, str]:
            """Echo as a structure."""
            return {"echo": x}

        await set_budget(quota, "ide", 10_000)
        await set_budget(quota, "other", 100)
        async with Client(server) as client:
            assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
            assert (
                text_of(await client.call_tool("repeat", {"word": "ok", "times": 3})) == "ok ok ok"
            )
            late_result = await client.call_tool("late", {"x": "y"})
            assert not late_result.is_error
            meta_wins = await client.call_tool("add", {"a": 1, "b": 1}, meta=session_meta("other"))
            assert meta_wins.is_error and "'other'" in text_of(meta_wins)  # _meta before config
        expected = (
            tokens({"a": 2, "b": 3})
            + tokens("5")
            + tokens({"word": "ok", "times": 3})
            + tokens("ok ok ok")
            + tokens({"x": "y"})
            + tokens(text_of(late_result))
        )
        await wait_for_usage(quota, "ide", expected)
        used_events = await fetch_value(
            settings.database,
            "SELECT count(*) FROM usage_events"
            " WHERE event_type = 'TokenUsed' AND session_id = 'ide'",
        )
        assert used_events == 3  # one per call: the decorated tool was not counted twice
