"""Errors that cross package boundaries (the seed design's names are kept)."""

from __future__ import annotations

__all__ = [
    "DevStackError",
    "IntegrationError",
    "TokenBudgetExhaustedError",
    "TokenQuotaExceededError",
]


class IntegrationError(Exception):
    """A server tokenquota depends on (Kafka, PostgreSQL) is unreachable or misbehaves."""


class DevStackError(RuntimeError):
    """An embedded server of `tokenquota dev` could not be started."""


class TokenQuotaExceededError(Exception):
    """A reservation does not fit the session's budget.

    Carries what was asked (`requested`), what was left (`available`), the limit that
    decided (`limit`, in tokens, and `window`: daily_limit, monthly_limit, hard_limit or
    critical_threshold) and the session.
    """

    def __init__(
        self, session_id: str, requested: int, available: int, limit: int, window: str
    ) -> None:
        self.session_id = session_id
        self.requested = requested
        self.available = available
        self.limit = limit
        self.window = window
        super().__init__(
            f"session {session_id!r}: requested {requested} tokens, {available} available "
            f"under its {window.replace('_', ' ')} of {limit} tokens"
        )

    @classmethod
    def for_window(
        cls, session_id: str, requested: int, available: int, limit: int, window: str
    ) -> TokenQuotaExceededError:
        """The error for a refusal: TokenBudgetExhaustedError when the hard limit is reached."""
        exhausted = window == "hard_limit" and available <= 0
        error_class = TokenBudgetExhaustedError if exhausted else TokenQuotaExceededError
        return error_class(session_id, requested, max(available, 0), limit, window)


class TokenBudgetExhaustedError(TokenQuotaExceededError):
    """The session has reached its hard limit: nothing more will fit until it is raised."""
