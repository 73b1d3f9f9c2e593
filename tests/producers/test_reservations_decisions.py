"""How a decision maps to what `reserve` returns or raises (pure: no servers)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.support import T0, reserved
from tokenquota.errors import (
    IntegrationError,
    ReservationExpiredError,
    TokenBudgetExhaustedError,
    TokenQuotaExceededError,
)
from tokenquota.producers.decisions import decision_error
from tokenquota.projections import ReservationRecord
from tokenquota.schemas import TokenReserved

EVENT = reserved("alice", 300, T0, ttl=timedelta(seconds=30))
BEFORE_EXPIRY = T0 + timedelta(seconds=1)
AFTER_EXPIRY = T0 + timedelta(seconds=31)


def record(
    event: TokenReserved, status: str, reason: str | None, available: int
) -> ReservationRecord:
    return ReservationRecord(
        reservation_id=event.reservation_id,
        event_id=event.event_id,
        session_id=event.session_id,
        task_id=None,
        tokens=event.tokens,
        priority=event.priority,
        status=status,  # type: ignore[arg-type]  # statuses the table may hold one day, too
        reason=reason,
        available_tokens=available,
        limit_tokens=1000,
        requested_at=event.occurred_at,
        decided_at=event.occurred_at,
        expires_at=event.expires_at,
    )


def test_an_acceptance_read_in_time_is_a_grant() -> None:
    assert decision_error(EVENT, "accepted", None, BEFORE_EXPIRY) is None


def test_an_acceptance_read_after_the_expiry_holds_nothing() -> None:
    error = decision_error(EVENT, "accepted", None, AFTER_EXPIRY)
    assert isinstance(error, ReservationExpiredError)
    assert (error.reservation_id, error.expires_at, error.decided) == (
        EVENT.reservation_id,
        EVENT.expires_at,
        True,
    )
    assert decision_error(EVENT, "accepted", None, EVENT.expires_at) is not None  # held while >


def test_a_refusal_because_it_had_expired_is_not_a_budget_error() -> None:
    error = decision_error(EVENT, "rejected", record(EVENT, "rejected", "expired", 0), T0)
    assert type(error) is ReservationExpiredError
    assert isinstance(error, IntegrationError) and not isinstance(error, TokenQuotaExceededError)
    assert error.decided is False and error.session_id == "alice"
    text = str(error)
    assert str(EVENT.reservation_id) in text and "before the worker decided it" in text
    for what_to_check in ("clock", "`tokenquota worker` keeps up", "reservations.ttl"):
        assert what_to_check in text


def test_a_polled_expired_status_is_an_expiry() -> None:
    error = decision_error(EVENT, "expired", record(EVENT, "expired", None, 700), BEFORE_EXPIRY)
    assert type(error) is ReservationExpiredError
    assert error.decided is True and "before its decision was read" in str(error)


@pytest.mark.parametrize("window", ["daily_limit", "monthly_limit", "critical_threshold"])
def test_a_refusal_by_a_window_is_a_quota_error_for_that_window(window: str) -> None:
    error = decision_error(EVENT, "rejected", record(EVENT, "rejected", window, 120), T0)
    assert type(error) is TokenQuotaExceededError
    assert (error.window, error.requested, error.available, error.limit) == (window, 300, 120, 1000)


def test_a_refusal_at_the_exhausted_hard_limit_is_budget_exhausted() -> None:
    error = decision_error(EVENT, "rejected", record(EVENT, "rejected", "hard_limit", 0), T0)
    assert type(error) is TokenBudgetExhaustedError
    assert error.window == "hard_limit"


@pytest.mark.parametrize(
    ("status", "reason"),
    [("pending", None), ("settled", None), ("released", None), ("rejected", "some_new_reason")],
)
def test_any_other_status_is_an_integration_error_naming_it(
    status: str, reason: str | None
) -> None:
    error = decision_error(EVENT, status, record(EVENT, status, reason, 0), T0)
    assert type(error) is IntegrationError
    assert f"came back {status!r}" in str(error)
    if reason:
        assert reason in str(error)


def test_a_rejection_without_its_record_is_an_integration_error() -> None:
    error = decision_error(EVENT, "rejected", None, T0)
    assert type(error) is IntegrationError
