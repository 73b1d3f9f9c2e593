"""Errors that cross package boundaries (the seed design's names are kept)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from .schemas import format_usd

__all__ = [
    "DevStackError",
    "IntegrationError",
    "QueryValueError",
    "ReservationExpiredError",
    "TokenBudgetExhaustedError",
    "TokenQuotaExceededError",
    "UnknownSessionError",
    "UsdBudgetExceededError",
]


class IntegrationError(Exception):
    """A server tokenquota depends on (Kafka, PostgreSQL) is unreachable or misbehaves."""


class ReservationExpiredError(IntegrationError):
    """A reservation expired before it was decided, or before its decision was read.

    Nothing is held for it. Carries `session_id`, `reservation_id` and `expires_at`;
    `decided` is False when the worker refused it because it had expired by the log's
    clock, True when it was decided in time but had expired by the time it was read.
    """

    def __init__(
        self, session_id: str, reservation_id: uuid.UUID, expires_at: datetime, *, decided: bool
    ) -> None:
        self.session_id = session_id
        self.reservation_id = reservation_id
        self.expires_at = expires_at
        self.decided = decided
        when = "before its decision was read" if decided else "before the worker decided it"
        super().__init__(
            f"reservation {reservation_id} of session {session_id!r} expired at "
            f"{expires_at.isoformat()} {when}, so it holds nothing: check that this host's "
            "clock agrees with the worker's and the other producers' (the log's clock is the "
            "events' occurred_at), that `tokenquota worker` keeps up with the topic (lag), "
            "and that the ttl (reservations.ttl) is longer than a decision takes"
        )


class DevStackError(RuntimeError):
    """An embedded server of `tokenquota dev` could not be started."""


class TokenQuotaExceededError(Exception):
    """A reservation does not fit the session's budget, or (`refused_by`) that of a node
    of its budget tree.

    Carries what was asked (`requested`), what was left (`available`), the limit that
    decided (`limit`, in tokens, and `window`: daily_limit, monthly_limit, hard_limit or
    critical_threshold), the session, and the account path of the node that refused
    (None: the session's own limit).
    """

    def __init__(
        self,
        session_id: str,
        requested: int,
        available: int,
        limit: int,
        window: str,
        refused_by: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.requested = requested
        self.available = available
        self.limit = limit
        self.window = window
        self.refused_by = refused_by
        who = f"account {refused_by!r}" if refused_by else f"session {session_id!r}"
        super().__init__(
            f"{who}: requested {requested} tokens, {available} available "
            f"under its {window.replace('_', ' ')} of {limit} tokens"
        )

    @classmethod
    def for_window(
        cls,
        session_id: str,
        requested: int,
        available: int,
        limit: int,
        window: str,
        refused_by: str | None = None,
    ) -> TokenQuotaExceededError:
        """The error for a refusal: TokenBudgetExhaustedError when the hard limit is reached."""
        exhausted = window == "hard_limit" and available <= 0
        error_class = TokenBudgetExhaustedError if exhausted else TokenQuotaExceededError
        return error_class(session_id, requested, max(available, 0), limit, window, refused_by)


class TokenBudgetExhaustedError(TokenQuotaExceededError):
    """The session has reached its hard limit: nothing more will fit until it is raised."""


class UsdBudgetExceededError(TokenQuotaExceededError):
    """A priced reservation does not fit a USD limit of the session or (`refused_by`) of a
    node of its budget tree.

    `window` is daily_usd_limit, monthly_usd_limit or total_usd_limit; `limit_usd` that
    window's limit (for low priority, the part up to the critical threshold), `used_usd`
    what the level spent in it, `held_usd` what reservations hold there, and
    `requested_usd` the reservation's price. `requested` is in tokens, as for any refusal.
    """

    def __init__(
        self,
        session_id: str,
        requested: int,
        window: str,
        limit_usd: Decimal,
        used_usd: Decimal,
        held_usd: Decimal,
        requested_usd: Decimal,
        refused_by: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.requested = requested
        self.available = 0
        self.limit = 0
        self.window = window
        self.refused_by = refused_by
        self.limit_usd = limit_usd
        self.used_usd = used_usd
        self.held_usd = held_usd
        self.requested_usd = requested_usd
        who = refused_by if refused_by else f"session {session_id!r}"
        Exception.__init__(
            self,
            f"{who}: {window.split('_')[0]} USD {format_usd(limit_usd)}, "
            f"used {format_usd(used_usd)}, held {format_usd(held_usd)}, "
            f"requested {format_usd(requested_usd)}",
        )


class QueryValueError(ValueError):
    """A value given to a read (a date, an id, an offset) that the calendar or PostgreSQL
    cannot take: a date whose window reaches past year 9999, a NUL in a text, a number
    past a BIGINT. The API answers it 422, the CLI with exit code 2."""


class UnknownSessionError(LookupError):
    """No event has named this session (a typo, or its events are not applied yet)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"unknown session {session_id!r}: no applied event has named it")
