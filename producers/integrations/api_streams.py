"""Streaming answers of the metered LLM APIs: iterate as the SDK's stream, accounted at the end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from tokenquota.errors import IntegrationError

from ..reservations import Reservation, TokenQuota

__all__ = ["Accountant", "Call", "Flavor", "MeteredStream", "release_unsettled"]

log = logging.getLogger("tokenquota.external_apis")

Flavor = Literal["chat", "responses", "messages"]


class Accountant(Protocol):
    """What a stream needs of the API that made the call (external_apis.MeteredAPI)."""

    name: str

    async def _account(
        self, call: Call, body: dict[str, Any], headers: Any, parsed: Any = None
    ) -> None: ...


@dataclass
class Call:
    """What one metered call reserved and how its answer is to be accounted."""

    api: Accountant
    flavor: Flavor
    session_id: str
    kwargs: dict[str, Any]
    prompt_tokens: int
    reservation: Reservation
    quota: TokenQuota  # the client that made the reservation
    cache_key: str | None  # set only when replies are cached for the fallback
    streamed_text: list[str] = field(default_factory=list)


async def release_unsettled(call: Call) -> None:
    """Release the call's reservation after the call or its accounting failed, even when
    cancelled. A failure to release is logged, not raised (the call's error is the one
    to see; the reservation's TTL frees the tokens in the end)."""
    held = call.reservation
    # A fresh handle: a settle that raised has already marked `held` closed.
    handle = Reservation(call.quota, held.event, held.status, held.delivery)
    try:
        await asyncio.shield(handle.release())  # runs to its end when the caller is cancelled
    except Exception as exc:
        log.error("could not release reservation %s: %s", held.reservation_id, exc)


class MeteredStream:
    """A streaming answer: iterate it as the SDK's stream; it is accounted when it ends.

    The usage comes from the stream itself (OpenAI chat streams are asked for it with
    `stream_options.include_usage`); a stream closed early, broken off by an error or
    cancelled is settled with the usage it reported or a count of the text it delivered.
    Iterate it to its end or close it (`async with`, `aclose`): a stream dropped unread
    holds its reservation until the reservation's TTL.
    """

    def __init__(self, call: Call, stream: Any, headers: Any) -> None:
        self._call = call
        self._stream = stream
        self._headers = headers
        self._usage: dict[str, Any] = {}
        self._model: str | None = None
        self._id: str | None = None
        self._done = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for item in self._stream:
                self._observe(item)
                yield item
        finally:
            await self._finish()

    def _observe(self, item: Any) -> None:
        kind = getattr(item, "type", None)
        call = self._call
        if call.flavor == "chat":
            self._model = getattr(item, "model", None) or self._model
            self._id = getattr(item, "id", None) or self._id
            for choice in getattr(item, "choices", None) or []:
                content = getattr(choice.delta, "content", None)
                if content:
                    call.streamed_text.append(content)
            if getattr(item, "usage", None) is not None:
                self._usage = item.usage.model_dump(mode="json")
        elif call.flavor == "responses":
            if kind == "response.output_text.delta":
                call.streamed_text.append(item.delta)
            elif kind == "response.completed":
                response = item.response
                self._model, self._id = response.model, response.id
                if response.usage is not None:
                    self._usage = response.usage.model_dump(mode="json")
        else:
            if kind == "message_start":
                message = item.message
                self._model, self._id = message.model, message.id
                self._usage = message.usage.model_dump(mode="json")
            elif kind == "content_block_delta" and getattr(item.delta, "text", None):
                call.streamed_text.append(item.delta.text)
            elif kind == "message_delta" and item.usage is not None:
                delta = {
                    k: v for k, v in item.usage.model_dump(mode="json").items() if v is not None
                }
                self._usage = {**self._usage, **delta}

    async def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        body: dict[str, Any] = {
            "model": self._model or self._call.kwargs.get("model"),
            "id": self._id,
        }
        if self._usage:
            body["usage"] = self._usage
        try:
            # Shielded: a reader cancelled mid-stream still has what it read accounted
            # (a failed accounting releases the reservation, see MeteredAPI._account).
            await asyncio.shield(self._call.api._account(self._call, body, self._headers))
        except (IntegrationError, ValueError) as exc:
            log.error("could not account a %s stream: %s", self._call.api.name, exc)
            raise

    async def aclose(self) -> None:
        """Stop reading; what was delivered is accounted."""
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                await close()
        finally:
            await self._finish()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
