"""A metering MCP proxy: any stdio MCP server, served unchanged, with budgets on every call.

`tokenquota mcp-proxy -- <command>` starts the upstream server as a child process,
serves its tools, prompts and resources over stdio (or streamable HTTP), and meters
every `tools/call` the way `setup_mcp_token_hooks` does. Clients need no change.
Over HTTP it listens on `mcp.host`:`mcp.port`; `mcp.timeout` bounds the wait for each of
the upstream server's answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client

from tokenquota.config import Settings
from tokenquota.errors import IntegrationError

from ..reservations import TokenQuota
from .mcp_hooks import McpMeter, setup_mcp_token_hooks
from .mcp_relay import Relay
from .mcp_relay_meter import RelayMeter

__all__ = [
    "build_proxy_server",
    "connect_upstream",
    "proxy_spool_settings",
    "relay_stdio",
    "run_proxy",
    "run_proxy_sync",
]

log = logging.getLogger("tokenquota.mcp_proxy")

Context = ServerRequestContext[Any, Any]


def build_proxy_server(upstream: Client, name: str = "tokenquota-proxy") -> Server[Any]:
    """A server forwarding every list, read, prompt and tool call to `upstream`.

    Only the capabilities the upstream server announced are served.
    """
    capabilities = upstream.server_capabilities
    info = upstream.server_info
    handlers: dict[str, Any] = {}
    if capabilities.tools is not None:

        async def list_tools(
            ctx: Context, params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return await upstream.list_tools(cursor=params.cursor if params else None)

        async def call_tool(
            ctx: Context, params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            return await upstream.call_tool(params.name, params.arguments, meta=params.meta)

        handlers |= {"on_list_tools": list_tools, "on_call_tool": call_tool}
    if capabilities.resources is not None:

        async def list_resources(
            ctx: Context, params: types.PaginatedRequestParams | None
        ) -> types.ListResourcesResult:
            return await upstream.list_resources(cursor=params.cursor if params else None)

        async def list_templates(
            ctx: Context, params: types.PaginatedRequestParams | None
        ) -> types.ListResourceTemplatesResult:
            return await upstream.list_resource_templates(cursor=params.cursor if params else None)

        async def read_resource(
            ctx: Context, params: types.ReadResourceRequestParams
        ) -> types.ReadResourceResult:
            return await upstream.read_resource(str(params.uri))

        handlers |= {
            "on_list_resources": list_resources,
            "on_list_resource_templates": list_templates,
            "on_read_resource": read_resource,
        }
    if capabilities.prompts is not None:

        async def list_prompts(
            ctx: Context, params: types.PaginatedRequestParams | None
        ) -> types.ListPromptsResult:
            return await upstream.list_prompts(cursor=params.cursor if params else None)

        async def get_prompt(
            ctx: Context, params: types.GetPromptRequestParams
        ) -> types.GetPromptResult:
            return await upstream.get_prompt(params.name, params.arguments)

        handlers |= {"on_list_prompts": list_prompts, "on_get_prompt": get_prompt}
    return Server(
        info.name if info is not None else name,
        version=info.version if info is not None else "",
        instructions=upstream.instructions,
        **handlers,
    )


@contextlib.asynccontextmanager
async def connect_upstream(
    command: Sequence[str], *, timeout: float | None = None
) -> AsyncIterator[Client]:
    """Start `command` as a stdio MCP server (with this process's environment) and connect.

    `timeout` (seconds, None: no limit) bounds the wait for each of the server's answers,
    the handshake's included; one that does not come in time raises MCPError with code
    REQUEST_TIMEOUT (-32001), which the proxy passes on to its client.
    """
    if not command:
        raise ValueError("no upstream command: use `tokenquota mcp-proxy -- <command> [args...]`")
    params = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(os.environ))
    async with Client(params, cache=None, read_timeout_seconds=timeout) as client:
        yield client


def proxy_spool_settings(command: Sequence[str], settings: Settings) -> Settings:
    """Settings whose spool is the proxy's own: `<spool_dir>/mcp-proxy-<hash of command>`.

    An IDE runs one proxy per MCP server, each a process needing a spool of its own; a
    restarted proxy of the same server finds (and drains) its predecessor's spool.
    """
    digest = hashlib.sha256("\0".join(command).encode()).hexdigest()[:12]
    emitter = settings.emitter.model_copy(
        update={"spool_dir": settings.spool_dir / f"mcp-proxy-{digest}"}
    )
    return settings.model_copy(update={"emitter": emitter})


async def run_proxy(
    command: Sequence[str],
    settings: Settings,
    *,
    transport: Literal["stdio", "http"] = "stdio",
    host: str | None = None,
    port: int | None = None,
    upstream_url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Serve the upstream `command` behind budgets until the client (or Ctrl-C) ends it.

    Over HTTP on `host`:`port` (default `mcp.host`:`mcp.port`); each request to the
    upstream server waits at most `mcp.timeout`.
    """
    settings = proxy_spool_settings([upstream_url] if upstream_url else command, settings)
    host = settings.mcp.host if host is None else host
    port = settings.mcp.port if port is None else port
    if transport == "stdio":
        await relay_stdio(command, settings, upstream_url=upstream_url, headers=headers)
        return
    if upstream_url is not None:
        raise IntegrationError(
            "--upstream-url is served over stdio only so far (no --http): serving "
            "streamable HTTP in front of a remote server is not built yet"
        )
    upstream_session = connect_upstream(command, timeout=settings.mcp.timeout)
    async with TokenQuota(settings) as quota, upstream_session as upstream:
        server = build_proxy_server(upstream)
        meter = McpMeter(settings, quota=quota, server_name=f"proxy:{server.name}")
        setup_mcp_token_hooks(server, meter)
        log.info("metering %s (streamable HTTP)", " ".join(command))
        import uvicorn

        app = server.streamable_http_app(host=host)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        await uvicorn.Server(config).serve()


@contextlib.asynccontextmanager
async def _upstream(
    command: Sequence[str], url: str | None, headers: Mapping[str, str]
) -> AsyncIterator[tuple[Any, Any]]:
    """The upstream's streams: `command` started as a stdio child, or `url` over
    streamable HTTP with `headers` on every request."""
    if url is not None:
        async with (
            create_mcp_http_client(headers=dict(headers)) as http,
            streamable_http_client(url, http_client=http) as streams,
        ):
            yield streams
        return
    params = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(os.environ))
    async with stdio_client(params) as streams:
        yield streams


async def relay_stdio(
    command: Sequence[str],
    settings: Settings,
    *,
    upstream_url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Relay this process's stdio client to the MCP server `command` (a stdio child) or
    at `upstream_url` (streamable HTTP, sending `headers`), message for message (see
    mcp_relay), metering tool calls and sampling, until the client closes stdin; a child
    server is stopped then (its whole process group)."""
    if not command and upstream_url is None:
        raise ValueError("no upstream command: use `tokenquota mcp-proxy -- <command> [args...]`")
    label = f"the upstream MCP server ({upstream_url or command[0]})"
    name = upstream_url or os.path.basename(command[0])
    async with (
        TokenQuota(settings) as quota,
        _upstream(command, upstream_url, headers or {}) as (server_read, server_write),
        stdio_server() as (client_read, client_write),
    ):
        meter = McpMeter(settings, quota=quota, server_name=f"proxy:{name}")
        relay = RelayMeter(meter).install(
            Relay(
                client_read,
                client_write,
                server_read,
                server_write,
                timeout=settings.mcp.timeout,
                server_label=label,
                stamp_protocol_version=upstream_url is not None,
            )
        )
        log.info("metering %s (stdio relay)", upstream_url or " ".join(command))
        try:
            await relay.run()
        finally:
            await client_write.aclose()


def run_proxy_sync(command: Sequence[str], settings: Settings, **options: Any) -> None:
    """`run_proxy` on a fresh event loop (what the CLI calls)."""
    anyio.run(lambda: run_proxy(command, settings, **options))
