"""The largest request body the API reads (MAX_BODY_BYTES): at the limit it is read, one
byte more is a 413, and a body announced or streamed past it is refused without reading
it all (a client cannot make the API buffer an unbounded body)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.support import api_client
from tokenquota.api import MAX_BODY_BYTES
from tokenquota.config import Settings

pytestmark = pytest.mark.integration

_CHUNK = 1 << 20


class Endless(httpx.AsyncByteStream):
    """A request body that never ends; counts what was taken from it."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += _CHUNK
            yield b" " * _CHUNK


async def test_a_body_at_the_limit_is_read_and_one_byte_more_is_413(
    pipeline_settings: Settings,
) -> None:
    padded = b"[{}" + b" " * (MAX_BODY_BYTES - 4) + b"]"  # one invalid item: nothing is sent
    assert len(padded) == MAX_BODY_BYTES
    async with api_client(pipeline_settings) as client:
        at_limit = await client.post("/v1/events", content=padded)
        assert at_limit.status_code == 200, at_limit.text[:300]
        assert at_limit.json()["invalid"] == 1
        over = await client.post("/v1/events", content=padded + b" ")
        assert over.status_code == 413
        assert over.json() == {
            "error": "too_large",
            "detail": f"the request body is larger than {MAX_BODY_BYTES} bytes, the most "
            "this API reads (send several requests)",
        }


#: Routes that read a body, and one that reads none.
_ROUTES = [
    ("POST", "/v1/events"),
    ("POST", "/v1/reservations"),  # the reservation lane
    ("POST", f"/v1/reservations/{uuid.uuid4()}/settle"),
    ("PUT", "/v1/sessions/alice/budget"),  # a body FastAPI reads
    ("GET", "/v1/top"),
]


async def test_a_body_announced_or_streamed_past_the_limit_is_refused_unread(
    pipeline_settings: Settings,
) -> None:
    async with api_client(pipeline_settings) as client:
        for method, path in _ROUTES:
            announced = Endless()
            answer = await client.request(
                method,
                path,
                content=announced,
                headers={
                    "Content-Length": str(MAX_BODY_BYTES + 1),
                    "Content-Type": "application/json",
                },
            )
            assert answer.status_code == 413 and answer.json()["error"] == "too_large", path
            assert announced.sent <= _CHUNK  # answered by the header, before the body
            if method == "GET":
                continue
            streamed = Endless()  # chunked: no length announced
            answer = await asyncio.wait_for(
                client.request(
                    method, path, content=streamed, headers={"Content-Type": "application/json"}
                ),
                timeout=30,
            )
            assert answer.status_code == 413 and answer.json()["error"] == "too_large", path
            assert streamed.sent <= MAX_BODY_BYTES + 2 * _CHUNK
        for length in ("abc", "-1", "1e3", "9" * 100):
            answer = await client.post(
                "/v1/events", content=Endless(), headers={"Content-Length": length}
            )
            expected = (413, "too_large") if length.isdigit() else (400, "bad_request")
            assert (answer.status_code, answer.json()["error"]) == expected, length
