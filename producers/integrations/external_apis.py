"""Budgets, costs and rate limits for the official `openai` and `anthropic` async clients.

    api = await integrate_with_external_apis(
        APIConfig("openai", AsyncOpenAI()), APIConfig("anthropic", AsyncAnthropic())
    )
    with session_scope("alice"):
        reply = await api.chat.completions.create(model="gpt-4o", messages=[...])

Before a call: the prompt's tokens plus `max_tokens` (or `external_apis.
default_max_output_tokens` when the call sets none) are reserved, and the API's
client-side rate limit is waited on. After it: a TokenUsed with the provider's usage
(`counted_by=provider`) settles the reservation, and an ApiCost records the
genai-prices cost and the provider's rate-limit headers. 429 and 5xx answers are
retried with backoff, honouring Retry-After. When the budget is exhausted,
`external_apis.fallback` decides: `error`, a cheaper `model`, or a `cache`d reply.
A call that fails or is cancelled (while it waits on the rate limit, is sent, or is
read) releases its reservation; so does an answer that cannot be accounted.
A session of a budget tree names its account (an `account=` keyword of the call, else
the `session_scope`'s): the reservation names it, and so its settlement and the ApiCost.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenquota.config import Settings
from tokenquota.errors import IntegrationError, TokenQuotaExceededError
from tokenquota.schemas import ApiCost, CountedBy, Priority, Source, utc_now

from ..defaults import current_account, current_session, get_quota
from ..reservations import TokenQuota
from ..token_counter import payload_text, token_counter
from .api_streams import Call, Flavor, MeteredStream, release_unsettled
from .pricing import (
    PricedUsage,
    Provider,
    price_reservation,
    price_usage,
    rate_limit_state,
    retry_after,
)
from .rate_limit import RateLimiter

__all__ = [
    "APIConfig",
    "ExternalAPIClient",
    "MeteredAPI",
    "MeteredStream",
    "integrate_with_external_apis",
    "manage_api_tokens",
]

log = logging.getLogger("tokenquota.external_apis")

_OUTPUT_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_RETRY_STATUS = {408, 409, 429}
_limiters: dict[str, RateLimiter] = {}


def _retryable(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in _RETRY_STATUS or status >= 500
    return type(exc).__name__ in ("APIConnectionError", "APITimeoutError")


def _provider_of(client: Any) -> Provider:
    module = type(client).__module__.split(".")[0]
    if module in ("openai", "anthropic"):
        return module  # type: ignore[return-value]
    raise TypeError(
        f"{type(client).__name__} is neither an openai nor an anthropic client; "
        "pass AsyncOpenAI(...) or AsyncAnthropic(...)"
    )


@dataclass(frozen=True)
class APIConfig:
    """One external API: its name (as recorded), the official async client, its limits."""

    name: str
    client: Any
    requests_per_minute: int | None = None  # default: external_apis.rate_limit
    tokens_per_minute: int | None = None  # default: external_apis.tokens_per_minute
    fallback_model: str | None = None  # default: external_apis.fallback_model


def _limiter(name: str, requests: int, tokens: int | None) -> RateLimiter:
    limiter = _limiters.get(name)
    if limiter is None or (limiter.requests_per_minute, limiter.tokens_per_minute) != (
        requests,
        tokens,
    ):
        limiter = _limiters[name] = RateLimiter(requests, tokens)
    return limiter


class MeteredAPI:
    """One external API behind budgets: reserve, rate-limit, call with retries, account."""

    def __init__(self, config: APIConfig, settings: Settings, quota: TokenQuota | None) -> None:
        self.config = config
        self.name = config.name
        self.provider = _provider_of(config.client)
        self.settings = settings
        self._quota = quota
        options = settings.external_apis
        # Retries are ours (they honour Retry-After and are logged), not the SDK's.
        self.client = config.client.with_options(max_retries=0, timeout=options.timeout)
        self.limiter = _limiter(
            config.name,
            config.requests_per_minute or options.rate_limit,
            config.tokens_per_minute or options.tokens_per_minute,
        )
        self.source = Source(component="external_api", name=config.name[:100])
        # Replies are kept only for the `cache` fallback, the one that serves them.
        self._caching = options.fallback_enabled and options.fallback == "cache"
        self._cache: OrderedDict[str, Any] = OrderedDict()

    # -- the call --------------------------------------------------------------------------

    async def create(self, flavor: Flavor, kwargs: dict[str, Any]) -> Any:
        """Make one metered call; `session_id`, `task_id`, `priority`, `account` are ours,
        not the SDK's."""
        session_id = current_session(kwargs.pop("session_id", None), what=f"{self.name} call")
        account = current_account(kwargs.pop("account", None))
        task_id: str | None = kwargs.pop("task_id", None)
        priority: Priority = kwargs.pop("priority", "normal")
        cache_key = self._cache_key(flavor, kwargs) if self._caching else None
        prompt = self._prompt_tokens(flavor, kwargs)
        output_limit = self._output_limit(kwargs)
        wanted = prompt + output_limit
        quota = await get_quota(self._quota, settings=self.settings)
        try:
            reservation = await quota.reserve(
                session_id,
                wanted,
                task_id,
                priority,
                source=self.source,
                account=account,
                **self._price(self._model(kwargs), prompt, output_limit),
            )
        except TokenQuotaExceededError as exc:
            fallback = await self._fallback(
                exc, kwargs, prompt, cache_key, quota, task_id, priority, flavor, account
            )
            if fallback is None:
                raise
            kind, value = fallback
            if kind == "cached":
                return value
            reservation = value
        call = Call(self, flavor, session_id, kwargs, prompt, reservation, quota, cache_key)
        try:
            await self.limiter.acquire(reservation.tokens)
            raw = await self._send(flavor, kwargs)
            parsed = raw.parse()
            if inspect.isawaitable(parsed):  # anthropic's raw responses parse asynchronously
                parsed = await parsed
            body = None if kwargs.get("stream") else parsed.model_dump(mode="json")
        except BaseException:
            await release_unsettled(call)
            raise
        if body is None:
            return MeteredStream(call, parsed, raw.headers)
        await self._account(call, body, raw.headers, parsed)
        return parsed

    def _method(self, flavor: Flavor) -> Any:
        if flavor == "chat":
            return self.client.chat.completions.with_raw_response.create
        if flavor == "responses":
            return self.client.responses.with_raw_response.create
        return self.client.messages.with_raw_response.create

    async def _send(self, flavor: Flavor, kwargs: dict[str, Any]) -> Any:
        options = self.settings.external_apis
        attempt = 0
        while True:
            try:
                return await self._method(flavor)(**kwargs)
            except Exception as exc:
                if not _retryable(exc) or attempt >= options.max_retries:
                    raise
                response = getattr(exc, "response", None)
                asked = retry_after(getattr(response, "headers", None), utc_now())
                delay = (
                    asked if asked is not None else min(0.5 * 2**attempt, options.retry_backoff_max)
                )
                delay = min(delay, options.retry_backoff_max)
                attempt += 1
                log.warning(
                    "%s answered %s; retry %d/%d in %.2f s",
                    self.name,
                    getattr(exc, "status_code", type(exc).__name__),
                    attempt,
                    options.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    # -- estimates -------------------------------------------------------------------------

    def _model(self, kwargs: Mapping[str, Any]) -> str:
        return str(kwargs.get("model") or "unknown")

    def _prompt_tokens(self, flavor: Flavor, kwargs: Mapping[str, Any]) -> int:
        model = self._model(kwargs)
        total = 0
        if flavor in ("chat", "messages"):
            total += token_counter.count_messages(kwargs.get("messages") or [], model)
        system = kwargs.get("system") if flavor == "messages" else kwargs.get("instructions")
        if system:
            total += token_counter.count_payload(system, model)
        if flavor == "responses":
            source = kwargs.get("input") or ""
            if isinstance(source, str):
                total += token_counter.count(source, model)
            else:
                total += token_counter.count_messages(source, model)
        if kwargs.get("tools"):
            total += token_counter.count_payload(kwargs["tools"], model)
        return int(total)

    def _output_limit(self, kwargs: Mapping[str, Any]) -> int:
        for key in _OUTPUT_LIMIT_KEYS:
            value = kwargs.get(key)
            if isinstance(value, int) and value > 0:
                return value
        return self.settings.external_apis.default_max_output_tokens

    def _price(self, model: str, prompt: int, output: int) -> dict[str, Any]:
        """The reservation's price (the most the call can cost) for USD limits; nothing
        for a model genai-prices does not know (the reservation is then unpriced)."""
        price = price_reservation(model, prompt, output, self.provider)
        if price is None:
            return {}
        return {"reserved_usd": price.usd, "price_source": price.source}

    # -- fallback --------------------------------------------------------------------------

    def _cache_key(self, flavor: Flavor, kwargs: Mapping[str, Any]) -> str:
        request = {k: v for k, v in kwargs.items() if k not in ("stream", "stream_options")}
        text = json.dumps([self.name, flavor, request], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    async def _fallback(
        self,
        refused: TokenQuotaExceededError,
        kwargs: dict[str, Any],
        prompt: int,
        cache_key: str | None,
        quota: TokenQuota,
        task_id: str | None,
        priority: Priority,
        flavor: Flavor,
        account: str | None,
    ) -> tuple[str, Any] | None:
        options = self.settings.external_apis
        if not options.fallback_enabled or options.fallback == "error":
            return None
        if options.fallback == "cache":
            cached = self._cache.get(cache_key) if cache_key is not None else None
            if cached is None or kwargs.get("stream"):
                return None
            log.info(
                "%s: budget exhausted for %s; serving a cached reply", self.name, refused.session_id
            )
            return "cached", cached
        model = self.config.fallback_model or options.fallback_model
        room = refused.available - prompt
        if model is None or room <= 0:
            return None
        key = next((k for k in _OUTPUT_LIMIT_KEYS if k in kwargs), None)
        key = key or ("max_output_tokens" if flavor == "responses" else "max_tokens")
        kwargs[key] = min(room, self._output_limit(kwargs))
        kwargs["model"] = model
        log.info(
            "%s: budget short for %s; falling back to %s", self.name, refused.session_id, model
        )
        try:
            reservation = await quota.reserve(
                refused.session_id,
                prompt + kwargs[key],
                task_id,
                priority,
                source=self.source,
                account=account,
                **self._price(model, prompt, kwargs[key]),
            )
        except TokenQuotaExceededError:
            return None
        return "reserved", reservation

    # -- accounting ------------------------------------------------------------------------

    async def _account(
        self, call: Call, body: dict[str, Any], headers: Any, parsed: Any = None
    ) -> None:
        """Settle the call's reservation with its usage and record its cost.

        Should the usage not be read, counted or settled, the reservation is released
        and the error raised.
        """
        try:
            priced = await self._settle(call, body)
        except BaseException:
            await release_unsettled(call)
            raise
        if priced is None:
            return
        await self._emit_cost(call, priced, headers, body.get("id"))
        if parsed is not None and call.cache_key is not None:
            self._cache[call.cache_key] = parsed
            while len(self._cache) > 128:
                self._cache.popitem(last=False)

    async def _settle(self, call: Call, body: dict[str, Any]) -> PricedUsage | None:
        """Settle with the provider's usage (returned, priced) or, without one, a count."""
        flavor = "chat" if call.flavor == "messages" else call.flavor
        priced = price_usage(self.provider, flavor, body)
        model = str(body.get("model") or self._model(call.kwargs))
        operation = f"{self.name}.{call.flavor}"[:100]
        if priced is None:  # a server that reports no usage: count what we can
            text = "".join(call.streamed_text) or payload_text(body.get("choices") or body)
            output = token_counter.count(text, model)
            by: CountedBy = "estimate" if not output.exact else "tiktoken"
            await call.reservation.settle(
                call.prompt_tokens, int(output), model, operation=operation, counted_by=by
            )
            return self._estimated_cost(call, model, int(output))
        await call.reservation.settle(
            priced.input_tokens,
            priced.output_tokens,
            priced.model,
            operation=operation,
            counted_by="provider",
        )
        return priced

    def _estimated_cost(self, call: Call, model: str, output: int) -> PricedUsage | None:
        """The cost of a call without reported usage, priced from the counted tokens, for a
        priced reservation: its ApiCost must come, or its price stays held until it expires
        and its spend is never counted."""
        if call.reservation.event.reserved_usd is None:
            return None
        price = price_reservation(model, call.prompt_tokens, output, self.provider)
        if price is None:
            return None
        return PricedUsage(
            model=model,
            input_tokens=call.prompt_tokens,
            output_tokens=output,
            cache_read_tokens=0,
            cache_write_tokens=0,
            cost_usd=price.usd,
            price_source=f"{price.source}:estimate"[:200],
        )

    async def _emit_cost(
        self, call: Call, priced: PricedUsage, headers: Any, response_id: object
    ) -> None:
        now = utc_now()
        remaining, reset = rate_limit_state(self.provider, headers, now)
        request_id = headers.get("x-request-id") or headers.get("request-id") or response_id
        quota = await get_quota(self._quota, settings=self.settings)
        await quota.emit(
            ApiCost(
                session_id=call.session_id,
                task_id=call.reservation.event.task_id,
                source=self.source,
                account=call.reservation.event.account,
                occurred_at=now,
                api=self.name,
                model=priced.model,
                input_tokens=priced.input_tokens,
                output_tokens=priced.output_tokens,
                cache_read_tokens=priced.cache_read_tokens,
                cache_write_tokens=priced.cache_write_tokens,
                cost_usd=priced.cost_usd,
                price_source=priced.price_source,
                request_id=str(request_id)[:255] if request_id else None,
                rate_limit_remaining=remaining,
                rate_limit_reset=reset,
                reservation_id=call.reservation.reservation_id,
            )
        )


class _Create:
    def __init__(self, api: MeteredAPI, flavor: Flavor) -> None:
        self._api = api
        self._flavor = flavor

    async def create(self, **kwargs: Any) -> Any:
        """The SDK's `create`, metered (extra keywords: session_id, task_id, priority,
        account)."""
        if self._flavor == "chat" and kwargs.get("stream"):
            options = dict(kwargs.get("stream_options") or {})
            options.setdefault("include_usage", True)
            kwargs["stream_options"] = options
        return await self._api.create(self._flavor, kwargs)


class _Chat:
    def __init__(self, api: MeteredAPI) -> None:
        self.completions = _Create(api, "chat")


class ExternalAPIClient:
    """The metered APIs by name; `.chat`, `.responses` (first OpenAI API) and `.messages`
    (first Anthropic API) mirror the SDKs."""

    def __init__(self, apis: list[MeteredAPI]) -> None:
        self.apis = {api.name: api for api in apis}
        openai_api = next((a for a in apis if a.provider == "openai"), None)
        anthropic_api = next((a for a in apis if a.provider == "anthropic"), None)
        self._openai = openai_api
        self._anthropic = anthropic_api

    def __getitem__(self, name: str) -> MeteredAPI:
        return self.apis[name]

    @property
    def chat(self) -> _Chat:
        """`chat.completions.create(...)` of the first OpenAI API."""
        return _Chat(self._need(self._openai, "an OpenAI"))

    @property
    def responses(self) -> _Create:
        """`responses.create(...)` of the first OpenAI API."""
        return _Create(self._need(self._openai, "an OpenAI"), "responses")

    @property
    def messages(self) -> _Create:
        """`messages.create(...)` of the first Anthropic API."""
        return _Create(self._need(self._anthropic, "an Anthropic"), "messages")

    @staticmethod
    def _need(api: MeteredAPI | None, kind: str) -> MeteredAPI:
        if api is None:
            raise IntegrationError(f"no {kind} client was given to integrate_with_external_apis")
        return api


async def integrate_with_external_apis(
    *configs: APIConfig, settings: Settings | None = None, quota: TokenQuota | None = None
) -> ExternalAPIClient:
    """Put the given API clients behind budgets, rate limits and cost tracking."""
    if not configs:
        raise ValueError("integrate_with_external_apis needs at least one APIConfig")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"API names must be unique, got {names}")
    client = await get_quota(quota, settings=settings)
    return ExternalAPIClient([MeteredAPI(c, settings or client.settings, client) for c in configs])


async def manage_api_tokens(
    api_name: str,
    required_tokens: int,
    *,
    session_id: str | None = None,
    quota: TokenQuota | None = None,
    account: str | None = None,
) -> bool:
    """Whether a call of `required_tokens` to `api_name` could go out now.

    True when the API's rate limit has room and, if a session is given or in scope,
    the session's budget has `required_tokens` available, and so has every budget tree
    node above it (`account`, or the `session_scope`'s) that has limits. Nothing is
    reserved.
    """
    limiter = _limiters.get(api_name)
    if limiter is not None and not limiter.has_capacity(required_tokens):
        return False
    try:
        session = current_session(session_id)
    except IntegrationError:
        return True
    resolved = current_account(account)
    client = await get_quota(quota)
    if await client.available_tokens(session) < required_tokens:
        return False
    nodes = await client.account_metrics(resolved) if resolved is not None else []
    return all(n.available_tokens is None or n.available_tokens >= required_tokens for n in nodes)
