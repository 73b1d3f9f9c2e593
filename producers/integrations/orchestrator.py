"""Budgets for agent orchestrator tasks.

`kilocode_token_budget` holds tokens for a task (so that a check and the run cannot
be overtaken by a concurrent caller); `route_with_token_budget` runs a task under a
reservation — the held one, or one of the given or counted estimate — and settles it
with the usage the task reports, or with its counted result. A task that raises or
is cancelled, or whose result can be neither read for usage nor counted, releases its
tokens. At most `orchestrator.max_concurrent_tasks` tasks of a session run at once;
the others wait, higher priority first (`waiting_tasks` says how many wait).

A session of a budget tree names its account: `account=`, else the enclosing
`session_scope(session_id, account=...)`'s; a task run on tokens held by
`kilocode_token_budget` settles under the account they were held for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar

from tokenquota.config import Settings
from tokenquota.errors import TokenQuotaExceededError
from tokenquota.schemas import CountedBy, Priority, Source

from ..defaults import current_account, current_session, get_quota
from ..reservations import Reservation, TokenQuota
from ..token_counter import payload_text, token_counter

__all__ = [
    "TaskOrchestrator",
    "kilocode_token_budget",
    "release_task_budget",
    "reported_usage",
    "route_with_token_budget",
    "setup_token_hooks",
    "waiting_tasks",
]

log = logging.getLogger("tokenquota.orchestrator")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

SOURCE = Source(component="orchestrator", name="tokenquota")
_RANK: dict[Priority, int] = {"critical": 0, "high": 1, "normal": 2, "low": 3}
_held: dict[tuple[str, str], Reservation] = {}


class _Slots:
    """A per-session semaphore whose waiters are served by priority, then arrival."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: Priority) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (_RANK[priority], next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted, then cancelled: pass the slot on
            raise

    @property
    def idle(self) -> bool:
        """No task holds a slot and none waits."""
        return not self._waiters and self.free == self.size

    @property
    def waiting(self) -> int:
        """Tasks waiting for a slot."""
        return sum(not future.done() for _, _, future in self._waiters)

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self.free += 1


_slots: dict[tuple[int, str], _Slots] = {}


def waiting_tasks(session_id: str) -> int:
    """How many of the session's tasks wait for a slot (in the running event loop)."""
    slots = _slots.get((id(asyncio.get_running_loop()), session_id))
    return slots.waiting if slots is not None else 0


@contextlib.asynccontextmanager
async def _slot(session_id: str, size: int, priority: Priority) -> AsyncIterator[None]:
    """Hold one of the session's task slots; the session's entry goes when it is idle."""
    key = (id(asyncio.get_running_loop()), session_id)
    slots = _slots.get(key)
    if slots is None:
        slots = _slots[key] = _Slots(size)
    await slots.acquire(priority)
    try:
        yield
    finally:
        slots.release()
        if slots.idle:
            _slots.pop(key, None)


async def kilocode_token_budget(
    session_id: str,
    task_id: str,
    required_tokens: int,
    *,
    priority: Priority = "normal",
    quota: TokenQuota | None = None,
    account: str | None = None,
) -> bool:
    """Hold `required_tokens` for the task; False (and nothing held) when they don't fit.

    The next `route_with_token_budget(..., task_id=task_id)` of this session uses the
    held tokens; `release_task_budget` gives them back if the task never runs.
    `account`: the session's budget tree node (default: the `session_scope`'s).
    """
    resolved = current_account(account)
    client = await get_quota(quota, source=SOURCE)
    try:
        reservation = await client.reserve(
            session_id, required_tokens, task_id, priority, source=SOURCE, account=resolved
        )
    except TokenQuotaExceededError:
        return False
    previous = _held.pop((session_id, task_id), None)
    _held[(session_id, task_id)] = reservation
    if previous is not None:
        await previous.release()
    return True


async def release_task_budget(session_id: str, task_id: str) -> bool:
    """Give back tokens `kilocode_token_budget` held for a task that will not run."""
    reservation = _held.pop((session_id, task_id), None)
    if reservation is None:
        return False
    await reservation.release()
    return True


def reported_usage(result: Any) -> tuple[int, int] | None:
    """(input, output) tokens a task's result reports, if it does.

    Understood: a `usage` attribute or key holding `input_tokens`/`output_tokens`
    (Anthropic, OpenAI Responses) or `prompt_tokens`/`completion_tokens` (OpenAI chat).
    """
    usage = result.get("usage") if isinstance(result, Mapping) else getattr(result, "usage", None)
    if usage is None:
        return None
    for names in (("input_tokens", "output_tokens"), ("prompt_tokens", "completion_tokens")):
        values = [
            usage.get(n) if isinstance(usage, Mapping) else getattr(usage, n, None) for n in names
        ]
        first, second = values
        if isinstance(first, int) and isinstance(second, int):
            return int(first), int(second)
    return None


async def route_with_token_budget(
    session_id: str,
    task_func: Callable[..., Awaitable[R]],
    *args: Any,
    task_id: str | None = None,
    estimated_tokens: int | None = None,
    priority: Priority = "normal",
    model: str | None = None,
    quota: TokenQuota | None = None,
    settings: Settings | None = None,
    account: str | None = None,
    **kwargs: Any,
) -> R:
    """Run `task_func(*args, **kwargs)` under a reservation and settle what it used.

    Raises TokenQuotaExceededError (before running anything) when the estimate does
    not fit. `task_id` defaults to the function's name; `account`, the session's budget
    tree node, to the `session_scope`'s.
    """
    resolved = current_account(account)
    client = await get_quota(quota, settings=settings, source=SOURCE)
    task = task_id or str(getattr(task_func, "__name__", "task"))
    return await _run_task(
        client,
        session_id,
        task,
        task_func,
        args,
        kwargs,
        estimated_tokens,
        priority,
        model,
        resolved,
    )


async def _run_task(
    client: TokenQuota,
    session_id: str,
    task: str,
    task_func: Callable[..., Awaitable[R]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    estimated_tokens: int | None,
    priority: Priority,
    model: str | None,
    account: str | None,
) -> R:
    counted_model = model or token_counter.default_model
    arguments = payload_text([list(args), kwargs]) if args or kwargs else ""
    input_count = await token_counter.count_tokens(arguments, counted_model)
    async with _slot(session_id, client.settings.orchestrator.max_concurrent_tasks, priority):
        reservation = _held.pop((session_id, task), None)
        if reservation is None:
            wanted = estimated_tokens if estimated_tokens is not None else max(int(input_count), 1)
            reservation = await client.reserve(
                session_id, wanted, task, priority, source=SOURCE, account=account
            )
        # Until the settlement is emitted, a failure (the task's, a cancellation, a result
        # that reports no usage and cannot be counted) releases the tokens rather than
        # holding them until the reservation's TTL.
        try:
            result = await task_func(*args, **kwargs)
            reported = reported_usage(result)
            by: CountedBy
            if reported is not None:
                (used_in, used_out), by = reported, "provider"
            else:
                output_count = await token_counter.count_tokens(payload_text(result), counted_model)
                used_in, used_out = int(input_count), int(output_count)
                by = "tiktoken" if input_count.exact and output_count.exact else "estimate"
            await reservation.settle(
                used_in, used_out, counted_model, operation=f"task:{task}"[:100], counted_by=by
            )
        except BaseException:
            await _release_unsettled(client, reservation)
            raise
        return result


async def _release_unsettled(quota: TokenQuota, reservation: Reservation) -> None:
    """Release `reservation` after its task or its settlement failed, even when cancelled.

    A failure to release is logged, not raised (the task's error is the one to see).
    """
    # A fresh handle: a settle that raised has already marked `reservation` closed.
    handle = Reservation(quota, reservation.event, reservation.status, reservation.delivery)
    try:
        await asyncio.shield(handle.release())  # runs to its end when the caller is cancelled
    except Exception as exc:
        log.error("could not release reservation %s: %s", reservation.reservation_id, exc)


class TaskOrchestrator(Protocol):
    """An orchestrator that registers tasks with a decorator: `@orchestrator.task(...)`.

    Budgeted tasks get their session from a `session_id` argument (keyword, or the
    first positional parameter named so), else from `session_scope`; their account
    from the `session_scope` they run in.
    """

    def task(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Return a decorator that registers an async task function."""
        ...


def _budgeted(
    fn: F, *, priority: Priority, quota: TokenQuota | None, settings: Settings | None
) -> F:
    names = list(inspect.signature(fn).parameters)
    first_is_session = bool(names) and names[0] == "session_id"

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        session = kwargs.get("session_id") or (args[0] if first_is_session and args else None)
        resolved = current_session(session, what=f"task {fn.__name__}")
        account = current_account()
        client = await get_quota(quota, settings=settings, source=SOURCE)
        return await _run_task(
            client, resolved, fn.__name__, fn, args, kwargs, None, priority, None, account
        )

    return run  # type: ignore[return-value]


async def setup_token_hooks(
    orchestrator: TaskOrchestrator,
    *,
    priority: Priority = "normal",
    quota: TokenQuota | None = None,
    settings: Settings | None = None,
) -> None:
    """Budget every task `orchestrator` registers from now on (its `task` decorator is wrapped)."""
    register = orchestrator.task
    if getattr(register, "__tokenquota_hooked__", False):
        return

    def task(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        decorator = register(*args, **kwargs)

        def wrap(fn: Any) -> Any:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"budgeted tasks must be async; {fn.__name__} is not")
            return decorator(_budgeted(fn, priority=priority, quota=quota, settings=settings))

        return wrap

    task.__tokenquota_hooked__ = True  # type: ignore[attr-defined]
    orchestrator.task = task  # type: ignore[method-assign]
