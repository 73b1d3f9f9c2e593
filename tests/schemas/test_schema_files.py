"""The generated JSON Schema files: fresh, and usable by non-Python producers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota.schemas import encode
from tokenquota.schemas.schema_files import (
    SCHEMA_DIR,
    render_schema_files,
    stale_schema_files,
    write_schema_files,
)


def test_committed_schema_files_are_fresh() -> None:
    assert stale_schema_files() == [], "run `make schemas` (tokenquota schemas) and commit"


def test_the_files_ship_in_the_installed_package() -> None:
    assert Path(__file__).parents[2] / "schemas" / "json" == SCHEMA_DIR
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(render_schema_files())


def test_staleness_is_detected(tmp_path: Path) -> None:
    write_schema_files(tmp_path)
    assert stale_schema_files(tmp_path) == []
    (tmp_path / "TokenUsed.schema.json").write_text("{}\n")
    (tmp_path / "Leftover.schema.json").write_text("{}\n")
    (tmp_path / "ApiCost.schema.json").unlink()
    assert sorted(stale_schema_files(tmp_path)) == [
        "ApiCost.schema.json",
        "Leftover.schema.json",
        "TokenUsed.schema.json",
    ]


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / "Event.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@st.composite
def _wire_events(draw: st.DrawFn) -> dict[str, Any]:
    from tokenquota.schemas import Source, TokenUsed

    event = TokenUsed(
        session_id=draw(st.text(alphabet="abcdef-_0123456789", min_size=1, max_size=40)),
        source=Source(component="memory", name="store"),
        model="gpt-4o-mini",
        input_tokens=draw(st.integers(0, 2**40)),
        output_tokens=draw(st.integers(0, 2**40)),
        operation="search",
        counted_by="tiktoken",
    )
    parsed: dict[str, Any] = json.loads(encode(event))
    return parsed


@settings(max_examples=30)
@given(_wire_events())
def test_encoded_events_validate_against_the_union_schema(event: dict[str, Any]) -> None:
    _validator().validate(event)


def test_the_schema_rejects_what_decode_rejects() -> None:
    validator = _validator()
    good = {
        "event_type": "TokenReserved",
        "event_id": "0192f0a4-1c2b-7d3e-8f40-123456789abc",
        "occurred_at": "2026-11-24T09:59:00Z",
        "session_id": "s",
        "source": {"component": "cli", "name": "x"},
        "reservation_id": "0192f0a4-1c2b-7d3e-8f40-123456789abd",
        "tokens": 10,
        "expires_at": "2026-11-24T10:00:00Z",
    }
    validator.validate(good)
    for bad in (
        good | {"tokens": 0},
        good | {"tokens": -5},
        good | {"extra": True},
        good | {"event_type": "Nope"},
        good | {"source": {"component": "browser", "name": "x"}},
        {k: v for k, v in good.items() if k != "event_id"},
    ):
        assert not validator.is_valid(bad), bad
