"""Settings: defaults, then an optional JSON file, then environment variables.

The JSON file has the shape of the configuration section of the original design
(`mcp`, `orchestrator` — `kilocode` is accepted as its old name —, `external_apis`,
`token_limits`, `performance`) plus `kafka`, `database`, `log_level`, `log_file`; the
design's settings in REMOVED_SETTINGS are ignored with a warning naming each.
Environment variables are flat: `<SECTION>_<FIELD>` (`MCP_PORT`, `DATABASE_URL`,
`KAFKA_BOOTSTRAP_SERVERS`, `TOKEN_LIMITS_DAILY_LIMIT`, ...) and `LOG_LEVEL`, `LOG_FILE`,
`TOKENQUOTA_DATA_DIR`. The file is named by `--config` or `TOKENQUOTA_CONFIG`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tokenquota.projections.database import SCHEMA_NAME_PATTERN
from tokenquota.projections.state import FoldConfig, Limits
from tokenquota.schemas import check_limits, check_timezone
from tokenquota.schemas.codec import note_repeats, repeated_keys
from tokenquota.schemas.envelope import TokenCount
from tokenquota.sections import (
    AlertSettings,
    ApiSettings,
    EmitterSettings,
    ExternalApiSettings,
    McpSettings,
    OrchestratorSettings,
    PerformanceSettings,
    Port,
    PrivacySettings,
    ReservationSettings,
    WorkerSettings,
)

__all__ = [
    "REMOVED_SETTINGS",
    "AlertSettings",
    "ApiSettings",
    "ConfigError",
    "DatabaseSettings",
    "EmitterSettings",
    "ExternalApiSettings",
    "KafkaSettings",
    "McpSettings",
    "OrchestratorSettings",
    "PerformanceSettings",
    "PrivacySettings",
    "ReservationSettings",
    "Settings",
    "TokenLimits",
    "WorkerSettings",
    "env_var_names",
    "fold_config",
    "load_settings",
    "removed_env_var_names",
]

CONFIG_FILE_ENV = "TOKENQUOTA_CONFIG"

log = logging.getLogger("tokenquota.config")

Ratio = Annotated[Decimal, Field(gt=0, le=1, max_digits=5, decimal_places=4)]
_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_BOOTSTRAP_SERVER = re.compile(r"^[^\s:,]+:\d{1,5}$")


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per bad field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        heading = (
            "invalid configuration"
            if len(problems) == 1
            else (f"invalid configuration ({len(problems)} problems)")
        )
        super().__init__(heading + ":\n" + "\n".join(f"  - {p}" for p in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenLimits(_Section):
    """Default limits of a session that has no BudgetSet event."""

    daily_limit: TokenCount = 10_000
    monthly_limit: TokenCount = 300_000
    hard_limit: TokenCount = 1_000_000
    warning_threshold: Ratio = Decimal("0.8")
    critical_threshold: Ratio = Decimal("0.95")
    timezone: str = Field(
        default="UTC",
        description="IANA zone whose midnights start the daily and monthly windows",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        check_limits(
            self.daily_limit,
            self.monthly_limit,
            self.hard_limit,
            self.warning_threshold,
            self.critical_threshold,
        )
        return self


class KafkaSettings(_Section):
    """The broker and the topics. Unset bootstrap_servers means: use the embedded broker."""

    bootstrap_servers: str | None = None
    usage_topic: str = "tokenquota.usage"
    dlq_topic: str = "tokenquota.usage.dlq"
    partitions: Annotated[int, Field(ge=1, le=10_000)] = 12
    dlq_partitions: Annotated[int, Field(ge=1, le=10_000)] = 1
    replication_factor: Annotated[int, Field(ge=1, le=32)] = 1

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str | None) -> str | None:
        if value is None:
            return None
        servers = [s.strip() for s in value.split(",")]
        bad = [s for s in servers if not _BOOTSTRAP_SERVER.fullmatch(s)]
        if bad:
            raise ValueError(
                f"expected comma-separated host:port pairs such as 127.0.0.1:9092, got {bad[0]!r}"
            )
        return ",".join(servers)

    @field_validator("usage_topic", "dlq_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not _KAFKA_TOPIC.fullmatch(value) or value in (".", ".."):
            raise ValueError(
                "a Kafka topic name is 1-249 characters of letters, digits, '.', '_' and '-'"
            )
        return value

    @model_validator(mode="after")
    def _distinct_topics(self) -> Self:
        if self.usage_topic == self.dlq_topic:
            raise ValueError("usage_topic and dlq_topic must differ")
        return self


class DatabaseSettings(_Section):
    """PostgreSQL: a URL, or host/port/name/user/password. Neither means: use the embedded one."""

    url: SecretStr | None = None
    host: str | None = None
    port: Port = 5432
    name: str = "token_management"
    user: str = "postgres"
    password: SecretStr = SecretStr("")
    schema_name: str = Field(
        default="public",
        validation_alias="schema",
        serialization_alias="schema",
        description="PostgreSQL schema holding tokenquota's tables",
    )
    pool_size: Annotated[int, Field(gt=0, le=1000)] = Field(
        default=10, description="Connections each client opens at start for its reads"
    )

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// or postgres:// URL")
        return value

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        if not SCHEMA_NAME_PATTERN.fullmatch(value):
            raise ValueError(
                "use lower-case letters, digits and underscores, starting with a letter "
                "or underscore (at most 63 characters)"
            )
        return value

    @property
    def is_configured(self) -> bool:
        """True when a server is named (DATABASE_URL or DATABASE_HOST)."""
        return self.url is not None or self.host is not None

    def dsn(self) -> str:
        """The connection URL, password included; raise ConfigError when none is configured."""
        if self.url is not None:
            return self.url.get_secret_value()
        if self.host is None:
            raise ConfigError(
                [
                    "database: no server configured; set DATABASE_URL (or DATABASE_HOST, "
                    "DATABASE_PORT, DATABASE_NAME, DATABASE_USER, DATABASE_PASSWORD), "
                    "or run `tokenquota dev` for the embedded one"
                ]
            )
        password = self.password.get_secret_value()
        credentials = quote(self.user, safe="") + (
            ":" + quote(password, safe="") if password else ""
        )
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(self.name, safe='')}"


_config_file: ContextVar[Path | None] = ContextVar("tokenquota_config_file", default=None)


class Settings(BaseSettings):
    """Everything tokenquota reads at start-up. Build it with `load_settings()`."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    mcp: McpSettings = McpSettings()
    orchestrator: OrchestratorSettings = OrchestratorSettings()
    external_apis: ExternalApiSettings = ExternalApiSettings()
    token_limits: TokenLimits = TokenLimits()
    performance: PerformanceSettings = PerformanceSettings()
    kafka: KafkaSettings = KafkaSettings()
    database: DatabaseSettings = DatabaseSettings()
    emitter: EmitterSettings = EmitterSettings()
    worker: WorkerSettings = WorkerSettings()
    reservations: ReservationSettings = ReservationSettings()
    api: ApiSettings = ApiSettings()
    alerts: AlertSettings = AlertSettings()
    privacy: PrivacySettings = PrivacySettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_file: Path | None = None
    data_dir: Path = Field(
        default=Path(".tokenquota"),
        description="Where the embedded dev stack keeps PostgreSQL's data and its logs",
    )

    @property
    def spool_dir(self) -> Path:
        """Where emitters spool events the broker has not acknowledged."""
        return self.emitter.spool_dir or self.data_dir / "spool"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvSource(settings_cls), _JsonFileSource(settings_cls)


# Section -> environment variable prefixes, the first one wins when both are set.
_SECTION_PREFIXES: dict[str, tuple[str, ...]] = {
    "mcp": ("MCP_",),
    "orchestrator": ("ORCHESTRATOR_", "KILOCODE_"),
    "external_apis": ("EXTERNAL_APIS_",),
    "token_limits": ("TOKEN_LIMITS_",),
    "performance": ("PERFORMANCE_",),
    "kafka": ("KAFKA_",),
    "database": ("DATABASE_",),
    "emitter": ("EMITTER_",),
    "worker": ("WORKER_",),
    "reservations": ("RESERVATIONS_",),
    "api": ("API_",),
    "alerts": ("ALERTS_",),
    "privacy": ("PRIVACY_",),
}
_TOP_LEVEL_ENV = {
    "log_level": "LOG_LEVEL",
    "log_file": "LOG_FILE",
    "data_dir": "TOKENQUOTA_DATA_DIR",
}


_NO_ORCHESTRATOR_SERVER = (
    "the orchestrator integration is a library hook in your process, it connects to no server"
)
#: Settings of the original design that never had an effect, and were removed: (section,
#: field) -> why. A file or environment variable still setting one is ignored with one
#: warning naming it, so that an old configuration keeps loading.
REMOVED_SETTINGS: dict[tuple[str, str], str] = {
    ("mcp", "max_retries"): (
        "the MCP proxy never repeats a request (a tool call may not be safe to run twice)"
    ),
    ("orchestrator", "host"): _NO_ORCHESTRATOR_SERVER,
    ("orchestrator", "port"): _NO_ORCHESTRATOR_SERVER,
    ("orchestrator", "timeout"): (
        "a task runs as long as it takes (bound it with asyncio.timeout in your code)"
    ),
    ("orchestrator", "session_timeout"): (
        "sessions do not expire; tokens held for a task end with reservations.ttl"
    ),
    ("performance", "batch_size"): (
        "the emitter batches by emitter.linger_ms and emitter.max_batch_bytes, the "
        "worker by worker.batch_size"
    ),
    ("performance", "async_operations"): "every integration is async",
}
_warned: set[str] = set()


def _warn_removed(setting: tuple[str, str], where: str, action: str) -> None:
    """Warn once per process that `setting`, set `where`, was removed and is ignored."""
    message = (
        f"removed setting {'.'.join(setting)} ({where}) is ignored: "
        f"{REMOVED_SETTINGS[setting]}; {action}"
    )
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _field_key(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    return alias if isinstance(alias, str) else name


def env_var_names() -> dict[tuple[str, ...], tuple[str, ...]]:
    """Setting path (as in the JSON file) -> the environment variables that set it."""
    names: dict[tuple[str, ...], tuple[str, ...]] = {
        (field,): (var,) for field, var in _TOP_LEVEL_ENV.items()
    }
    for section, prefixes in _SECTION_PREFIXES.items():
        model = Settings.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, info in model.model_fields.items():
            key = _field_key(name, info)
            names[(section, key)] = tuple(prefix + key.upper() for prefix in prefixes)
    return names


def removed_env_var_names() -> dict[tuple[str, str], tuple[str, ...]]:
    """Removed setting (see REMOVED_SETTINGS) -> the environment variables that set it."""
    return {
        (section, key): tuple(prefix + key.upper() for prefix in _SECTION_PREFIXES[section])
        for section, key in REMOVED_SETTINGS
    }


class _FlatEnvSource(PydanticBaseSettingsSource):
    """Reads the flat variables of env_var_names(); empty values count as unset."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        for setting, variables in removed_env_var_names().items():
            for variable in variables:
                if os.environ.get(variable):
                    _warn_removed(setting, f"environment variable {variable}", f"unset {variable}")
        data: dict[str, Any] = {}
        for path, variables in env_var_names().items():
            value = next((os.environ[v] for v in variables if os.environ.get(v)), None)
            if value is None:
                continue
            target = data
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
        return data


class _JsonFileSource(PydanticBaseSettingsSource):
    """Reads the JSON file named by --config or TOKENQUOTA_CONFIG, if any."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = config_file_path()
        if path is None:
            return {}
        data = _read_json_file(path)
        for section, key in REMOVED_SETTINGS:
            for name in (section, "kilocode") if section == "orchestrator" else (section,):
                values = data.get(name)
                if isinstance(values, dict) and key in values:
                    del values[key]
                    where = f"in {path}" if name == section else f"as {name}.{key} in {path}"
                    _warn_removed((section, key), where, "delete it")
        if "kilocode" in data:  # the original design's name for the orchestrator section
            if "orchestrator" in data:
                raise ConfigError(
                    [f"{path}: give either `orchestrator` or its old name `kilocode`, not both"]
                )
            data["orchestrator"] = data.pop("kilocode")
        return data


def config_file_path() -> Path | None:
    """The JSON configuration file in effect, if any."""
    explicit = _config_file.get()
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_FILE_ENV)
    return Path(from_env) if from_env else None


#: Digits of the longest number the file may hold (a BIGINT has 19).
_NUMBER_MAX_DIGITS = 100


def _parse_int(text: str) -> int:
    if len(text) > _NUMBER_MAX_DIGITS:
        raise ValueError(
            f"a number of {len(text.lstrip('-'))} digits, longer than any setting takes"
        )
    return int(text)


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"configuration file {path} does not exist"]) from None
    except OSError as exc:
        raise ConfigError([f"configuration file {path} cannot be read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"configuration file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}"]
        ) from None
    try:
        data = json.loads(text, object_pairs_hook=note_repeats, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [
                f"configuration file {path} is not valid JSON: {exc.msg} "
                f"(line {exc.lineno}, column {exc.colno})"
            ]
        ) from None
    except ValueError as exc:  # from _parse_int
        raise ConfigError([f"configuration file {path} is not valid JSON: {exc}"]) from None
    except RecursionError:
        raise ConfigError(
            [f"configuration file {path} is not valid JSON: nested too deeply"]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError([f"configuration file {path} must hold a JSON object at the top level"])
    # JSON parsers disagree on which of two equal keys counts: refuse, naming each.
    repeated = repeated_keys(data)
    if repeated:
        raise ConfigError(
            [
                f"configuration file {path} names `{key}` "
                f"{'twice' if times == 2 else f'{times} times'}; give each setting once"
                for key, times in repeated
            ]
        )
    return dict(data)


def load_settings(config_file: Path | None = None) -> Settings:
    """Build the settings; raise ConfigError naming every bad field, its value and origin."""
    token = _config_file.set(config_file)
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, config_file_path())) from None
    finally:
        _config_file.reset(token)


def _describe_errors(exc: ValidationError, path: Path | None) -> list[str]:
    env_names = env_var_names()
    problems = []
    errors = exc.errors(include_url=False)
    # A list whose items are refused is also "too short after validation": say it once.
    itemised = {tuple(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)}
    for error in errors:
        if error["type"] == "too_short" and tuple(error["loc"]) in itemised:
            continue
        loc = tuple(str(part) for part in error["loc"])
        if loc and loc[0] == "kilocode":
            loc = ("orchestrator", *loc[1:])
        where = ".".join(loc) or "<settings>"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see the README's configuration table)"
        value = error.get("input")
        shown = "" if isinstance(value, Mapping) else f" = {_redact(loc, value)!r}"
        origin = _origin(loc, env_names, path)
        problems.append(f"{where}{shown}{origin}: {message}")
    return problems


def _redact(loc: tuple[str, ...], value: Any) -> Any:
    secret = ("password", "url", "secret", "key", "sha256")
    return "***" if any(word in part for part in loc for word in secret) else value


def _origin(
    loc: tuple[str, ...], env_names: Mapping[tuple[str, ...], tuple[str, ...]], path: Path | None
) -> str:
    setting = next((loc[:n] for n in range(len(loc), 0, -1) if loc[:n] in env_names), loc)
    set_vars = [v for v in env_names.get(setting, ()) if os.environ.get(v)]
    if set_vars:
        return f" (from environment variable {set_vars[0]})"
    if path is not None and loc:
        return f" (from {path})"
    return ""


def fold_config(settings: Settings) -> FoldConfig:
    """The configured defaults (`token_limits`, `worker.max_clock_skew`), as `tokenquota init`
    writes them into the log in a DefaultsSet. The fold decides with what the log holds."""
    t = settings.token_limits
    limits = Limits(
        t.daily_limit, t.monthly_limit, t.hard_limit, t.warning_threshold, t.critical_threshold
    )
    skew = timedelta(milliseconds=round(settings.worker.max_clock_skew * 1000))
    return FoldConfig(limits, ZoneInfo(t.timezone), skew)
