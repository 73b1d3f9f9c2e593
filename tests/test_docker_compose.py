"""docker-compose.yml cannot run here (no Docker engine); check it against the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenquota.config import env_var_names, load_settings

COMPOSE = Path(__file__).parents[1] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_kafka_runs_in_kraft_mode_without_auto_created_topics(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_keeps_every_event_and_stamps_records_itself(compose: dict[str, Any]) -> None:
    environment = compose["services"]["kafka"]["environment"]
    assert (environment["KAFKA_LOG_RETENTION_MS"], environment["KAFKA_LOG_RETENTION_BYTES"]) == (
        "-1",
        "-1",
    )
    assert environment["KAFKA_LOG_MESSAGE_TIMESTAMP_TYPE"] == "LogAppendTime"


def test_servers_have_health_checks_and_named_volumes(compose: dict[str, Any]) -> None:
    for name in ("kafka", "postgres"):
        service = compose["services"][name]
        assert service["healthcheck"]["test"]
        volume = service["volumes"][0].split(":")[0]
        assert volume in compose["volumes"]
    init = compose["services"]["init"]
    assert init["command"] == ["tokenquota", "init"]
    assert compose["services"]["worker"]["command"] == ["tokenquota", "worker"]
    assert {d: c["condition"] for d, c in init["depends_on"].items()} == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
    }


def test_tokenquota_services_use_real_setting_names(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {v for variables in env_var_names().values() for v in variables}
    for name, service in compose["services"].items():
        if service.get("command", [None])[0] != "tokenquota":
            continue
        environment = service["environment"]
        assert set(environment) <= known, f"{name}: {set(environment) - known}"
        for variable in known:
            monkeypatch.delenv(variable, raising=False)
        for key, value in environment.items():
            monkeypatch.setenv(key, str(value))
        settings = load_settings()
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.database.dsn().endswith("@postgres:5432/token_management")
