"""Event models and their wire encoding (pure: no servers)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.support import cyclic_garbage
from tokenquota.schemas import (
    BIGINT_MAX,
    USAGE_TOKENS_MAX,
    ApiCost,
    BudgetSet,
    DefaultsSet,
    Event,
    EventDecodeError,
    Source,
    TokenReserved,
    TokenUsed,
    check_timezone,
    decode,
    encode,
    new_event_id,
)

# --- strategies -------------------------------------------------------------------------

printable = st.characters(min_codepoint=32, codec="utf-8", exclude_characters="\x7f")
identifiers = st.text(alphabet=printable, min_size=1, max_size=255)
labels = st.text(alphabet=printable, min_size=1, max_size=200)
names = st.text(alphabet=printable, min_size=1, max_size=100)
tokens = st.integers(min_value=0, max_value=BIGINT_MAX)
usage_tokens = st.integers(min_value=0, max_value=USAGE_TOKENS_MAX)
aware_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)
sources = st.builds(
    Source,
    component=st.sampled_from(["mcp", "orchestrator", "memory", "external_api", "cli"]),
    name=st.text(alphabet=printable, min_size=1, max_size=100),
)
envelope: dict[str, Any] = {
    "event_id": st.builds(new_event_id),
    "occurred_at": aware_datetimes,
    "session_id": identifiers,
    "task_id": st.none() | identifiers,
    "source": sources,
}
thresholds = st.decimals(min_value=Decimal("0.0001"), max_value=1, places=4)


@st.composite
def budget_sets(draw: st.DrawFn) -> BudgetSet:
    limits = sorted(draw(st.lists(tokens, min_size=3, max_size=3)))
    warning, critical = sorted(draw(st.lists(thresholds, min_size=2, max_size=2, unique=True)))
    return BudgetSet(
        **{k: draw(v) for k, v in envelope.items()},
        daily_limit=limits[0],
        monthly_limit=limits[1],
        hard_limit=limits[2],
        warning_threshold=warning,
        critical_threshold=critical,
    )


@st.composite
def token_reservations(draw: st.DrawFn) -> TokenReserved:
    occurred = draw(aware_datetimes)
    return TokenReserved(
        **{k: draw(v) for k, v in envelope.items() if k != "occurred_at"},
        occurred_at=occurred,
        reservation_id=draw(st.uuids()),
        tokens=draw(st.integers(min_value=1, max_value=BIGINT_MAX)),
        priority=draw(st.sampled_from(["low", "normal", "high", "critical"])),
        expires_at=occurred + draw(st.timedeltas(timedelta(milliseconds=1), timedelta(days=30))),
    )


token_uses = st.builds(
    TokenUsed,
    **envelope,
    reservation_id=st.none() | st.uuids(),
    model=labels,
    input_tokens=usage_tokens,
    output_tokens=usage_tokens,
    operation=names,
    counted_by=st.sampled_from(["provider", "tiktoken", "estimate"]),
)
api_costs = st.builds(
    ApiCost,
    **envelope,
    api=st.sampled_from(["openai", "anthropic", "gemini"]),
    model=labels,
    input_tokens=usage_tokens,
    output_tokens=usage_tokens,
    cache_read_tokens=usage_tokens,
    cache_write_tokens=usage_tokens,
    cost_usd=st.decimals(min_value=0, max_value=Decimal("9999999999"), places=10),
    price_source=st.just("genai-prices"),
    request_id=st.none() | identifiers,
    rate_limit_remaining=st.none() | tokens,
    rate_limit_reset=st.none() | aware_datetimes,
)


@st.composite
def defaults_sets(draw: st.DrawFn) -> DefaultsSet:
    limits = sorted(draw(st.lists(tokens, min_size=3, max_size=3)))
    warning, critical = sorted(draw(st.lists(thresholds, min_size=2, max_size=2, unique=True)))
    return DefaultsSet(
        **{k: draw(v) for k, v in envelope.items() if k not in ("session_id", "task_id")},
        daily_limit=limits[0],
        monthly_limit=limits[1],
        hard_limit=limits[2],
        warning_threshold=warning,
        critical_threshold=critical,
        timezone=draw(st.sampled_from(["UTC", "Europe/Paris", "America/Los_Angeles"])),
        max_clock_skew_ms=draw(st.integers(0, 86_400_000)),
    )


events = st.one_of(budget_sets(), token_reservations(), token_uses, api_costs, defaults_sets())


# --- round trip and stability -----------------------------------------------------------


@given(events)
def test_every_event_type_round_trips(event: Event) -> None:
    data = encode(event)
    assert decode(data) == event
    assert encode(decode(data)) == data


@given(events)
def test_encoding_is_compact_json_in_utc(event: Event) -> None:
    data = encode(event)
    assert b"\n" not in data and b'": ' not in data
    parsed = json.loads(data)
    assert parsed["event_type"] == type(event).__name__
    assert parsed["occurred_at"].endswith("Z")


def _usage(**overrides: Any) -> TokenUsed:
    fields: dict[str, Any] = {
        "event_id": uuid.UUID("0192f0a4-1c2b-7d3e-8f40-123456789abc"),
        "occurred_at": datetime(2026, 11, 24, 9, 30, tzinfo=UTC),
        "session_id": "session-1",
        "source": Source(component="mcp", name="memory-server"),
        "model": "gpt-4o",
        "input_tokens": 120,
        "output_tokens": 30,
        "operation": "tool:search",
        "counted_by": "tiktoken",
    }
    return TokenUsed(**(fields | overrides))


def test_encoding_is_stable_byte_for_byte() -> None:
    assert encode(_usage()) == (
        b'{"event_id":"0192f0a4-1c2b-7d3e-8f40-123456789abc","schema_version":1,'
        b'"occurred_at":"2026-11-24T09:30:00Z","session_id":"session-1","task_id":null,'
        b'"source":{"component":"mcp","name":"memory-server"},"event_type":"TokenUsed",'
        b'"reservation_id":null,"model":"gpt-4o","input_tokens":120,"output_tokens":30,'
        b'"operation":"tool:search","counted_by":"tiktoken"}'
    )


def _cost(cost_usd: str) -> ApiCost:
    return ApiCost(
        session_id="s",
        source=Source(component="external_api", name="openai"),
        api="openai",
        model="gpt-4o",
        input_tokens=1,
        output_tokens=1,
        cost_usd=Decimal(cost_usd),
        price_source="genai-prices",
    )


def test_money_is_encoded_as_an_exact_decimal_string() -> None:
    cost = _cost("0.0000012345")
    assert b'"cost_usd":"0.0000012345"' in encode(cost)
    assert decode(encode(cost)).cost_usd == Decimal("0.0000012345")  # type: ignore[union-attr]


def test_offsets_are_normalised_to_utc() -> None:
    event = _usage(occurred_at=datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2))))
    assert event.occurred_at == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_defaults_give_a_fresh_uuid7_and_the_current_utc_time() -> None:
    before = datetime.now(UTC)
    first, second = _usage(event_id=new_event_id()), _usage(event_id=new_event_id())
    assert first.event_id.version == 7 and first.event_id != second.event_id
    made = TokenUsed(**_usage().model_dump(exclude={"event_id", "occurred_at"}))
    assert made.event_id.version == 7
    assert before <= made.occurred_at <= datetime.now(UTC)


def test_events_are_frozen() -> None:
    event = _usage()
    with pytest.raises(ValidationError, match="frozen"):
        event.input_tokens = 1  # type: ignore[misc]


def test_total_tokens_adds_input_and_output() -> None:
    assert _usage(input_tokens=7, output_tokens=5).total_tokens == 12


# --- rejection --------------------------------------------------------------------------


def _wire(**overrides: Any) -> bytes:
    body = json.loads(encode(_usage()))
    for key, value in overrides.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("overrides", "path", "reason"),
    [
        ({"input_tokens": -1}, "input_tokens", "greater than or equal to 0"),
        ({"output_tokens": 2**62}, "output_tokens", "less than or equal to 4611686018427387903"),
        ({"input_tokens": "12"}, "input_tokens", "valid integer"),
        ({"input_tokens": 1.5}, "input_tokens", "valid integer"),
        ({"occurred_at": "2026-11-24T09:30:00"}, "occurred_at", "timezone"),
        ({"event_type": "TokenBurned"}, "event_type", "TokenBurned"),
        ({"event_type": ...}, "event_type", "event_type"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
        ({"session_id": ""}, "session_id", "at least 1 character"),
        ({"session_id": "x" * 256}, "session_id", "at most 255 characters"),
        ({"session_id": "a\nb"}, "session_id", "control characters"),
        # A NUL is valid JSON but PostgreSQL refuses it in TEXT and JSONB: every free-text
        # field is checked like the identifiers.
        ({"model": "gpt\u0000"}, "model", "control characters"),
        ({"operation": "tool\u0000x"}, "operation", "control characters"),
        ({"event_id": str(uuid.uuid4())}, "event_id", "UUIDv7"),
        ({"schema_version": 2}, "schema_version", "1"),
        ({"counted_by": "guess"}, "counted_by", "'provider', 'tiktoken' or 'estimate'"),
        ({"source": {"component": "browser", "name": "x"}}, "source.component", "mcp"),
        ({"model": ...}, "model", "Field required"),
        ({"event_id": ...}, "event_id", "Field required"),
        ({"occurred_at": ...}, "occurred_at", "Field required"),
    ],
)
def test_invalid_events_raise_one_typed_error_with_the_field_path(
    overrides: dict[str, Any], path: str, reason: str
) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode(_wire(**overrides))
    paths = [e.path for e in caught.value.errors]
    assert path in paths
    assert any(reason in e.reason for e in caught.value.errors if e.path == path)
    assert path in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[1,2]", b"null", b'"TokenUsed"', b"\xff\xfe", b'{"event_type":"TokenUsed"'],
)
def test_malformed_bytes_raise_the_same_typed_error(data: bytes) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode(data)
    assert caught.value.errors and all(e.reason for e in caught.value.errors)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",  # no JSON
        b'{"event_type":"TokenUsed"',  # truncated
        b'{"event_type":"TokenUsed","event_type":"TokenUsed"}',  # a key given twice
        b'{"event_type":"TokenUsed","input_tokens":"many"}',  # wrong types
    ],
)
def test_refusing_an_event_leaves_no_reference_cycle_behind(data: bytes) -> None:
    # The worker collects cycles rarely (gc_settings.BATCH_THRESHOLDS): each refused
    # message left 18 objects in cycles (the error, its traceback, decode's frame), and
    # its memory grew by 1,161 bytes per poison message (benchmarks.bad_input_memory).

    def refuse() -> None:
        for _ in range(3):
            with pytest.raises(EventDecodeError):
                decode(data)

    assert cyclic_garbage(refuse) == 0


def test_money_as_a_json_number_is_rejected() -> None:
    body = json.loads(encode(_cost("0.5"))) | {"cost_usd": 0.1}
    with pytest.raises(EventDecodeError, match=r"cost_usd: .*decimal string"):
        decode(json.dumps(body))
    body["cost_usd"] = "-0.01"
    with pytest.raises(EventDecodeError, match="cost_usd"):
        decode(json.dumps(body))


def test_a_reservation_must_hold_tokens_and_expire_after_it_occurs() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)
    common: dict[str, Any] = {
        "session_id": "s",
        "source": Source(component="orchestrator", name="o"),
        "reservation_id": uuid.uuid4(),
        "occurred_at": now,
    }
    with pytest.raises(ValidationError, match="greater than 0"):
        TokenReserved(**common, tokens=0, expires_at=now + timedelta(minutes=1))
    with pytest.raises(ValidationError, match="must be after occurred_at"):
        TokenReserved(**common, tokens=10, expires_at=now)


def test_budget_limits_must_be_ordered() -> None:
    common: dict[str, Any] = {"session_id": "s", "source": Source(component="cli", name="admin")}
    with pytest.raises(ValidationError, match="daily_limit <= monthly_limit <= hard_limit"):
        BudgetSet(
            **common,
            daily_limit=500,
            monthly_limit=100,
            hard_limit=1000,
            warning_threshold=Decimal("0.8"),
            critical_threshold=Decimal("0.9"),
        )
    with pytest.raises(ValidationError, match="warning_threshold must be below"):
        BudgetSet(
            **common,
            daily_limit=1,
            monthly_limit=2,
            hard_limit=3,
            warning_threshold=Decimal("0.9"),
            critical_threshold=Decimal("0.9"),
        )


def test_api_and_price_source_are_checked_like_identifiers() -> None:
    body = json.loads(encode(_cost("0.5")))
    for field in ("api", "price_source", "model"):
        with pytest.raises(EventDecodeError, match=f"{field}: must not contain control"):
            decode(json.dumps(body | {field: "x\u0000"}))


def test_a_defaults_set_names_a_real_zone_and_ordered_limits() -> None:
    common: dict[str, Any] = {
        "source": Source(component="cli", name="init"),
        "warning_threshold": Decimal("0.8"),
        "critical_threshold": Decimal("0.9"),
        "max_clock_skew_ms": 300_000,
    }
    ok = DefaultsSet(**common, daily_limit=1, monthly_limit=2, hard_limit=3, timezone="UTC")
    assert ok.session_id == "*"
    assert decode(encode(ok)) == ok
    with pytest.raises(ValidationError, match="unknown IANA time zone 'Mars/Olympus'"):
        DefaultsSet(**common, daily_limit=1, monthly_limit=2, hard_limit=3, timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="daily_limit <= monthly_limit"):
        DefaultsSet(**common, daily_limit=5, monthly_limit=2, hard_limit=3, timezone="UTC")


def test_a_zone_name_too_long_for_a_file_is_an_unknown_zone() -> None:
    # Found by test_config_fuzz: ZoneInfo raised OSError (file name too long) for it.
    with pytest.raises(ValueError, match="unknown IANA time zone '9999"):
        check_timezone("9" * 5_000)


# --- what a Python caller types -------------------------------------------------------


@pytest.mark.parametrize(
    ("warning", "critical"), [(0.8, 0.95), ("0.8", "0.95"), (Decimal("0.8"), Decimal("0.95"))]
)
def test_thresholds_take_floats_and_strings_exactly(warning: Any, critical: Any) -> None:
    event = BudgetSet(
        session_id="s",
        source=Source(component="mcp", name="cli"),
        daily_limit=1,
        monthly_limit=2,
        hard_limit=3,
        warning_threshold=warning,
        critical_threshold=critical,
        actor="os:alice",
    )
    assert event.warning_threshold == Decimal("0.8") and str(event.warning_threshold) == "0.8"
    assert event.critical_threshold == Decimal("0.95")
    assert decode(encode(event)) == event
    assert json.loads(encode(event))["actor"] == "os:alice"


@pytest.mark.parametrize("bad", [True, "eighty", 0.80001, 1.5])
def test_thresholds_refuse_what_is_no_ratio(bad: Any) -> None:
    with pytest.raises(ValidationError, match="warning_threshold"):
        BudgetSet(
            session_id="s",
            source=Source(component="mcp", name="cli"),
            daily_limit=1,
            monthly_limit=2,
            hard_limit=3,
            warning_threshold=bad,
            critical_threshold=Decimal("0.95"),
        )


def test_the_wire_still_refuses_a_boolean_threshold() -> None:
    event = json.loads(
        encode(
            BudgetSet(
                session_id="s",
                source=Source(component="mcp", name="cli"),
                daily_limit=1,
                monthly_limit=2,
                hard_limit=3,
                warning_threshold=Decimal("0.8"),
                critical_threshold=Decimal("0.95"),
            )
        )
    )
    event["warning_threshold"] = True
    with pytest.raises(EventDecodeError, match="warning_threshold"):
        decode(json.dumps(event))
