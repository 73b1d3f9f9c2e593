"""Event schemas of the tokenquota usage log: models, the envelope, encoding and JSON Schema."""

from .codec import EventDecodeError, FieldError, decode, encode
from .envelope import BIGINT_MAX, ID_MAX_LENGTH, Component, Source, new_event_id, utc_now
from .events import (
    DEFAULTS_SESSION,
    USAGE_TOKENS_MAX,
    ApiCost,
    BudgetSet,
    CountedBy,
    DefaultsSet,
    Event,
    EventType,
    Priority,
    TokenReserved,
    TokenUsed,
    check_limits,
    check_timezone,
)

__all__ = [
    "BIGINT_MAX",
    "DEFAULTS_SESSION",
    "ID_MAX_LENGTH",
    "USAGE_TOKENS_MAX",
    "ApiCost",
    "BudgetSet",
    "Component",
    "CountedBy",
    "DefaultsSet",
    "Event",
    "EventDecodeError",
    "EventType",
    "FieldError",
    "Priority",
    "Source",
    "TokenReserved",
    "TokenUsed",
    "check_limits",
    "check_timezone",
    "decode",
    "encode",
    "new_event_id",
    "utc_now",
]
