"""The settings sections of the integrations and the pipeline's moving parts.

`tokenquota.config` assembles them (with `kafka`, `database` and `token_limits`)
into `Settings`; each field is also an environment variable `<SECTION>_<FIELD>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from tokenquota.schemas.envelope import NO_CONTROL_CHARACTERS, AccountPath

__all__ = [
    "SECONDS_MAX",
    "AccountSource",
    "AlertSettings",
    "ApiSettings",
    "ApiToken",
    "EmitterSettings",
    "ExternalApiSettings",
    "McpSettings",
    "OrchestratorSettings",
    "PerformanceSettings",
    "Port",
    "PrivacySettings",
    "ReservationSettings",
    "Seconds",
    "SessionSource",
    "WorkerSettings",
]

Port = Annotated[int, Field(ge=1, le=65535)]
#: The longest duration any setting takes: a year (what a DefaultsSet's max_clock_skew
#: may hold). Beyond it a timedelta overflows, and `inf` printed no JSON.
SECONDS_MAX = 365 * 86_400
#: A duration in seconds: finite, positive, at most SECONDS_MAX.
Seconds = Annotated[float, Field(gt=0, le=SECONDS_MAX, allow_inf_nan=False)]
#: The same where 0 (none, or every time) is allowed.
_SecondsOrZero = Annotated[float, Field(ge=0, le=SECONDS_MAX, allow_inf_nan=False)]
#: Where an MCP call's session id is read from, tried in the configured order.
SessionSource = Literal["meta", "header", "config", "client"]
#: Where an MCP client may name the account of its calls, tried in the configured order.
AccountSource = Literal["meta", "header"]
_Model = Annotated[str, Field(min_length=1, max_length=200)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class McpSettings(_Section):
    """The MCP integration (decorator, server hooks, metering proxy)."""

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address `tokenquota mcp-proxy --http` listens on (its --host wins)",
    )
    port: Port = Field(
        default=8765, description="Port `tokenquota mcp-proxy --http` listens on (its --port wins)"
    )
    timeout: Seconds | None = Field(
        default=None,
        description=(
            "How long `tokenquota mcp-proxy` waits for the upstream server's answer to each "
            "request, the handshake included (seconds); unset: no limit"
        ),
    )
    token_budget_per_request: Annotated[int, Field(gt=0, le=100_000_000)] = 4000
    session_sources: tuple[SessionSource, ...] = Field(
        default=("config", "meta", "header", "client"),
        min_length=1,
        description=(
            "Where a call's session id comes from, first found wins; a client source "
            "(meta, header, client) before config trusts the client over mcp.session_id"
        ),
    )

    @field_validator("session_sources", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):  # MCP_SESSION_SOURCES=meta,config
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("session_sources")
    @classmethod
    def _each_once(cls, value: tuple[SessionSource, ...]) -> tuple[SessionSource, ...]:
        repeated = sorted({source for source in value if value.count(source) > 1})
        if repeated:
            raise ValueError(f"each source may be listed once, got {', '.join(repeated)} twice")
        return value

    session_meta_key: str = Field(
        default="tokenquota/session", min_length=1, description="The request `_meta` key"
    )
    session_header: str = Field(
        default="x-tokenquota-session",
        min_length=1,
        description="The HTTP header (streamable HTTP transport)",
    )
    session_id: str | None = Field(default=None, description="A fixed session ('config')")
    account: AccountPath | None = Field(
        default=None,
        description=(
            "The budget tree node (tenant/team/user) of the sessions this MCP integration "
            "bills: their reservations must fit every node above them with limits too"
        ),
    )
    account_sources: tuple[AccountSource, ...] = Field(
        default=("meta", "header"),
        description=(
            "Where a client may name the account of its calls, first found wins; `none`: "
            "nowhere. With mcp.account set, a client's account must be it or below it"
        ),
    )

    @field_validator("account_sources", mode="before")
    @classmethod
    def _comma_separated_or_none(cls, value: Any) -> Any:
        if isinstance(value, str):  # MCP_ACCOUNT_SOURCES=header or =none
            if value.strip().lower() == "none":
                return ()
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("account_sources")
    @classmethod
    def _each_source_once(cls, value: tuple[AccountSource, ...]) -> tuple[AccountSource, ...]:
        repeated = sorted({source for source in value if value.count(source) > 1})
        if repeated:
            raise ValueError(f"each source may be listed once, got {', '.join(repeated)} twice")
        return value

    account_meta_key: str = Field(
        default="tokenquota/account",
        min_length=1,
        description="The request `_meta` key naming the account (account_sources: meta)",
    )
    account_header: str = Field(
        default="X-Tokenquota-Account",
        min_length=1,
        description="The HTTP header naming the account (account_sources: header)",
    )
    client_session_prefix: str | None = Field(
        default=None,
        min_length=1,
        max_length=254,
        pattern=NO_CONTROL_CHARACTERS,
        description=(
            "When set, a session named by the client (meta, header, client) must start "
            "with it, or the call is refused; unset: any"
        ),
    )
    model: _Model = Field(default="gpt-4o", description="Whose tokenizer counts tool payloads")


class OrchestratorSettings(_Section):
    """The agent orchestrator integration (the original design called it `kilocode`)."""

    max_concurrent_tasks: Annotated[int, Field(gt=0, le=10_000)] = 10


class ExternalApiSettings(_Section):
    """OpenAI / Anthropic and other external LLM APIs."""

    timeout: Seconds = 30
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3
    rate_limit: Annotated[
        int, Field(gt=0, le=1_000_000, description="requests per minute per API")
    ] = 60
    tokens_per_minute: Annotated[int, Field(gt=0, le=10**12)] | None = Field(
        default=None, description="Token rate limit per API; unset: none"
    )
    fallback_enabled: bool = True
    fallback: Literal["error", "model", "cache"] = Field(
        default="error",
        description="When the budget is exhausted: raise, use fallback_model, or a cached reply",
    )
    fallback_model: _Model | None = None
    default_max_output_tokens: Annotated[int, Field(gt=0, le=100_000_000)] = Field(
        default=4096,
        description="Output tokens reserved for a call that sets no max_tokens",
    )
    retry_backoff_max: Seconds = 30


class PerformanceSettings(_Section):
    """The token counter's cache."""

    enable_caching: bool = True
    cache_size: Annotated[int, Field(ge=0, le=10_000_000)] = 1000


class EmitterSettings(_Section):
    """How producers send events, and where they keep them while the broker is away."""

    spool_dir: Path | None = Field(
        default=None, description="Durable spool folder; default: <data_dir>/spool"
    )
    spool_max_bytes: Annotated[int, Field(gt=0, le=2**40)] = 256 * 1024 * 1024
    linger_ms: Annotated[int, Field(ge=0, le=60_000)] = 20
    max_batch_bytes: Annotated[int, Field(gt=0, le=2**30)] = 1024 * 1024
    enable_idempotence: bool = False
    send_timeout: Seconds = 10
    retry_interval: Seconds = 1


class WorkerSettings(_Section):
    """The projection worker (`tokenquota worker`)."""

    group_id: Annotated[str, Field(min_length=1, max_length=200)] = "tokenquota-projector"
    batch_size: Annotated[int, Field(gt=0, le=100_000)] = 2000
    batch_within: _SecondsOrZero = Field(
        default=0.0,
        description="How long a batch that is not full waits once for more events (seconds)",
    )
    fetch_max_wait: Seconds = Field(
        default=0.05, description="How long a fetch may wait on an empty partition"
    )
    session_timeout: Seconds = 10
    commit_interval: Seconds = 1
    retry_backoff_max: Seconds = 30
    max_clock_skew: Seconds = Field(
        default=300,
        description=(
            "How far an event's occurred_at may run ahead of the log clock before it is "
            "counted at the log clock and flagged (published into the log by init)"
        ),
    )
    metrics_port: Port | None = Field(
        default=None, description="Port of the worker's Prometheus /metrics (off when unset)"
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the worker's /metrics binds to"
    )


class ReservationSettings(_Section):
    """Defaults of `reserve()`."""

    mode: Literal["strict", "optimistic"] = "strict"
    ttl: Seconds = 300
    decision_timeout: Seconds = 10
    precheck_max_age: _SecondsOrZero = Field(
        default=1.0,
        description=(
            "How old a read of a session's budget may be to pass a reservation without "
            "reading again (seconds; 0 reads every time); a refusal is always read fresh"
        ),
    )
    fail_open: bool = Field(
        default=False,
        description="When Kafka or PostgreSQL is unreachable: grant (true) or refuse (false)",
    )


class ApiToken(_Section):
    """One API token: who holds it, what it may do, and the SHA-256 of the token (hex)."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_CONTROL_CHARACTERS)]
    role: Literal["read", "admin"] = "read"
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] = Field(
        description="hex SHA-256 of the bearer token (`tokenquota api hash-token` prints it)"
    )


class ApiSettings(_Section):
    """The HTTP API (`tokenquota api`)."""

    host: str = Field(default="127.0.0.1", description="Address the API binds to")
    port: Port = 8787
    tokens: tuple[ApiToken, ...] = Field(
        default=(),
        description="Bearer tokens; with none, the API serves 127.0.0.1 only",
    )
    rate_limit: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)] = Field(
        default=100.0, description="Requests per second each token (or client address) may make"
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _json_tokens(cls, value: Any) -> Any:
        # API_TOKENS holds them as a JSON array.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"must be a JSON array of tokens: {exc}") from None
        return value

    rate_burst: Annotated[int, Field(gt=0, le=10**9)] = Field(
        default=200, description="Requests a client may make at once before the rate applies"
    )


class AlertSettings(_Section):
    """Threshold alerts sent as webhooks by the notifier."""

    webhook_url: str | None = Field(
        default=None, description="Where each alert is POSTed as JSON (no webhooks when unset)"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="Key of the HMAC-SHA256 signature header over the body"
    )
    timeout: Seconds = 10
    retry_backoff_max: Seconds = 300
    retry_backoff_min: Seconds = Field(default=1, description="Delay before the first retry")
    max_attempts: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="Attempts before an alert is given up as failed; unset: no bound"
    )
    max_age: Seconds = Field(
        default=86400,
        description=(
            "Alerts older than this (by their log clock) are never sent, and one still "
            "failing at this age is given up as failed"
        ),
    )
    poll_interval: Seconds = Field(
        default=1, description="How often the notifier looks for due alerts"
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value


class PrivacySettings(_Section):
    """What leaves the caller's process besides counts."""

    hash_session_ids: bool = Field(
        default=False,
        description="Replace session ids by HMAC-SHA256(session_id_key, id) before emitting",
    )
    session_id_key: SecretStr | None = Field(
        default=None, description="The key of hash_session_ids (required when it is on)"
    )

    @model_validator(mode="after")
    def _key_when_hashing(self) -> Self:
        if self.hash_session_ids and (
            self.session_id_key is None or len(self.session_id_key.get_secret_value()) < 16
        ):
            raise ValueError(
                "hash_session_ids needs session_id_key (PRIVACY_SESSION_ID_KEY), "
                "at least 16 characters"
            )
        return self
