"""`tokenquota mcp-proxy` (stdio) in front of the MCP project's reference server, which
exercises the whole protocol: a client sees what it sees directly, server-to-client
requests (roots, sampling, elicitation) get through, and sampling is metered."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.producers.integrations.mcp_support import listening, proxy_env
from tests.producers.integrations.npm_servers import npm_bin
from tests.support import fetch_value, set_budget, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.embedded import free_port
from tokenquota.producers import TokenQuota

pytestmark = pytest.mark.integration

REPLY = "Budgets hold, said the stand-in LLM."


class _Callbacks:
    """A client that declares roots, sampling and elicitation, and records what it got."""

    def __init__(self) -> None:
        self.sampled: list[types.CreateMessageRequestParams] = []
        self.roots_asked = 0

    async def roots(self, context: Any) -> types.ListRootsResult:
        self.roots_asked += 1
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def sample(
        self, context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.sampled.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=REPLY), model="stub-llm"
        )

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    def client(self, server: StdioServerParameters | str) -> Client:
        return Client(
            server,
            cache=None,
            mode="legacy",
            read_timeout_seconds=90,
            list_roots_callback=self.roots,
            sampling_callback=self.sample,
            elicitation_callback=self.elicit,
        )


async def _view(client: Client) -> dict[str, Any]:
    """What a client sees of a server: its lists and a call, a read and a prompt."""
    tools = (await client.list_tools()).tools
    resources = (await client.list_resources()).resources
    return {
        "server": client.server_info,
        "capabilities": client.server_capabilities,
        "instructions": client.instructions,
        "tools": tools,
        "prompts": (await client.list_prompts()).prompts,
        "resources": resources,
        "templates": (await client.list_resource_templates()).resource_templates,
        "sum": await client.call_tool("get-sum", {"a": 2, "b": 3}),
        "structured": await client.call_tool("get-structured-content", {"location": "New York"}),
        "read": await client.read_resource(resources[0].uri),
        "prompt": await client.get_prompt("simple-prompt"),
    }


async def _more(client: Client) -> dict[str, Any]:
    """The rest of the protocol a client uses: completions, logging level, subscriptions,
    ping, and a call's progress notifications."""
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    uri = (await client.list_resources()).resources[0].uri
    ref = types.PromptReference(type="ref/prompt", name="completable-prompt")
    long_run = await client.call_tool(
        "trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress
    )
    return {
        "complete": await client.complete(ref, {"name": "department", "value": "S"}),
        "names": await client.complete(
            ref, {"name": "name", "value": ""}, context_arguments={"department": "Sales"}
        ),
        "logging": await client.set_logging_level("debug"),
        "subscribe": await client.subscribe_resource(str(uri)),
        "unsubscribe": await client.unsubscribe_resource(str(uri)),
        "ping": await client.send_ping(),
        "long_run": long_run,
        "progress": steps,
    }


# logging/setLevel is relayed as any request; the SDK warns that the 2026-07-28 era drops it.
@pytest.mark.filterwarnings("ignore:The logging capability is deprecated")
async def test_the_reference_server_looks_the_same_through_the_proxy_and_sampling_is_metered(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    everything = str(npm_bin("mcp-server-everything"))
    direct = _Callbacks()
    async with direct.client(StdioServerParameters(command=everything, args=["stdio"])) as c:
        seen_directly = await _view(c)
        more_directly = await _more(c)
    assert more_directly["progress"] == [1, 2, 3]
    assert [v for v in more_directly["complete"].completion.values] == ["Sales", "Support"]
    names = {tool.name for tool in seen_directly["tools"]}
    # The tools it offers only to clients declaring these capabilities.
    assert {"get-roots-list", "trigger-sampling-request", "trigger-elicitation-request"} <= names

    env = proxy_env(settings, MCP_TOKEN_BUDGET_PER_REQUEST="300")
    proxied = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "tokenquota",
            "mcp-proxy",
            "--session",
            "relay-user",
            "--",
            everything,
            "stdio",
        ],
        env=env,
    )
    through = _Callbacks()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "relay-user", 20_000)
        async with through.client(proxied) as client:
            assert await _view(client) == seen_directly
            assert await _more(client) == more_directly

            roots = await client.call_tool("get-roots-list", {})
            assert "file:///work/project" in str(roots.content), roots
            assert through.roots_asked >= 1

            sampled = await client.call_tool(
                "trigger-sampling-request", {"prompt": "count my tokens", "maxTokens": 50}
            )
            assert not sampled.is_error and REPLY in str(sampled.content)
            assert [p.max_tokens for p in through.sampled] == [50]
            declined = await client.call_tool("trigger-elicitation-request", {})
            assert "decline" in str(declined.content).lower()

            async def sampling_settled() -> bool:
                rows = await fetch_value(
                    settings.database,
                    "SELECT count(*) FROM usage_events WHERE session_id = 'relay-user'"
                    " AND payload->>'operation' = 'mcp.sampling/createMessage'",
                )
                return bool(rows == 1)

            await wait_until(sampling_settled, 60, "the sampling's usage applied")

            # Room for the tool call (300 tokens) but not for the sampling's maxTokens:
            # the server gets an MCP error, and the client is never asked.
            used = (await quota.session_metrics("relay-user")).tokens_used_total
            await set_budget(quota, "relay-user", used + 2_000)
            before = len(through.sampled)
            try:
                refused = await client.call_tool(
                    "trigger-sampling-request", {"prompt": "too much", "maxTokens": 5000}
                )
            except MCPError as exc:
                said = str(exc)
            else:
                assert refused.is_error, refused
                said = str(refused.content)
            assert "token budget" in said, said
            assert len(through.sampled) == before


async def test_a_remote_server_over_streamable_http_looks_the_same_through_the_proxy(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    port = free_port()
    everything = [str(npm_bin("mcp-server-everything")), "streamableHttp"]
    async with listening(everything, port, tmp_path / "everything-http.log", {"PORT": str(port)}):
        url = f"http://127.0.0.1:{port}/mcp"
        direct = _Callbacks()
        async with direct.client(url) as c:
            seen_directly = await _view(c)
        env = proxy_env(settings)
        proxied = StdioServerParameters(
            command=sys.executable,
            args=["-m", "tokenquota", "mcp-proxy", "--session", "remote-user",
                  "--upstream-url", url, "--header", "X-Test: relayed"],
            env=env,
        )  # fmt: skip
        through = _Callbacks()
        async with TokenQuota(settings) as quota:
            await set_budget(quota, "remote-user", 20_000)
            async with through.client(proxied) as client:
                seen = await _view(client)
                # Each session of server-everything gets its own id in some results.
                assert seen.keys() == seen_directly.keys()
                for key in ("server", "capabilities", "tools", "prompts", "templates", "sum"):
                    assert seen[key] == seen_directly[key], key
                sampled = await client.call_tool(
                    "trigger-sampling-request", {"prompt": "remote", "maxTokens": 40}
                )
                assert not sampled.is_error and REPLY in str(sampled.content)

            async def metered() -> bool:
                used = (await quota.session_metrics("remote-user")).tokens_used_total
                return used > 0

            await wait_until(metered, 60, "the remote calls metered")


async def test_served_over_http_each_session_gets_its_own_upstream_and_sampling_finds_its_call(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    everything = str(npm_bin("mcp-server-everything"))
    port = free_port()
    env = proxy_env(settings)
    proxy_command = [
        sys.executable, "-m", "tokenquota", "mcp-proxy", "--http", "--port", str(port),
        "--session", "http-user", "--", everything, "stdio",
    ]  # fmt: skip
    async with (
        listening(proxy_command, port, tmp_path / "proxy-http.log", env) as proxy,
        TokenQuota(settings) as quota,
    ):
        await set_budget(quota, "http-user", 20_000)
        first, second = _Callbacks(), _Callbacks()
        url = f"http://127.0.0.1:{port}/mcp"
        async with first.client(url) as one, second.client(url) as two:
            assert (await one.call_tool("get-sum", {"a": 1, "b": 2})).content == (
                await two.call_tool("get-sum", {"a": 1, "b": 2})
            ).content
            # The server's sampling request, sent during the call, reaches the client
            # on that call's stream.
            sampled = await one.call_tool(
                "trigger-sampling-request", {"prompt": "over http", "maxTokens": 30}
            )
            assert not sampled.is_error and REPLY in str(sampled.content)
            assert len(first.sampled) == 1 and not second.sampled

        async def upstreams_stopped() -> bool:
            # Each session's upstream child ends with the client's session (DELETE).
            nodes = 0
            for child in psutil.Process(proxy.pid).children(recursive=True):
                try:
                    nodes += child.name() == "node"
                except psutil.NoSuchProcess:  # it has just ended
                    continue
            return nodes == 0

        await wait_until(upstreams_stopped, 15, "the sessions' upstream servers stopped")


async def test_blobs_resource_updates_and_a_cancelled_call_pass_through_and_release_its_tokens(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    everything = str(npm_bin("mcp-server-everything"))
    session = "relay-more-user"
    env = proxy_env(settings, MCP_TOKEN_BUDGET_PER_REQUEST="300")
    args = ["-m", "tokenquota", "mcp-proxy", "--session", session, "--", everything, "stdio"]
    updated: list[str] = []
    first_step = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first_step.set()

    async with TokenQuota(settings) as quota:
        await set_budget(quota, session, 20_000)
        proxied = StdioServerParameters(command=sys.executable, args=args, env=env)
        async with Client(proxied, cache=None, mode="legacy", message_handler=on_message) as client:
            blob = (await client.read_resource("demo://resource/dynamic/blob/2")).contents[0]
            assert isinstance(blob, types.BlobResourceContents), blob
            assert base64.b64decode(blob.blob).startswith(b"Resource 2: This is a base64 blob")

            uri = "demo://resource/dynamic/text/1"
            await client.subscribe_resource(uri)
            await client.call_tool("toggle-subscriber-updates", {})  # sends one at once

            async def notified() -> bool:
                return uri in updated

            await wait_until(notified, 15, "notifications/resources/updated through the proxy")
            await client.call_tool("toggle-subscriber-updates", {})

            # A call the client gives up on: the SDK sends notifications/cancelled, the
            # proxy passes it on and releases the call's reservation at once.
            with anyio.move_on_after(20) as waited:
                async with anyio.create_task_group() as tasks:

                    async def long_call() -> None:
                        await client.call_tool(
                            "trigger-long-running-operation",
                            {"duration": 60, "steps": 60},
                            progress_callback=on_progress,
                        )

                    tasks.start_soon(long_call)
                    await first_step.wait()  # the call runs upstream
                    tasks.cancel_scope.cancel()
            assert not waited.cancelled_caught, "the call never reported progress"

            async def released() -> bool:
                rows = await fetch_value(
                    settings.database,
                    "SELECT count(*) FROM reservations WHERE session_id = $1"
                    " AND status = 'released'",
                    session,
                )
                return bool(rows == 1)

            await wait_until(released, 20, "the cancelled call's reservation released")
            summed = await client.call_tool("get-sum", {"a": 4, "b": 5})
            assert "The sum of 4 and 5 is 9." in str(summed.content)
