"""Settings from defaults, a JSON file and environment variables (pure: no servers)."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenquota import config
from tokenquota.config import (
    REMOVED_SETTINGS,
    ConfigError,
    DatabaseSettings,
    env_var_names,
    load_settings,
    removed_env_var_names,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the machine running the tests; no warning was given yet."""
    for variables in [*env_var_names().values(), *removed_env_var_names().values()]:
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("TOKENQUOTA_CONFIG", raising=False)
    monkeypatch.setattr(config, "_warned", set())


def test_mcp_session_sources_read_from_a_comma_separated_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_SESSION_SOURCES", "meta, config")
    assert load_settings().mcp.session_sources == ("meta", "config")
    monkeypatch.setenv("MCP_SESSION_SOURCES", "meta,nowhere")
    with pytest.raises(ConfigError, match=r"mcp\.session_sources"):
        load_settings()


def test_mcp_account_sources_read_from_a_comma_separated_variable_or_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().mcp.account_sources == ("meta", "header")
    monkeypatch.setenv("MCP_ACCOUNT_SOURCES", "header, meta")
    assert load_settings().mcp.account_sources == ("header", "meta")
    monkeypatch.setenv("MCP_ACCOUNT_SOURCES", "none")  # clients may not name one
    assert load_settings().mcp.account_sources == ()
    for bad in ("meta,meta", "client"):
        monkeypatch.setenv("MCP_ACCOUNT_SOURCES", bad)
        with pytest.raises(ConfigError, match=r"mcp\.account_sources"):
            load_settings()


def _file(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "tokenquota.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_defaults_are_those_of_the_original_design() -> None:
    settings = load_settings()
    # Except mcp.host/port, `tokenquota mcp-proxy --http`'s address, and mcp.timeout, its
    # wait for the upstream server: they keep what the proxy did before it read them.
    design = {"host", "port", "timeout", "token_budget_per_request"}
    assert settings.mcp.model_dump(include=design) == {
        "host": "127.0.0.1",
        "port": 8765,
        "timeout": None,
        "token_budget_per_request": 4000,
    }
    # The operator's configured session comes first: a client cannot pick whose budget
    # it spends unless the configuration trusts it (a client source before config).
    assert settings.mcp.session_sources == ("config", "meta", "header", "client")
    assert settings.external_apis.default_max_output_tokens == 4096
    assert settings.orchestrator.max_concurrent_tasks == 10
    assert settings.external_apis.rate_limit == 60
    assert settings.external_apis.fallback_enabled is True
    limits = settings.token_limits
    assert (limits.daily_limit, limits.monthly_limit, limits.hard_limit) == (
        10_000,
        300_000,
        1_000_000,
    )
    assert (limits.warning_threshold, limits.critical_threshold) == (
        Decimal("0.8"),
        Decimal("0.95"),
    )
    assert settings.performance.cache_size == 1000
    assert settings.kafka.partitions == 12
    assert settings.kafka.usage_topic == "tokenquota.usage"
    assert settings.kafka.dlq_topic == "tokenquota.usage.dlq"
    assert settings.kafka.bootstrap_servers is None
    assert not settings.database.is_configured
    assert settings.log_level == "INFO"


def test_the_seed_configuration_file_loads_with_kilocode_as_the_orchestrator(
    tmp_path: Path,
) -> None:
    path = _file(
        tmp_path,
        {
            "mcp": {"host": "mcp.internal", "port": 9000, "token_budget_per_request": 2000},
            "kilocode": {"max_concurrent_tasks": 4},
            "token_limits": {"daily_limit": 5000, "warning_threshold": 0.7},
            "performance": {"enable_caching": False},
            "kafka": {"bootstrap_servers": "k1:9092,k2:9092", "partitions": 24},
            "database": {"url": "postgresql://u:p@db:5432/tq", "schema": "quota"},
            "log_level": "debug",
        },
    )
    settings = load_settings(path)
    assert settings.mcp.host == "mcp.internal" and settings.mcp.port == 9000
    assert settings.mcp.timeout is None  # unspecified fields keep their defaults
    assert settings.orchestrator.max_concurrent_tasks == 4
    assert settings.token_limits.daily_limit == 5000
    assert settings.token_limits.warning_threshold == Decimal("0.7")
    assert settings.performance.enable_caching is False
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kafka.partitions == 24
    assert settings.database.dsn() == "postgresql://u:p@db:5432/tq"
    assert settings.database.schema_name == "quota"
    assert settings.log_level == "DEBUG"


def test_environment_variables_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path, {"mcp": {"port": 9000, "host": "from-file"}, "kafka": {"partitions": 6}})
    monkeypatch.setenv("TOKENQUOTA_CONFIG", str(path))
    monkeypatch.setenv("MCP_PORT", "9100")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    monkeypatch.setenv("KILOCODE_MAX_CONCURRENT_TASKS", "3")
    monkeypatch.setenv("TOKEN_LIMITS_HARD_LIMIT", "2000000")
    monkeypatch.setenv("PERFORMANCE_ENABLE_CACHING", "false")
    monkeypatch.setenv("LOG_FILE", "logs/token_integration.log")
    settings = load_settings()
    assert settings.mcp.port == 9100
    assert settings.mcp.host == "from-file"
    assert settings.kafka.partitions == 6
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.orchestrator.max_concurrent_tasks == 3
    assert settings.token_limits.hard_limit == 2_000_000
    assert settings.performance.enable_caching is False
    assert settings.log_file == Path("logs/token_integration.log")


def test_orchestrator_variables_win_over_their_kilocode_aliases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KILOCODE_MAX_CONCURRENT_TASKS", "1111")
    monkeypatch.setenv("ORCHESTRATOR_MAX_CONCURRENT_TASKS", "2222")
    assert load_settings().orchestrator.max_concurrent_tasks == 2222


def _removal_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tokenquota.config" and r.levelno == logging.WARNING
    ]


def test_a_removed_setting_in_the_file_is_ignored_with_one_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The original design's file, as the README showed it before these were removed.
    path = _file(
        tmp_path,
        {
            "mcp": {"host": "localhost", "port": 8000, "timeout": 30, "max_retries": 3},
            "kilocode": {"host": "localhost", "port": 8080, "timeout": 60, "session_timeout": 9},
            "performance": {"cache_size": 10, "batch_size": 10, "async_operations": True},
        },
    )
    with caplog.at_level(logging.WARNING, logger="tokenquota.config"):
        settings = load_settings(path)
        load_settings(path)  # once per process, however often the settings are loaded
    assert (settings.mcp.port, settings.mcp.timeout, settings.performance.cache_size) == (
        8000,
        30,
        10,
    )
    warnings = _removal_warnings(caplog)
    assert len(warnings) == len(REMOVED_SETTINGS) == 7
    assert (
        f"removed setting mcp.max_retries (in {path}) is ignored: the MCP proxy never "
        "repeats a request (a tool call may not be safe to run twice); delete it"
    ) in warnings
    assert any(
        w.startswith(f"removed setting orchestrator.port (as kilocode.port in {path}) is ignored")
        for w in warnings
    )
    assert any(
        w.startswith(f"removed setting performance.batch_size (in {path}) is ignored")
        for w in warnings
    )


def test_a_removed_setting_in_the_environment_is_ignored_with_one_warning_naming_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_SESSION_TIMEOUT", "3600")
    monkeypatch.setenv("KILOCODE_HOST", "kilo.internal")
    monkeypatch.setenv("PERFORMANCE_ASYNC_OPERATIONS", "false")
    monkeypatch.setenv("MCP_MAX_RETRIES", "")  # empty counts as unset, as for every variable
    with caplog.at_level(logging.WARNING, logger="tokenquota.config"):
        load_settings()
    assert sorted(_removal_warnings(caplog)) == [
        "removed setting orchestrator.host (environment variable KILOCODE_HOST) is ignored: "
        "the orchestrator integration is a library hook in your process, it connects to no "
        "server; unset KILOCODE_HOST",
        "removed setting orchestrator.session_timeout (environment variable "
        "ORCHESTRATOR_SESSION_TIMEOUT) is ignored: sessions do not expire; tokens held for a "
        "task end with reservations.ttl; unset ORCHESTRATOR_SESSION_TIMEOUT",
        "removed setting performance.async_operations (environment variable "
        "PERFORMANCE_ASYNC_OPERATIONS) is ignored: every integration is async; "
        "unset PERFORMANCE_ASYNC_OPERATIONS",
    ]


def test_a_setting_that_never_existed_is_still_an_error(tmp_path: Path) -> None:
    path = _file(tmp_path, {"orchestrator": {"hots": "x"}})
    with pytest.raises(ConfigError, match=r"orchestrator\.hots = 'x'.*unknown setting"):
        load_settings(path)


def test_database_from_parts_quotes_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_HOST", "db.internal")
    monkeypatch.setenv("DATABASE_PORT", "6543")
    monkeypatch.setenv("DATABASE_USER", "quota admin")
    monkeypatch.setenv("DATABASE_PASSWORD", "p@ss/w:rd")
    database = load_settings().database
    assert database.is_configured
    assert (
        database.dsn()
        == "postgresql://quota%20admin:p%40ss%2Fw%3Ard@db.internal:6543/token_management"
    )


def test_an_unconfigured_database_says_how_to_configure_one() -> None:
    with pytest.raises(ConfigError, match="set DATABASE_URL"):
        DatabaseSettings().dsn()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"MCP_PORT": "70000"},
            "mcp.port = '70000' (from environment variable MCP_PORT): "
            "Input should be less than or equal to 65535",
        ),
        ({"MCP_TIMEOUT": "soon"}, "mcp.timeout = 'soon' (from environment variable MCP_TIMEOUT)"),
        (
            {"MCP_TIMEOUT": "0"},
            "mcp.timeout = '0' (from environment variable MCP_TIMEOUT): "
            "Input should be greater than 0",
        ),
        (
            {"KAFKA_PARTITIONS": "0"},
            "kafka.partitions = '0' (from environment variable "
            "KAFKA_PARTITIONS): Input should be greater than or equal to 1",
        ),
        ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "expected comma-separated host:port pairs"),
        ({"KAFKA_USAGE_TOPIC": "bad topic"}, "a Kafka topic name is 1-249 characters"),
        (
            {"LOG_LEVEL": "LOUD"},
            "log_level = 'LOUD' (from environment variable LOG_LEVEL): "
            "Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'",
        ),
        (
            {"DATABASE_URL": "mysql://x"},
            "database.url = '***' (from environment variable "
            "DATABASE_URL): must be a postgresql:// or postgres:// URL",
        ),
        ({"DATABASE_SCHEMA": "Drop Table"}, "database.schema = 'Drop Table'"),
        ({"TOKEN_LIMITS_DAILY_LIMIT": "-5"}, "token_limits.daily_limit = '-5'"),
        ({"TOKEN_LIMITS_DAILY_LIMIT": "500000"}, "daily_limit <= monthly_limit <= hard_limit"),
        ({"TOKEN_LIMITS_CRITICAL_THRESHOLD": "1.5"}, "token_limits.critical_threshold = '1.5'"),
    ],
)
def test_invalid_values_name_the_field_the_value_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _file(
        tmp_path, {"mcp": {"port": 0, "prot": 1}, "token_limits": {"warning_threshold": 2}}
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    problems = caught.value.problems
    assert len(problems) == 3
    assert any(p.startswith(f"mcp.port = 0 (from {path})") for p in problems)
    assert any(p.startswith("mcp.prot = 1") and "unknown setting" in p for p in problems)
    assert any(p.startswith("token_limits.warning_threshold = 2") for p in problems)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "{not json",
            "is not valid JSON: Expecting property name enclosed in double quotes "
            "(line 1, column 2)",
        ),
        ("[1, 2]", "must hold a JSON object at the top level"),
        ('{"kilocode": {}, "orchestrator": {}}', "either `orchestrator` or its old name"),
    ],
)
def test_a_bad_file_is_reported_with_its_path(tmp_path: Path, content: str, expected: str) -> None:
    path = _file(tmp_path, content)
    with pytest.raises(ConfigError, match=r"configuration file|either") as caught:
        load_settings(path)
    assert expected in str(caught.value)


def test_a_missing_file_is_an_error_not_silently_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"configuration file .*nope\.json does not exist"):
        load_settings(tmp_path / "nope.json")


def test_secrets_are_masked_when_dumped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    dumped = json.dumps(load_settings().model_dump(mode="json"))
    assert "hunter2" not in dumped


def test_the_configured_defaults_are_the_folds_built_in_ones() -> None:
    # A log without a DefaultsSet decides with the built-in defaults; with an unchanged
    # configuration, what init writes is the same.
    from tokenquota.config import fold_config
    from tokenquota.projections import BUILTIN_DEFAULTS

    assert fold_config(load_settings()) == BUILTIN_DEFAULTS


def test_api_tokens_come_from_a_json_array_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digest = "a" * 64
    monkeypatch.setenv("API_TOKENS", f'[{{"name": "ops", "role": "admin", "sha256": "{digest}"}}]')
    token = load_settings().api.tokens[0]
    assert (token.name, token.role, token.sha256) == ("ops", "admin", digest)
    monkeypatch.setenv("API_TOKENS", "[oops")
    with pytest.raises(ConfigError, match="must be a JSON array of tokens"):
        load_settings()


def test_hashing_session_ids_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVACY_HASH_SESSION_IDS", "true")
    with pytest.raises(ConfigError, match="session_id_key"):
        load_settings()
    monkeypatch.setenv("PRIVACY_SESSION_ID_KEY", "k" * 16)
    assert load_settings().privacy.hash_session_ids
