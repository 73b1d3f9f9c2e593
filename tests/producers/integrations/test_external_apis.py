"""The official openai and anthropic SDKs behind budgets, against a local wire-format server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import anthropic
import genai_prices
import openai
import pytest

from tests.support import fetch_value, set_budget, wait_for_usage, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.errors import TokenQuotaExceededError
from tokenquota.llm_stub import REPLY, FakeLLM, running_fake_llm
from tokenquota.producers import TokenQuota, session_scope, token_counter
from tokenquota.producers.integrations.external_apis import (
    APIConfig,
    integrate_with_external_apis,
    manage_api_tokens,
)
from tokenquota.producers.integrations.pricing import price_reservation
from tokenquota.sections import ExternalApiSettings

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Will the budget hold?"}]


def llm_settings(settings: Settings, **external: Any) -> Settings:
    return settings.model_copy(
        update={
            "reservations": ReservationSettings(decision_timeout=60),
            "external_apis": ExternalApiSettings(**external),
        }
    )


OPEN_CLIENTS: list[Any] = []


def clients(fake: FakeLLM) -> tuple[APIConfig, APIConfig]:
    pair = (
        openai.AsyncOpenAI(api_key="sk-test", base_url=f"{fake.url}/v1"),
        anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=fake.url),
    )
    OPEN_CLIENTS.extend(pair)
    return APIConfig("openai", pair[0]), APIConfig("anthropic", pair[1])


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()


async def api_row(settings: Settings, session: str, api: str) -> list[Any]:
    row = await fetch_value(
        settings.database,
        "SELECT array[requests, input_tokens, output_tokens, cache_read_tokens, tokens_used,"
        " rate_limit_remaining]::text[] || cost_usd::text || rate_limit_reset::text"
        " FROM external_api_tokens WHERE session_id = $1 AND api_name = $2",
        session,
        api,
    )
    return list(row) if row is not None else []


async def test_chat_responses_and_messages_streamed_or_not_settle_provider_usage_and_cost(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = llm_settings(pipeline_settings)
    start_worker()
    async with TokenQuota(settings) as quota, running_fake_llm() as fake:
        await set_budget(quota, "llm", 100_000)
        api = await integrate_with_external_apis(*clients(fake), quota=quota)
        with session_scope("llm"):
            chat = await api.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=200
            )
            assert chat.choices[0].message.content == REPLY
            pieces = [
                chunk.choices[0].delta.content
                async for chunk in await api.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, stream=True
                )
                if chunk.choices
            ]
            assert "".join(pieces).strip() == REPLY
            assert fake.requests[-1]["stream_options"] == {"include_usage": True}
            response = await api.responses.create(
                model="gpt-4o", input="Will it?", max_output_tokens=50
            )
            assert response.output_text == REPLY
            events = [
                e.type
                async for e in await api.responses.create(
                    model="gpt-4o", input="Will it?", stream=True
                )
            ]
            assert events[-1] == "response.completed"
            message = await api.messages.create(
                model="claude-sonnet-4-5", max_tokens=300, messages=MESSAGES, system="Be brief."
            )
            assert message.content[0].text == REPLY
            async with await api.messages.create(
                model="claude-sonnet-4-5", max_tokens=300, messages=MESSAGES, stream=True
            ) as stream:
                kinds = [event.type async for event in stream]
            assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        # OpenAI reports 120 in / 30 out; Anthropic's input excludes its 20 cached tokens.
        await wait_for_usage(quota, "llm", 4 * 150 + 2 * (140 + 30))
        openai_row = await api_row(settings, "llm", "openai")
        assert openai_row[:6] == ["4", "480", "120", "80", "600", "149000"]
        price = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=120, output_tokens=30, cache_read_tokens=20),
            model_ref="gpt-4o",
            provider_id="openai",
        ).total_price
        assert Decimal(openai_row[6]) == 4 * price
        assert openai_row[7] is not None  # now + 6m0s
        anthropic_row = await api_row(settings, "llm", "anthropic")
        assert anthropic_row[:6] == ["2", "280", "60", "40", "340", "39000"]
        assert anthropic_row[7].startswith("2026-11-24 12:01:00")
        sources = await fetch_value(
            settings.database,
            "SELECT string_agg(DISTINCT payload->>'price_source', ',') FROM usage_events"
            " WHERE event_type = 'ApiCost'",
        )
        assert sources.startswith("genai-prices ")
        by = await fetch_value(
            settings.database,
            "SELECT string_agg(DISTINCT payload->>'counted_by', ',') FROM usage_events"
            " WHERE event_type = 'TokenUsed'",
        )
        assert by == "provider"
        reserved = await fetch_value(
            settings.database,
            "SELECT array_agg(tokens ORDER BY requested_at) FROM reservations"
            " WHERE session_id = 'llm'",
        )
        prompt = token_counter.count_messages(MESSAGES, "gpt-4o")
        assert reserved[0] == prompt + 200  # max_tokens given
        assert reserved[1] == prompt + 4096  # none given: the configured cap, not the budget
        # Each reservation was priced (prompt at the input price, its output cap at the
        # output price), and its ApiCost named it: the price held no longer, the cost kept.
        usd = await fetch_value(
            settings.database,
            "SELECT array_agg(array[reserved_usd::text, coalesce(usd_held::text, 'closed'),"
            " settled_usd::text] ORDER BY requested_at) FROM reservations WHERE session_id = 'llm'",
        )
        expected = price_reservation("gpt-4o", prompt, 200, "openai")
        assert expected is not None and Decimal(usd[0][0]) == expected.usd
        assert [row[1] for row in usd] == ["closed"] * 6
        assert Decimal(usd[0][2]) == price


async def test_429_and_5xx_are_retried_honouring_retry_after_and_failures_release(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = llm_settings(pipeline_settings, max_retries=2)
    start_worker()
    async with TokenQuota(settings) as quota, running_fake_llm(FakeLLM(retry_after="0.3")) as fake:
        await set_budget(quota, "r", 100_000)
        api = await integrate_with_external_apis(*clients(fake), quota=quota)
        fake.fail_next = [429, 503]
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await api.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=10, session_id="r"
        )
        assert reply.choices[0].message.content == REPLY and len(fake.requests) == 3
        assert loop.time() - started >= 2 * 0.3  # each retry waited the Retry-After it was given
        fake.fail_next = [429, 429, 429]
        with pytest.raises(anthropic.RateLimitError):
            await api.messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES, session_id="r"
            )
        assert len(fake.requests) == 6

        async def released() -> bool:
            return bool(
                await fetch_value(
                    settings.database,
                    "SELECT count(*) FROM reservations"
                    " WHERE session_id = 'r' AND status = 'released'",
                )
                == 1
            )

        await wait_until(released, 60, "the failed call's release")
        await wait_for_usage(quota, "r", 150)


async def test_an_exhausted_budget_falls_back_to_error_model_or_cache(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    async with running_fake_llm() as fake:
        as_error = llm_settings(pipeline_settings)
        async with TokenQuota(as_error) as quota:
            await set_budget(quota, "f", 400)
            api = await integrate_with_external_apis(*clients(fake), quota=quota)
            with session_scope("f"), pytest.raises(TokenQuotaExceededError, match="'f'"):
                await api.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, max_tokens=1000
                )
            assert fake.requests == []

        by_model = llm_settings(pipeline_settings, fallback="model", fallback_model="gpt-4o-mini")
        async with TokenQuota(by_model) as quota:
            api = await integrate_with_external_apis(*clients(fake), quota=quota)
            with session_scope("f"):
                reply = await api.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, max_tokens=1000
                )
            assert reply.model == "gpt-4o-mini"
            sent = fake.requests[-1]
            prompt = token_counter.count_messages(MESSAGES, "gpt-4o")
            assert sent["model"] == "gpt-4o-mini" and sent["max_tokens"] == 400 - prompt
            await wait_for_usage(quota, "f", 150)

        by_cache = llm_settings(pipeline_settings, fallback="cache")
        async with TokenQuota(by_cache) as quota:
            await set_budget(quota, "c", 4_100)  # room for one call of 4,000 + prompt
            api = await integrate_with_external_apis(*clients(fake), quota=quota)
            with session_scope("c"):
                first = await api.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, max_tokens=4_000
                )
                await wait_for_usage(quota, "c", 150)
                requests_before = len(fake.requests)
                again = await api.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, max_tokens=4_000
                )
                assert again == first and len(fake.requests) == requests_before  # from the cache
                with pytest.raises(TokenQuotaExceededError):  # nothing cached for this one
                    await api.chat.completions.create(
                        model="gpt-4o",
                        messages=[{"role": "user", "content": "new"}],
                        max_tokens=4_000,
                    )


async def test_manage_api_tokens_checks_rate_limit_and_budget(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = llm_settings(pipeline_settings, rate_limit=2)
    start_worker()
    async with TokenQuota(settings) as quota, running_fake_llm() as fake:
        await set_budget(quota, "m", 1_000)
        limited = openai.AsyncOpenAI(api_key="k", base_url=f"{fake.url}/v1")
        OPEN_CLIENTS.append(limited)
        api = await integrate_with_external_apis(APIConfig("limited", limited), quota=quota)
        assert await manage_api_tokens("limited", 500, session_id="m", quota=quota)
        assert not await manage_api_tokens("limited", 1_001, session_id="m", quota=quota)
        for _ in range(2):
            await api["limited"].create(
                "chat",
                {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 10, "session_id": "m"},
            )
        assert not await manage_api_tokens(
            "limited", 1, session_id="m", quota=quota
        )  # 2 per minute
        assert not await manage_api_tokens("limited", 1)


async def test_a_call_cancelled_while_it_waits_on_the_rate_limit_releases_its_tokens(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = llm_settings(pipeline_settings, rate_limit=1)
    start_worker()
    async with TokenQuota(settings) as quota, running_fake_llm() as fake:
        await set_budget(quota, "w", 100_000)
        paced = openai.AsyncOpenAI(api_key="k", base_url=f"{fake.url}/v1")
        OPEN_CLIENTS.append(paced)
        api = await integrate_with_external_apis(APIConfig("paced", paced), quota=quota)
        call = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 10, "session_id": "w"}
        await api["paced"].create("chat", dict(call))
        await wait_for_usage(quota, "w", 150)
        # One request a minute: the second call holds its reservation while it waits.
        waiting = asyncio.create_task(api["paced"].create("chat", dict(call)))

        async def second_is(status: str) -> bool:
            # The first call's reservation is settled; the second's is the only other.
            count = await fetch_value(
                settings.database,
                "SELECT count(*) FROM reservations WHERE session_id = 'w' AND status = $1",
                status,
            )
            return bool(count == 1)

        await wait_until(lambda: second_is("accepted"), 60, "the waiting call's reservation")
        assert not waiting.done() and len(fake.requests) == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await wait_until(lambda: second_is("released"), 60, "the cancelled call's release")
        assert len(fake.requests) == 1  # it never went out
        await wait_for_usage(quota, "w", 150)
