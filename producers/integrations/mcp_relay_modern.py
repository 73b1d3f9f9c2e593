"""The metering relay served to clients of the 2026-07-28 protocol era over streamable
HTTP. That era has no sessions: each POST carries one request, with the protocol
version, client info and capabilities in its `_meta`, and its answer comes back on the
POST's own response (JSON, or an SSE stream when the server has notifications for it
first). So all such requests share one relay to one upstream connection, which is
started with the first of them and lasts as long as the proxy.

Request ids are the clients' own and may repeat across POSTs: each request is relayed
under an id of the proxy's and answered under its own again. A client that gives up on
a request closes its POST; the relay then cancels it upstream (releasing what it held).
The era has no requests from the server to the client: one that arrives anyway is
answered with an error.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.streamable_http import check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp_types import (
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["ModernExchanges"]

log = logging.getLogger("tokenquota.mcp_proxy")

#: Runs one relay between a client's streams and a new upstream connection.
SessionRelay = Callable[[Any, Any], Awaitable[None]]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
_GONE = (anyio.ClosedResourceError, anyio.BrokenResourceError)
#: An SSE comment this often keeps idle-timeout proxies from closing a long call's stream.
_PING_SECONDS = 15.0


class ModernExchanges:
    """Answers 2026-07-28 era POSTs through one shared relay (`relay`, started lazily in
    `tasks`)."""

    def __init__(
        self, relay: SessionRelay, security: TransportSecuritySettings | None, tasks: TaskGroup
    ) -> None:
        self._relay = relay
        self._security = TransportSecurityMiddleware(security)
        self._tasks = tasks
        self._to_relay: MemoryObjectSendStream[SessionMessage | Exception] | None = None
        self._starting = anyio.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[str, MemoryObjectSendStream[JSONRPCMessage]] = {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one POST of the 2026-07-28 era."""
        request = Request(scope, receive)
        refused = await self._security.validate_request(request, is_post=request.method == "POST")
        if refused is not None:
            await refused(scope, receive, send)
            return
        if request.method != "POST":
            await Response(status_code=405, headers={"Allow": "POST"})(scope, receive, send)
            return
        accepts_json, accepts_sse = check_accept_headers(request)
        if not accepts_json or not accepts_sse:
            await Response(status_code=406)(scope, receive, send)
            return
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            await _write(_error(None, PARSE_ERROR, "Parse error"), scope, receive, send)
            return
        if isinstance(body, dict) and "id" not in body:
            # The era has no notifications from the client over HTTP (a client cancels by
            # closing its POST); accepted and dropped, as the SDK's servers do.
            await Response(status_code=202)(scope, receive, send)
            return
        try:
            message = JSONRPCRequest.model_validate(body)
        except ValidationError:
            invalid = _error(None, INVALID_REQUEST, "Body must be a single JSON-RPC request")
            await _write(invalid, scope, receive, send)
            return
        await self._exchange(message, request, scope, receive, send)

    async def _exchange(
        self, message: JSONRPCRequest, request: Request, scope: Scope, receive: Receive, send: Send
    ) -> None:
        to_relay = await self._started()
        relayed_id = f"tokenquota-{next(self._ids)}"
        inbox, outbox = anyio.create_memory_object_stream[JSONRPCMessage](math.inf)
        self._waiting[relayed_id] = inbox
        relayed = message.model_copy(update={"id": relayed_id})
        metadata = ServerMessageMetadata(request_context=request)
        answered = False
        try:
            await to_relay.send(SessionMessage(relayed, metadata=metadata))
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_until_disconnected, receive, tasks.cancel_scope)
                await _respond(message.id, relayed_id, outbox, send)
                answered = True
                tasks.cancel_scope.cancel()
        finally:
            self._waiting.pop(relayed_id, None)
            if not answered:  # the client went away: stop the request upstream
                cancel = JSONRPCNotification(
                    jsonrpc="2.0",
                    method="notifications/cancelled",
                    params={"requestId": relayed_id, "reason": "the client closed its request"},
                )
                with anyio.CancelScope(shield=True), contextlib.suppress(*_GONE):
                    await to_relay.send(SessionMessage(cancel))

    async def _started(self) -> MemoryObjectSendStream[SessionMessage | Exception]:
        """The relay's client-side input, starting the relay (and its upstream) once."""
        async with self._starting:
            if self._to_relay is None:
                to_relay, relay_reads = anyio.create_memory_object_stream[
                    SessionMessage | Exception
                ](math.inf)
                relay_writes, from_relay = anyio.create_memory_object_stream[SessionMessage](
                    math.inf
                )
                self._tasks.start_soon(self._run, relay_reads, relay_writes)
                self._tasks.start_soon(self._route, from_relay)
                self._to_relay = to_relay
            return self._to_relay

    async def _run(self, reads: Any, writes: Any) -> None:
        try:
            async with reads, writes:
                await self._relay(reads, writes)
        except Exception:
            log.exception("the relay for 2026-07-28 era clients failed")
        finally:
            self._to_relay = None

    async def _route(self, from_relay: MemoryObjectReceiveStream[SessionMessage]) -> None:
        """Deliver what the relay sends the client to the POST it belongs to."""
        async with from_relay:
            async for item in from_relay:
                message = item.message
                if isinstance(message, JSONRPCResponse | JSONRPCError):
                    target = str(message.id)
                elif isinstance(message, JSONRPCRequest):
                    await self._refuse(message)
                    continue
                else:
                    related = getattr(item.metadata, "related_request_id", None)
                    target = str(related)
                inbox = self._waiting.get(target)
                if inbox is None:
                    log.debug("no request waits for %s: dropped", message)
                    continue
                await inbox.send(message)

    async def _refuse(self, request: JSONRPCRequest) -> None:
        refusal = _error(
            request.id,
            METHOD_NOT_FOUND,
            f"{request.method}: the 2026-07-28 era has no requests from the server to the "
            "client (ask in a tool result with input_required)",
        )
        if self._to_relay is not None:
            await self._to_relay.send(SessionMessage(refusal))


async def _respond(
    request_id: RequestId,
    relayed_id: str,
    outbox: MemoryObjectReceiveStream[JSONRPCMessage],
    send: Send,
) -> None:
    """Send the answer (under `request_id`, the client's id for what was relayed as
    `relayed_id`) as JSON, or as an SSE stream when notifications for the request come
    before it (a subscriptions/listen stream's frames name it too)."""
    first = _as_sent(await outbox.receive(), request_id, relayed_id)
    if isinstance(first, JSONRPCResponse | JSONRPCError):
        await _send_json(first, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    message: JSONRPCMessage | None = first
    while True:
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            last = _sse(message)
            await send({"type": "http.response.body", "body": last, "more_body": False})
            return
        body = _sse(message) if message is not None else b": ping\r\n\r\n"
        await send({"type": "http.response.body", "body": body, "more_body": True})
        message = None
        with anyio.move_on_after(_PING_SECONDS):
            message = _as_sent(await outbox.receive(), request_id, relayed_id)


def _as_sent(message: JSONRPCMessage, request_id: RequestId, relayed_id: str) -> JSONRPCMessage:
    """`message` with the client's id for its request where the relay's stands."""
    if isinstance(message, JSONRPCResponse | JSONRPCError):
        return message.model_copy(update={"id": request_id})
    params = message.params if isinstance(message, JSONRPCNotification) else None
    meta = params.get("_meta") if params is not None else None
    if isinstance(meta, dict) and meta.get(SUBSCRIPTION_ID_META_KEY) == relayed_id:
        meta = {**meta, SUBSCRIPTION_ID_META_KEY: request_id}
        return message.model_copy(update={"params": {**(params or {}), "_meta": meta}})
    return message


async def _until_disconnected(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _error(request_id: RequestId | None, code: int, message: str) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))


def _wire(message: JSONRPCMessage) -> str:
    return message.model_dump_json(by_alias=True, exclude_unset=True)


def _sse(message: JSONRPCMessage) -> bytes:
    return f"event: message\r\ndata: {_wire(message)}\r\n\r\n".encode()


async def _send_json(message: JSONRPCMessage, send: Send) -> None:
    body = _wire(message).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _write(message: JSONRPCError, scope: Scope, receive: Receive, send: Send) -> None:
    """An error for a POST that is not one JSON-RPC request (400, as the SDK answers)."""
    body = message.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["id"] = message.id
    response = Response(json.dumps(body), status_code=400, media_type="application/json")
    await response(scope, receive, send)
