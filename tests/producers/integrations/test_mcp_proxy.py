"""`tokenquota mcp-proxy` and `tokenquota mcp-server` as real processes, with a real client."""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.producers.integrations.mcp_support import listening, session_meta, text_of, tokens
from tests.support import fetch_value, set_budget, settings_env, wait_for_usage, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.producers import TokenQuota

pytestmark = pytest.mark.integration

UPSTREAM = Path(__file__).parents[3] / "examples" / "plain_mcp_server.py"


def command(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> StdioServerParameters:
    env = {
        **settings_env(settings),
        "MCP_TOKEN_BUDGET_PER_REQUEST": "300",
        "LOG_LEVEL": "WARNING",
        # a spool of its own, never the checkout's (a test beside it may hold that)
        "EMITTER_SPOOL_DIR": str(settings.spool_dir / f"process-{uuid.uuid4().hex[:8]}"),
        **(env or {}),
    }
    return StdioServerParameters(
        command=sys.executable, args=["-m", "tokenquota", *args], env=env, cwd=Path.cwd()
    )


async def test_the_proxy_serves_upstream_unchanged_and_meters_every_call(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    direct_params = StdioServerParameters(command=sys.executable, args=[str(UPSTREAM), "--stdio"])
    async with Client(direct_params, cache=None) as direct:
        upstream_tools = (await direct.list_tools()).tools
        upstream_prompt = await direct.get_prompt("summarize", {"topic": "budgets"})
    proxied = command(
        settings,
        "mcp-proxy",
        "--session",
        "ide-user",
        "--",
        sys.executable,
        str(UPSTREAM),
        "--stdio",
    )
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "ide-user", 10_000)
        await set_budget(quota, "tiny", 100)
        async with Client(proxied, cache=None, read_timeout_seconds=90) as client:
            assert client.server_info is not None and client.server_info.name == "upstream-notes"
            assert (await client.list_tools()).tools == upstream_tools
            prompt = await client.get_prompt("summarize", {"topic": "budgets"})
            assert prompt.messages == upstream_prompt.messages
            readme = await client.read_resource("notes://readme")
            assert [c.text for c in readme.contents] == ["read me first"]  # type: ignore[union-attr]

            result = await client.call_tool("reverse", {"text": "budget"})
            assert not result.is_error and text_of(result) == "tegdub"
            failed = await client.call_tool("fail", {"reason": "boom"})
            assert failed.is_error  # the upstream's own error passes through, and is metered
            # A client naming another session in _meta is billed to --session all the same.
            foreign = await client.call_tool("reverse", {"text": "x y"}, meta=session_meta("tiny"))
            assert not foreign.is_error and text_of(foreign) == "y x"
            again = await client.call_tool("reverse", {"text": "still serving"})
            assert text_of(again) == "gnivres llits"
        expected = (
            tokens({"text": "budget"})
            + tokens("tegdub")
            + tokens({"reason": "boom"})
            + tokens(text_of(failed))
            + tokens({"text": "x y"})
            + tokens("y x")
            + tokens({"text": "still serving"})
            + tokens("gnivres llits")
        )
        await wait_for_usage(quota, "ide-user", expected)
        assert (await quota.session_metrics("tiny")).tokens_used_total == 0


async def test_a_proxy_that_trusts_the_client_bills_its_session_within_the_prefix(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    trusting = {"MCP_SESSION_SOURCES": "meta,config", "MCP_CLIENT_SESSION_PREFIX": "team-"}
    proxied = command(
        settings,
        "mcp-proxy",
        "--session",
        "ide-user",
        "--",
        sys.executable,
        str(UPSTREAM),
        "--stdio",
        env=trusting,
    )
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "ide-user", 10_000)
        await set_budget(quota, "team-tiny", 2)  # less than the call's own arguments
        await set_budget(quota, "tiny", 10_000)
        async with Client(proxied, cache=None, read_timeout_seconds=90) as client:
            refused = await client.call_tool(
                "reverse", {"text": "x"}, meta=session_meta("team-tiny")
            )
            assert refused.is_error  # the client's session is used: its budget refuses
            assert "'team-tiny'" in text_of(refused)
            wanted = tokens({"text": "x"}) + 300  # the arguments and the whole allowance
            assert f"requested {wanted} tokens, 2 available" in text_of(refused)
            outside = await client.call_tool("reverse", {"text": "x"}, meta=session_meta("tiny"))
            assert outside.is_error
            assert text_of(outside) == (
                "session 'tiny' from the request _meta key 'tokenquota/session' is not "
                "allowed: a session named by the client must start with 'team-' "
                "(mcp.client_session_prefix)"
            )
            configured = await client.call_tool("reverse", {"text": "own"})
            assert text_of(configured) == "nwo"
        await wait_for_usage(quota, "ide-user", tokens({"text": "own"}) + tokens("nwo"))
        for other in ("team-tiny", "tiny"):
            metrics = await quota.session_metrics(other)
            assert (metrics.tokens_used_total, metrics.tokens_held) == (0, 0)


async def test_the_budget_server_tools_check_reserve_record_and_report(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "agent-7", 2_000)
        await set_budget(quota, "boss", 2_000)
        server = command(settings, "mcp-server", env={"MCP_CLIENT_SESSION_PREFIX": "agent-"})
        async with Client(server, cache=None, read_timeout_seconds=90) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names == {"check_budget", "reserve_tokens", "record_usage", "usage_report"}
            outside = await client.call_tool("reserve_tokens", {"session_id": "boss", "tokens": 1})
            assert outside.is_error
            assert text_of(outside) == (
                "Error executing tool reserve_tokens: "
                "session 'boss' from the argument session_id is not allowed: a session named "
                "by the client must start with 'agent-' (mcp.client_session_prefix)"
            )

            check = (
                await client.call_tool("check_budget", {"session_id": "agent-7"})
            ).structured_content
            assert check["available_tokens"] == 2_000 and check["binding_limit"] == "hard_limit"

            held = await client.call_tool(
                "reserve_tokens", {"session_id": "agent-7", "tokens": 1_500}
            )
            assert not held.is_error, text_of(held)
            reservation_id = held.structured_content["reservation_id"]
            over = await client.call_tool(
                "reserve_tokens", {"session_id": "agent-7", "tokens": 1_000}
            )
            assert over.is_error and "500 available" in text_of(over)

            recorded = await client.call_tool(
                "record_usage",
                {
                    "session_id": "agent-7",
                    "input_tokens": 700,
                    "output_tokens": 300,
                    "model": "gpt-4o",
                    "reservation_id": reservation_id,
                },
            )
            assert not recorded.is_error and recorded.structured_content["recorded"] == 1_000
            bad = await client.call_tool(
                "record_usage",
                {
                    "session_id": "agent-7",
                    "input_tokens": 1,
                    "output_tokens": 1,
                    "reservation_id": "x",
                },
            )
            assert bad.is_error and "not a UUID" in text_of(bad)
            await wait_for_usage(quota, "agent-7", 1_000)
            report = (
                await client.call_tool("usage_report", {"session_id": "agent-7"})
            ).structured_content
            assert report["tokens_used_total"] == 1_000
            assert report["available_tokens"] == 1_000
            assert report["limits"]["daily_limit"] == 2_000
        assert (
            await fetch_value(
                settings.database, "SELECT count(*) FROM usage_events WHERE session_id = 'boss'"
            )
            == 1
        )  # its BudgetSet: the refused call emitted nothing


async def test_a_budget_server_with_a_session_refuses_to_act_for_another(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "agent-7", 2_000)
        await set_budget(quota, "victim", 2_000)
        server = command(settings, "mcp-server", "--session", "agent-7")
        async with Client(server, cache=None, read_timeout_seconds=90) as client:
            check = await client.call_tool("check_budget", {})
            assert not check.is_error, text_of(check)
            assert check.structured_content["session_id"] == "agent-7"
            foreign = (
                ("check_budget", {"session_id": "victim"}),
                ("reserve_tokens", {"session_id": "victim", "tokens": 1_000}),
                ("record_usage", {"session_id": "victim", "input_tokens": 5, "output_tokens": 5}),
                ("usage_report", {"session_id": "victim"}),
            )
            for tool, arguments in foreign:
                refused = await client.call_tool(tool, arguments)
                assert refused.is_error, tool
                assert text_of(refused) == (
                    f"Error executing tool {tool}: "
                    "session 'victim' is not allowed: this server acts for session 'agent-7'; "
                    "a client may name another session only when mcp.session_sources lists "
                    "meta before config"
                )
            held = await client.call_tool("reserve_tokens", {"tokens": 500})
            assert not held.is_error, text_of(held)
            recorded = await client.call_tool(
                "record_usage",
                {
                    "session_id": "agent-7",  # its own session may be named
                    "input_tokens": 200,
                    "output_tokens": 100,
                    "reservation_id": held.structured_content["reservation_id"],
                },
            )
            assert not recorded.is_error, text_of(recorded)
        await wait_for_usage(quota, "agent-7", 300)
        victim = await quota.session_metrics("victim")
        assert (victim.tokens_used_total, victim.tokens_held) == (0, 0)
        assert (
            await fetch_value(
                settings.database, "SELECT count(*) FROM usage_events WHERE session_id = 'victim'"
            )
            == 1
        )  # its BudgetSet only


async def test_the_proxy_over_streamable_http_takes_the_session_from_a_header(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = command(
        settings,
        "mcp-proxy",
        "--http",
        "--port",
        str(port),
        "--",
        sys.executable,
        str(UPSTREAM),
        "--stdio",
    )
    proxy = await asyncio.create_subprocess_exec(
        params.command, *params.args, env=params.env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with TokenQuota(settings) as quota:
            await set_budget(quota, "web-user", 10_000)

            async def listening() -> bool:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    assert proxy.returncode is None, "the proxy exited"
                    return False
                writer.close()
                return True

            await wait_until(listening, 60, "the proxy's HTTP port")
            headers = {"x-tokenquota-session": "web-user"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=60) as http,
                Client(
                    streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
                ) as client,
            ):
                result = await client.call_tool("reverse", {"text": "over http"})
                assert text_of(result) == "ptth revo"
            await wait_for_usage(
                quota, "web-user", tokens({"text": "over http"}) + tokens("ptth revo")
            )
    finally:
        proxy.terminate()
        await asyncio.wait_for(proxy.wait(), 30)


def named(session: str, account: str) -> Any:
    """A request `_meta` naming `session` and `account` (mcp.account_meta_key)."""
    return {**session_meta(session), "tokenquota/account": account}


async def accounts_of(settings: Settings, session: str) -> list[str | None]:
    """The accounts the events of `session` in the ledger name, each once."""
    found = await fetch_value(
        settings.database,
        "SELECT array_agg(DISTINCT payload->>'account') FROM usage_events"
        " WHERE session_id = $1 AND event_type <> 'BudgetSet'",
        session,
    )
    return list(found or [])


SAMPLER = """
import warnings

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer(name="sampler")


@server.tool()
async def reverse(text: str) -> str:
    return text[::-1]


@server.tool()
async def ask(prompt: str, ctx: Context) -> str:
    text = types.TextContent(type="text", text=prompt)
    message = types.SamplingMessage(role="user", content=text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = await ctx.session.create_message([message], max_tokens=20)
    return result.content.text


server.run("stdio")
"""


async def test_the_proxy_bills_the_account_a_client_names_below_its_account(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    upstream = tmp_path / "sampler.py"
    upstream.write_text(SAMPLER, encoding="utf-8")
    proxied = command(
        settings,
        "mcp-proxy",
        "--account",
        "acme/research",
        "--",
        sys.executable,
        str(upstream),
        env={"MCP_SESSION_SOURCES": "meta"},
    )

    async def sample(context: Any, params: types.CreateMessageRequestParams) -> Any:
        text = types.TextContent(type="text", text="an answer")
        return types.CreateMessageResult(role="assistant", content=text, model="gpt-4o")

    async with Client(
        proxied, cache=None, mode="legacy", read_timeout_seconds=90, sampling_callback=sample
    ) as client:
        below = await client.call_tool(
            "reverse", {"text": "ab"}, meta=named("r-alice", "acme/research/alice")
        )
        assert not below.is_error and text_of(below) == "ba", text_of(below)
        # The server's sampling during a call of the session: under the session's account.
        asked = await client.call_tool(
            "ask", {"prompt": "hi"}, meta=named("r-alice", "acme/research/alice")
        )
        assert not asked.is_error and text_of(asked) == "an answer", text_of(asked)
        outside = await client.call_tool("reverse", {"text": "ab"}, meta=named("r-ops", "acme/ops"))
        assert outside.is_error
        assert text_of(outside) == (
            "account 'acme/ops' from the request _meta key 'tokenquota/account' is not "
            "allowed: an account named by the client must be 'acme/research' or below it "
            "(mcp.account)"
        )
        switched = await client.call_tool(
            "reverse", {"text": "ab"}, meta=named("r-alice", "acme/research")
        )
        assert switched.is_error
        assert text_of(switched).startswith(
            "session 'r-alice' is billed to account 'acme/research/alice' here; this call "
            "names account 'acme/research': every event of a session names the same account"
        )

        async def all_settled() -> bool:
            settled = await fetch_value(
                settings.database,
                "SELECT count(*) FROM reservations WHERE session_id = 'r-alice'"
                " AND status = 'settled'",
            )
            return bool(settled == 3)  # two tool calls and the sampling

        await wait_until(all_settled, 60, "the calls and the sampling settled")
        assert await accounts_of(settings, "r-alice") == ["acme/research/alice"]
        assert await accounts_of(settings, "r-ops") == []


async def test_the_proxy_over_streamable_http_takes_the_account_from_a_header(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = command(
        settings, "mcp-proxy", "--http", "--port", str(port), "--", sys.executable,
        str(UPSTREAM), "--stdio",
    )  # fmt: skip
    assert params.env is not None
    url = f"http://127.0.0.1:{port}/mcp"

    async def call(account: str) -> Any:
        headers = {"x-tokenquota-session": "web-acct", "X-Tokenquota-Account": account}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            return await client.call_tool("reverse", {"text": "over http"})

    async with (
        TokenQuota(settings) as quota,
        listening([params.command, *params.args], port, tmp_path / "proxy.log", params.env),
    ):
        malformed = await call("webco//alice")
        assert malformed.is_error
        assert text_of(malformed) == (
            "account 'webco//alice' from the HTTP header 'X-Tokenquota-Account' is not an "
            "account path: an account path is 1 to 8 segments of 1 to 64 characters, "
            "separated by '/', without control characters"
        )
        result = await call("webco/alice")  # no mcp.account: the client's, as given
        assert text_of(result) == "ptth revo"
        await wait_for_usage(quota, "web-acct", tokens({"text": "over http"}) + tokens("ptth revo"))
        assert await accounts_of(settings, "web-acct") == ["webco/alice"]
