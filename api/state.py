"""What the API's handlers share: settings, the client, the dashboard, the rate limiter."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import Depends, HTTPException, Request

from tokenquota.config import Settings
from tokenquota.dashboard import AsyncTokenDashboard
from tokenquota.producers import Reservation, TokenQuota

from .auth import Caller, RateLimiter, authenticate

__all__ = ["ApiState", "admin", "authorize", "reader", "state_of"]

#: Reservations granted over HTTP that this process keeps handles of (settle or release).
_KEPT_RESERVATIONS = 100_000


@dataclass
class ApiState:
    """The API process's clients and limits."""

    settings: Settings
    quota: TokenQuota
    dashboard: AsyncTokenDashboard
    limiter: RateLimiter
    reservations: OrderedDict[uuid.UUID, Reservation] = field(default_factory=OrderedDict)
    #: Reservations this process settled or released (the worker may not have applied
    #: that yet): a second settle or release of them is refused.
    closed: OrderedDict[uuid.UUID, str] = field(default_factory=OrderedDict)

    def keep(self, reservation: Reservation) -> None:
        """Remember a granted reservation (the oldest are forgotten past a bound; they can
        still be settled by id, see reservations.py)."""
        self.reservations[reservation.reservation_id] = reservation
        while len(self.reservations) > _KEPT_RESERVATIONS:
            self.reservations.popitem(last=False)

    def close(self, reservation_id: uuid.UUID, how: str) -> None:
        """Remember that this process settled or released the reservation."""
        self.closed[reservation_id] = how
        while len(self.closed) > _KEPT_RESERVATIONS:
            self.closed.popitem(last=False)


def state_of(request: Request) -> ApiState:
    """The ApiState of the running app."""
    state: ApiState = request.app.state.api
    return state


def authorize(request: Request, needed: str) -> Caller:
    """The caller of `request` with at least the `needed` role, within its rate limit;
    HTTPException 401, 403 or 429 otherwise."""
    state = state_of(request)
    caller = authenticate(state.settings.api, request, needed)
    wait = state.limiter.take(caller.key)
    if wait:
        raise HTTPException(
            429,
            f"rate limit of {state.settings.api.rate_limit:g} requests/s "
            f"(burst {state.settings.api.rate_burst}) exceeded; retry in {wait:.2f} s",
            headers={"Retry-After": RateLimiter.retry_after(wait)},
        )
    return caller


def _caller(needed: str) -> Callable[[Request], Awaitable[Caller]]:
    async def dependency(request: Request) -> Caller:
        return authorize(request, needed)

    return dependency


#: A caller with at least the read role (rate limited).
reader = Depends(_caller("read"))
#: A caller with the admin role (rate limited).
admin = Depends(_caller("admin"))
