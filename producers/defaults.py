"""The process-wide defaults the hooks fall back on: a TokenQuota client and a session.

The integration functions keep the design's short signatures
(`kilocode_token_budget(session_id, task_id, tokens)`,
`track_memory_operation(op, content, tokens)`), so they need a client and, for some,
a session they are not handed. The client is built from `load_settings()` on first
use in a running event loop (or set with `use_quota`); the session is the innermost
`with session_scope(...)` block, and so is the session's budget tree account
(`session_scope(session_id, account=...)`), which every hook inside the block puts on
the events it emits unless it is given an account of its own.

A client belongs to the event loop it was started in. When hooks run in another loop
(a second `asyncio.run`), the client this module started in the old one is abandoned
(`TokenQuota.abandon`: its spool's lock released, its connections dropped) and a new one
is started.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from pydantic import TypeAdapter, ValidationError

from tokenquota.config import Settings, load_settings
from tokenquota.errors import IntegrationError
from tokenquota.schemas import AccountPath, Priority, Source
from tokenquota.schemas.envelope import ACCOUNT_RULE

from .reservations import Mode, Reservation, TokenQuota

__all__ = [
    "account_rule",
    "close_default_quota",
    "current_account",
    "current_session",
    "get_quota",
    "reserve",
    "session_scope",
    "use_quota",
]

_session: ContextVar[str | None] = ContextVar("tokenquota_session", default=None)
_account: ContextVar[str | None] = ContextVar("tokenquota_account", default=None)
_account_path: TypeAdapter[str] = TypeAdapter(AccountPath)
_quota: TokenQuota | None = None
_quota_loop: asyncio.AbstractEventLoop | None = None
_owned = False
_lock: asyncio.Lock | None = None


@contextlib.contextmanager
def session_scope(session_id: str, *, account: str | None = None) -> Iterator[str]:
    """Make `session_id` the session of hooks called inside this block (and its tasks),
    and `account` (a budget tree path such as "acme/research/alice"; None: none) the
    account their events name. A ValueError with the rule for a path that is not one."""
    checked = _checked_account(account)
    session_token = _session.set(session_id)
    account_token = _account.set(checked)
    try:
        yield session_id
    finally:
        _account.reset(account_token)
        _session.reset(session_token)


def account_rule() -> str:
    """What an account path may be, in words (its pattern says little to a user)."""
    return ACCOUNT_RULE


def _checked_account(account: str | None) -> str | None:
    """`account` when it is an account path (or None); a ValueError with the rule if not."""
    if account is None:
        return None
    try:
        return _account_path.validate_python(account)
    except ValidationError:
        raise ValueError(f"account {account!r} is not an account path: {account_rule()}") from None


def current_account(account: str | None = None) -> str | None:
    """`account` if given (checked: a ValueError with the rule if it is not a path), else
    the enclosing `session_scope`'s account; None when neither names one."""
    if account is not None:
        return _checked_account(account)
    return _account.get()


def current_session(session_id: str | None = None, *, what: str = "this call") -> str:
    """`session_id` if given, else the enclosing `session_scope`; a clear error otherwise."""
    resolved = session_id or _session.get()
    if not resolved:
        raise IntegrationError(
            f"no session for {what}: pass session_id=... or run it inside "
            "`with tokenquota.producers.session_scope(session_id):`"
        )
    return resolved


def use_quota(quota: TokenQuota | None) -> None:
    """Make `quota` (a started TokenQuota) the client hooks use when given none."""
    global _quota, _quota_loop, _owned
    _quota, _owned = quota, False
    _quota_loop = asyncio.get_running_loop() if quota is not None else None


async def get_quota(
    quota: TokenQuota | None = None,
    *,
    settings: Settings | None = None,
    source: Source | None = None,
) -> TokenQuota:
    """`quota` if given, else the process default, started on first use in this loop."""
    global _quota, _quota_loop, _owned, _lock
    if quota is not None:
        return quota
    loop = asyncio.get_running_loop()
    if _quota is not None and _quota_loop is loop:
        return _quota
    if _lock is None or _quota_loop is not loop:
        _retire()
        _lock = asyncio.Lock()
        _quota_loop = loop
    async with _lock:
        if _quota is None:
            client = TokenQuota(settings or load_settings(), source=source)
            await client.start()
            _quota, _owned = client, True
        return _quota


async def close_default_quota() -> None:
    """Close the default client if this module started it (spooled events stay on disk).

    A client of another event loop, which cannot be awaited here, is abandoned instead.
    """
    global _quota, _quota_loop, _owned
    client, owned, client_loop = _quota, _owned, _quota_loop
    _quota, _quota_loop, _owned = None, None, False
    if client is None or not owned:
        return
    if client_loop is asyncio.get_running_loop():
        await client.close()
    else:
        client.abandon()


def _retire() -> None:
    """Drop the default client of another loop; abandon it if this module started it."""
    global _quota, _owned
    client, owned, client_loop = _quota, _owned, _quota_loop
    if client is None:
        return
    if owned and client_loop is not None and client_loop.is_running():
        # Another thread's loop is using it: abandoning it would break that thread.
        raise IntegrationError(
            "the default TokenQuota is in use by an event loop running in another thread; "
            "give each thread's hooks a client of its own (quota=... or use_quota)"
        )
    _quota, _owned = None, False
    if owned:
        client.abandon()


async def reserve(
    session_id: str,
    tokens: int,
    task_id: str | None = None,
    priority: Priority = "normal",
    ttl: float | None = None,
    mode: Mode | None = None,
    *,
    quota: TokenQuota | None = None,
    account: str | None = None,
) -> Reservation:
    """`quota.reserve(...)`, as a function; without `quota`, the process default client.
    The reservation names `account`, else the enclosing `session_scope`'s."""
    resolved = current_account(account)
    client = await get_quota(quota)
    return await client.reserve(session_id, tokens, task_id, priority, ttl, mode, account=resolved)
