"""What an LLM call cost, from the provider's usage, priced by genai-prices."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from importlib.metadata import version
from typing import Any, Literal

import genai_prices

__all__ = [
    "PricedUsage",
    "Provider",
    "ReservationPrice",
    "price_reservation",
    "price_usage",
    "rate_limit_state",
    "retry_after",
]

log = logging.getLogger("tokenquota.pricing")

Provider = Literal["openai", "anthropic"]
_CENT_FRACTION = Decimal("0.0000000001")  # ApiCost keeps 10 decimal places
_GENAI_PRICES = f"genai-prices {version('genai-prices')}"


@dataclass(frozen=True, slots=True)
class PricedUsage:
    """A call's tokens as the provider reported them, and their price in USD."""

    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal
    price_source: str


@dataclass(frozen=True, slots=True)
class ReservationPrice:
    """What a reservation is priced at when it is made, and where the price came from."""

    usd: Decimal
    source: str


def price_reservation(
    model: str, prompt_tokens: int, output_tokens: int, provider: str | None = None
) -> ReservationPrice | None:
    """The most a call can cost: `prompt_tokens` at the model's input price plus
    `output_tokens` (the output it may write) at its output price, from genai-prices.

    None for a model genai-prices does not know: the reservation is then unpriced and
    holds no dollars (a USD limit already spent still refuses it).
    """
    usage = genai_prices.Usage(input_tokens=prompt_tokens, output_tokens=output_tokens)
    try:
        price = genai_prices.calc_price(usage, model, provider_id=provider)
    except LookupError:
        log.warning("no genai-prices price for model %r: the reservation is unpriced", model)
        return None
    return ReservationPrice(
        usd=price.total_price.quantize(_CENT_FRACTION),
        source=f"{_GENAI_PRICES}:{price.provider.id}/{price.model.id}"[:200],
    )


def price_usage(provider: Provider, flavor: str, response: dict[str, Any]) -> PricedUsage | None:
    """Usage and cost of `response` (a response body as a dict); None when it has no usage.

    An unknown model is recorded at cost 0 with a price source that says so.
    """
    if not response.get("usage"):
        return None
    api_flavor = flavor if provider == "openai" else "default"
    model = str(response.get("model") or "unknown")
    try:
        extracted = genai_prices.extract_usage(
            response, provider_id=provider, api_flavor=api_flavor
        )
        price = extracted.calc_price()
    except LookupError:
        log.warning("no genai-prices price for %s model %r: cost recorded as 0", provider, model)
        return _unpriced(provider, model, response["usage"])
    usage = extracted.usage
    return PricedUsage(
        model=model,
        input_tokens=int(usage.input_tokens or 0),
        output_tokens=int(usage.output_tokens or 0),
        cache_read_tokens=int(usage.cache_read_tokens or 0),
        cache_write_tokens=int(usage.cache_write_tokens or 0),
        cost_usd=price.total_price.quantize(_CENT_FRACTION),
        price_source=f"{_GENAI_PRICES}:{price.provider.id}/{price.model.id}"[:200],
    )


def _unpriced(provider: Provider, model: str, usage: dict[str, Any]) -> PricedUsage:
    """The provider's counts, read without genai-prices (which only knows priced models)."""

    def number(*names: str) -> int:
        return next((int(usage[n]) for n in names if isinstance(usage.get(n), int)), 0)

    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cache_read = number("cache_read_input_tokens") or int(details.get("cached_tokens") or 0)
    cache_write = number("cache_creation_input_tokens")
    input_tokens = number("prompt_tokens", "input_tokens")
    if provider == "anthropic":  # Anthropic's input_tokens leave the cache out
        input_tokens += cache_read + cache_write
    return PricedUsage(
        model=model,
        input_tokens=input_tokens,
        output_tokens=number("completion_tokens", "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cost_usd=Decimal(0),
        price_source=f"{_GENAI_PRICES}:unpriced {provider}/{model}"[:200],
    )


def _duration(text: str) -> timedelta | None:
    """OpenAI's reset durations: '20ms', '1.5s', '6m0s', '1h2m3s'."""
    total = 0.0
    number = ""
    rest = text.strip()
    if not rest:
        return None
    i = 0
    while i < len(rest):
        ch = rest[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if rest.startswith("ms", i) else ch
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}.get(unit)
        if scale is None or not number:
            return None
        total += float(number) * scale
        number = ""
        i += len(unit)
    if number:  # a bare number: seconds
        total += float(number)
    return timedelta(seconds=total)


def rate_limit_state(
    provider: Provider, headers: Any, now: datetime
) -> tuple[int | None, datetime | None]:
    """(tokens remaining, when the token limit resets) from the response headers."""
    if provider == "openai":
        remaining = headers.get("x-ratelimit-remaining-tokens")
        reset = headers.get("x-ratelimit-reset-tokens")
        delta = _duration(reset) if reset else None
        reset_at = now + delta if delta is not None else None
    else:
        remaining = headers.get("anthropic-ratelimit-tokens-remaining") or headers.get(
            "anthropic-ratelimit-input-tokens-remaining"
        )
        reset = headers.get("anthropic-ratelimit-tokens-reset") or headers.get(
            "anthropic-ratelimit-input-tokens-reset"
        )
        try:
            reset_at = datetime.fromisoformat(reset.replace("Z", "+00:00")) if reset else None
        except ValueError:
            reset_at = None
    try:
        left = int(remaining) if remaining is not None else None
    except ValueError:
        left = None
    if reset_at is not None and reset_at.tzinfo is None:
        reset_at = None
    return left, reset_at


def retry_after(headers: Any, now: datetime) -> float | None:
    """Seconds the server asks to wait: `retry-after-ms`, or `retry-after` (seconds or a date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max((parsedate_to_datetime(value) - now).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None
