"""Event schemas of the tokenquota usage log: models, the envelope, encoding and JSON Schema."""

from .codec import EventDecodeError, FieldError, decode, encode
from .envelope import BIGINT_MAX, ID_MAX_LENGTH, Component, Source, new_event_id, utc_now
from .events import (
    ApiCost,
    BudgetSet,
    CountedBy,
    Event,
    EventType,
    Priority,
    TokenReserved,
    TokenUsed,
    check_limits,
)

__all__ = [
    "BIGINT_MAX",
    "ID_MAX_LENGTH",
    "ApiCost",
    "BudgetSet",
    "Component",
    "CountedBy",
    "Event",
    "EventDecodeError",
    "EventType",
    "FieldError",
    "Priority",
    "Source",
    "TokenReserved",
    "TokenUsed",
    "check_limits",
    "decode",
    "encode",
    "new_event_id",
    "utc_now",
]
