"""The HTTP API under bad input: bodies, content types, headers, path and query parameters.
Every answer is a 4xx in the API's JSON error shape, never a 500; hypothesis generates the
cases (collected up front, then sent through one app: its lifespan is the slow part)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.api.support import api_client
from tests.support import used
from tokenquota.api import hash_token
from tokenquota.api.ingest import MAX_EVENTS
from tokenquota.config import Settings
from tokenquota.schemas import encode, utc_now
from tokenquota.schemas.codec import duplicate_key_reason
from tokenquota.schemas.envelope import ACCOUNT_RULE
from tokenquota.sections import ApiSettings, ApiToken

pytestmark = pytest.mark.integration

_ADMIN = {"Authorization": "Bearer admin-secret"}


def examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` examples of `strategy` (generated, not shrunk: an async test sends them)."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found


@pytest.fixture
async def client(pipeline_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with an admin token and no rate limit to speak of (no worker runs)."""
    configured = pipeline_settings.model_copy(
        update={
            "api": ApiSettings(
                tokens=(ApiToken(name="ops", role="admin", sha256=hash_token("admin-secret")),),
                rate_limit=1_000_000,
                rate_burst=1_000_000,
            ),
            # A case that a bug lets through waits this long for a decision, not 10 s.
            "reservations": pipeline_settings.reservations.model_copy(
                update={"decision_timeout": 1.0}
            ),
        }
    )
    async with api_client(configured) as served:
        yield served


def _is_api_error(answer: httpx.Response, *statuses: int) -> dict[str, Any]:
    """The JSON error body of a 4xx answer (one of `statuses` when given)."""
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:500])
    if statuses:
        assert answer.status_code in statuses, (answer.status_code, answer.text[:500])
    body = answer.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert body.get("detail") or body.get("errors"), body
    return body


# --- bodies -------------------------------------------------------------------------------

_NASTY_JSON = (
    "1" + "0" * 400,
    "9" * 5_000,
    "-1",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "[" * 10_000 + "]" * 10_000,
    '{"a":' * 10_000 + "1" + "}" * 10_000,
    '"' + "x" * 100_000 + '"',
    '"\\ud800"',
    '"\\u0000"',
    "true",
    "{}",
    "[]",
    "1.5",
)
_VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/reservations"): {"session_id": "fuzz", "tokens": 10, "priority": "high"},
    ("POST", f"/v1/reservations/{uuid.uuid4()}/settle"): {"input_tokens": 1, "output_tokens": 2},
    ("PUT", "/v1/sessions/fuzz/budget"): {"daily_limit": 1, "monthly_limit": 2, "hard_limit": 3},
    ("PUT", "/v1/accounts/acme/budget"): {"daily_limit": 1, "monthly_limit": 2, "hard_limit": 3},
}
#: Fields whose every nasty value above is refused (so that no case is valid: a valid
#: reservation or budget would wait for a worker this test does not run).
_REFUSING = {
    "/v1/reservations": "tokens",
    "/settle": "input_tokens",
    "/budget": "daily_limit",
}


def _field(path: str) -> str:
    return next(field for end, field in _REFUSING.items() if path.endswith(end))


@st.composite
def bad_bodies(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body, headers) of a write no route may take."""
    (method, path), valid = draw(st.sampled_from(sorted(_VALID_BODIES.items())))
    text = json.dumps(valid)
    field = _field(path)
    kind = draw(st.sampled_from(["bytes", "truncated", "nasty", "duplicate", "utf8", "type"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=300))
    elif kind == "truncated":
        body = text.encode()[: draw(st.integers(0, len(text) - 1))]
    elif kind == "nasty":
        nasty = draw(st.sampled_from(_NASTY_JSON))
        others = ",".join(
            f"{json.dumps(k)}:{json.dumps(v)}" for k, v in valid.items() if k != field
        )
        body = ("{" + others + f',"{field}":{nasty}' + "}").encode()
    elif kind == "duplicate":  # the last value is refused: no parser's reading is valid
        body = (text[:-1] + f', "{field}": -{draw(st.integers(1, 10**6))}' + "}").encode()
    elif kind == "utf8":
        body = text.encode()[:-2] + b'\xff"}'
    else:
        body = json.dumps(draw(st.sampled_from([[], [valid], "x", 7, None]))).encode()
    content_type = draw(
        st.sampled_from(
            ["application/json", "text/plain", "", "multipart/form-data; boundary=x",
             "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
        )
    )  # fmt: skip
    headers = {**_ADMIN, **({"Content-Type": content_type} if content_type else {})}
    return method, path, body, headers


#: Bodies that name a field twice, the last value a valid one: (method, path, body, field).
_TWICE = [
    ("POST", "/v1/reservations", '{"session_id": "fuzz", "tokens": -5, "tokens": 10}', "tokens"),
    ("POST", f"/v1/reservations/{uuid.uuid4()}/settle",
     '{"input_tokens": 1, "output_tokens": 2, "input_tokens": 9}', "input_tokens"),
    ("PUT", "/v1/sessions/fuzz/budget",
     '{"daily_limit": 1, "monthly_limit": 2, "hard_limit": -5, "hard_limit": 3}', "hard_limit"),
    ("PUT", "/v1/accounts/fuzz/budget",
     '{"daily_limit": 1, "monthly_limit": 2, "hard_limit": 3, "total_usd_limit": "-1", '
     '"total_usd_limit": "2.50"}', "total_usd_limit"),
]  # fmt: skip
#: Token counts given as what is no JSON integer: (method, path, field, the other fields).
_NOT_INTEGERS = [
    ("POST", "/v1/reservations", "tokens", '"session_id": "fuzz"'),
    ("POST", f"/v1/reservations/{uuid.uuid4()}/settle", "input_tokens", '"output_tokens": 1'),
    ("PUT", "/v1/sessions/fuzz/budget", "daily_limit", '"monthly_limit": 2, "hard_limit": 3'),
]


async def test_a_bad_body_is_a_4xx_naming_the_problem(client: httpx.AsyncClient) -> None:
    for method, path, body, headers in examples(bad_bodies(), 40):
        answer = await client.request(method, path, content=body, headers=headers)
        _is_api_error(answer, 400, 404, 409, 413, 415, 422)
    # A key given twice was read as its last value (and the reservation made).
    for method, path, body, field in _TWICE:
        answer = await client.request(method, path, content=body, headers=_ADMIN)
        errors = _is_api_error(answer, 422)["errors"]
        assert errors == [{"path": f"body.{field}", "reason": duplicate_key_reason(2)}]
    # pydantic's lax mode read `true` as 1 token (a reservation then waited for a worker).
    for method, path, field, rest in _NOT_INTEGERS:
        # (2**63 and 10**100: past what the events hold, a 429 "quota exceeded" before)
        for tokens in ("true", '"10"', "10.0", "false", str(2**63), "1" + "0" * 100):
            answer = await client.request(
                method,
                path,
                content="{" + rest + f', "{field}": {tokens}' + "}",
                headers={**_ADMIN, "Content-Type": "application/json"},
            )
            errors = _is_api_error(answer, 422)["errors"]
            assert [e["path"] for e in errors] == [f"body.{field}"], (path, tokens, errors)
    # An account that is no path is refused with the rule, not the pattern.
    body_account = {"session_id": "fuzz", "tokens": 10, "account": "acme//x"}
    answer = await client.post("/v1/reservations", json=body_account, headers=_ADMIN)
    assert _is_api_error(answer, 422)["errors"] == [
        {"path": "body.account", "reason": ACCOUNT_RULE}
    ]


@st.composite
def bad_event_bodies(draw: st.DrawFn) -> bytes:
    """A POST /v1/events body: an array, an item of which is mangled, or no array at all."""
    items = [json.loads(encode(used("fuzz", n, utc_now()))) for n in range(2)]
    text = json.dumps(items)
    kind = draw(st.sampled_from(["bytes", "truncated", "nasty", "duplicate", "deep", "item"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return text.encode()[: draw(st.integers(0, len(text) - 1))]
    if kind == "deep":
        depth = draw(st.sampled_from([1_000, 10_000, 100_000]))
        return ("[" * depth + "]" * depth).encode()
    field = draw(st.sampled_from(["input_tokens", "model", "occurred_at", "source"]))
    first = json.dumps(items[0])
    if kind == "nasty":
        mangled = first[:-1] + f',"{field}":{draw(st.sampled_from(_NASTY_JSON))}' + "}"
    elif kind == "duplicate":
        mangled = first[:-1] + f',"{field}":{json.dumps(items[0][field])}' + "}"
    else:
        mangled = json.dumps(draw(st.sampled_from([None, 1, "x", [], {}])))
    return ("[" + mangled + "," + json.dumps(items[1]) + "]").encode()


async def test_a_bad_event_is_answered_by_its_index_and_field_or_the_body_refused(
    client: httpx.AsyncClient,
) -> None:
    for body in examples(bad_event_bodies(), 30):
        answer = await client.post("/v1/events", content=body, headers=_ADMIN)
        if answer.status_code != 200:
            _is_api_error(answer, 400, 413, 422)
            continue
        result = answer.json()
        assert result["invalid"] >= 1 and result["results"][0]["status"] == "invalid", result
        assert all(e["path"] and e["reason"] for e in result["results"][0]["errors"])
    # A field given twice: decode() refuses it (a worker dead-letters it), and so does
    # ingest, which read it as its last value and sent that on.
    good = json.loads(encode(used("fuzz", 5, utc_now())))
    twice = json.dumps(good)[:-1] + ', "input_tokens": 500000}'
    inner = json.dumps(good).replace('"name": "tests"', '"name": "tests", "name": "x"')
    answer = await client.post("/v1/events", content=f"[{twice}, {inner}]", headers=_ADMIN)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["invalid", "invalid"]
    assert results[0]["errors"] == [{"path": "input_tokens", "reason": duplicate_key_reason(2)}]
    assert results[1]["errors"][0]["path"] == "source.name"
    # A comma inside a string is no repeat: both accepted.
    commas = [json.loads(encode(used("fuzz", 1, utc_now()))) | {"model": "gpt,4o"}, good]
    answer = await client.post("/v1/events", json=commas, headers=_ADMIN)
    assert answer.status_code == 200 and answer.json()["accepted"] == 2, answer.text
    # The largest batch, MAX_EVENTS items (invalid ones: nothing is sent), is answered
    # item by item; one more is a 413.
    at_limit = await client.post("/v1/events", json=[{}] * MAX_EVENTS, headers=_ADMIN)
    assert at_limit.status_code == 200 and at_limit.json()["invalid"] == MAX_EVENTS
    over = await client.post("/v1/events", json=[{}] * (MAX_EVENTS + 1), headers=_ADMIN)
    assert f"at most {MAX_EVENTS}" in _is_api_error(over, 413)["detail"]


# --- headers --------------------------------------------------------------------------------

_HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)


async def test_bad_authorization_and_account_headers_are_401_and_422(
    client: httpx.AsyncClient,
) -> None:
    values = examples(
        _HEADER_TEXT | _HEADER_TEXT.map(lambda t: "Bearer " + t) | st.just("Bearer"), 25
    )
    for value in values:
        if value.strip() == "Bearer admin-secret":
            continue
        answer = await client.get("/v1/top", headers={"Authorization": value.encode("latin-1")})
        assert _is_api_error(answer, 401)["error"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    # X-Tokenquota-Account: only headers that are no account path, or name another than
    # the body's (a valid reservation would wait for a worker this test does not run).
    values = examples(
        _HEADER_TEXT.filter(lambda t: t.strip() and ("//" in t or t.strip().startswith("/")))
        | st.sampled_from(["a/" * 9 + "a", "x" * 65, "a/" + "b" * 300, "acme//x", "/acme"])
        | _HEADER_TEXT.filter(lambda t: t.strip() and "/" not in t),  # conflicts with the body
        25,
    )
    for value in values:
        body = {"session_id": "fuzz", "tokens": 10, "account": "other/team"}
        answer = await client.post(
            "/v1/reservations",
            json=body,
            headers={**_ADMIN, "X-Tokenquota-Account": value.encode("latin-1")},
        )
        errors = _is_api_error(answer, 422)["errors"]
        assert errors[0]["path"] == "header.X-Tokenquota-Account", errors


# --- path and query parameters ----------------------------------------------------------

_PARAM = st.sampled_from(
    ["", "-1", "0", "9" * 5_000, "1e400", "nan", "inf", "2026-02-30", "9999-12-31",
     "0001-01-01", "%00", "%ff", "x" * 2_000, "a//b", "..", "%2e%2e", "😀"]
) | st.text(max_size=20)  # fmt: skip
_QUERIES = [
    "/v1/top?limit={}",
    "/v1/top?by={}",
    "/v1/top?date={}",
    "/v1/reports/daily?date={}",
    "/v1/costs?since={}",
    "/v1/costs?until={}&by=day",
    "/v1/decisions?status={}",
    "/v1/decisions?session_id={}",
    "/v1/alerts?since={}",
    "/v1/sessions?offset={}",
    "/v1/sessions?limit={}&order=name",
    "/v1/sessions?prefix={}",
    "/v1/timeline?scale=hour&hours={}",
    "/v1/timeline?scale={}",
    "/v1/accounts?root={}",
    "/v1/reports/top-accounts?depth={}",
    "/v1/reports/top-accounts?under={}",
    "/v1/sessions/{}",
    "/v1/sessions/{}/tasks",
    "/v1/accounts/{}",
    "/v1/reservations/{}/release",
]


#: Extremes: a NUL where PostgreSQL compares text, dates whose windows pass year 1 or
#: 9999, numbers past a BIGINT (each was a 500).
_EXTREMES = [
    "/v1/sessions/%00",
    "/v1/sessions/a%00b/tasks",
    "/v1/decisions?session_id=%00",
    "/v1/alerts?session_id=x%00",
    "/v1/audit?session_id=%00",
    "/v1/sessions?prefix=%00",
    "/v1/accounts?root=%00",
    "/v1/reports/top-accounts?under=%00",
    "/v1/reports/daily?date=9999-12-31",
    "/v1/reports/daily?date=0001-01-01",
    "/v1/top?date=9999-12-31",
    "/v1/top?date=0001-01-01",
    "/v1/costs?until=9999-12-31",
    "/v1/costs?since=0001-01-01",
    "/v1/costs?until=0001-01-05",
    "/v1/reports/top-accounts?date=9999-12-31",
    "/v1/alerts?since=0001-01-01T00:00:00Z",
    "/v1/alerts?since=9999-12-31T23:59:59Z",
    "/v1/timeline?scale=hour&hours=999999999",
    "/v1/sessions?offset=99999999999999999999",
]


async def test_bad_path_and_query_parameters_are_never_a_500(client: httpx.AsyncClient) -> None:
    cases = examples(st.tuples(st.sampled_from(_QUERIES), _PARAM), 40)
    for template, value in cases:
        quoted = value if value.startswith("%") else quote(value, safe="/")
        method = "POST" if template.endswith("/release") else "GET"
        answer = await client.request(method, template.format(quoted), headers=_ADMIN)
        if answer.status_code < 400:  # 307: an empty segment, to the path without it
            assert answer.status_code in (200, 307), (template, value, answer.status_code)
            continue
        _is_api_error(answer, 400, 404, 405, 409, 414, 422)
    for url in _EXTREMES:
        answer = await client.get(url, headers=_ADMIN)
        if answer.status_code != 200:
            assert _is_api_error(answer, 400, 404, 422), url
