"""The largest request body the API reads: past it, a 413 before the body is buffered."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MAX_BODY_BYTES", "BodyLimit", "BodyTooLarge"]

#: Bytes of the largest request body: room for a POST /v1/events of MAX_EVENTS (5,000)
#: events of 6 KiB each; ordinary events are under 1 KiB, the largest the schemas allow
#: about 7 KiB.
MAX_BODY_BYTES = 32 * 1024 * 1024

_DETAIL = (
    f"the request body is larger than {MAX_BODY_BYTES} bytes, the most this API reads "
    "(send several requests)"
)


class BodyTooLarge(HTTPException):
    """A request body past MAX_BODY_BYTES (answered 413 by the app's error handler)."""

    def __init__(self) -> None:
        super().__init__(413, _DETAIL)


class BodyLimit:
    """ASGI middleware: a body announced (Content-Length) past MAX_BODY_BYTES is refused
    before any of it is read; one that arrives past it (chunked, or longer than announced)
    as soon as it does. Either is a 413 in the API's error shape."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = _content_length(scope)
        if announced is not None and (announced < 0 or announced > self.limit):
            too_large = announced > self.limit
            await _error(
                413 if too_large else 400,
                _DETAIL if too_large else "Content-Length must be a whole number of bytes",
                scope,
                receive,
                send,
            )
            return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except BodyTooLarge:  # raised where no handler of the app saw it
            if started:
                raise
            await _error(413, _DETAIL, scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The announced body length; -1 when the header is no whole number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit() or not text.isascii():
                return -1
            return int(text) if len(text) <= 20 else 1 << 70
    return None


async def _error(status: int, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
    error = "too_large" if status == 413 else "bad_request"
    await JSONResponse({"error": error, "detail": detail}, status)(scope, receive, send)
