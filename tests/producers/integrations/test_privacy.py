"""Only counts leave a hook: prompt and response text reach no table and no topic; with
`privacy.hash_session_ids` the raw session id does not either, and look-ups by it work."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.server.mcpserver import Context, MCPServer
from pydantic import SecretStr

from tests.producers.integrations.mcp_support import session_meta, text_of
from tests.support import consumer_from_start, fetch_value, set_budget, settings_env, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.llm_stub import running_fake_llm
from tokenquota.privacy import stored_session_id
from tokenquota.producers import (
    APIConfig,
    TokenQuota,
    integrate_with_external_apis,
    integrate_with_memory,
    mcp_token_decorator,
    route_with_token_budget,
    session_scope,
)
from tokenquota.sections import McpSettings, PrivacySettings

pytestmark = pytest.mark.integration

CANARY = "canary-7f3a9c-secret-prompt-text"
UPSTREAM = Path(__file__).parents[3] / "examples" / "plain_mcp_server.py"
RAW_SESSION = "alice@example.com"


@dataclass
class Memory:
    content: str


class Store:
    def __init__(self) -> None:
        self.items: list[Memory] = []

    async def store(self, memory: Memory) -> bool:
        self.items.append(memory)
        return True

    async def retrieve(self, query: str, n_results: int = 5) -> list[Memory]:
        return [m for m in self.items if query in m.content][:n_results]

    async def search(self, query: str) -> list[Memory]:
        return await self.retrieve(query)

    async def delete(self, content_hash: str) -> bool:
        return False


async def every_table_text(settings: Settings) -> str:
    """Every row of every table in the test's schema, as text."""
    schema = settings.database.schema_name
    tables = await fetch_value(
        settings.database,
        "SELECT array_agg(table_name::text) FROM information_schema.tables WHERE table_schema = $1",
        schema,
    )
    texts = []
    for table in tables:
        texts.append(
            await fetch_value(
                settings.database,
                f'SELECT coalesce(string_agg(t::text, chr(10)), \'\') FROM "{schema}"."{table}" t',  # noqa: S608 - names from the catalog
            )
        )
    return "\n".join(texts)


async def every_topic_message(settings: Settings) -> bytes:
    """Every message of the usage and dead-letter topics: keys, values and headers."""
    kafka = settings.kafka
    consumer = await consumer_from_start(
        kafka.bootstrap_servers,
        [(kafka.usage_topic, kafka.partitions), (kafka.dlq_topic, kafka.dlq_partitions)],
    )
    try:
        chunks: list[bytes] = []
        while batch := await consumer.getmany(timeout_ms=2_000):
            for messages in batch.values():
                for m in messages:
                    headers = b"\t".join(name.encode() + b"=" + value for name, value in m.headers)
                    chunks.append((m.key or b"") + b"\t" + (m.value or b"") + b"\t" + headers)
        return b"\n".join(chunks)
    finally:
        await consumer.stop()


async def test_no_prompt_or_response_text_and_no_raw_session_id_is_stored_or_emitted(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={
            "privacy": PrivacySettings(hash_session_ids=True, session_id_key=SecretStr("k" * 32)),
            "mcp": McpSettings(token_budget_per_request=2_000),
            "reservations": ReservationSettings(decision_timeout=60),
        }
    )
    stored = stored_session_id(settings.privacy, RAW_SESSION)
    assert stored.startswith("h:") and RAW_SESSION not in stored
    start_worker()
    async with TokenQuota(settings) as quota, running_fake_llm() as fake:
        await set_budget(quota, RAW_SESSION, 1_000_000)
        # MCP: the tool's arguments and its result.
        server = MCPServer(name="notes")

        @server.tool()
        @mcp_token_decorator(settings=settings, quota=quota)
        async def echo(text: str, ctx: Context) -> str:
            """Echo a text."""
            return f"{text} / reply {CANARY}"

        async with Client(server) as client:
            result = await client.call_tool(
                "echo", {"text": f"prompt {CANARY}"}, meta=session_meta(RAW_SESSION)
            )
            assert not result.is_error and CANARY in text_of(result)
        # A memory store: the content stored and the results retrieved.
        memory = await integrate_with_memory(Store(), session_id=RAW_SESSION, quota=quota)
        await memory.store(Memory(f"remember {CANARY}"))
        assert await memory.retrieve(CANARY)

        # An orchestrated task: its arguments and its result.
        async def task(goal: str) -> str:
            return f"done {goal}"

        assert CANARY in await route_with_token_budget(
            RAW_SESSION, task, f"goal {CANARY}", quota=quota
        )
        # The OpenAI and Anthropic clients: the prompts.
        openai_client = openai.AsyncOpenAI(api_key="sk-test", base_url=f"{fake.url}/v1")
        anthropic_client = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=fake.url)
        try:
            api = await integrate_with_external_apis(
                APIConfig("openai", openai_client),
                APIConfig("anthropic", anthropic_client),
                quota=quota,
            )
            messages = [{"role": "user", "content": f"question {CANARY}"}]
            with session_scope(RAW_SESSION):
                await api.chat.completions.create(model="gpt-4o", messages=messages)
                await api.messages.create(
                    model="claude-sonnet-4-5", max_tokens=100, messages=messages
                )
                # Streamed, the wrappers count the streamed text themselves.
                chunks = await api.chat.completions.create(
                    model="gpt-4o", messages=messages, stream=True
                )
                assert [chunk async for chunk in chunks]
                async with await api.messages.create(
                    model="claude-sonnet-4-5", max_tokens=100, messages=messages, stream=True
                ) as stream:
                    assert [event async for event in stream]
        finally:
            await openai_client.close()
            await anthropic_client.close()
        # The metering proxy in front of an MCP server nobody here changed: arguments out,
        # results back (reversed by the server), the session named on the command line.
        proxy = StdioServerParameters(
            command=sys.executable,
            args=["-m", "tokenquota", "mcp-proxy", "--session", RAW_SESSION, "--",
                  sys.executable, str(UPSTREAM), "--stdio"],
            env={**settings_env(settings), "PRIVACY_HASH_SESSION_IDS": "true",
                 "PRIVACY_SESSION_ID_KEY": "k" * 32, "LOG_LEVEL": "WARNING"},
        )  # fmt: skip
        async with Client(proxy, cache=None, read_timeout_seconds=90) as proxied:
            result = await proxied.call_tool("reverse", {"text": f"prompt {CANARY}"})
            assert not result.is_error and CANARY[::-1] in text_of(result)

        # MCP (2 events), memory (2), task (1), OpenAI and Anthropic (TokenUsed + ApiCost
        # each, streamed and not), the proxy (2).
        async def all_applied() -> bool:
            count = await fetch_value(
                settings.database,
                "SELECT count(*) FROM usage_events"
                " WHERE session_id = $1 AND event_type <> 'BudgetSet'",
                stored,
            )
            return bool(count >= 17)

        await wait_until(all_applied, 60, "every hook's events applied")
        # Look-ups by the raw id find the hashed session.
        metrics = await quota.session_metrics(RAW_SESSION)
        assert metrics.known and metrics.tokens_used_total > 0
        assert metrics.session_id == stored

    tables = await every_table_text(settings)
    assert stored in tables  # the scan sees the session's rows
    for secret in (CANARY, CANARY[::-1], RAW_SESSION):
        assert secret not in tables, secret
    topics = await every_topic_message(settings)
    assert stored.encode() in topics
    for secret in (CANARY, CANARY[::-1], RAW_SESSION):
        assert secret.encode() not in topics, secret
