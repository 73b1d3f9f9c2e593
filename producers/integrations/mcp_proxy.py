"""A metering MCP proxy: any MCP server, served unchanged, with budgets on every call.

`tokenquota mcp-proxy -- <command>` starts the upstream server as a child process (or
`--upstream-url` connects to a remote one over streamable HTTP) and relays its client
to it message for message (mcp_relay): whatever the two say to each other passes,
`initialize` and server-to-client requests included, while `tools/call` is metered as
`setup_mcp_token_hooks` meters it and `sampling/createMessage` spends the client's
session (mcp_relay_meter). Clients and servers need no change. Served over stdio, or
over streamable HTTP on `mcp.host`:`mcp.port` (mcp_relay_http); `mcp.timeout` bounds the
wait for each of the upstream server's answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, NoReturn

import anyio
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client

from tokenquota.config import Settings

from ..reservations import TokenQuota
from ..spool import spool_in_use
from .mcp_hooks import McpMeter
from .mcp_relay import Relay
from .mcp_relay_http import relay_http_app
from .mcp_relay_meter import RelayMeter

__all__ = [
    "proxy_spool_settings",
    "run_proxy",
    "run_proxy_sync",
]

log = logging.getLogger("tokenquota.mcp_proxy")


def proxy_spool_settings(command: Sequence[str], settings: Settings) -> Settings:
    """Settings whose spool is the proxy's own: `<spool_dir>/mcp-proxy-<hash of command>`.

    An IDE runs one proxy per MCP server, each a process needing a spool of its own; a
    restarted proxy of the same server finds (and drains) its predecessor's spool. When
    another proxy of the same server runs (two IDE windows), the next free of
    `mcp-proxy-<hash>-2`, `-3`... is taken instead.
    """
    digest = hashlib.sha256("\0".join(command).encode()).hexdigest()[:12]
    base = settings.spool_dir / f"mcp-proxy-{digest}"
    slots = (base, *(base.with_name(f"{base.name}-{n}") for n in range(2, 65)))
    # all taken: the first, whose spool then says so
    spool_dir = next((d for d in slots if not spool_in_use(d)), base)
    emitter = settings.emitter.model_copy(update={"spool_dir": spool_dir})
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
    """Relay a client to the MCP server `command` (a stdio child) or at `upstream_url`
    (streamable HTTP, sending `headers`), message for message (see mcp_relay), metering
    tool calls and sampling, until the client (or Ctrl-C) ends it.

    Over stdio: one client, one upstream, until the client closes stdin. Over HTTP, on
    `host`:`port` (default `mcp.host`:`mcp.port`) at /mcp: an upstream connection per MCP
    session. Each request to the upstream waits at most `mcp.timeout`. A child server
    is stopped (its whole process group) when its client's session ends.
    """
    if not command and upstream_url is None:
        raise ValueError("no upstream command: use `tokenquota mcp-proxy -- <command> [args...]`")
    settings = proxy_spool_settings([upstream_url] if upstream_url else command, settings)
    host = settings.mcp.host if host is None else host
    port = settings.mcp.port if port is None else port
    label = f"the upstream MCP server ({upstream_url or command[0]})"
    name = upstream_url or os.path.basename(command[0])
    async with TokenQuota(settings) as quota:
        meter = McpMeter(settings, quota=quota, server_name=f"proxy:{name}")

        async def relay(client_read: Any, client_write: Any, *, over_http: bool) -> None:
            async with _upstream(command, upstream_url, headers or {}) as (up_read, up_write):
                relayed = Relay(
                    client_read,
                    client_write,
                    up_read,
                    up_write,
                    timeout=settings.mcp.timeout,
                    server_label=label,
                    stamp_headers=upstream_url is not None,
                    relate_to_requests=over_http,
                )
                metered = RelayMeter(meter)
                try:
                    await metered.install(relayed).run()
                finally:
                    with anyio.CancelScope(shield=True):
                        await metered.close()

        where = upstream_url or " ".join(command)
        if transport == "stdio":
            log.info("metering %s (stdio)", where)
            terminated = anyio.Event()
            async with anyio.create_task_group() as tasks:
                # A client that ends the proxy with SIGTERM (as the TypeScript SDK's does,
                # 2 s after closing stdin) must not leave the server running: the signal
                # cancels the relay, whose exit stops the server's process group.
                tasks.start_soon(_stop_on_sigterm, tasks.cancel_scope, terminated)
                async with stdio_server() as (client_read, client_write):
                    try:
                        await relay(client_read, client_write, over_http=False)
                    finally:
                        if terminated.is_set():
                            with anyio.CancelScope(shield=True):
                                await _exit_now(quota)
                        await client_write.aclose()
                tasks.cancel_scope.cancel()
            return
        import uvicorn

        async def session(client_read: Any, client_write: Any) -> None:
            await relay(client_read, client_write, over_http=True)

        log.info("metering %s (streamable HTTP on %s:%s)", where, host, port)
        app = relay_http_app(session, host)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        await uvicorn.Server(config).serve()


async def _stop_on_sigterm(scope: anyio.CancelScope, terminated: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.info("SIGTERM: stopping the upstream server")
            terminated.set()
            scope.cancel()
            return


async def _exit_now(quota: TokenQuota) -> NoReturn:
    """End the process after SIGTERM, the upstream stopped and `quota`'s events flushed.

    The stdio server reads stdin in a thread that no cancellation reaches: with a client
    that still holds stdin open, leaving it would wait for the client's next line.
    """
    try:
        await quota.close()
    finally:
        logging.shutdown()
        os._exit(0)


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


def run_proxy_sync(command: Sequence[str], settings: Settings, **options: Any) -> None:
    """`run_proxy` on a fresh event loop (what the CLI calls)."""
    anyio.run(lambda: run_proxy(command, settings, **options))
