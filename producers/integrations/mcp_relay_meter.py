"""What the metering relay does to the two requests that cost money: a client's
`tools/call` (today's tool rule, as `setup_mcp_token_hooks` applies it) and a server's
`sampling/createMessage`, which spends the client's LLM tokens.

Sampling: the counted messages (and system prompt) plus `maxTokens` are reserved for the
session before the request reaches the client; the client's answer is counted and
settles it; an error or a cancellation releases it; over budget the server gets an MCP
error and the client never sees the request.

The session of a call is found as the other MCP hooks find it (`mcp.session_sources`:
config, the request's `_meta`, the HTTP header when served over HTTP, the client's
`clientInfo.name`). A sampling request names no session of the client's: it is billed to the
configured session, else to the session of the client's latest tool call, else to its
client name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp_types import INTERNAL_ERROR, CallToolResult, JSONRPCRequest, JSONRPCResponse, TextContent

from tokenquota.errors import IntegrationError, TokenQuotaExceededError

from .mcp_hooks import (
    McpMeter,
    SessionNotAllowedError,
    _budget_error,
    _missing_session,
    check_client_session,
    result_text,
)
from .mcp_relay import Answer, Relay, error_answer

__all__ = ["BUDGET_EXCEEDED", "RelayMeter"]

log = logging.getLogger("tokenquota.mcp_proxy")

#: The JSON-RPC error code of a sampling request refused for its budget (or session).
BUDGET_EXCEEDED = -32050


class _AnsweredError(Exception):
    """The forwarded request came back as an error: release, and pass the error on."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class RelayMeter:
    """The relay's hooks for `tools/call` and `sampling/createMessage` over `meter`."""

    def __init__(self, meter: McpMeter) -> None:
        self.meter = meter
        self.relay: Relay | None = None
        self._last_session: str | None = None

    def install(self, relay: Relay) -> Relay:
        """Hook into `relay` (returned)."""
        self.relay = relay
        relay.on_client_request["tools/call"] = self.tool_call
        relay.on_server_request["sampling/createMessage"] = self.sampling
        return relay

    def session(
        self, meta: Mapping[str, Any] | None, request: JSONRPCRequest | None = None
    ) -> str | None:
        """The session of a client's `request` with `_meta` `meta` (None: none is named);
        SessionNotAllowedError for one the client may not name."""
        mcp = self.meter.settings.mcp
        for source in mcp.session_sources:
            value: object = None
            if source == "config":
                if mcp.session_id:
                    return mcp.session_id
                continue
            if source == "meta" and meta is not None:
                value = meta.get(mcp.session_meta_key)
                origin = f"the request _meta key {mcp.session_meta_key!r}"
            elif source == "header" and request is not None and self.relay is not None:
                context = self.relay.request_context.get(request.id)
                headers = getattr(context, "headers", None)
                value = headers.get(mcp.session_header) if headers is not None else None
                origin = f"the HTTP header {mcp.session_header!r}"
            elif source == "client" and self.relay is not None and self.relay.client_params:
                info = self.relay.client_params.get("clientInfo")
                value = info.get("name") if isinstance(info, Mapping) else None
                origin = "the client's clientInfo.name"
            if isinstance(value, str) and value.strip():
                return check_client_session(value.strip(), origin, mcp)
        return None

    async def tool_call(
        self, request: JSONRPCRequest, forward: Callable[[], Awaitable[Answer]]
    ) -> Answer:
        """Meter a client's `tools/call` (a tool error result when it is refused)."""
        params = request.params or {}
        tool = str(params.get("name", "?"))
        meta = params.get("_meta")
        try:
            session = self.session(meta if isinstance(meta, Mapping) else None, request)
        except SessionNotAllowedError as exc:
            return _tool_error(request, str(exc))
        if session is None:
            return _tool_error(request, str(_missing_session(self.meter.settings.mcp)))
        self._last_session = session

        try:
            return await self.meter.meter(
                session,
                tool,
                params.get("arguments") or {},
                lambda: _result_of(forward),
                lambda a: result_text(a.result),
            )
        except _AnsweredError as failed:
            return failed.answer
        except (TokenQuotaExceededError, IntegrationError) as exc:
            log.info("tool %r refused: %s", tool, exc)
            return _tool_error(request, _budget_error(exc))

    async def sampling(
        self, request: JSONRPCRequest, forward: Callable[[], Awaitable[Answer]]
    ) -> Answer:
        """Meter a server's `sampling/createMessage` on the client's session."""
        params = request.params or {}
        try:
            session = self.meter.settings.mcp.session_id or self._last_session or self.session(None)
        except SessionNotAllowedError as exc:
            return error_answer(request.id, BUDGET_EXCEEDED, str(exc))
        if session is None:
            message = str(_missing_session(self.meter.settings.mcp))
            return error_answer(request.id, BUDGET_EXCEEDED, message)
        prompt = {"systemPrompt": params.get("systemPrompt"), "messages": params.get("messages")}
        max_tokens = params.get("maxTokens")
        allowance = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0

        try:
            return await self.meter.meter(
                session,
                "sampling",
                _texts(prompt),
                lambda: _result_of(forward),
                lambda a: (_texts(a.result.get("content")), True),
                reserve=lambda counted: counted + allowance,
                operation="mcp.sampling/createMessage",
            )
        except _AnsweredError as failed:
            return failed.answer
        except TokenQuotaExceededError as exc:
            log.info("sampling refused: %s", exc)
            return error_answer(request.id, BUDGET_EXCEEDED, _budget_error(exc))
        except IntegrationError as exc:
            return error_answer(request.id, INTERNAL_ERROR, _budget_error(exc))


async def _result_of(forward: Callable[[], Awaitable[Answer]]) -> JSONRPCResponse:
    """The forwarded request's result; an error answer raises, to release and pass it on."""
    answer = await forward()
    if not isinstance(answer, JSONRPCResponse):
        raise _AnsweredError(answer)
    return answer


def _texts(value: Any) -> str:
    """The text an LLM reads in a sampling request or its result: the system prompt and
    the text blocks of the messages or content, in order."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(t for t in (_texts(v) for v in value) if t)
    if isinstance(value, Mapping):
        if value.get("type") == "text":
            return str(value.get("text", ""))
        parts = (_texts(value.get(k)) for k in ("systemPrompt", "messages", "content"))
        return "\n".join(t for t in parts if t)
    return ""


def _tool_error(request: JSONRPCRequest, text: str) -> JSONRPCResponse:
    result = CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
    return JSONRPCResponse(
        jsonrpc="2.0",
        id=request.id,
        result=result.model_dump(by_alias=True, mode="json", exclude_none=True),
    )
