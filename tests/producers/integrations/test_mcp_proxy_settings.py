"""`mcp.host`, `mcp.port` and `mcp.timeout`: what `tokenquota mcp-proxy` does with them.

No servers: the upstream is a small stdio MCP server, the budgets are left out.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from mcp import Client, MCPError
from mcp_types import REQUEST_TIMEOUT
from typer.testing import CliRunner

from tests.producers.integrations.mcp_support import text_of
from tokenquota import cli
from tokenquota.config import Settings, env_var_names, load_settings
from tokenquota.producers.integrations import mcp_proxy

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


async def _wait(command: Sequence[str], settings: Settings, seconds: float) -> str:
    async with mcp_proxy.connect_upstream(command, timeout=settings.mcp.timeout) as client:
        return text_of(await client.call_tool("wait", {"seconds": seconds}))


async def test_mcp_timeout_bounds_the_wait_for_each_upstream_answer(
    upstream: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unset (the default): the proxy waits as long as the upstream server takes.
    assert await _wait(upstream, load_settings(), 3.5) == "waited 3.5"

    # The handshake counts too: leave the upstream's start-up time to spare.
    monkeypatch.setenv("MCP_TIMEOUT", "3")
    settings = load_settings()
    assert await _wait(upstream, settings, 0.1) == "waited 0.1"  # an answer in time passes
    async with mcp_proxy.connect_upstream(upstream, timeout=settings.mcp.timeout) as client:
        started = time.monotonic()
        with pytest.raises(MCPError) as caught:
            await client.call_tool("wait", {"seconds": 20})
        assert time.monotonic() - started < 10
        assert caught.value.code == REQUEST_TIMEOUT
        # The connection survives a timed-out request.
        assert text_of(await client.call_tool("wait", {"seconds": 0})) == "waited 0.0"


class _NoBudgets:
    """Stands for TokenQuota: these tests call no tool through the proxy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __aenter__(self) -> _NoBudgets:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_run_proxy_listens_on_mcp_host_and_port_and_passes_mcp_timeout_upstream(
    upstream: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    connect = mcp_proxy.connect_upstream

    @asynccontextmanager
    async def connect_spy(
        command: Sequence[str], *, timeout: float | None
    ) -> AsyncIterator[Client]:
        seen["timeout"] = timeout
        async with connect(command, timeout=timeout) as client:
            seen["read_timeout_seconds"] = client.read_timeout_seconds
            yield client

    async def serve(server: uvicorn.Server) -> None:
        seen["address"] = (server.config.host, server.config.port)

    monkeypatch.setattr(mcp_proxy, "TokenQuota", _NoBudgets)
    monkeypatch.setattr(mcp_proxy, "connect_upstream", connect_spy)
    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    monkeypatch.setenv("MCP_HOST", "127.0.0.2")
    monkeypatch.setenv("MCP_PORT", "9123")
    monkeypatch.setenv("MCP_TIMEOUT", "7")

    await mcp_proxy.run_proxy(upstream, load_settings(), transport="http")
    assert seen == {"timeout": 7, "read_timeout_seconds": 7, "address": ("127.0.0.2", 9123)}


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
        {"command": ["upstream"], "transport": "http", "host": address[0], "port": address[1]}
    ]


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
