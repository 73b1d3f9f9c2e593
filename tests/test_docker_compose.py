"""docker-compose.yml cannot run here (no Docker engine); check it against the settings."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tokenquota.api import hash_token
from tokenquota.cli_api import check_binding
from tokenquota.config import Settings, env_var_names, load_settings

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


def _settings_of(environment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a tokenquota process with exactly `environment` loads."""
    for variables in env_var_names().values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("TOKENQUOTA_CONFIG", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    return load_settings()


def _healthcheck_code(api: dict[str, Any]) -> str:
    test = api["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "the image has no curl: python -c with urllib"
    assert len(test) == 4
    code: str = test[3]
    return code


def test_worker_and_api_start_after_init_completed(compose: dict[str, Any]) -> None:
    for name in ("worker", "api"):
        service = compose["services"][name]
        assert {d: c["condition"] for d, c in service["depends_on"].items()} == {
            "init": "service_completed_successfully",
            "kafka": "service_healthy",
            "postgres": "service_healthy",
        }, name
        assert service["restart"] == "unless-stopped"


def test_api_serves_all_addresses_in_its_container_published_on_loopback_only(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = compose["services"]["api"]
    assert api["command"] == ["tokenquota", "api"]
    settings = _settings_of(api["environment"], monkeypatch)
    assert ipaddress.ip_address(settings.api.host).is_unspecified  # 0.0.0.0
    # `tokenquota api` refuses a non-loopback address without tokens (exit 2).
    assert check_binding(settings, settings.api.host) is None
    assert {t.role for t in settings.api.tokens} == {"admin", "read"}
    assert api["ports"] == [f"127.0.0.1:8787:{settings.api.port}"]


def test_the_data_dir_of_the_api_is_a_volume(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spool holds events the API accepted while Kafka was unreachable: it must outlive
    # the container.
    api = compose["services"]["api"]
    settings = _settings_of(api["environment"], monkeypatch)
    volumes = dict(v.split(":", 1) for v in api["volumes"])
    assert Path(volumes["api-data"]) == settings.data_dir
    assert settings.spool_dir.is_relative_to(settings.data_dir)
    assert "api-data" in compose["volumes"]


def test_api_healthcheck_asks_readyz_with_a_configured_token(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = compose["services"]["api"]
    code = _healthcheck_code(api)
    compile(code, "healthcheck", "exec")
    settings = _settings_of(api["environment"], monkeypatch)
    assert f"'http://127.0.0.1:{settings.api.port}/readyz'" in code
    token = code.split("'Bearer ", 1)[1].split("'", 1)[0]
    # /readyz needs a read token once api.tokens is configured.
    assert hash_token(token) in {t.sha256 for t in settings.api.tokens}
    assert {"interval", "timeout", "retries", "start_period"} <= set(api["healthcheck"])


class _Readyz(BaseHTTPRequestHandler):
    """A stand-in for the API's /readyz: 401 without the token, else the status set."""

    token: ClassVar[str] = ""
    status: ClassVar[int] = 200
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        good = self.headers.get("authorization") == f"Bearer {self.token}"
        self.send_response(self.status if good else 401)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"status": "ok"}).encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("status", "token_ok", "healthy"),
    [(200, True, True), (503, True, False), (200, False, False)],
)
def test_api_healthcheck_passes_on_200_only(
    compose: dict[str, Any],
    readyz_server: ThreadingHTTPServer,
    status: int,
    token_ok: bool,
    healthy: bool,
) -> None:
    code = _healthcheck_code(compose["services"]["api"])
    token = code.split("'Bearer ", 1)[1].split("'", 1)[0]
    _Readyz.token = token if token_ok else "another-token"
    _Readyz.status = status
    _Readyz.asked = []
    port = readyz_server.server_address[1]
    assert code.count("127.0.0.1:8787/") == 1
    probe = code.replace("127.0.0.1:8787/", f"127.0.0.1:{port}/")
    # A proxy in the environment must not take the probe elsewhere (docker may set one).
    proxied = os.environ | {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=proxied,
    )
    assert _Readyz.asked == ["/readyz"]
    assert (ran.returncode == 0) is healthy, ran.stderr
