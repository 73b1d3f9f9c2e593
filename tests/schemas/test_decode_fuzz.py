"""decode() under hostile bytes: it returns an Event or raises EventDecodeError naming the
problem, quickly, whatever the input (structured mutations of real events and raw bytes)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.schemas.test_events import events
from tokenquota.schemas import (
    ApiCost,
    BudgetSet,
    Event,
    EventDecodeError,
    Source,
    codec,
    decode,
    encode,
)

#: Seconds one decode may take even on a loaded CI machine (they take microseconds).
_QUICK = 1.0

#: JSON texts no field of any event accepts (or, for a few, accepts only as it should).
_NASTY_VALUES = (
    "1" + "0" * 400,  # 10**400
    "-1" + "0" * 400,
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    '"NaN"',
    '"Infinity"',
    '"-Infinity"',
    '"sNaN"',
    "[" * 10_000 + "]" * 10_000,
    '{"a":' * 10_000 + "1" + "}" * 10_000,
    '"' + "x" * 100_000 + '"',
    '"\\ud800"',  # a lone surrogate
    '"\\u0000"',
    "true",
    "{}",
    "[]",
    "1.5",
    '"2026-02-30T25:61:00Z"',
)


def _decoded(data: bytes | str) -> Event | EventDecodeError:
    """What decode() makes of `data`: an Event or its error, and never anything else."""
    started = time.perf_counter()
    result: Event | EventDecodeError
    try:
        result = decode(data)
    except EventDecodeError as exc:
        result = exc
    assert time.perf_counter() - started < _QUICK
    if isinstance(result, EventDecodeError):
        assert result.errors, "an error without field errors"
        assert all(e.path and e.reason for e in result.errors)
        assert str(result).startswith("invalid event: ")
    return result


def _paths(error: EventDecodeError) -> list[str]:
    return [e.path for e in error.errors]


# --- raw bytes ----------------------------------------------------------------------------


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2_000) | st.text(max_size=500))
def test_arbitrary_bytes_and_text_are_an_event_or_one_typed_error(data: bytes | str) -> None:
    _decoded(data)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.data())
def test_a_truncated_event_is_refused_as_invalid_json(event: Event, data: st.DataObject) -> None:
    wire = encode(event)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    result = _decoded(wire[:cut])
    assert isinstance(result, EventDecodeError)
    assert _paths(result) == ["<event>"]


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.data())
def test_bytes_spliced_into_an_event_never_escape_as_another_exception(
    event: Event, data: st.DataObject
) -> None:
    wire = encode(event)
    at = data.draw(st.integers(min_value=0, max_value=len(wire)))
    junk = data.draw(
        st.binary(min_size=1, max_size=8)
        | st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\", b'"', b","])
    )
    _decoded(wire[:at] + junk + wire[at:])


# --- one field replaced by something nasty ----------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.data())
def test_a_nasty_value_in_any_field_is_refused_naming_that_field(
    event: Event, data: st.DataObject
) -> None:
    body = json.loads(encode(event))
    field = data.draw(st.sampled_from(sorted(body)))
    nasty = data.draw(st.sampled_from(_NASTY_VALUES))
    result = _decoded(_with(body, field, nasty))
    if isinstance(result, EventDecodeError):
        paths = _paths(result)
        # A JSON-level problem (nesting, a number too large to parse) is the whole event's.
        assert paths == ["<event>"] or any(
            p == field or p.startswith(field + ".") for p in paths
        ), (field, nasty[:40], result)
    else:  # only free text takes a string such as "NaN", and takes it as text
        assert getattr(result, field) == json.loads(nasty), (field, nasty[:40])


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", '"NaN"', '"-Infinity"'])
@pytest.mark.parametrize(
    "field", ["cost_usd", "input_tokens", "output_tokens", "cache_read_tokens"]
)
def test_nan_and_infinity_are_refused_in_money_and_tokens(literal: str, field: str) -> None:
    result = _decoded(_with(json.loads(_cost_wire()), field, literal))
    assert isinstance(result, EventDecodeError) and _paths(result) == [field], result


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", '"NaN"', "1e400"])
def test_nan_and_infinity_are_refused_as_thresholds(literal: str) -> None:
    result = _decoded(_with(json.loads(encode(_budget())), "warning_threshold", literal))
    assert isinstance(result, EventDecodeError)
    assert _paths(result) == ["warning_threshold"] and "finite" in str(result)


def test_a_number_too_large_to_parse_is_refused_with_its_position() -> None:
    wire = _cost_wire().replace('"input_tokens":1', '"input_tokens":' + "9" * 5_000)
    result = _decoded(wire)
    assert isinstance(result, EventDecodeError) and _paths(result) == ["<event>"]
    assert "number out of range" in str(result) and "column" in str(result)
    huge = _decoded(_cost_wire().replace('"input_tokens":1', '"input_tokens":1' + "0" * 400))
    assert isinstance(huge, EventDecodeError) and _paths(huge) == ["input_tokens"]


def test_deep_nesting_and_overlong_strings_are_refused_quickly() -> None:
    deep = _decoded(_cost_wire()[:-1] + ',"x":' + "[" * 100_000 + "]" * 100_000 + "}")
    assert isinstance(deep, EventDecodeError) and "recursion limit" in str(deep)
    long = _decoded(_cost_wire().replace('"model":"m"', '"model":"' + "x" * 10_000_000 + '"'))
    assert isinstance(long, EventDecodeError) and _paths(long) == ["model"]
    assert "at most 200 characters" in str(long)


def test_invalid_utf8_is_refused_as_invalid_json() -> None:
    result = _decoded(_cost_wire().encode().replace(b'"m"', b'"\xff\xfe"'))
    assert isinstance(result, EventDecodeError) and _paths(result) == ["<event>"]
    assert "unicode" in str(result)


# --- duplicate keys -------------------------------------------------------------------------


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.data())
def test_a_key_given_twice_is_refused_naming_it(event: Event, data: st.DataObject) -> None:
    """JSON parsers disagree on which of two equal keys counts (pydantic keeps the last,
    others the first): an amount given twice means different things to different readers."""
    body = json.loads(encode(event))
    source = data.draw(st.booleans())
    keys = sorted(body["source"]) if source else sorted(body)
    key = data.draw(st.sampled_from(keys))
    target = body["source"] if source else body
    again = data.draw(st.sampled_from(["same", "other"]))
    value = target[key] if again == "same" else data.draw(st.sampled_from([0, 1, "x", None]))
    spaced = data.draw(st.booleans())  # pretty-printed JSON: whitespace around the colons
    colon, comma = (" :\n ", " , ") if spaced else (":", ",")
    members = [f"{json.dumps(k)}{colon}{json.dumps(v)}" for k, v in target.items()]
    at = data.draw(st.integers(0, len(members)))
    members.insert(at, f"{json.dumps(key)}{colon}{json.dumps(value)}")
    if source:
        inner = "{" + comma.join(members) + "}"
        members = [
            f"{json.dumps(k)}{colon}{inner if k == 'source' else json.dumps(v)}"
            for k, v in body.items()
        ]
    wire = "{" + comma.join(members) + "}"
    result = _decoded(wire)
    assert isinstance(result, EventDecodeError), (key, wire)
    path = f"source.{key}" if source else key
    assert any(e.path == path and "duplicate key" in e.reason for e in result.errors), result


def test_an_amount_given_twice_is_refused_not_read_as_the_last() -> None:
    wire = _cost_wire().replace('"cost_usd":"0.5"', '"cost_usd":"0.5","cost_usd":"99"')
    result = _decoded(wire)
    assert isinstance(result, EventDecodeError)
    assert [(e.path, e.reason) for e in result.errors] == [
        (
            "cost_usd",
            "duplicate key: given 2 times; each field may appear once (JSON parsers "
            "disagree on which one counts)",
        )
    ]
    tokens = _decoded(_cost_wire().replace('"input_tokens":1', '"input_tokens":1,"input_tokens":1'))
    assert isinstance(tokens, EventDecodeError) and _paths(tokens) == ["input_tokens"]
    nested = _decoded(_cost_wire().replace('"name":"x"', '"name":"x","name":"y"'))
    assert isinstance(nested, EventDecodeError) and _paths(nested) == ["source.name"]


@pytest.mark.parametrize("text", ["a,b", ",", "gpt-4o, 2026-08,,", "a\\u002cb"])
def test_commas_inside_strings_are_no_duplicates(text: str) -> None:
    """The duplicate check counts commas first (no second parse for ordinary events)."""
    wire = _cost_wire().replace('"model":"m"', f'"model":"{text}"')
    event = decode(wire)
    assert isinstance(event, ApiCost) and "," in event.model
    spaced = json.dumps(json.loads(wire), indent=2)
    assert decode(spaced) == event


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_an_encoded_event_needs_no_second_parse(event: Event) -> None:
    """The hot path: an event as `encode` wrote it is checked for duplicates by a count."""
    wire = encode(event)
    body = json.loads(wire)
    structural = len(body) - 1 + len(body["source"]) - 1
    with mock.patch.object(codec, "_repeated_keys", wraps=codec._repeated_keys) as spy:
        assert decode(wire) == event
    # A comma inside a string value costs a second parse, which finds nothing.
    assert spy.call_count == (0 if wire.count(b",") == structural else 1)


# --- helpers ------------------------------------------------------------------------------


def _cost_wire() -> str:
    return encode(
        ApiCost(
            session_id="s",
            source=Source(component="sdk", name="x"),
            api="openai",
            model="m",
            input_tokens=1,
            output_tokens=2,
            cost_usd=Decimal("0.5"),
            price_source="p",
        )
    ).decode()


def _budget() -> BudgetSet:
    return BudgetSet(
        session_id="s",
        source=Source(component="cli", name="x"),
        daily_limit=1,
        monthly_limit=2,
        hard_limit=3,
        warning_threshold=Decimal("0.8"),
        critical_threshold=Decimal("0.95"),
    )


def _with(body: dict[str, Any], field: str, literal: str) -> str:
    """`body` as JSON with `field` (moved last) written as the raw JSON text `literal`."""
    others = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in body.items() if k != field]
    return "{" + ",".join([*others, f"{json.dumps(field)}:{literal}"]) + "}"
