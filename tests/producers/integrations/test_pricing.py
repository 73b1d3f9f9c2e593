"""Rate-limit headers and Retry-After parsing, and pricing of unknown models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tokenquota.producers.integrations.pricing import price_usage, rate_limit_state, retry_after

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_openai_reset_durations_become_instants() -> None:
    headers = {"x-ratelimit-remaining-tokens": "149000", "x-ratelimit-reset-tokens": "6m0s"}
    assert rate_limit_state("openai", headers, NOW) == (149000, NOW + timedelta(minutes=6))
    short = {"x-ratelimit-reset-tokens": "1.5s"}
    assert rate_limit_state("openai", short, NOW) == (None, NOW + timedelta(seconds=1.5))
    assert rate_limit_state("openai", {"x-ratelimit-reset-tokens": "20ms"}, NOW)[
        1
    ] == NOW + timedelta(milliseconds=20)
    assert rate_limit_state("openai", {"x-ratelimit-reset-tokens": "soon"}, NOW) == (None, None)


def test_anthropic_reset_is_an_rfc3339_instant() -> None:
    headers = {
        "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": "2026-11-24T12:01:00Z",
    }
    assert rate_limit_state("anthropic", headers, NOW) == (39000, NOW + timedelta(minutes=1))


def test_retry_after_in_milliseconds_seconds_or_a_date() -> None:
    assert retry_after({"retry-after-ms": "250"}, NOW) == 0.25
    assert retry_after({"retry-after": "2"}, NOW) == 2.0
    assert retry_after({"retry-after": "Tue, 24 Nov 2026 12:00:05 GMT"}, NOW) == 5.0
    assert retry_after({}, NOW) is None
    assert retry_after(None, NOW) is None


def test_an_unknown_model_is_recorded_at_zero_cost_and_says_so() -> None:
    body = {"model": "house-model-7", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    priced = price_usage("openai", "chat", body)
    assert priced is not None
    assert priced.cost_usd == Decimal(0) and "unpriced" in priced.price_source
    assert (priced.input_tokens, priced.output_tokens) == (10, 5)
    assert price_usage("openai", "chat", {"model": "gpt-4o"}) is None
