"""Bytes on the wire <-> events: compact JSON, one typed error for anything invalid."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from .envelope import NO_CONTROL_CHARACTERS
from .events import EVENT_CLASSES, Event

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = ["EVENT_ADAPTER", "WIRE_REQUIRED", "EventDecodeError", "FieldError", "decode", "encode"]

#: Built once at import: validating through it is the hot path of every consumer.
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
_TAGS = frozenset(cls.__name__ for cls in EVENT_CLASSES)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason an event was rejected: where (dotted path) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class EventDecodeError(ValueError):
    """Bytes that are not a valid event. Carries every field error; no partial event exists."""

    def __init__(self, errors: tuple[FieldError, ...]) -> None:
        self.errors = errors
        details = "; ".join(str(e) for e in errors)
        super().__init__(f"invalid event: {details}")

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> EventDecodeError:
        """Translate pydantic's error into field paths a producer author can act on."""
        return cls(tuple(_field_error(detail) for detail in exc.errors(include_url=False)))


def _field_error(detail: ErrorDetails) -> FieldError:
    # Discriminated unions put the tag (e.g. "TokenUsed") into the location; drop it.
    loc = [str(part) for part in detail["loc"]]
    if loc and loc[0] in _TAGS:
        loc = loc[1:]
    path = ".".join(loc) or "<event>"
    reason = detail["msg"]
    kind = detail["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        path = "event_type"
    elif kind == "string_pattern_mismatch" and detail.get("ctx", {}).get("pattern") == (
        NO_CONTROL_CHARACTERS
    ):
        reason = "must not contain control characters"
    elif kind == "uuid_version":
        reason = f"must be a UUIDv7, got a version {_uuid_version(detail['input'])} UUID"
    return FieldError(path=path, reason=reason)


def _uuid_version(value: object) -> str:
    try:
        return str(uuid.UUID(str(value)).version)
    except ValueError:
        return "unknown"


def encode(event: Event) -> bytes:
    """Compact, stable JSON: field order is the model's, money is a decimal string."""
    return event.__pydantic_serializer__.to_json(event)


#: Fields a producer gives a default to, but which a message on the wire must carry:
#: a default filled in at decode time would differ on every redelivery and replay.
WIRE_REQUIRED = ("event_id", "occurred_at")


def decode(data: bytes | bytearray | str) -> Event:
    """Parse and validate one event; raise EventDecodeError on anything invalid."""
    try:
        event = EVENT_ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise EventDecodeError.from_validation_error(exc) from None
    given = event.__pydantic_fields_set__
    if not given.issuperset(WIRE_REQUIRED):
        raise EventDecodeError(
            tuple(
                FieldError(name, "Field required: the producer must set it on every event")
                for name in WIRE_REQUIRED
                if name not in given
            )
        )
    return event
