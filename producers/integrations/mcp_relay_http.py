"""The metering relay served over streamable HTTP: each MCP session a client opens (its
`initialize` POST without an `mcp-session-id`) gets a relay of its own to an upstream
connection of its own (a stdio child, or a session with the remote server), so the
upstream sees exactly one client per connection, as without the proxy. A client's
DELETE, or the client going away, ends the relay and stops that upstream.

Server-to-client messages are sent on the stream of the client request they belong to
when the relay can tell which (see `Relay.relate_to_requests`), else on the client's GET
stream, as the SDK's servers do.

Requests of the 2026-07-28 era (an `MCP-Protocol-Version` of that era and no session)
are sessionless: they share one relay and upstream connection (mcp_relay_modern).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import uuid4

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import INVALID_REQUEST, ErrorData, JSONRPCError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from .mcp_relay_modern import ModernExchanges

__all__ = ["RelaySessions", "relay_http_app"]

log = logging.getLogger("tokenquota.mcp_proxy")

#: Runs one relay between a client session's streams and a new upstream connection.
SessionRelay = Callable[[Any, Any], Awaitable[None]]
_LOCAL = ("127.0.0.1", "localhost", "::1")


class RelaySessions:
    """An ASGI app serving MCP sessions, each relayed by `relay` (run in `lifespan`)."""

    def __init__(self, relay: SessionRelay, security: TransportSecuritySettings | None) -> None:
        self._relay = relay
        self._security = security
        self._sessions: dict[str, StreamableHTTPServerTransport] = {}
        self._tasks: TaskGroup | None = None
        self._modern: ModernExchanges | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Hold the sessions' task group while the app serves; end them all after."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._modern = ModernExchanges(self._relay, self._security, tasks)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Request(scope, receive).headers
        session_id = headers.get("mcp-session-id")
        if session_id is None and headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS:
            assert self._modern is not None, "RelaySessions serves inside its lifespan only"
            await self._modern.handle(scope, receive, send)
            return
        if session_id is not None:
            transport = self._sessions.get(session_id)
            if transport is None:
                await _error("Session not found", 404)(scope, receive, send)
                return
            await transport.handle_request(scope, receive, send)
            if transport.is_terminated:
                self._sessions.pop(session_id, None)
            return
        await self._open(scope, receive, send)

    async def _open(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A new session: its relay started, then its opening request answered; forgotten
        again when that request is refused."""
        assert self._tasks is not None, "RelaySessions serves inside its lifespan only"
        session_id = uuid4().hex
        transport = StreamableHTTPServerTransport(session_id, security_settings=self._security)
        self._sessions[session_id] = transport

        async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                async with transport.connect() as (read, write):
                    task_status.started()
                    await self._relay(read, write)
            except Exception:
                if transport.is_terminated:  # its opening request was refused
                    log.debug("MCP session %s ended with its refused opening", session_id)
                else:
                    log.exception("MCP session %s failed", session_id)
            finally:
                await self._discard(session_id, transport)

        await self._tasks.start(run)
        status: int | None = None

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await transport.handle_request(scope, receive, watch)
        finally:
            if status is None or status >= 400:
                await self._discard(session_id, transport)

    async def _discard(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        self._sessions.pop(session_id, None)
        if not transport.is_terminated:
            with anyio.CancelScope(shield=True):
                await transport.terminate()


def _error(message: str, status: int) -> Response:
    body = JSONRPCError(
        jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=message)
    )
    return Response(
        body.model_dump_json(by_alias=True, exclude_unset=True),
        status_code=status,
        media_type="application/json",
    )


def relay_http_app(relay: SessionRelay, host: str, path: str = "/mcp") -> Starlette:
    """The Starlette app serving `relay`'d sessions at `path`; on a loopback `host` it
    refuses other Host and Origin headers (DNS rebinding), as the SDK's servers do."""
    security = None
    if host in _LOCAL:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    sessions = RelaySessions(relay, security)
    return Starlette(routes=[Route(path, endpoint=sessions)], lifespan=sessions.lifespan)
