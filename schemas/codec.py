"""Bytes on the wire <-> events: compact JSON, one typed error for anything invalid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

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
    if detail["type"] in ("union_tag_invalid", "union_tag_not_found"):
        path = "event_type"
    return FieldError(path=path, reason=reason)


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
    if len(event.model_fields_set) < len(type(event).model_fields):
        missing = [name for name in WIRE_REQUIRED if name not in event.model_fields_set]
        if missing:
            raise EventDecodeError(
                tuple(
                    FieldError(name, "Field required: the producer must set it on every event")
                    for name in missing
                )
            )
    return event
