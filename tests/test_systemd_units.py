"""deploy/systemd: the units and the example settings file (README "Deployment").

`systemd-analyze verify` checks the units where it is installed; it exits 0 on a
misspelt directive or a value it cannot parse (it prints "ignoring"), so any line it
prints about our units fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tokenquota.config import env_var_names, load_settings

ROOT = Path(__file__).parents[1]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED = "/opt/tokenquota/venv/bin/tokenquota"
ENV_FILE = "/etc/tokenquota/tokenquota.env"
DATA_DIR = "/var/lib/tokenquota"
COMMANDS = {"tokenquota-init": "init", "tokenquota-worker": "worker", "tokenquota-api": "api"}
#: Directives every unit sets, with their values.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}
KNOWN = {v for variables in env_var_names().values() for v in variables}


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Section -> directive -> values, in order (a directive may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (UNITS / f"{name}.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{name}: {line!r} before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(service: dict[str, list[str]], key: str) -> str:
    (value,) = service[key]
    return value


def test_the_units_are_there() -> None:
    assert {p.stem for p in UNITS.glob("*.service")} == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_unit_runs_its_command_as_tokenquota_with_the_settings_file(name: str) -> None:
    service = _unit(name)["Service"]
    assert _one(service, "ExecStart") == f"{INSTALLED} {COMMANDS[name]}"
    assert _one(service, "EnvironmentFile") == ENV_FILE
    assert (_one(service, "User"), _one(service, "Group")) == ("tokenquota", "tokenquota")
    # The data dir (faust's data, the API's spool) is the state folder systemd makes, the
    # only folder ProtectSystem=strict leaves writable.
    assert _one(service, "StateDirectory") == "tokenquota"
    assert service["Environment"] == [f"TOKENQUOTA_DATA_DIR={DATA_DIR}"]
    assert _one(service, "WorkingDirectory") == DATA_DIR
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{name}: {key}={value}"


@pytest.mark.parametrize("name", ["tokenquota-worker", "tokenquota-api"])
def test_the_services_restart_on_failure_and_start_at_boot(name: str) -> None:
    unit = _unit(name)
    service = unit["Service"]
    assert _one(service, "Restart") == "on-failure"
    assert _one(service, "RestartSec")
    assert unit["Install"] == {"WantedBy": ["multi-user.target"]}
    # Started together with the set-up unit, they wait for it to finish.
    assert "tokenquota-init.service" in _one(unit["Unit"], "After").split()


def test_init_is_a_oneshot_started_by_hand() -> None:
    unit = _unit("tokenquota-init")
    assert _one(unit["Service"], "Type") == "oneshot"
    assert "Install" not in unit
    assert "RemainAfterExit" not in unit["Service"]  # a second start runs it again


def _env_lines() -> tuple[dict[str, str], set[str]]:
    """The example settings file: its NAME=value lines, and the names of its `#NAME=` lines."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for raw in (UNITS / "tokenquota.env").read_text().splitlines():
        line = raw.strip()
        name, equals, value = line.lstrip("#").partition("=")
        if not equals or not name.isupper() or " " in name:
            continue
        if line.startswith("#"):
            commented.add(name)
        else:
            active[name] = value
    return active, commented


def test_the_example_settings_file_names_only_settings() -> None:
    active, commented = _env_lines()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"} <= set(active)
    assert set(active) | commented <= KNOWN, (set(active) | commented) - KNOWN
    assert "TOKENQUOTA_DATA_DIR" not in set(active) | commented  # the units set it


def test_the_example_settings_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read as a shell reads it too (README: `set -a; . tokenquota.env`), with the same values.
    sh = shutil.which("sh")
    assert sh is not None
    shell = subprocess.run(
        [sh, "-c", 'set -a; . "$0"; env -0', str(UNITS / "tokenquota.env")],
        capture_output=True,
        check=True,
        env={"PATH": os.environ.get("PATH", "")},
    )
    exported = dict(
        item.partition("=")[::2] for item in shell.stdout.decode().split("\0") if "=" in item
    )
    active, _ = _env_lines()
    assert {name: exported[name] for name in active} == active
    for variable in KNOWN | {"TOKENQUOTA_CONFIG"}:
        monkeypatch.delenv(variable, raising=False)
    for name, value in active.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.kafka.bootstrap_servers
    assert settings.database.is_configured


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify refuses an ExecStart that does not exist: point it at this venv's tokenquota.
    here = Path(sys.executable).parent / "tokenquota"
    assert here.exists(), here
    for name in COMMANDS:
        text = (UNITS / f"{name}.service").read_text()
        assert INSTALLED in text
        (tmp_path / f"{name}.service").write_text(text.replace(INSTALLED, str(here)))
    verified = subprocess.run(
        [analyze, "verify", "--man=no", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = verified.stdout + verified.stderr
    ours = [
        line
        for line in output.splitlines()
        if str(tmp_path) in line or any(name in line for name in COMMANDS)
    ]
    assert verified.returncode == 0 and not ours, output


def test_the_readme_deployment_section_names_real_files_and_settings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
    assert "systemctl enable --now tokenquota-worker tokenquota-api" in section
    assert "systemctl start tokenquota-init" in section
    assert f"`{INSTALLED}`" in section and ENV_FILE in section
    assert "docker compose up -d" in section
    for name in re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", section):
        if name.endswith("_"):  # TOKEN_LIMITS_*
            assert any(known.startswith(name) for known in KNOWN), name
        else:
            assert name in KNOWN, name
    assert not re.search(r"\]\((?!#)", section), "the README links only within itself"
