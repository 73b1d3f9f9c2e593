"""Bytes on the wire <-> events: compact JSON, one typed error for anything invalid."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from .envelope import ACCOUNT_PATTERN, ACCOUNT_RULE, NO_CONTROL_CHARACTERS
from .events import EVENT_CLASSES, Event

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = [
    "EVENT_ADAPTER",
    "WIRE_REQUIRED",
    "EventDecodeError",
    "FieldError",
    "decode",
    "duplicate_key_reason",
    "encode",
    "note_repeats",
    "pattern_reason",
    "repeated_keys",
]

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
    elif kind == "string_pattern_mismatch":
        reason = pattern_reason(detail)
    elif kind == "uuid_version":
        reason = f"must be a UUIDv7, got a version {_uuid_version(detail['input'])} UUID"
    return FieldError(path=path, reason=reason)


def pattern_reason(detail: ErrorDetails) -> str:
    """A pattern mismatch in words where the pattern is one of the schemas' own."""
    pattern = detail.get("ctx", {}).get("pattern")
    if pattern == NO_CONTROL_CHARACTERS:
        return "must not contain control characters"
    if pattern == ACCOUNT_PATTERN:
        return ACCOUNT_RULE
    return detail["msg"]


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
        # Made by a function, not held here: a local of this frame holding the error
        # would make it a reference cycle (error -> traceback -> this frame -> error),
        # which the worker, collecting rarely (gc_settings), would keep for long.
        raise _invalid(exc, data) from None
    given = event.__pydantic_fields_set__
    if not given.issuperset(WIRE_REQUIRED):
        raise EventDecodeError(
            tuple(
                FieldError(name, "Field required: the producer must set it on every event")
                for name in WIRE_REQUIRED
                if name not in given
            )
        )
    # A key given twice: pydantic keeps the last, other JSON parsers the first, so the
    # message means different things to different readers (an amount, a session). A valid
    # event is two objects (the event and its source): n members have n - 1 commas
    # between them, and any other comma is inside a string or a repeated member. So
    # no more commas than that proves there is no repeated key without a second parse.
    commas = data.count(",") if isinstance(data, str) else data.count(b",")
    if commas > len(given) + len(event.source.__pydantic_fields_set__) - 2:
        repeated = _repeated_keys(data)
        if repeated:
            raise EventDecodeError(tuple(repeated))
    return event


def _invalid(exc: ValidationError, data: bytes | bytearray | str) -> EventDecodeError:
    """The error for `data`, which pydantic refused with `exc`."""
    error = EventDecodeError.from_validation_error(exc)
    if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
        return error
    # The value kept of a repeated key may be what is invalid: say it was repeated.
    repeated = _repeated_keys(data)
    return EventDecodeError((*repeated, *error.errors)) if repeated else error


def repeated_keys(value: Any, prefix: str = "") -> list[tuple[str, int]]:
    """(dotted path, times) of each key an object of `value` was given more than once;
    `value` as parsed by `json.loads(..., object_pairs_hook=note_repeats)`."""
    found: list[tuple[str, int]] = []
    if isinstance(value, _RepeatedKeys):
        found += [(prefix + key, times) for key, times in value.repeats.items()]
    if isinstance(value, dict):
        for key, member in value.items():
            found += repeated_keys(member, f"{prefix}{key}.")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += repeated_keys(item, f"{prefix}{index}.")
    return found


class _RepeatedKeys(dict[str, Any]):
    """A JSON object that named some key more than once (the last one kept, as pydantic)."""

    repeats: dict[str, int]


def note_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An `object_pairs_hook` for json.loads: the object, marked when a key repeats."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = _RepeatedKeys(obj)
    counts = Counter(key for key, _ in pairs)
    marked.repeats = {key: times for key, times in counts.items() if times > 1}
    return marked


def _repeated_keys(data: bytes | bytearray | str) -> list[FieldError]:
    # Only numbers' text is kept (no int conversion: its 4,300 digit limit, its time).
    try:
        parsed = json.loads(data, object_pairs_hook=note_repeats, parse_int=str, parse_float=str)
    except (ValueError, RecursionError):  # pydantic-core parsed it: not expected
        return []
    return [FieldError(path, duplicate_key_reason(times)) for path, times in repeated_keys(parsed)]


def duplicate_key_reason(times: int) -> str:
    """Why a key given `times` times is refused."""
    return (
        f"duplicate key: given {times} times; each field may appear once "
        "(JSON parsers disagree on which one counts)"
    )
