"""What the metering relay does to the two requests that cost money: a client's
`tools/call` (today's tool rule, as `setup_mcp_token_hooks` applies it) and a server's
`sampling/createMessage`, which spends the client's LLM tokens.

Sampling: the counted messages (and system prompt) plus `maxTokens` are reserved for the
session before the request reaches the client; the client's answer, counted for the
model it names, settles it; an error or a cancellation releases it; over budget the
server gets an MCP error and the client never sees the request. In the 2026-07-28
protocol era a server asks for sampling inside a tool result (`resultType:
input_required`) and the client answers by calling the tool again with
`inputResponses`: the same tokens are held when that result passes (over budget the
client gets a tool error instead and is not asked), and settled by the retry that
answers them; its arguments, billed in the first round, are not billed again.

The session of a call is found as the other MCP hooks find it (`mcp.session_sources`:
config, the request's `_meta`, the HTTP header when served over HTTP, the client's
`clientInfo.name`), and so is its account (`mcp.account_sources`: the `_meta` key
`mcp.account_meta_key`, the HTTP header `mcp.account_header`; else `mcp.account`). A
sampling request names no session of the client's: it is billed to the configured
session, else to the session of the client's latest tool call, else to its client name,
under the account that session's tool calls were billed to.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp_types import (
    CLIENT_INFO_META_KEY,
    INTERNAL_ERROR,
    CallToolResult,
    JSONRPCRequest,
    JSONRPCResponse,
    TextContent,
)

from tokenquota.errors import IntegrationError, TokenQuotaExceededError

from .mcp_hooks import (
    AccountNotAllowedError,
    Held,
    McpMeter,
    SessionNotAllowedError,
    _budget_error,
    _missing_session,
    account_from,
    result_text,
    session_from,
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
        #: Sampling asked for in `input_required` tool results, held until the client's
        #: retry answers it, by (session, requestState, key). Served to several clients
        #: (the 2026-07-28 era over HTTP) two may be asked under the same key and state:
        #: their holds wait in order, and either answer settles one of them.
        self._asked: dict[tuple[str, str | None, str], list[Held]] = {}

    def install(self, relay: Relay) -> Relay:
        """Hook into `relay` (returned)."""
        self.relay = relay
        relay.on_client_request["tools/call"] = self.tool_call
        relay.on_server_request["sampling/createMessage"] = self.sampling
        return relay

    async def close(self) -> None:
        """Release what sampling asked for in `input_required` results and the client
        never answered (its session has ended)."""
        asked, self._asked = self._asked, {}
        for holds in asked.values():
            for held in holds:
                await self.meter.release(held)

    def session(
        self, meta: Mapping[str, Any] | None, request: JSONRPCRequest | None = None
    ) -> str | None:
        """The session of a client's `request` with `_meta` `meta` (None: none is named);
        SessionNotAllowedError for one the client may not name."""
        info: object = None
        if self.relay is not None and self.relay.client_params:
            info = self.relay.client_params.get("clientInfo")
        if info is None and meta is not None:  # the 2026-07-28 era: in each request's _meta
            info = meta.get(CLIENT_INFO_META_KEY)
        name = info.get("name") if isinstance(info, Mapping) else None
        headers = self._headers(request)
        return session_from(self.meter.settings.mcp, meta=meta, headers=headers, client_name=name)

    def account(self, meta: Mapping[str, Any] | None, request: JSONRPCRequest) -> str | None:
        """The account a client's `request` with `_meta` `meta` names (None: none);
        AccountNotAllowedError for one the client may not name."""
        return account_from(self.meter.settings.mcp, meta=meta, headers=self._headers(request))

    def _headers(self, request: JSONRPCRequest | None) -> Mapping[str, str] | None:
        """The HTTP headers `request` came with (None: not over HTTP)."""
        if self.relay is None or request is None:
            return None
        context = self.relay.request_context.get(request.id)
        headers = getattr(context, "headers", None)
        return headers if isinstance(headers, Mapping) else None

    async def tool_call(
        self, request: JSONRPCRequest, forward: Callable[[], Awaitable[Answer]]
    ) -> Answer:
        """Meter a client's `tools/call` (a tool error result when it is refused)."""
        params = request.params or {}
        tool = str(params.get("name", "?"))
        meta = params.get("_meta")
        named = meta if isinstance(meta, Mapping) else None
        try:
            session = self.session(named, request)
            account = self.account(named, request)
        except (SessionNotAllowedError, AccountNotAllowedError) as exc:
            return _tool_error(request, str(exc))
        if session is None:
            return _tool_error(request, str(_missing_session(self.meter.settings.mcp)))
        self._last_session = session
        answers = params.get("inputResponses")
        if isinstance(answers, Mapping) and answers:
            # A retry with what the client was asked for: its arguments were billed in
            # the first round; the sampling it answers settles now.
            await self._answered(session, params.get("requestState"), answers)
            arguments: Any = {}
        else:
            arguments = params.get("arguments") or {}

        try:
            answer = await self.meter.meter(
                session,
                tool,
                arguments,
                lambda: _result_of(forward),
                lambda a: result_text(a.result),
                account=account,
            )
        except _AnsweredError as failed:
            return failed.answer
        except (TokenQuotaExceededError, IntegrationError, AccountNotAllowedError) as exc:
            log.info("tool %r refused: %s", tool, exc)
            return _tool_error(request, _budget_error(exc))
        refusal = await self._ask(session, answer.result)
        return answer if refusal is None else _tool_error(request, refusal)

    async def _ask(self, session: str, result: Mapping[str, Any]) -> str | None:
        """Hold the sampling an `input_required` result asks the client for (the
        2026-07-28 era's way to ask), as a sampling request is held; the refusal when
        one does not fit (then none is held and the client is not asked)."""
        requests = result.get("inputRequests")
        if result.get("resultType") != "input_required" or not isinstance(requests, Mapping):
            return None
        state = result.get("requestState")
        held: dict[tuple[str, str | None, str], Held] = {}
        try:
            for key, asked in requests.items():
                if isinstance(asked, Mapping) and asked.get("method") == "sampling/createMessage":
                    params = asked.get("params")
                    held[
                        (session, state if isinstance(state, str) else None, key)
                    ] = await self._hold_sampling(
                        session, params if isinstance(params, Mapping) else {}
                    )
        except (TokenQuotaExceededError, IntegrationError, AccountNotAllowedError) as exc:
            log.info("sampling refused: %s", exc)
            for one in held.values():
                await self.meter.release(one)
            return _budget_error(exc)
        for asked_as, one in held.items():
            self._asked.setdefault(asked_as, []).append(one)
        return None

    async def _answered(self, session: str, state: object, answers: Mapping[str, Any]) -> None:
        """Settle the held sampling that a retry's `inputResponses` answer."""
        for key, answer in answers.items():
            asked_as = (session, state if isinstance(state, str) else None, key)
            holds = self._asked.get(asked_as)
            if not holds:
                continue
            held = holds.pop(0)
            if not holds:
                del self._asked[asked_as]
            if isinstance(answer, Mapping) and "content" in answer:
                await self._settle_sampling(held, answer)
            else:  # the client did not sample (an error, or declined)
                await self.meter.release(held)

    async def sampling(
        self, request: JSONRPCRequest, forward: Callable[[], Awaitable[Answer]]
    ) -> Answer:
        """Meter a server's `sampling/createMessage` on the client's session."""
        try:
            session = self.meter.settings.mcp.session_id or self._last_session or self.session(None)
        except SessionNotAllowedError as exc:
            return error_answer(request.id, BUDGET_EXCEEDED, str(exc))
        if session is None:
            message = str(_missing_session(self.meter.settings.mcp))
            return error_answer(request.id, BUDGET_EXCEEDED, message)
        try:
            held = await self._hold_sampling(session, request.params or {})
        except (TokenQuotaExceededError, AccountNotAllowedError) as exc:
            log.info("sampling refused: %s", exc)
            return error_answer(request.id, BUDGET_EXCEEDED, _budget_error(exc))
        except IntegrationError as exc:
            return error_answer(request.id, INTERNAL_ERROR, _budget_error(exc))
        try:
            answer = await forward()
            if isinstance(answer, JSONRPCResponse):
                await self._settle_sampling(held, answer.result)
            else:
                await self.meter.release(held)
        except BaseException:
            await self.meter.release(held)
            raise
        return answer

    async def _hold_sampling(self, session: str, params: Mapping[str, Any]) -> Held:
        """Reserve a sampling request's counted prompt plus its `maxTokens`, under the
        account the session's tool calls were billed to (else the configured one)."""
        prompt = {"systemPrompt": params.get("systemPrompt"), "messages": params.get("messages")}
        max_tokens = params.get("maxTokens")
        allowance = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
        return await self.meter.hold(
            session,
            _texts(prompt),
            lambda counted: counted + allowance,
            "mcp.sampling/createMessage",
            account=self.meter.billed_account(session),
        )

    async def _settle_sampling(self, held: Held, result: Mapping[str, Any]) -> None:
        """Settle sampling with the client's answer, counted for the model it names."""
        model = result.get("model")
        await self.meter.settle(
            held,
            _texts(result.get("content")),
            model=model if isinstance(model, str) and model else None,
        )


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
