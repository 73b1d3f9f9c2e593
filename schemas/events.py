"""The four event types of the usage log, and the union that decodes any of them."""

from __future__ import annotations

import uuid
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .envelope import (
    BIGINT_MAX,
    NO_CONTROL_CHARACTERS,
    EventBase,
    Identifier,
    TokenCount,
    UtcDatetime,
)

__all__ = [
    "DEFAULTS_SESSION",
    "EVENT_CLASSES",
    "USAGE_TOKENS_MAX",
    "Actor",
    "ApiCost",
    "BudgetSet",
    "CountedBy",
    "DefaultsSet",
    "Event",
    "EventType",
    "Money",
    "Priority",
    "Threshold",
    "TokenReserved",
    "TokenUsed",
    "check_limits",
    "check_timezone",
    "check_usd_limits",
    "format_usd",
]

Priority = Literal["low", "normal", "high", "critical"]
CountedBy = Literal["provider", "tiktoken", "estimate"]
EventType = Literal["BudgetSet", "TokenReserved", "TokenUsed", "ApiCost", "DefaultsSet"]

#: A utilisation ratio in (0, 1], kept as Decimal so threshold checks replay exactly. Not
#: strict: a Python caller's 0.8 or "0.8" is taken as Decimal("0.8"); JSON on the wire is
#: read exactly as in strict mode (a decimal string or number, never a boolean).
Threshold = Annotated[Decimal, Field(gt=0, le=1, max_digits=5, decimal_places=4, strict=False)]
#: Who made an administrative change: an API token's name, or the OS user of the CLI.
Actor = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)]
#: Free text stored in the projections: bounded and without control characters (a NUL
#: passes JSON but PostgreSQL refuses it in TEXT and JSONB, which would stall a partition).
_Label = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)]
_Name = Annotated[str, Field(min_length=1, max_length=100, pattern=NO_CONTROL_CHARACTERS)]
#: Tokens one usage event may report per field: half a BIGINT, so that input plus output
#: of one event always fits the BIGINT columns they are summed into.
USAGE_TOKENS_MAX = BIGINT_MAX // 2
_UsageTokens = Annotated[int, Field(ge=0, le=USAGE_TOKENS_MAX)]
#: The session id a DefaultsSet carries: it applies to its whole partition, not a session.
DEFAULTS_SESSION = "*"


def _parse_money(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError('must be a decimal string such as "0.0125", not a boolean')
    if isinstance(value, float):
        raise ValueError(
            'must be a decimal string such as "0.0125", not a JSON number: '
            "binary floats cannot hold money exactly"
        )
    if isinstance(value, str | int):
        try:
            value = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError("must be a finite amount")
    return value


#: US dollars, exact, non-negative; encoded as a JSON string.
Money = Annotated[
    Decimal,
    BeforeValidator(_parse_money),
    Field(ge=0, max_digits=20, decimal_places=10),
]


def check_limits(
    daily_limit: int,
    monthly_limit: int,
    hard_limit: int,
    warning_threshold: Decimal,
    critical_threshold: Decimal,
) -> None:
    """Raise ValueError unless daily <= monthly <= hard and warning < critical."""
    if not daily_limit <= monthly_limit <= hard_limit:
        raise ValueError(
            "limits must satisfy daily_limit <= monthly_limit <= hard_limit, got "
            f"{daily_limit} / {monthly_limit} / {hard_limit}"
        )
    if not warning_threshold < critical_threshold:
        raise ValueError(
            "warning_threshold must be below critical_threshold, got "
            f"{warning_threshold} and {critical_threshold}"
        )


def check_usd_limits(daily: Decimal | None, monthly: Decimal | None, total: Decimal | None) -> None:
    """Raise ValueError unless the USD limits that are set satisfy daily <= monthly <= total."""
    named = [
        (n, v)
        for n, v in (("daily", daily), ("monthly", monthly), ("total", total))
        if v is not None
    ]
    for (wider_name, wider), (name, value) in zip(named[1:], named, strict=False):
        if value > wider:
            raise ValueError(
                f"USD limits must satisfy daily <= monthly <= total, got {name} {value} "
                f"above {wider_name} {wider}"
            )


def format_usd(amount: Decimal) -> str:
    """Dollars to the cent (below a cent, to a millionth, so it never reads as 0.00), for
    messages only: the stored amounts stay exact. As the integration_logs view words it."""
    places = Decimal("0.000001") if 0 < abs(amount) < Decimal("0.01") else Decimal("0.01")
    return str(amount.quantize(places, rounding=ROUND_HALF_UP))  # as SQL round()


def check_timezone(value: str) -> str:
    """`value` if it names an IANA time zone; ValueError otherwise."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # (OSError: a name too long for a file)
        raise ValueError(f"unknown IANA time zone {value!r} (try 'UTC')") from None
    return value


class BudgetSet(EventBase):
    """Limits for a session, or (`target="account"`) for the budget tree node `account`,
    in force from this event on in the log."""

    event_type: Literal["BudgetSet"] = "BudgetSet"
    daily_limit: TokenCount
    monthly_limit: TokenCount
    hard_limit: TokenCount
    warning_threshold: Threshold
    critical_threshold: Threshold
    actor: Actor | None = Field(
        default=None,
        description="Who set it (an API token's name, the OS user of the CLI): the audit trail",
    )
    target: Literal["session", "account"] = Field(
        default="session",
        exclude_if=lambda value: value == "session",
        description=(
            "What the limits apply to: the session, or the node named by `account` (whose "
            f'session_id is then "{DEFAULTS_SESSION}")'
        ),
    )
    daily_usd_limit: Money | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="US dollars of ApiCost per day (None: no USD limit for the window)",
    )
    monthly_usd_limit: Money | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="US dollars of ApiCost per calendar month (None: no limit)",
    )
    total_usd_limit: Money | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="US dollars of ApiCost in all (None: no limit)",
    )

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Self:
        check_limits(
            self.daily_limit,
            self.monthly_limit,
            self.hard_limit,
            self.warning_threshold,
            self.critical_threshold,
        )
        check_usd_limits(self.daily_usd_limit, self.monthly_usd_limit, self.total_usd_limit)
        if self.target == "account" and (
            self.account is None or self.session_id != DEFAULTS_SESSION
        ):
            raise ValueError(
                "a BudgetSet for an account names it in `account`, with session_id "
                f'"{DEFAULTS_SESSION}"'
            )
        return self


class TokenReserved(EventBase):
    """A request to hold tokens; the processor accepts or rejects it in log order."""

    event_type: Literal["TokenReserved"] = "TokenReserved"
    reservation_id: uuid.UUID
    tokens: Annotated[int, Field(gt=0, le=BIGINT_MAX)]
    priority: Priority = "normal"
    expires_at: UtcDatetime
    reserved_usd: Money | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description=(
            "The producer's price of the reservation (prompt tokens at the input price plus "
            "the reserved output at the output price); held against USD limits until its "
            "ApiCost. None: unpriced, it holds no USD"
        ),
    )
    price_source: _Label | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Where reserved_usd came from, e.g. 'genai-prices 0.2.5:openai/gpt-4o'",
    )

    @model_validator(mode="after")
    def _expires_after_it_occurs(self) -> Self:
        if self.expires_at <= self.occurred_at:
            raise ValueError(
                f"expires_at ({self.expires_at.isoformat()}) must be after "
                f"occurred_at ({self.occurred_at.isoformat()})"
            )
        if (self.reserved_usd is None) != (self.price_source is None):
            raise ValueError("reserved_usd and price_source go together: give both or neither")
        return self


class TokenUsed(EventBase):
    """Tokens actually consumed; with a reservation_id it settles that reservation."""

    event_type: Literal["TokenUsed"] = "TokenUsed"
    reservation_id: uuid.UUID | None = None
    model: _Label
    input_tokens: _UsageTokens
    output_tokens: _UsageTokens
    operation: _Name
    counted_by: CountedBy

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class ApiCost(EventBase):
    """What one external API call cost, with the provider's rate-limit state."""

    event_type: Literal["ApiCost"] = "ApiCost"
    api: _Name
    model: _Label
    input_tokens: _UsageTokens
    output_tokens: _UsageTokens
    cache_read_tokens: _UsageTokens = 0
    cache_write_tokens: _UsageTokens = 0
    cost_usd: Money
    price_source: _Label
    request_id: Identifier | None = None
    rate_limit_remaining: TokenCount | None = None
    rate_limit_reset: UtcDatetime | None = None
    reservation_id: uuid.UUID | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="The reservation this call was made under: its USD hold closes here",
    )


class DefaultsSet(EventBase):
    """What decides in one partition from this event on: the limits of sessions without a
    BudgetSet, the time zone of the daily and monthly windows, and how far an event's
    occurred_at may run ahead of the log clock.

    `tokenquota init` writes one to every partition (and again when the configuration
    changes), so that the decisions depend on the log, never on the configuration a
    worker or a replay happens to run with.
    """

    event_type: Literal["DefaultsSet"] = "DefaultsSet"
    session_id: Literal["*"] = Field(
        default="*", description="Always '*': a DefaultsSet applies to its whole partition."
    )
    account: None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Never set: a DefaultsSet applies to its whole partition.",
    )
    daily_limit: TokenCount
    monthly_limit: TokenCount
    hard_limit: TokenCount
    warning_threshold: Threshold
    critical_threshold: Threshold
    timezone: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        description="IANA zone whose midnights start the daily and monthly windows"
    )
    max_clock_skew_ms: Annotated[int, Field(ge=0, le=365 * 86_400_000)] = Field(
        description="How far occurred_at may run ahead of the log clock, in milliseconds"
    )
    actor: Actor | None = Field(
        default=None, description="Who wrote it (the OS user of `tokenquota init`)"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Self:
        check_limits(
            self.daily_limit,
            self.monthly_limit,
            self.hard_limit,
            self.warning_threshold,
            self.critical_threshold,
        )
        return self


#: Every event class, in the order of the union below.
EVENT_CLASSES: tuple[type[EventBase], ...] = (
    BudgetSet,
    TokenReserved,
    TokenUsed,
    ApiCost,
    DefaultsSet,
)

#: Any event of the usage log, told apart by `event_type`.
Event = Annotated[
    BudgetSet | TokenReserved | TokenUsed | ApiCost | DefaultsSet,
    Field(discriminator="event_type"),
]
