"""`tokenquota api` as a user runs it: a child process serving over real TCP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import settings_env, wait_until
from tokenquota.api import hash_token
from tokenquota.config import Settings, env_var_names
from tokenquota.embedded import free_port, port_in_use

pytestmark = pytest.mark.integration


def _environment(settings: Settings, tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The test process's environment without tokenquota settings, then `settings`' servers,
    a data directory of the test's own, and `overrides`."""
    ours = {v for variables in env_var_names().values() for v in variables}
    env = {k: v for k, v in os.environ.items() if k not in ours and k != "TOKENQUOTA_CONFIG"}
    return (
        env
        | settings_env(settings)
        | {"TOKENQUOTA_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
        | overrides
    )


@dataclass
class Served:
    url: str
    process: asyncio.subprocess.Process
    log: Path

    def log_text(self) -> str:
        """The process's output so far, whitespace collapsed (rich may wrap log lines)."""
        return " ".join(self.log.read_text(errors="replace").split())


async def _serve(env: dict[str, str], tmp_path: Path, *args: str) -> Served:
    """Start `tokenquota api --port <free> *args`; return once /healthz answers over TCP."""
    port = free_port()
    log = tmp_path / f"api-{port}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tokenquota", "api", "--port", str(port), *args,
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    served = Served(f"http://127.0.0.1:{port}", process, log)

    async def answers() -> bool:
        if process.returncode is not None:
            raise AssertionError(f"tokenquota api exited with {process.returncode}:\n"
                                 + log.read_text(errors="replace"))  # fmt: skip
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
                return (await client.get(f"{served.url}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await wait_until(answers, 30, "tokenquota api to answer /healthz")
    except BaseException:
        await _stop(served)
        raise
    return served


async def _stop(served: Served, timeout: float = 15) -> int:
    """SIGTERM by PID; the exit code (SIGKILL and fail when it does not exit in `timeout`)."""
    if served.process.returncode is None:
        served.process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(served.process.wait(), timeout)
    except TimeoutError:
        served.process.kill()
        await served.process.wait()
        raise AssertionError(f"tokenquota api ignored SIGTERM for {timeout} s") from None


async def test_serves_json_and_docs_on_loopback_and_stops_on_sigterm(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    served = await _serve(_environment(pipeline_settings, tmp_path), tmp_path)
    try:
        listening = {
            c.laddr.ip
            for c in psutil.Process(served.process.pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=10) as client:
            overview = await client.get("/v1/overview")
            assert overview.status_code == 200, overview.text
            assert overview.headers["content-type"] == "application/json"
            assert overview.json()["sessions_active_today"] == 0
            docs = await client.get("/docs")
            assert docs.status_code == 200
            assert docs.headers["content-type"].startswith("text/html")
            assert "swagger" in docs.text.lower()
        log = served.log_text()
        assert "no api.tokens configured: serving 127.0.0.1 only" in log, log
        assert f"tokenquota API on {served.url} (docs at /docs)" in log, log
    finally:
        code = await _stop(served)
    assert code == 0, served.log_text()
    assert "Traceback" not in served.log_text()


async def test_refuses_a_public_address_without_tokens_before_binding(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenquota", "api", "--host", "0.0.0.0", "--port", str(port),  # noqa: S104
        env=_environment(pipeline_settings, tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = (b.decode() for b in await asyncio.wait_for(process.communicate(), 60))
    assert process.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: refusing to serve on 0.0.0.0 without API tokens")
    assert "Traceback" not in err and "Uvicorn running" not in out + err
    assert not port_in_use("127.0.0.1", port)


async def test_with_tokens_a_request_without_a_bearer_is_refused(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    tokens = [{"name": "ci", "role": "read", "sha256": hash_token("ci-secret")}]
    env = _environment(pipeline_settings, tmp_path, API_TOKENS=json.dumps(tokens))
    served = await _serve(env, tmp_path, "--host", "127.0.0.1")
    try:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=10) as client:
            missing = await client.get("/v1/overview")
            assert missing.status_code == 401, missing.text
            assert missing.json()["error"] == "unauthorized"
            wrong = await client.get("/v1/overview", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            granted = await client.get(
                "/v1/overview", headers={"Authorization": "Bearer ci-secret"}
            )
            assert granted.status_code == 200, granted.text
        assert "no api.tokens configured" not in served.log_text()
    finally:
        code = await _stop(served)
    assert code == 0, served.log_text()
