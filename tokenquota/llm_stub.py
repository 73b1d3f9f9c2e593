"""A stand-in LLM server on 127.0.0.1 speaking the OpenAI and Anthropic wire formats.

Chat completions, responses and messages; JSON and SSE streaming; rate-limit headers;
scripted failures (`fail_next`: status codes answered before the real reply); the usage
every reply reports, fixed or computed per request (`usage_of`). `tokenquota demo`, the
external-API example and the tests point the official SDKs at it, so that none of them
needs the internet or a key. `python -m tokenquota.llm_stub --serve PORT` serves it
until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["REPLY", "FakeLLM", "Usage", "running_fake_llm"]

REPLY = "Budgets hold."

#: What a reply reports: input tokens (cached ones included), output tokens, cached tokens.
Usage = tuple[int, int, int]


@dataclass
class FakeLLM:
    """Scripted answers. Every reply reports `input_tokens`, `output_tokens` and
    `cached_tokens`, or what `usage_of(request body)` answers when it is set."""

    input_tokens: int = 120
    output_tokens: int = 30
    cached_tokens: int = 20
    fail_next: list[int] = field(default_factory=list)
    retry_after: str = "0.2"
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    usage_of: Callable[[dict[str, Any]], Usage] | None = None
    #: Keep no request bodies (a long-running server, such as the demo's).
    keep_requests: bool = True

    def _received(self, body: dict[str, Any]) -> Usage:
        if self.keep_requests:
            self.requests.append(body)
        if self.usage_of is not None:
            return self.usage_of(body)
        return self.input_tokens, self.output_tokens, self.cached_tokens

    def _headers(self, anthropic: bool) -> dict[str, str]:
        if anthropic:
            return {
                "request-id": "req_anthropic_1",
                "anthropic-ratelimit-tokens-remaining": "39000",
                "anthropic-ratelimit-tokens-reset": "2026-11-24T12:01:00Z",
            }
        return {
            "x-request-id": "req_openai_1",
            "x-ratelimit-remaining-tokens": "149000",
            "x-ratelimit-reset-tokens": "6m0s",
        }

    async def _failure(self, anthropic: bool) -> Response | None:
        if not self.fail_next:
            return None
        status = self.fail_next.pop(0)
        body = (
            {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
            if anthropic
            else {"error": {"message": "slow down", "type": "rate_limit", "code": None}}
        )
        return JSONResponse(body, status_code=status, headers={"retry-after": self.retry_after})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        input_tokens, output_tokens, cached_tokens = self._received(body)
        failure = await self._failure(False)
        if failure is not None:
            return failure
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }
        base = {"id": "chatcmpl-1", "created": 1_764_000_000, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": REPLY}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            reply = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return JSONResponse(reply, headers=self._headers(False))

        async def events() -> AsyncIterator[str]:
            for word in REPLY.split(" "):
                delta = {"index": 0, "delta": {"content": word + " "}, "finish_reason": None}
                yield _sse({**base, "object": "chat.completion.chunk", "choices": [delta]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _sse(
                    {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                )
            yield "data: [DONE]\n\n"

        return _stream(events(), self._headers(False))

    async def responses(self, request: Request) -> Response:
        body = await request.json()
        input_tokens, output_tokens, cached_tokens = self._received(body)
        failure = await self._failure(False)
        if failure is not None:
            return failure
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        text = {"type": "output_text", "text": REPLY, "annotations": []}
        item = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [text],
        }
        response = {
            "id": "resp_1",
            "object": "response",
            "created_at": 1_764_000_000,
            "model": body["model"],
            "status": "completed",
            "output": [item],
            "usage": usage,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        if not body.get("stream"):
            return JSONResponse(response, headers=self._headers(False))

        async def events() -> AsyncIterator[str]:
            started = {**response, "status": "in_progress", "output": [], "usage": None}
            yield _sse(
                {"type": "response.created", "sequence_number": 0, "response": started},
                "response.created",
            )
            delta = {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": REPLY,
                "logprobs": [],
            }
            yield _sse(delta, "response.output_text.delta")
            done = {"type": "response.completed", "sequence_number": 2, "response": response}
            yield _sse(done, "response.completed")

        return _stream(events(), self._headers(False))

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        input_tokens, output_tokens, cached_tokens = self._received(body)
        failure = await self._failure(True)
        if failure is not None:
            return failure
        # Anthropic reports cache reads beside its input tokens, not among them.
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": cached_tokens,
            "cache_creation_input_tokens": 0,
        }
        message = {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": REPLY}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return JSONResponse(message, headers=self._headers(True))

        async def events() -> AsyncIterator[str]:
            start_usage = {**usage, "output_tokens": 1}
            start = {**message, "content": [], "stop_reason": None, "usage": start_usage}
            yield _sse({"type": "message_start", "message": start}, "message_start")
            block = {"type": "text", "text": ""}
            yield _sse(
                {"type": "content_block_start", "index": 0, "content_block": block},
                "content_block_start",
            )
            for word in REPLY.split(" "):
                delta = {"type": "text_delta", "text": word + " "}
                yield _sse(
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                    "content_block_delta",
                )
            yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            end = {"stop_reason": "end_turn", "stop_sequence": None}
            yield _sse(
                {
                    "type": "message_delta",
                    "delta": end,
                    "usage": {"output_tokens": output_tokens},
                },
                "message_delta",
            )
            yield _sse({"type": "message_stop"}, "message_stop")

        return _stream(events(), self._headers(True))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/messages", self.messages, methods=["POST"]),
            ]
        )


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _stream(events: AsyncIterator[str], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals alone: it runs inside a program
    (the demo, a test) that handles SIGINT and SIGTERM itself and stops it."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


@contextlib.asynccontextmanager
async def running_fake_llm(fake: FakeLLM | None = None) -> AsyncIterator[FakeLLM]:
    """Serve a FakeLLM on a free port of 127.0.0.1 for the duration of the block."""
    fake = fake or FakeLLM()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _InProcessServer(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.wait_for(_started(server), 30)
        fake.url = f"http://127.0.0.1:{port}"
        yield fake
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def _started(server: uvicorn.Server) -> None:
    while not server.started:  # noqa: ASYNC110  (uvicorn offers no event to wait on)
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        stub = FakeLLM(keep_requests=False)
        uvicorn.run(stub.app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="info")
    else:
        print("usage: python -m tokenquota.llm_stub --serve PORT  (an OpenAI/Anthropic stand-in)")
