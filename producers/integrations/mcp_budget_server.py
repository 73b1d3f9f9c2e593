"""`tokenquota mcp-server`: an MCP server whose tools let agents manage their own budget.

Tools: `check_budget`, `reserve_tokens`, `record_usage`, `usage_report`. Refusals
and bad input come back as tool errors (`isError`) with the reason; the server stays up.

Whose budget a tool acts on follows the MCP hooks' rules (`resolve_session`), with the
tools' `session_id` argument in the place of the `_meta` source: by default a configured
`mcp.session_id` is used, and a call naming a different session is refused; a client
may name its session when none is configured or `mcp.session_sources` lists `meta`
before `config`, within `mcp.client_session_prefix`.

The budget tree node a call bills follows the hooks' rules too (`check_client_account`):
the tools' `account` argument, else the account the request names (the `_meta` key
`mcp.account_meta_key`, or the HTTP header `mcp.account_header` over streamable HTTP, as
`mcp.account_sources` lists them), else `mcp.account`, else the enclosing
`session_scope`'s. An account a client names must be an account path and, with
`mcp.account` set, that node or one below it; a call naming another is refused with the
rule. A settlement names its reservation's account (a call naming another is refused).
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import TypeAdapter

from tokenquota.config import Settings
from tokenquota.errors import IntegrationError, TokenQuotaExceededError
from tokenquota.projections import AccountMetrics, SessionMetrics, UsdMetrics, headroom
from tokenquota.projections.read_models import Usd
from tokenquota.schemas import CountedBy, Priority, Source, TokenUsed

from ..defaults import current_account
from ..reservations import Reservation, TokenQuota
from .mcp_hooks import (
    AccountNotAllowedError,
    SessionNotAllowedError,
    check_client_account,
    check_client_session,
    resolve_account,
    resolve_session,
)

__all__ = ["BudgetTools", "create_budget_server"]

SOURCE = Source(component="mcp", name="tokenquota-mcp-server")


@dataclasses.dataclass
class BudgetTools:
    """What the budget server's tools share: the client and the reservations it handed out."""

    quota: TokenQuota
    held: dict[uuid.UUID, Reservation] = dataclasses.field(default_factory=dict)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def create_budget_server(settings: Settings, *, quota: TokenQuota | None = None) -> MCPServer[Any]:
    """The budget server; it opens its own TokenQuota client unless given one."""

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[BudgetTools]:
        if quota is not None:
            yield BudgetTools(quota)
            return
        # A process of its own next to the agent's: a spool of its own too.
        emitter = settings.emitter.model_copy(
            update={"spool_dir": settings.spool_dir / "mcp-server"}
        )
        own = settings.model_copy(update={"emitter": emitter})
        async with TokenQuota(own, source=SOURCE) as client:
            yield BudgetTools(client)

    server: MCPServer[Any] = MCPServer(
        name="tokenquota",
        instructions=(
            "Token budgets: call check_budget before expensive work, reserve_tokens to hold "
            "tokens, record_usage with what you used (naming the reservation), usage_report "
            "for a summary."
        ),
        lifespan=lifespan,
    )

    def tools_of(ctx: Context[Any, Any]) -> BudgetTools:
        state = ctx.request_context.lifespan_context
        assert isinstance(state, BudgetTools)
        return state

    def session_of(ctx: Context[Any, Any], requested: str | None) -> str:
        return _session(ctx, requested, settings)

    def account_of(ctx: Context[Any, Any], requested: str | None = None) -> str | None:
        named = _client_account(ctx, requested, settings)
        return named if named is not None else _default_account(settings)

    @server.tool()
    async def check_budget(
        ctx: Context[Any, Any], session_id: str | None = None, priority: Priority = "normal"
    ) -> dict[str, Any]:
        """Tokens the session can still reserve now, and the limit that binds.

        `session_id` may be left out when the server has one configured. A session with
        USD limits adds them with its dollars used, held and available. A session in a
        budget tree adds `account`, `tree` (each node from the tenant down: its limits,
        tokens and USD used per window, held and available), `tightest` (the node with
        the fewest tokens available; null when no node has limits) and
        `tree_available_tokens` (what a reservation of `priority` can take at the session
        and every node above it); `available_tokens` and `binding_limit` are the
        session's own.
        """
        session_id = session_of(ctx, session_id)
        billed = account_of(ctx)
        quota = tools_of(ctx).quota
        metrics = await _metrics(quota, session_id)
        room = metrics.headroom(priority)
        report: dict[str, Any] = {
            "session_id": session_id,
            "available_tokens": max(room.available, 0),
            "binding_limit": room.window,
            "tokens_used_today": metrics.tokens_used_today,
            "tokens_held": metrics.tokens_held,
            "alert": _worst(metrics.daily_alert, metrics.monthly_alert, metrics.total_alert),
        }
        if metrics.usd is not None and metrics.usd.limits is not None:
            report.update(_usd_columns(metrics.usd))
        account, nodes = await _tree(quota, metrics.account or billed)
        if account is not None:
            report.update(_tree_report(account, nodes))
            left = [_node_room(node, priority) for node in nodes if node.limits is not None]
            report["tree_available_tokens"] = min([report["available_tokens"], *left])
        return report

    @server.tool()
    async def reserve_tokens(
        tokens: int,
        ctx: Context[Any, Any],
        session_id: str | None = None,
        task_id: str | None = None,
        priority: Priority = "normal",
        account: str | None = None,
    ) -> dict[str, Any]:
        """Hold `tokens` for the session; settle them later with record_usage.

        `session_id` may be left out when the server has one configured. `account` is the
        session's budget tree node, such as "acme/research/alice"; left out, the one the
        request names (its `_meta` or HTTP header), else the server's. With the server's
        account set, a named account must be that node or below it.
        """
        session_id = session_of(ctx, session_id)
        node = account_of(ctx, account)
        if tokens <= 0:
            raise ToolError(f"tokens must be a positive integer, got {tokens}")
        state = tools_of(ctx)
        try:
            held = await state.quota.reserve(
                session_id, tokens, task_id, priority, source=SOURCE, account=node
            )
        except (TokenQuotaExceededError, IntegrationError) as exc:
            raise ToolError(str(exc)) from exc
        state.held[held.reservation_id] = held
        return {
            "reservation_id": str(held.reservation_id),
            "tokens": held.tokens,
            "status": held.status,
            "expires_at": held.event.expires_at.isoformat(),
        }

    @server.tool()
    async def record_usage(
        input_tokens: int,
        output_tokens: int,
        ctx: Context[Any, Any],
        session_id: str | None = None,
        model: str = "unknown",
        reservation_id: str | None = None,
        task_id: str | None = None,
        operation: str = "agent",
        counted_by: CountedBy = "estimate",
        account: str | None = None,
    ) -> dict[str, Any]:
        """Record tokens used; naming a reservation settles it (the unused rest is freed).

        `session_id` may be left out when the server has one configured. `account` is the
        session's budget tree node, chosen as reserve_tokens chooses it; settling a
        reservation of this server bills the reservation's account (naming another is
        refused).
        """
        session_id = session_of(ctx, session_id)
        named = _client_account(ctx, account, settings)
        node = named if named is not None else _default_account(settings)
        state = tools_of(ctx)
        rid = None
        if reservation_id is not None:
            try:
                rid = uuid.UUID(reservation_id)
            except ValueError:
                raise ToolError(f"reservation_id {reservation_id!r} is not a UUID") from None
        held = state.held.pop(rid, None) if rid is not None else None
        try:
            if held is not None:
                if held.event.session_id != session_id:
                    state.held[held.reservation_id] = held
                    raise ToolError(
                        f"reservation {rid} belongs to session {held.event.session_id!r}"
                    )
                if named is not None and named != held.event.account:
                    state.held[held.reservation_id] = held
                    raise ToolError(
                        f"reservation {rid} was made for account {held.event.account!r}, "
                        f"not {node!r}"
                    )
                delivery = await held.settle(
                    input_tokens, output_tokens, model, operation=operation, counted_by=counted_by
                )
            else:
                event = TokenUsed(
                    session_id=session_id,
                    task_id=task_id,
                    source=SOURCE,
                    account=node,
                    reservation_id=rid,
                    model=model,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    operation=operation,
                    counted_by=counted_by,
                )
                delivery = await state.quota.emit(event)
        except ValueError as exc:  # pydantic's validation of the event
            raise ToolError(f"invalid usage: {exc}") from None
        return {"recorded": input_tokens + output_tokens, "delivery": delivery}

    @server.tool()
    async def usage_report(ctx: Context[Any, Any], session_id: str | None = None) -> dict[str, Any]:
        """The session's limits, usage per window, held tokens, alerts and reservations.

        `session_id` may be left out when the server has one configured. A session in a
        budget tree adds `tree` and `tightest`, as check_budget shows them.
        """
        session_id = session_of(ctx, session_id)
        billed = account_of(ctx)
        quota = tools_of(ctx).quota
        metrics = await _metrics(quota, session_id)
        report = dataclasses.asdict(metrics)
        report["limits"] = dataclasses.asdict(metrics.limits)
        account, nodes = await _tree(quota, metrics.account or billed)
        if account is not None:
            report.update(_tree_report(account, nodes))
        return _plain(report)  # type: ignore[no-any-return]

    return server


def _session(ctx: Context[Any, Any], requested: str | None, settings: Settings) -> str:
    """The session a tool call acts on; a ToolError when it names one it may not."""
    mcp = settings.mcp
    request = ctx.request_context
    named = requested.strip() if requested is not None and requested.strip() else None
    # The argument stands where the request's _meta session would.
    meta = {mcp.session_meta_key: named} if named is not None else request.meta
    try:
        try:
            session = resolve_session(request, meta, mcp)
        except SessionNotAllowedError as exc:
            if exc.session_id == named:  # say which way the client named it
                check_client_session(exc.session_id, "the argument session_id", mcp)
            raise
    except SessionNotAllowedError as exc:
        raise ToolError(str(exc)) from None
    if session is None:
        raise ToolError(
            "no session: pass session_id, or start the server with --session "
            "(mcp.session_id, MCP_SESSION_ID)"
        )
    if named is not None and session != named:
        raise ToolError(
            f"session {named!r} is not allowed: this server acts for session {session!r}; "
            "a client may name another session only when mcp.session_sources lists meta "
            "before config"
        )
    return session


def _client_account(
    ctx: Context[Any, Any], requested: str | None, settings: Settings
) -> str | None:
    """The budget tree node a tool call's client names: the `account` argument, else the
    request's (`resolve_account`: the `_meta` key `mcp.account_meta_key` or the HTTP header
    `mcp.account_header`, as `mcp.account_sources` lists them); None when it names none.
    Checked as the hooks check it (`check_client_account`: an account path and, with
    `mcp.account` set, that node or below it); a ToolError naming the rule otherwise."""
    mcp = settings.mcp
    named = requested.strip() if requested is not None else ""
    request = ctx.request_context
    try:
        if named:  # an empty argument counts as left out
            return check_client_account(named, "the argument account", mcp)
        return resolve_account(request, request.meta, mcp)
    except AccountNotAllowedError as exc:
        raise ToolError(str(exc)) from None


def _default_account(settings: Settings) -> str | None:
    """The budget tree node of a call whose client names none: `mcp.account`, else the
    enclosing `session_scope`'s (None: none)."""
    configured = settings.mcp.account
    return configured if configured is not None else current_account()


def _worst(*levels: str) -> str:
    order = ("none", "warning", "critical", "exhausted")
    return max(levels, key=order.index)


async def _metrics(quota: TokenQuota, session_id: str) -> SessionMetrics:
    try:
        return await quota.session_metrics(session_id)
    except IntegrationError as exc:
        raise ToolError(str(exc)) from exc


async def _tree(quota: TokenQuota, account: str | None) -> tuple[str | None, list[AccountMetrics]]:
    """`account` (the session's stored budget tree node, else the one its reservations here
    would name) and the nodes from its tenant down; (None, []) for a session in no tree."""
    if account is None:
        return None, []
    try:
        return account, await quota.account_metrics(account)
    except IntegrationError as exc:
        raise ToolError(str(exc)) from exc


def _tree_report(account: str, nodes: list[AccountMetrics]) -> dict[str, Any]:
    """`account`, each node as the HTTP API's AccountNode, and the tightest node: the one
    with the fewest tokens available (the first from the tenant down on a tie; None when
    no node has limits)."""
    limiting = [node for node in nodes if node.available_tokens is not None]
    tightest = min(limiting, key=lambda node: node.available_tokens or 0, default=None)
    return {
        "account": account,
        "tree": [_node(node) for node in nodes],
        "tightest": tightest.account if tightest is not None else None,
    }


def _node(node: AccountMetrics) -> dict[str, Any]:
    """One node, in the fields and order of the HTTP API's AccountNode."""
    limits = node.limits
    return {
        "account": node.account,
        "known": node.known,
        "daily_limit": limits.daily_limit if limits else None,
        "monthly_limit": limits.monthly_limit if limits else None,
        "hard_limit": limits.hard_limit if limits else None,
        "tokens_used_today": node.tokens_used_today,
        "tokens_used_month": node.tokens_used_month,
        "tokens_used_total": node.tokens_used_total,
        "tokens_held": node.tokens_held,
        "available_tokens": node.available_tokens,
        "binding_limit": node.binding_limit,
        "utilization": _plain(node.utilization),
        "reservations_accepted": node.reservations_accepted,
        "reservations_rejected": node.reservations_rejected,
        "updated_at": _plain(node.updated_at),
        **_usd_columns(node.usd or _NO_USD),
    }


def _node_room(node: AccountMetrics, priority: Priority) -> int:
    """Tokens a reservation of `priority` can take at `node` (which has limits)."""
    assert node.limits is not None
    room = headroom(
        node.limits,
        node.tokens_used_today,
        node.tokens_used_month,
        node.tokens_used_total,
        node.tokens_held,
        priority,
    )
    return max(room.available, 0)


#: USD as the HTTP API writes it: plain digits in a string ("0", never "0E-10").
_USD: TypeAdapter[Decimal | None] = TypeAdapter(Usd | None)
_NO_USD = UsdMetrics(None, Decimal(0), Decimal(0), Decimal(0), Decimal(0), None)


def _usd_columns(usd: UsdMetrics) -> dict[str, str | None]:
    """`usd`'s limits, spend per window, held and available, named as in the HTTP API."""
    return {name: _USD.dump_python(value, mode="json") for name, value in usd.columns().items()}
