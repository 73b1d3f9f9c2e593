"""The official openai and anthropic clients under budgets, with costs from genai-prices.

Points the SDKs at OPENAI_BASE_URL / ANTHROPIC_BASE_URL when set; otherwise it starts
the stub LLM server of tokenquota.llm_stub on 127.0.0.1 (this machine has no internet).
Needs the stack: run `make run`, then, with the addresses it prints,
KAFKA_BOOTSTRAP_SERVERS=... DATABASE_URL=... .venv/bin/python examples/external_apis.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import anthropic
import openai
from _demo import demo_session, settled

from tokenquota.llm_stub import running_fake_llm
from tokenquota.producers import (
    APIConfig,
    close_default_quota,
    integrate_with_external_apis,
    manage_api_tokens,
    session_scope,
)


@contextlib.asynccontextmanager
async def endpoints() -> AsyncIterator[tuple[str, str]]:
    if os.environ.get("OPENAI_BASE_URL") and os.environ.get("ANTHROPIC_BASE_URL"):
        yield os.environ["OPENAI_BASE_URL"], os.environ["ANTHROPIC_BASE_URL"]
        return
    async with running_fake_llm() as stub:
        yield f"{stub.url}/v1", stub.url


async def main() -> None:
    session = await demo_session("llm", 50_000)
    async with endpoints() as (openai_url, anthropic_url):
        api = await integrate_with_external_apis(
            APIConfig(
                "openai",
                openai.AsyncOpenAI(
                    base_url=openai_url, api_key=os.environ.get("OPENAI_API_KEY", "stub")
                ),
            ),
            APIConfig(
                "anthropic",
                anthropic.AsyncAnthropic(
                    base_url=anthropic_url, api_key=os.environ.get("ANTHROPIC_API_KEY", "stub")
                ),
            ),
        )
        messages = [{"role": "user", "content": "Will the budget hold?"}]
        with session_scope(session):
            if await manage_api_tokens("openai", 1_000):
                reply = await api.chat.completions.create(
                    model="gpt-4o", messages=messages, max_tokens=200
                )
                print("openai ->", reply.choices[0].message.content)
            stream = await api.messages.create(
                model="claude-sonnet-4-5", max_tokens=200, messages=messages, stream=True
            )
            text = [e.delta.text async for e in stream if e.type == "content_block_delta"]
            print("anthropic (streamed) ->", "".join(text).strip())
    print(session, "used", await settled(session, 2), "tokens, as the providers reported them")
    await close_default_quota()


if __name__ == "__main__":
    asyncio.run(main())
