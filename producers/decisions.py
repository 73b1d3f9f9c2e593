"""What `reserve()` makes of the worker's decision on a reservation: a grant or the error."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from tokenquota.errors import (
    IntegrationError,
    ReservationExpiredError,
    TokenQuotaExceededError,
    UsdBudgetExceededError,
)
from tokenquota.projections import ReservationRecord
from tokenquota.schemas import TokenReserved

__all__ = ["decision_error"]

#: The reasons a refusal names a budget window for (TokenQuotaExceededError).
_WINDOWS = frozenset({"daily_limit", "monthly_limit", "hard_limit", "critical_threshold"})
#: ... and for a USD window (UsdBudgetExceededError).
_USD_WINDOWS = frozenset({"daily_usd_limit", "monthly_usd_limit", "total_usd_limit"})


def decision_error(
    event: TokenReserved, status: str, record: ReservationRecord | None, now: datetime
) -> Exception | None:
    """The error `reserve` raises for the decision `status` on `event`; None for a grant.

    `record` is the reservation as the table holds it (what a refusal is explained
    with), `now` when the decision was read:

    - `accepted` is a grant, unless the reservation has expired by `now` (it holds
      nothing then): ReservationExpiredError;
    - `rejected` for a budget window (daily_limit, monthly_limit, hard_limit,
      critical_threshold): TokenQuotaExceededError.for_window;
    - `rejected` for a USD window (daily_usd_limit, monthly_usd_limit,
      total_usd_limit): UsdBudgetExceededError;
    - `rejected` for `expired` (it had expired by the log's clock when the worker came
      to it), or a polled `expired`: ReservationExpiredError;
    - anything else: IntegrationError naming the status.
    """
    rid = event.reservation_id
    if status == "accepted":
        if event.expires_at > now:
            return None
        return ReservationExpiredError(event.session_id, rid, event.expires_at, decided=True)
    reason = record.reason if record is not None else None
    if status == "expired":
        return ReservationExpiredError(event.session_id, rid, event.expires_at, decided=True)
    if status == "rejected" and reason == "expired":
        return ReservationExpiredError(event.session_id, rid, event.expires_at, decided=False)
    if status == "rejected" and record is not None and reason in _WINDOWS:
        return TokenQuotaExceededError.for_window(
            record.session_id,
            record.tokens,
            record.available_tokens,
            record.limit_tokens,
            reason,
            record.refused_by,
        )
    if status == "rejected" and record is not None and reason in _USD_WINDOWS:
        zero = Decimal(0)
        return UsdBudgetExceededError(
            record.session_id,
            record.tokens,
            reason,
            record.limit_usd or zero,
            record.used_usd or zero,
            record.held_usd or zero,
            record.reserved_usd or zero,
            record.refused_by,
        )
    because = f" (reason {reason!r})" if reason else ""
    return IntegrationError(
        f"reservation {rid} of session {event.session_id!r} came back {status!r}{because}, "
        "which reserve() does not know: are the worker and this client the same version?"
    )
