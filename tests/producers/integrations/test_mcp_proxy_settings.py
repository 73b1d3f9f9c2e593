"""`mcp.host`, `mcp.port` and `mcp.timeout`: what `tokenquota mcp-proxy` does with them.

No servers: the upstream is a small stdio MCP server, the budgets are left out.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import uvicorn
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.message import SessionMessage
from mcp_types import REQUEST_TIMEOUT
from starlette.applications import Starlette
from typer.testing import CliRunner

from tokenquota import cli
from tokenquota.config import Settings, env_var_names, load_settings
from tokenquota.producers.integrations import mcp_proxy
from tokenquota.producers.integrations.mcp_relay import Relay
from tokenquota.producers.spool import Spool

UPSTREAM = textwrap.dedent(
    """
    import anyio
    from mcp.server.mcpserver import MCPServer

    server = MCPServer(name="slow-upstream")


    @server.tool()
    async def wait(seconds: float) -> str:
        \"\"\"Answer after `seconds`.\"\"\"
        await anyio.sleep(seconds)
        return f"waited {seconds}"


    server.run("stdio")
    """
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the machine running the tests."""
    for variables in env_var_names().values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("TOKENQUOTA_CONFIG", raising=False)


@pytest.fixture
def upstream(tmp_path: Path) -> list[str]:
    """The command of a stdio MCP server whose tool `wait` takes as long as it is told."""
    script = tmp_path / "slow_upstream.py"
    script.write_text(UPSTREAM)
    return [sys.executable, str(script)]


async def _exchange(upstream: list[str], timeout: float | None, calls: list[float]) -> list[Any]:
    """Through a Relay with `timeout` (no metering), initialize and call `wait` for each
    of `calls` seconds in turn; the answers, as the client gets them."""
    to_relay, relay_reads = anyio.create_memory_object_stream[SessionMessage | Exception](10)
    relay_writes, from_relay = anyio.create_memory_object_stream[SessionMessage](10)
    params = StdioServerParameters(command=upstream[0], args=upstream[1:])

    async def ask(message: dict[str, Any]) -> Any:
        await to_relay.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))
        if "id" not in message:
            return None
        return (await from_relay.receive()).message

    answers: list[Any] = []
    async with stdio_client(params) as (up_read, up_write), anyio.create_task_group() as tasks:
        relay = Relay(relay_reads, relay_writes, up_read, up_write, timeout=timeout)
        tasks.start_soon(relay.run)
        await ask({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}})  # fmt: skip
        await ask({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for n, seconds in enumerate(calls, start=1):
            started = time.monotonic()
            call = {"name": "wait", "arguments": {"seconds": seconds}}
            answer = await ask({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": call})
            answers.append((answer, time.monotonic() - started))
        await to_relay.aclose()
    return answers


async def test_mcp_timeout_bounds_the_wait_for_each_upstream_answer(upstream: list[str]) -> None:
    # Unset (the default): the relay waits as long as the upstream server takes.
    [(slow, _)] = await _exchange(upstream, None, [3.5])
    assert isinstance(slow, types.JSONRPCResponse) and "waited 3.5" in str(slow.result)

    timed_out, again = await _exchange(upstream, 3, [20, 0])
    answer, took = timed_out
    assert isinstance(answer, types.JSONRPCError) and answer.error.code == REQUEST_TIMEOUT
    assert "within 3 s" in answer.error.message and took < 10
    # The connection survives a timed-out request.
    assert isinstance(again[0], types.JSONRPCResponse) and "waited 0" in str(again[0].result)


class _NoBudgets:
    """Stands for TokenQuota: these tests call no tool through the proxy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __aenter__(self) -> _NoBudgets:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_run_proxy_listens_on_mcp_host_and_port(
    upstream: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def serve(server: uvicorn.Server) -> None:
        seen["address"] = (server.config.host, server.config.port)
        app = server.config.app
        assert isinstance(app, Starlette)
        seen["paths"] = [getattr(route, "path", None) for route in app.routes]

    monkeypatch.setattr(mcp_proxy, "TokenQuota", _NoBudgets)
    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    monkeypatch.setenv("MCP_HOST", "127.0.0.2")
    monkeypatch.setenv("MCP_PORT", "9123")

    await mcp_proxy.run_proxy(upstream, load_settings(), transport="http")
    assert seen == {"address": ("127.0.0.2", 9123), "paths": ["/mcp"]}


@pytest.mark.parametrize(
    ("env", "options", "address"),
    [
        ({}, [], ("127.0.0.1", 8765)),
        ({"MCP_HOST": "10.0.0.5", "MCP_PORT": "9100"}, [], ("10.0.0.5", 9100)),
        # The command line wins over the settings.
        ({"MCP_HOST": "10.0.0.5", "MCP_PORT": "9100"}, ["--port", "9200"], ("10.0.0.5", 9200)),
        ({"MCP_PORT": "9100"}, ["--host", "127.0.0.3"], ("127.0.0.3", 9100)),
    ],
)
def test_mcp_proxy_http_address_defaults_to_mcp_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    options: list[str],
    address: tuple[str, int],
) -> None:
    calls: list[dict[str, Any]] = []

    def run_proxy_sync(command: Sequence[str], settings: Settings, **kwargs: Any) -> None:
        calls.append({"command": list(command), **kwargs})

    monkeypatch.setattr(mcp_proxy, "run_proxy_sync", run_proxy_sync)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli.app, ["mcp-proxy", "--http", *options, "--", "upstream"])
    assert result.exit_code == 0, result.output
    assert calls == [
        {
            "command": ["upstream"], "transport": "http", "host": address[0],
            "port": address[1], "upstream_url": None, "headers": {},
        }
    ]  # fmt: skip


def test_mcp_proxy_address_from_the_configuration_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "tokenquota.json"
    path.write_text('{"mcp": {"host": "127.0.0.4", "port": 9300}}')
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        mcp_proxy,
        "run_proxy_sync",
        lambda command, settings, **kwargs: calls.append((kwargs["host"], kwargs["port"])),
    )
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    result = CliRunner().invoke(
        cli.app, ["--config", str(path), "mcp-proxy", "--http", "--", "upstream"]
    )
    assert result.exit_code == 0, result.output
    assert calls == [("127.0.0.4", 9300)]


def test_a_second_proxy_of_the_same_server_gets_a_spool_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMITTER_SPOOL_DIR", str(tmp_path))
    settings = load_settings()
    command = ["npx", "-y", "@modelcontextprotocol/server-memory"]
    first = mcp_proxy.proxy_spool_settings(command, settings).spool_dir
    assert first.parent == tmp_path and first.name.startswith("mcp-proxy-")
    # Another command has a spool of its own anyway.
    assert mcp_proxy.proxy_spool_settings(["other"], settings).spool_dir != first
    held = Spool(first, max_bytes=1 << 20)  # the first proxy, running
    try:
        second = mcp_proxy.proxy_spool_settings(command, settings).spool_dir
        assert second == first.with_name(f"{first.name}-2")
        Spool(second, max_bytes=1 << 20).close()  # free: it opens
    finally:
        held.close()
    # The first gone, a restarted proxy takes (and drains) its spool again.
    assert mcp_proxy.proxy_spool_settings(command, settings).spool_dir == first


def test_mcp_proxy_account_is_checked_and_reaches_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accounts: list[str | None] = []

    def run_proxy_sync(command: Sequence[str], settings: Settings, **kwargs: Any) -> None:
        accounts.append(settings.mcp.account)

    monkeypatch.setattr(mcp_proxy, "run_proxy_sync", run_proxy_sync)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    args = ["mcp-proxy", "--account", "acme/research/alice", "--", "upstream"]
    assert CliRunner().invoke(cli.app, args).exit_code == 0
    assert accounts == ["acme/research/alice"]
    bad = CliRunner().invoke(cli.app, ["mcp-proxy", "--account", "acme//x", "--", "upstream"])
    assert bad.exit_code == 2 and accounts == ["acme/research/alice"]
    assert "an account path is 1 to 8 segments of 1 to 64 characters" in bad.output
