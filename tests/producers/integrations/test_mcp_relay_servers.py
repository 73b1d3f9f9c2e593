"""`tokenquota mcp-proxy` (stdio) in front of MCP servers and behind an MCP client that
nobody here wrote: the MCP project's memory server (npm), the Python time server from
PyPI (which speaks the modern 2026-07-28 protocol era), the MCP Inspector's CLI as the
client; and an upstream server that dies in the middle of a session."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.producers.integrations.mcp_support import proxy_env
from tests.producers.integrations.npm_servers import npm_bin
from tests.support import fetch_value, set_budget, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.producers import TokenQuota

pytestmark = pytest.mark.integration

TIME_SERVER = Path(sys.executable).with_name("mcp-server-time")


def _settings(pipeline_settings: Settings) -> Settings:
    return pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )


def _proxy_env(settings: Settings, **extra: str) -> dict[str, str]:
    return proxy_env(settings, MCP_TOKEN_BUDGET_PER_REQUEST="300", **extra)


def _proxied(session: str, upstream: list[str], env: dict[str, str]) -> StdioServerParameters:
    """`tokenquota mcp-proxy --session <session> -- <upstream>` as a stdio server."""
    args = ["-m", "tokenquota", "mcp-proxy", "--session", session, "--", *upstream]
    return StdioServerParameters(command=sys.executable, args=args, env=env)


async def _metered(settings: Settings, session: str) -> None:
    """The session's usage from the proxied tool calls has reached the projections."""

    async def used() -> bool:
        total = await fetch_value(
            settings.database,
            "SELECT tokens_used_total FROM session_token_budgets WHERE session_id = $1",
            session,
        )
        return bool(total)

    await wait_until(used, 60, f"tokens used by {session}")
    rows = await fetch_value(
        settings.database,
        "SELECT count(*) FROM integration_logs WHERE session_id = $1"
        " AND integration_type = 'mcp' AND action = 'token_used'",
        session,
    )
    assert rows >= 1


# -- @modelcontextprotocol/server-memory ------------------------------------------------

ENTITIES = {
    "entities": [
        {"name": "tokenquota", "entityType": "project", "observations": ["meters MCP"]},
        {"name": "relay", "entityType": "component", "observations": ["passes messages"]},
    ]
}
RELATIONS = {"relations": [{"from": "relay", "to": "tokenquota", "relationType": "part_of"}]}


async def _memory_view(client: Client) -> dict[str, Any]:
    return {
        "server": client.server_info,
        "capabilities": client.server_capabilities,
        "instructions": client.instructions,
        "protocol": client.protocol_version,
        "tools": (await client.list_tools()).tools,
        "created": await client.call_tool("create_entities", ENTITIES),
        "related": await client.call_tool("create_relations", RELATIONS),
        "graph": await client.call_tool("read_graph", {}),
        "found": await client.call_tool("search_nodes", {"query": "relay"}),
    }


async def test_the_memory_server_looks_the_same_through_the_proxy_and_is_metered(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    memory = str(npm_bin("mcp-server-memory"))
    # Each run its own (empty) memory file: the server keeps what it is told.
    direct_file, proxied_file = tmp_path / "direct.jsonl", tmp_path / "proxied.jsonl"
    direct = StdioServerParameters(command=memory, env={"MEMORY_FILE_PATH": str(direct_file)})
    # auto: server/discover first (this server answers it with an error), then initialize
    async with Client(direct, cache=None) as client:
        seen_directly = await _memory_view(client)
    assert "tokenquota" in str(seen_directly["graph"].content)

    env = _proxy_env(settings, MEMORY_FILE_PATH=str(proxied_file))
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "memory-user", 20_000)
        async with Client(_proxied("memory-user", [memory], env), cache=None) as client:
            assert await _memory_view(client) == seen_directly
    assert proxied_file.read_text() == direct_file.read_text()
    await _metered(settings, "memory-user")


# -- mcp-server-time (PyPI) --------------------------------------------------------------


async def _time_view(client: Client) -> dict[str, Any]:
    now = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
    assert not now.is_error and "Europe/Paris" in str(now.structured_content), now
    return {
        "server": client.server_info,
        "capabilities": client.server_capabilities,
        "instructions": client.instructions,
        "protocol": client.protocol_version,
        "tools": (await client.list_tools()).tools,
        "converted": await client.call_tool(
            "convert_time",
            {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
        ),
        "unknown zone": await client.call_tool("get_current_time", {"timezone": "Mars/Base"}),
    }


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_python_time_server_looks_the_same_through_the_proxy_and_is_metered(
    pipeline_settings: Settings, start_worker: Any, mode: str
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    upstream = [str(TIME_SERVER), "--local-timezone", "UTC"]
    direct = StdioServerParameters(command=upstream[0], args=upstream[1:])
    async with Client(direct, cache=None, mode=mode) as client:
        seen_directly = await _time_view(client)
    # auto: the SDK client and server agree on the modern era (server/discover, then
    # each request carrying the version and client in its _meta); legacy: initialize.
    assert seen_directly["protocol"] == ("2026-07-28" if mode == "auto" else "2025-11-25")

    session = f"time-user-{mode}"
    async with TokenQuota(settings) as quota:
        await set_budget(quota, session, 20_000)
        proxied = _proxied(session, upstream, _proxy_env(settings))
        async with Client(proxied, cache=None, mode=mode) as client:
            assert await _time_view(client) == seen_directly
    await _metered(settings, session)


# -- the MCP Inspector's CLI as the client ------------------------------------------------


def _inspect(target: list[str], method: list[str], env: dict[str, str], home: Path) -> Any:
    """What `mcp-inspector --cli` prints (JSON) for `method` against the stdio `target`.

    Its options come first: after the target, commander hands `--` and whatever follows
    to the target. The server gets only the variables given with -e (and PATH, HOME...).
    """
    inspector = str(npm_bin("mcp-inspector"))
    given = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    # Not a pipe: an upstream left behind would hold it open, and the run with it.
    errlog = home / "inspector.err"
    with errlog.open("w") as err:
        done = subprocess.run(
            [inspector, "--cli", *given, *method, *target],
            stdout=subprocess.PIPE, stderr=err, text=True, timeout=60, check=False, cwd=home,
            env={**os.environ, "HOME": str(home), "MCP_CATALOG_PATH": str(home / "mcp.json")},
        )  # fmt: skip
    assert done.returncode == 0, errlog.read_text()[-3000:]
    return json.loads(done.stdout)


async def test_the_inspector_cli_sees_the_same_through_the_proxy_and_the_call_is_metered(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    everything = [str(npm_bin("mcp-server-everything")), "stdio"]
    proxy = [sys.executable, "-m", "tokenquota", "mcp-proxy", "--session", "inspector-user"]
    list_tools = ["--method", "tools/list"]
    # --tool-arg takes every word up to the next option: the target must not follow it.
    call = ["--method", "tools/call", "--tool-arg", "a=2", "--tool-arg", "b=3"]
    call += ["--tool-name", "get-sum"]

    methods = {"list": list_tools, "call": call}
    direct: dict[str, Any] = {}

    async def inspect_directly(name: str) -> None:
        home = tmp_path / name
        home.mkdir()
        direct[name] = await anyio.to_thread.run_sync(_inspect, everything, methods[name], {}, home)

    async with anyio.create_task_group() as tasks:  # each run takes seconds: both at once
        for name in methods:
            tasks.start_soon(inspect_directly, name)
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "inspector-user", 20_000)
        env = _proxy_env(settings, **{MARK: "inspector-user"})
        # `-- --`: commander takes the first as the end of its options.
        through = [*proxy, "--", "--", *everything]
        try:
            for name, method in methods.items():
                seen = await anyio.to_thread.run_sync(_inspect, through, method, env, tmp_path)
                assert seen == direct[name], name
        finally:
            _stop_left_behind(env[MARK])
    assert direct["call"]["content"][0]["text"] == "The sum of 2 and 3 is 5."
    await _metered(settings, "inspector-user")


MARK = "TOKENQUOTA_TEST_MARK"


def _marked(mark: str) -> list[psutil.Process]:
    """The processes with `mark` in their environment: a proxy and its upstream."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _stop_left_behind(mark: str) -> list[str]:
    """Kill what is left of a proxy and its upstream after its client has gone (with a
    moment to go by itself); what was left."""
    _, alive = psutil.wait_procs(_marked(mark), timeout=3)
    left = []
    for process in alive:
        try:
            left.append(" ".join(process.cmdline()))
            process.kill()
        except psutil.NoSuchProcess:
            continue
    return left


async def test_a_client_that_sigterms_the_proxy_after_closing_its_stdin_leaves_no_upstream(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    everything = [str(npm_bin("mcp-server-everything")), "stdio"]
    proxy = [sys.executable, "-m", "tokenquota", "mcp-proxy", "--session", "sigterm-user"]
    env = _proxy_env(settings, **{MARK: "sigterm-user"})
    listed = await anyio.to_thread.run_sync(
        _inspect, [*proxy, "--", "--", *everything], ["--method", "tools/list"], env, tmp_path
    )
    assert listed["tools"]
    assert _stop_left_behind("sigterm-user") == []


async def test_sigterm_with_the_clients_stdin_still_open_stops_the_upstream_and_keeps_the_usage(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    everything = [str(npm_bin("mcp-server-everything")), "stdio"]
    session = "open-stdin-user"
    args = ["-m", "tokenquota", "mcp-proxy", "--session", session, "--", *everything]
    async with TokenQuota(settings) as quota:
        await set_budget(quota, session, 20_000)
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, *args, env={**os.environ, **_proxy_env(settings)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proxy.stdin is not None and proxy.stdout is not None
    try:

        async def ask(request_id: int, method: str, params: dict[str, Any]) -> Any:
            line = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            proxy.stdin.write(json.dumps(line).encode() + b"\n")  # type: ignore[union-attr]
            while True:  # skip the server's notifications
                answer = json.loads(await proxy.stdout.readline())  # type: ignore[union-attr]
                if answer.get("id") == request_id:
                    return answer

        with anyio.fail_after(30):
            client = {"name": "raw", "version": "1"}
            hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
            assert "result" in await ask(1, "initialize", hello)
            proxy.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
            summed = await ask(2, "tools/call", {"name": "get-sum", "arguments": {"a": 1, "b": 2}})
            assert "The sum of 1 and 2 is 3." in json.dumps(summed)
        upstream = psutil.Process(proxy.pid).children(recursive=True)
        assert upstream, "the proxy started no server"
        proxy.send_signal(signal.SIGTERM)  # stdin stays open
        assert await asyncio.wait_for(proxy.wait(), 15) == 0
        _, alive = psutil.wait_procs(upstream, timeout=10)
        assert not alive, alive
    finally:
        if proxy.returncode is None:
            proxy.kill()
            await proxy.wait()
    await _metered(settings, session)  # the call's usage left with the proxy


# -- the upstream server dies -------------------------------------------------------------


def _proxy_process(session: str) -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        try:
            if "mcp-proxy" in child.cmdline() and session in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no mcp-proxy process for {session}")


async def test_an_upstream_that_dies_mid_call_fails_the_clients_requests_and_leaves_nothing(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    everything = [str(npm_bin("mcp-server-everything")), "stdio"]
    session = "orphan-user"
    async with TokenQuota(settings) as quota:
        await set_budget(quota, session, 20_000)
        proxied = _proxied(session, everything, _proxy_env(settings))
        async with Client(proxied, cache=None, mode="legacy") as client:
            assert (await client.call_tool("get-sum", {"a": 1, "b": 2})).content
            proxy = _proxy_process(session)
            upstream = proxy.children(recursive=True)
            assert upstream, "the proxy started no server"
            failures: list[str] = []

            async def long_call() -> None:
                try:
                    await client.call_tool(
                        "trigger-long-running-operation", {"duration": 60, "steps": 60}
                    )
                except MCPError as exc:
                    failures.append(str(exc))

            with anyio.fail_after(15):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(long_call)
                    await anyio.sleep(1)  # the call is in flight upstream
                    for process in upstream:
                        process.send_signal(signal.SIGKILL)
                assert len(failures) == 1 and "closed its connection" in failures[0], failures
                with pytest.raises(MCPError, match="closed its connection"):
                    await client.call_tool("get-sum", {"a": 1, "b": 2})
                with pytest.raises(MCPError, match="closed its connection"):
                    await client.list_tools()
            assert proxy.is_running()  # until the client hangs up
        _, alive = psutil.wait_procs([proxy, *upstream], timeout=10)
        assert not alive, alive
