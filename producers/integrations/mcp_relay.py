"""A transparent MCP relay: every JSON-RPC message between one client (downstream) and one
server (upstream) passes through unchanged, both ways, except that `tools/call` and
`sampling/createMessage` are metered.

The relay is one client to one server, so request ids need no mapping: the client's ids
name its requests to the server, the server's ids its requests to the client, and each
side's answers come back with the ids it chose. `initialize` goes through as the client
sent it (its capabilities and client info reach the server) and its answer comes back
as the server sent it (server info, instructions, capabilities).

- A request of the client's waits at most `timeout` seconds for the server's answer;
  then the client gets a REQUEST_TIMEOUT error and the server a `notifications/cancelled`.
- When the server goes away, every request in flight and every later one is answered
  with a CONNECTION_CLOSED error naming it, until the client closes its side.
- `notifications/cancelled` from either side stops the relay's own wait for that request
  (a metered call or sampling then releases its tokens) and is passed on.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import ClientMessageMetadata, ServerMessageMetadata, SessionMessage
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp_types import (
    CONNECTION_CLOSED,
    REQUEST_TIMEOUT,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)

from .mcp_relay_headers import UpstreamHeaders

__all__ = ["Answer", "Relay", "RequestHook", "error_answer"]

log = logging.getLogger("tokenquota.mcp_relay")

#: What answers a request: a result or an error.
Answer = JSONRPCResponse | JSONRPCError
#: Given a request and a way to forward it (and wait for its answer), the answer to send.
RequestHook = Callable[[JSONRPCRequest, Callable[[], Awaitable[Answer]]], Awaitable[Answer]]


def error_answer(request_id: RequestId, code: int, message: str) -> JSONRPCError:
    """A JSON-RPC error answering `request_id`."""
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))


@dataclass
class _Side:
    """One side of the relay: its streams, the requests we wait on it to answer, whether
    it has gone."""

    name: str
    read: ReadStream[SessionMessage | Exception]
    write: WriteStream[SessionMessage]
    waiting: dict[RequestId, anyio.Event] = field(default_factory=dict)
    answers: dict[RequestId, Answer] = field(default_factory=dict)
    gone: bool = False


@dataclass
class Relay:
    """Relay `client` (the downstream streams) and `server` (the upstream streams) until
    the client closes its side. `on_client_request` / `on_server_request` map a method to
    a hook that may answer on its own or forward (tools/call, sampling/createMessage).
    """

    client_read: ReadStream[SessionMessage | Exception]
    client_write: WriteStream[SessionMessage]
    server_read: ReadStream[SessionMessage | Exception]
    server_write: WriteStream[SessionMessage]
    timeout: float | None = None
    on_client_request: dict[str, RequestHook] = field(default_factory=dict)
    on_server_request: dict[str, RequestHook] = field(default_factory=dict)
    server_label: str = "the upstream MCP server"
    #: Send the server the HTTP headers a streamable HTTP server expects with each
    #: message (its protocol version, and per request its method and name in the
    #: 2026-07-28 era; see mcp_relay_headers); a stdio server ignores them.
    stamp_headers: bool = False
    #: Mark each server-to-client message with the client request it belongs to, so a
    #: streamable HTTP client gets it on that request's stream: a frame of a
    #: subscriptions/listen stream by its subscription id, a progress notification by
    #: its progress token; anything else sent while one client request is in flight, to
    #: that one; while several are, to the latest tool call; else to none.
    relate_to_requests: bool = False
    #: The `initialize` request's params as the client sent them (None until then).
    client_params: dict[str, Any] | None = None
    _headers: UpstreamHeaders = field(default_factory=UpstreamHeaders)
    _scopes: dict[tuple[str, RequestId], anyio.CancelScope] = field(default_factory=dict)
    #: The client's requests in flight, in arrival order, with their method.
    _in_flight: dict[RequestId, str] = field(default_factory=dict)
    _progress: dict[Any, RequestId] = field(default_factory=dict)
    #: Each client request's transport metadata (over HTTP: its Starlette request).
    request_context: dict[RequestId, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._client = _Side("client", self.client_read, self.client_write)
        self._server = _Side("server", self.server_read, self.server_write)

    async def run(self) -> None:
        """Relay until the client's stream ends; then stop whatever is still in flight."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._pump_server, tasks)
            await self._pump_client(tasks)
            tasks.cancel_scope.cancel()

    # -- the two directions --------------------------------------------------------------

    async def _pump_client(self, tasks: TaskGroup) -> None:
        async for item in self._client.read:
            if isinstance(item, Exception):
                log.warning("unreadable message from the client: %s", item)
                continue
            message = item.message
            if isinstance(message, JSONRPCRequest):
                if message.method == "initialize" and isinstance(message.params, dict):
                    self.client_params = message.params
                context = getattr(item.metadata, "request_context", None)
                if context is not None:
                    self.request_context[message.id] = context
                tasks.start_soon(self._client_request, message)
            elif isinstance(message, JSONRPCNotification):
                self._cancelled(message, by=self._client)
                await self._send(self._server, message)
            else:  # an answer to one of the server's requests
                self._answered(self._client, message)
        self._client.gone = True
        for event in self._client.waiting.values():
            event.set()

    async def _pump_server(self, tasks: TaskGroup) -> None:
        async for item in self._server.read:
            if isinstance(item, Exception):
                log.warning("unreadable message from %s: %s", self.server_label, item)
                continue
            message = item.message
            if isinstance(message, JSONRPCRequest):
                tasks.start_soon(self._server_request, message)
            elif isinstance(message, JSONRPCNotification):
                self._cancelled(message, by=self._server)
                await self._send(self._client, message)
            else:
                self._answered(self._server, message)
        log.error("%s closed its connection; answering the client's requests with errors",
                  self.server_label)  # fmt: skip
        self._server.gone = True
        for event in self._server.waiting.values():
            event.set()

    # -- requests ------------------------------------------------------------------------

    async def _client_request(self, request: JSONRPCRequest) -> None:
        hook = self.on_client_request.get(request.method)
        self._in_flight[request.id] = request.method
        meta = (request.params or {}).get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if token is not None:
            self._progress[token] = request.id
        try:
            await self._relay_client_request(request, hook)
        finally:
            self._in_flight.pop(request.id, None)
            self.request_context.pop(request.id, None)
            if token is not None:
                self._progress.pop(token, None)

    async def _relay_client_request(
        self, request: JSONRPCRequest, hook: RequestHook | None
    ) -> None:
        with self._scope("client", request.id):

            async def ask() -> Answer:
                return await self._ask(self._server, request, self.timeout)

            answer = await (hook(request, ask) if hook is not None else ask())
            if self.stamp_headers and isinstance(answer, JSONRPCResponse):
                self._headers.answered(request, answer.result)
            await self._send(self._client, answer)

    async def _server_request(self, request: JSONRPCRequest) -> None:
        hook = self.on_server_request.get(request.method)
        with self._scope("server", request.id):

            async def ask() -> Answer:
                return await self._ask(self._client, request, None)

            answer = await (hook(request, ask) if hook is not None else ask())
            await self._send(self._server, answer)

    @contextlib.contextmanager
    def _scope(self, who: str, request_id: RequestId) -> Iterator[None]:
        """A scope that a `notifications/cancelled` from `who` cancels."""
        with anyio.CancelScope() as scope:
            self._scopes[(who, request_id)] = scope
            try:
                yield
            finally:
                self._scopes.pop((who, request_id), None)

    async def _ask(self, side: _Side, request: JSONRPCRequest, timeout: float | None) -> Answer:
        """Send `request` to `side` and wait for its answer (or an error saying why none
        came: the side went away, or did not answer within `timeout`)."""
        if side.gone:
            return self._gone_error(side, request)
        event = side.waiting[request.id] = anyio.Event()
        try:
            await self._send(side, request)
            with anyio.move_on_after(math.inf if timeout is None else timeout) as waited:
                await event.wait()
            if waited.cancelled_caught:
                await self._send(side, _cancel(request.id, "timed out in tokenquota mcp-proxy"))
                log.error("%s did not answer %s within %s s", self.server_label, request.method,
                          timeout)  # fmt: skip
                return error_answer(
                    request.id,
                    REQUEST_TIMEOUT,
                    f"{self.server_label} did not answer {request.method} within {timeout:g} s",
                )
            answer = side.answers.pop(request.id, None)
            return answer if answer is not None else self._gone_error(side, request)
        finally:
            side.waiting.pop(request.id, None)

    def _gone_error(self, side: _Side, request: JSONRPCRequest) -> JSONRPCError:
        who = self.server_label if side is self._server else "the MCP client"
        return error_answer(
            request.id, CONNECTION_CLOSED, f"{who} has closed its connection ({request.method})"
        )

    def _answered(self, side: _Side, answer: JSONRPCMessage) -> None:
        assert isinstance(answer, JSONRPCResponse | JSONRPCError)
        event = side.waiting.get(answer.id) if answer.id is not None else None
        if event is None:
            log.info("dropping an answer from the %s to a request no longer waited for: %s",
                     side.name, answer.id)  # fmt: skip
            return
        side.answers[answer.id] = answer  # type: ignore[index]
        event.set()

    def _cancelled(self, note: JSONRPCNotification, *, by: _Side) -> None:
        """A `notifications/cancelled` from `by` stops the relay's own work on that request."""
        if note.method != "notifications/cancelled" or not isinstance(note.params, dict):
            return
        scope = self._scopes.get((by.name, note.params.get("requestId")))  # type: ignore[arg-type]
        if scope is not None:
            scope.cancel()

    async def _send(self, side: _Side, message: JSONRPCMessage) -> None:
        if side.gone:
            return
        metadata: ClientMessageMetadata | ServerMessageMetadata | None = None
        if side is self._server and self.stamp_headers:
            headers = self._headers.of(message)
            metadata = ClientMessageMetadata(headers=headers) if headers else None
        elif side is self._client and self.relate_to_requests:
            related = self._related(message)
            if related is not None:
                metadata = ServerMessageMetadata(related_request_id=related)
        try:
            await side.write.send(SessionMessage(message, metadata=metadata))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            side.gone = True

    def _related(self, message: JSONRPCMessage) -> RequestId | None:
        """The client request a server-to-client message belongs to, if it can be told."""
        if not isinstance(message, JSONRPCRequest | JSONRPCNotification):
            return None  # an answer goes on its own request's stream
        params = message.params or {}
        meta = params.get("_meta")
        if isinstance(meta, dict):  # a frame of a subscriptions/listen stream
            listen = meta.get(SUBSCRIPTION_ID_META_KEY)
            if listen is not None and listen in self._in_flight:
                return listen  # type: ignore[no-any-return]
        if message.method == "notifications/progress":
            return self._progress.get(params.get("progressToken"))
        if len(self._in_flight) == 1:
            return next(iter(self._in_flight))
        calls = [rid for rid, method in self._in_flight.items() if method == "tools/call"]
        return calls[-1] if calls else None


def _cancel(request_id: RequestId, reason: str) -> JSONRPCNotification:
    return JSONRPCNotification(
        jsonrpc="2.0",
        method="notifications/cancelled",
        params={"requestId": request_id, "reason": reason},
    )
