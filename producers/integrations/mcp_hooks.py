"""Budgets for MCP tools: a decorator per tool, or server-wide hooks.

Every metered call counts its arguments, reserves them plus an output allowance of at
most `mcp.token_budget_per_request` (less when the session has less left, so a call that
fits a small budget still runs; see `fair_reservation`), runs the tool, counts the
result and settles the reservation with both counts. A call that does not fit gets a
tool error (`isError`) naming the session, the tokens requested and those available;
the server keeps serving. A call whose tool fails, is cancelled, or whose result cannot
be counted releases its reservation.

The session comes from the sources `mcp.session_sources` lists, first found wins; by
default the configured `mcp.session_id` comes first, so a client can only name its
session (`_meta`, header, clientInfo) when none is configured or the configuration
lists a client source before `config`. `mcp.client_session_prefix` limits the sessions
a client may name.

The account (budget tree node) of a call: the one the client names, from the sources
`mcp.account_sources` lists (the request's `_meta` key `mcp.account_meta_key`, the HTTP
header `mcp.account_header`), first found wins; else `mcp.account`; else, for a call made
inside `session_scope(..., account=...)` (a decorated tool called in the agent's own
process, say), that scope's; otherwise none. A client's account must be an account path
and, when `mcp.account` (else the scope's account) is set, that node or one below it:
the configuration bounds what a client may name (`check_client_account`).

One account per session: the fold dead-letters an event whose session already belongs
to another account, so a meter refuses, before emitting anything, a call naming another
account than the one it already billed the session to, or than the one the session's
stored events name (read where the call reads the session's room anyway).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel

from tokenquota.config import Settings, load_settings
from tokenquota.errors import IntegrationError, TokenQuotaExceededError
from tokenquota.schemas import CountedBy, Source
from tokenquota.sections import AccountSource, McpSettings, SessionSource

from ..defaults import account_rule, current_account, get_quota
from ..reservations import Reservation, TokenQuota
from ..token_counter import TokenCounter, Tokens, payload_text, token_counter

__all__ = [
    "AccountNotAllowedError",
    "Held",
    "McpMeter",
    "SessionNotAllowedError",
    "TokenMeteringMiddleware",
    "account_from",
    "check_client_account",
    "check_client_session",
    "fair_reservation",
    "mcp_token_decorator",
    "resolve_account",
    "resolve_session",
    "result_text",
    "session_from",
    "setup_mcp_token_hooks",
]

log = logging.getLogger("tokenquota.mcp")

P = ParamSpec("P")
R = TypeVar("R")

#: How many sessions a meter remembers the account of (the least recently used is
#: forgotten first; a forgotten session is still checked against its stored account).
_REMEMBERED_SESSIONS = 65_536

# Set while the server-wide hook meters a call, so a decorated tool inside it is not
# counted a second time.
_metered: ContextVar[bool] = ContextVar("tokenquota_mcp_metered", default=False)


class SessionNotAllowedError(Exception):
    """The session an MCP client named may not be billed (the message says which rule)."""

    def __init__(self, session_id: str, message: str) -> None:
        self.session_id = session_id
        super().__init__(message)


class AccountNotAllowedError(Exception):
    """The account of an MCP call may not be billed: the client named one that is not an
    account path or not under the configured node, or the call's session already belongs
    to another account (the message says which rule)."""

    def __init__(self, account: object, message: str) -> None:
        self.account = account
        super().__init__(message)


def _origin(source: SessionSource, settings: McpSettings) -> str:
    if source == "meta":
        return f"the request _meta key {settings.session_meta_key!r}"
    if source == "header":
        return f"the HTTP header {settings.session_header!r}"
    return "the client's clientInfo.name"


def check_client_session(session_id: str, origin: str, settings: McpSettings) -> str:
    """`session_id`, named by the client through `origin`, if `mcp.client_session_prefix`
    allows it; SessionNotAllowedError otherwise."""
    prefix = settings.client_session_prefix
    if prefix is not None and not session_id.startswith(prefix):
        raise SessionNotAllowedError(
            session_id,
            f"session {session_id!r} from {origin} is not allowed: a session named by the "
            f"client must start with {prefix!r} (mcp.client_session_prefix)",
        )
    return session_id


def resolve_session(
    request: ServerRequestContext[Any, Any] | None,
    meta: Mapping[str, Any] | None,
    settings: McpSettings,
) -> str | None:
    """The session of an MCP call, from the sources `mcp.session_sources` lists, in order.

    `config`: `mcp.session_id`; `meta`: the request's `_meta` key `mcp.session_meta_key`;
    `header`: the HTTP header `mcp.session_header` (streamable HTTP); `client`: the name
    the client gave in its `clientInfo`. The first source that names a session wins; a
    session from one of the client's sources must pass `check_client_session`, else
    SessionNotAllowedError is raised (the next source is not tried).
    """
    headers = getattr(request.request, "headers", None) if request is not None else None
    params = request.session.client_params if request is not None else None
    client = params.client_info.name if params is not None else None
    return session_from(settings, meta=meta, headers=headers, client_name=client)


def session_from(
    settings: McpSettings,
    *,
    meta: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    client_name: object = None,
) -> str | None:
    """`resolve_session` over plain inputs: the request's `_meta`, its HTTP `headers`
    (None when not served over HTTP) and the name in the client's `clientInfo`."""
    for source in settings.session_sources:
        value: object = None
        if source == "meta" and meta is not None:
            value = meta.get(settings.session_meta_key)
        elif source == "header" and headers is not None:
            value = headers.get(settings.session_header)
        elif source == "config":
            value = settings.session_id
        elif source == "client":
            value = client_name
        if isinstance(value, str) and value.strip():
            session = value.strip()
            if source == "config":
                return session
            return check_client_session(session, _origin(source, settings), settings)
    return None


def _account_origin(source: AccountSource, settings: McpSettings) -> str:
    if source == "meta":
        return f"the request _meta key {settings.account_meta_key!r}"
    return f"the HTTP header {settings.account_header!r}"


def _configured_account(settings: McpSettings) -> tuple[str | None, str]:
    """The account the integration bills when the client names none, and where it is
    set: `mcp.account`, else the enclosing `session_scope`'s."""
    if settings.account is not None:
        return settings.account, "mcp.account"
    return current_account(), "the session_scope's account"


def check_client_account(account: object, origin: str, settings: McpSettings) -> str:
    """`account`, named by the client through `origin`, when it is an account path and,
    with `mcp.account` set (else a `session_scope` account), that node or one below it;
    AccountNotAllowedError naming the rule otherwise."""
    try:
        checked = current_account(account) if isinstance(account, str) else None
    except ValueError:
        checked = None
    if checked is None:
        raise AccountNotAllowedError(
            account, f"account {account!r} from {origin} is not an account path: {account_rule()}"
        )
    configured, where = _configured_account(settings)
    if configured is not None and not (
        checked == configured or checked.startswith(configured + "/")
    ):
        raise AccountNotAllowedError(
            checked,
            f"account {checked!r} from {origin} is not allowed: an account named by the "
            f"client must be {configured!r} or below it ({where})",
        )
    return checked


def resolve_account(
    request: ServerRequestContext[Any, Any] | None,
    meta: Mapping[str, Any] | None,
    settings: McpSettings,
) -> str | None:
    """The account an MCP client names for a call, from the sources `mcp.account_sources`
    lists, in order: `meta`, the request's `_meta` key `mcp.account_meta_key`; `header`,
    the HTTP header `mcp.account_header` (streamable HTTP). None when it names none; an
    account named must pass `check_client_account`, else AccountNotAllowedError."""
    headers = getattr(request.request, "headers", None) if request is not None else None
    return account_from(settings, meta=meta, headers=headers)


def account_from(
    settings: McpSettings,
    *,
    meta: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str | None:
    """`resolve_account` over plain inputs: the request's `_meta` and its HTTP `headers`
    (None when not served over HTTP)."""
    for source in settings.account_sources:
        value: object = None
        if source == "meta" and meta is not None:
            value = meta.get(settings.account_meta_key)
        elif source == "header" and headers is not None:
            value = headers.get(settings.account_header)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        named = value.strip() if isinstance(value, str) else value
        return check_client_account(named, _account_origin(source, settings), settings)
    return None


def _named(account: str | None) -> str:
    return f"account {account!r}" if account is not None else "none"


async def _release_unsettled(quota: TokenQuota, reservation: Reservation) -> None:
    """Release `reservation` after its work or its settlement failed, even when cancelled.

    A failure to release is logged, not raised: the caller's error is the one to see
    (and the reservation's TTL frees the tokens in the end).
    """
    # A fresh handle on the same reservation: a settle that raised has already marked
    # `reservation` closed. Should that settle have reached the log after all, this
    # release is recorded as an unmatched zero-token settlement and changes nothing.
    handle = Reservation(quota, reservation.event, reservation.status, reservation.delivery)
    try:
        await asyncio.shield(handle.release())  # runs to its end when the caller is cancelled
    except Exception as exc:
        log.error("could not release reservation %s: %s", reservation.reservation_id, exc)


def result_text(result: Any) -> tuple[str, bool]:
    """The text of a tool result an LLM would read, and whether all of it is text.

    Text content blocks are counted; structured content only when there is no text.
    Images, audio and resource blobs make the count an estimate.
    """
    if isinstance(result, BaseModel):
        result = result.model_dump(by_alias=True, exclude_none=True)
    if not isinstance(result, Mapping) or "content" not in result:
        return payload_text(result), True
    texts: list[str] = []
    exact = True
    for block in result.get("content") or []:
        if isinstance(block, Mapping) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif isinstance(block, Mapping) and block.get("type") == "resource":
            resource = block.get("resource") or {}
            texts.append(str(resource.get("text", "")))
            exact = exact and "blob" not in resource
        else:
            exact = False
    if not texts and result.get("structuredContent") is not None:
        texts.append(payload_text(result["structuredContent"]))
    return "\n".join(texts), exact


def fair_reservation(input_tokens: int, allowance: int, room: int) -> int:
    """What a tool call reserves: its counted input plus an output allowance of at most
    `allowance` (`mcp.token_budget_per_request`), cut to what the session has left (`room`)
    after the input, so that a call fits a budget smaller than the allowance. A call
    whose input alone does not fit asks for input + allowance (and is refused with the
    numbers). A result longer than its allowance is billed in full when it settles."""
    left = room - input_tokens
    if left <= 0:
        return max(input_tokens + allowance, 1)
    return max(input_tokens + min(allowance, left), 1)


@dataclass(frozen=True)
class Held:
    """Tokens reserved for one metered operation, until `McpMeter.settle` or `release`."""

    quota: TokenQuota
    reservation: Reservation
    input_tokens: Tokens
    operation: str


class McpMeter:
    """Reserve, run, count and settle one MCP tool call at a time.

    `settings` default to `load_settings()`, `quota` to the process default client.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        quota: TokenQuota | None = None,
        counter: TokenCounter | None = None,
        server_name: str = "mcp",
    ) -> None:
        self._settings = settings
        self._quota = quota
        self.counter = counter or token_counter
        self.source = Source(component="mcp", name=server_name[:100] or "mcp")
        #: The account each session was billed to by this meter (None: none), the most
        #: recently used last.
        self._accounts: OrderedDict[str, str | None] = OrderedDict()

    @property
    def settings(self) -> Settings:
        """The settings in force (loaded on first use when none were given)."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    async def meter(
        self,
        session_id: str,
        tool: str,
        arguments: Any,
        call: Callable[[], Awaitable[R]],
        output: Callable[[R], tuple[str, bool]],
        *,
        reserve: Callable[[int], int] | None = None,
        operation: str | None = None,
        account: str | None = None,
    ) -> R:
        """Run `call` under a reservation; raise TokenQuotaExceededError when it won't fit.

        `reserve` gives the tokens to hold from the input's count (default: the input plus
        an output allowance, see `fair_reservation`); `operation` names the usage (default
        `mcp.tool:<tool>`); `account` is the one the client named (see `account_for`)."""
        held = await self.hold(
            session_id,
            payload_text(arguments),
            reserve,
            operation or f"mcp.tool:{tool}",
            account=account,
        )
        # Until the settlement is emitted, any failure (the tool's, a cancellation, a
        # result that cannot be counted) releases the tokens instead of holding them
        # until the reservation's TTL. An uncounted result's usage is not known: nothing
        # is billed for it.
        try:
            result = await call()
            text, exact = output(result)
            await self.settle(held, text, exact=exact)
        except BaseException:
            await self.release(held)
            raise
        return result

    async def hold(
        self,
        session_id: str,
        text: str,
        reserve: Callable[[int], int] | None = None,
        operation: str = "mcp",
        *,
        account: str | None = None,
    ) -> Held:
        """Count `text` (the input) and reserve tokens for it: `reserve(count)`, or by
        default the count plus a fair output allowance (`fair_reservation`, cut to what
        the session and, with an account, each node above it has left).
        TokenQuotaExceededError when they do not fit. The account is `account_for`'s;
        AccountNotAllowedError when the session already belongs to another (as this
        meter billed it or, read with the session's room, as its stored events say)."""
        mcp = self.settings.mcp
        account = self.account_for(session_id, account)
        input_tokens = await self.counter.count_tokens(text, mcp.model)
        quota = await get_quota(self._quota, settings=self.settings)
        if reserve is None:
            metrics = await quota.session_metrics(session_id)
            if metrics.known and metrics.account != account:
                raise AccountNotAllowedError(
                    account,
                    f"session {session_id!r} belongs to {_named(metrics.account)} (its events "
                    f"so far); this call names {_named(account)}: every event of a session "
                    "names the same account (use another session for another account)",
                )
            room = metrics.headroom().available
            if account is not None:  # and what each node above the session has left
                nodes = await quota.account_metrics(account)
                left = [n.available_tokens for n in nodes if n.available_tokens is not None]
                room = min([room, *left])
            wanted = fair_reservation(int(input_tokens), mcp.token_budget_per_request, room)
        else:
            wanted = max(reserve(input_tokens), 1)
        self._remember(session_id, account)
        reservation = await quota.reserve(session_id, wanted, source=self.source, account=account)
        return Held(quota, reservation, input_tokens, operation[:100])

    def account_for(self, session_id: str, named: str | None = None) -> str | None:
        """The account a call of `session_id` bills: `named` (the client's, checked by
        `account_from`), else `mcp.account`, else the enclosing `session_scope`'s (None:
        none). AccountNotAllowedError when this meter billed the session to another:
        every event of a session names the same account (the fold dead-letters others)."""
        account = named if named is not None else _configured_account(self.settings.mcp)[0]
        if session_id in self._accounts and self._accounts[session_id] != account:
            billed = self._accounts[session_id]
            raise AccountNotAllowedError(
                account,
                f"session {session_id!r} is billed to {_named(billed)} here; this call names "
                f"{_named(account)}: every event of a session names the same account (use "
                "another session for another account)",
            )
        return account

    def billed_account(self, session_id: str) -> str | None:
        """The account this meter billed `session_id` to (None: none, or not billed yet)."""
        return self._accounts.get(session_id)

    def _remember(self, session_id: str, account: str | None) -> None:
        self._accounts[session_id] = account
        self._accounts.move_to_end(session_id)
        if len(self._accounts) > _REMEMBERED_SESSIONS:
            self._accounts.popitem(last=False)

    async def settle(
        self, held: Held, output: str, *, exact: bool = True, model: str | None = None
    ) -> None:
        """Settle `held` with its counted input and `output` counted for `model` (default
        `mcp.model`); `exact` False marks the counts as an estimate."""
        model = model or self.settings.mcp.model
        output_tokens = await self.counter.count_tokens(output, model)
        by: CountedBy = (
            "tiktoken" if exact and held.input_tokens.exact and output_tokens.exact else "estimate"
        )
        await held.reservation.settle(
            held.input_tokens, output_tokens, model, operation=held.operation, counted_by=by
        )

    async def release(self, held: Held) -> None:
        """Give `held`'s tokens back (also when cancelled; a failure is only logged)."""
        await _release_unsettled(held.quota, held.reservation)


def _budget_error(error: Exception) -> str:
    if isinstance(error, AccountNotAllowedError):
        return str(error)
    if isinstance(error, TokenQuotaExceededError):
        return f"token budget: {error}"
    return f"tokenquota unavailable: {error}"


def _missing_session(settings: McpSettings) -> IntegrationError:
    return IntegrationError(
        "no tokenquota session for this MCP call: set mcp.session_id (MCP_SESSION_ID), "
        f"the request _meta key {settings.session_meta_key!r} or the HTTP header "
        f"{settings.session_header!r} (mcp.session_sources: "
        f"{','.join(settings.session_sources)})"
    )


def mcp_token_decorator(
    meter: McpMeter | None = None,
    *,
    settings: Settings | None = None,
    quota: TokenQuota | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Meter an async MCP tool: put it under `@server.tool()`.

    The session comes from `mcp.session_id` or the tool's `Context` parameter (the
    request's `_meta`, header or client), as `resolve_session` says; the account from
    the request (`resolve_account`), else `mcp.account`. Over budget or with a session
    or account that is not allowed, the call ends in a `ToolError`, which the client
    receives as an `isError` result.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"mcp_token_decorator needs an async tool; {fn.__name__} is not")
        active = meter or McpMeter(settings, quota=quota)

        @functools.wraps(fn)
        async def metered(*args: P.args, **kwargs: P.kwargs) -> R:
            if _metered.get():  # the server-wide hook already meters this call
                return await fn(*args, **kwargs)
            mcp = active.settings.mcp
            request = next(
                (v.request_context for v in (*args, *kwargs.values()) if isinstance(v, Context)),
                None,
            )
            meta = request.meta if request is not None else None
            try:
                session_id = resolve_session(request, meta, mcp)
                account = resolve_account(request, meta, mcp)
            except (SessionNotAllowedError, AccountNotAllowedError) as exc:
                raise ToolError(str(exc)) from exc
            if session_id is None:
                raise ToolError(str(_missing_session(mcp)))
            arguments = {k: v for k, v in kwargs.items() if not isinstance(v, Context)}
            try:
                return await active.meter(
                    session_id,
                    fn.__name__,
                    arguments,
                    lambda: fn(*args, **kwargs),
                    lambda result: (payload_text(result), True),
                    account=account,
                )
            except (TokenQuotaExceededError, IntegrationError, AccountNotAllowedError) as exc:
                raise ToolError(_budget_error(exc)) from exc

        return metered

    return decorate


class TokenMeteringMiddleware:
    """MCP server middleware metering every `tools/call` (see `setup_mcp_token_hooks`)."""

    def __init__(self, meter: McpMeter) -> None:
        self.meter = meter

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method != "tools/call" or ctx.request_id is None:
            return await call_next(ctx)
        params = ctx.params or {}
        tool = str(params.get("name", "?"))
        meta = params.get("_meta") if isinstance(params.get("_meta"), Mapping) else ctx.meta
        mcp = self.meter.settings.mcp
        try:
            session_id = resolve_session(ctx, meta, mcp)
            account = resolve_account(ctx, meta, mcp)
        except (SessionNotAllowedError, AccountNotAllowedError) as exc:
            log.info("tool %r refused: %s", tool, exc)
            return _error_result(str(exc))
        if session_id is None:
            return _error_result(str(_missing_session(mcp)))

        async def call() -> HandlerResult:
            token = _metered.set(True)
            try:
                return await call_next(ctx)
            finally:
                _metered.reset(token)

        try:
            return await self.meter.meter(
                session_id,
                tool,
                params.get("arguments") or {},
                call,
                result_text,
                account=account,
            )
        except (TokenQuotaExceededError, IntegrationError, AccountNotAllowedError) as exc:
            log.info("tool %r refused: %s", tool, exc)
            return _error_result(_budget_error(exc))


def _error_result(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def setup_mcp_token_hooks(
    server: MCPServer[Any] | Server[Any],
    meter: McpMeter | None = None,
    *,
    settings: Settings | None = None,
    quota: TokenQuota | None = None,
) -> TokenMeteringMiddleware:
    """Meter every tool `server` serves, registered now or later, without decorating them.

    Returns the middleware it installed (outermost after the SDK's own).
    """
    active = meter or McpMeter(settings, quota=quota, server_name=server.name)
    middleware = TokenMeteringMiddleware(active)
    server.middleware.append(middleware)
    return middleware
