"""`tokenquota mcp-proxy` in front of a server of the 2026-07-28 protocol era (the MCP
Python SDK's everything-server, over streamable HTTP): a client that negotiates that era
sees what it sees directly, and the sampling such a server asks for inside a tool result
(`input_required`) is metered and refused over budget like a sampling request."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.producers.integrations.mcp_support import listening, proxy_env
from tests.producers.integrations.sdk_examples import everything_server
from tests.support import fetch_value, set_budget, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.embedded import free_port
from tokenquota.producers import TokenQuota

pytestmark = pytest.mark.integration

REPLY = "Paris, said the stand-in LLM."
SESSION = "modern-user"


class _Host:
    """A client host that answers sampling, elicitation and roots, and counts the
    sampling it was asked for."""

    def __init__(self) -> None:
        self.sampled = 0

    async def sample(
        self, context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.sampled += 1
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=REPLY), model="stub-llm"
        )

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada", "ok": True})

    async def roots(self, context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    def client(self, server: StdioServerParameters | str) -> Client:
        return Client(
            server,
            cache=None,
            read_timeout_seconds=60,
            sampling_callback=self.sample,
            elicitation_callback=self.elicit,
            list_roots_callback=self.roots,
        )


async def _view(client: Client) -> dict[str, Any]:
    calls = {
        "text": ("test_simple_text", {}),
        # an argument the server wants mirrored in an Mcp-Param-Region header
        "header": ("test_x_mcp_header", {"region": "eu-west"}),
        "sampling": ("test_input_required_result_sampling", {}),
        "rounds": ("test_input_required_result_multi_round", {}),
        "state": ("test_input_required_result_request_state", {}),
        "several": ("test_input_required_result_multiple_inputs", {}),
    }
    return {
        "protocol": client.protocol_version,
        "server": client.server_info,
        "capabilities": client.server_capabilities,
        "tools": (await client.list_tools()).tools,
        "prompts": (await client.list_prompts()).prompts,
        "resources": (await client.list_resources()).resources,
        "templates": (await client.list_resource_templates()).resource_templates,
        "prompt": await client.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"}),
        **{key: await client.call_tool(name, args) for key, (name, args) in calls.items()},
    }


def _server(port: int, log: Path) -> contextlib.AbstractAsyncContextManager[Any]:
    command, env = everything_server(port)
    return listening(command, port, log, env)


async def _sampling_usage(settings: Settings) -> list[Any]:
    return list(
        await fetch_value(
            settings.database,
            "SELECT coalesce(array_agg(payload->>'model'), '{}') FROM usage_events"
            " WHERE session_id = $1 AND payload->>'operation' = 'mcp.sampling/createMessage'",
            SESSION,
        )
    )


async def test_a_2026_era_server_looks_the_same_through_the_proxy_and_its_asked_sampling_is_metered(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with _server(port, tmp_path / "everything.log"):
        direct = _Host()
        async with direct.client(url) as client:
            seen_directly = await _view(client)
        assert seen_directly["protocol"] == "2026-07-28"
        assert "region=eu-west" in str(seen_directly["header"].content)
        assert REPLY in str(seen_directly["sampling"].content)
        # the multi-round tool asks twice; the several-inputs one once, among others
        sampled_directly = direct.sampled

        proxied = StdioServerParameters(
            command=sys.executable,
            args=["-m", "tokenquota", "mcp-proxy", "--session", SESSION, "--upstream-url", url],
            env=proxy_env(settings),
        )
        through = _Host()
        async with TokenQuota(settings) as quota:
            await set_budget(quota, SESSION, 20_000)
            async with through.client(proxied) as client:
                assert await _view(client) == seen_directly
                assert through.sampled == sampled_directly

                async def settled() -> bool:
                    return len(await _sampling_usage(settings)) == sampled_directly

                await wait_until(settled, 60, "each answered sampling settled")
                # settled for the model the client said it used
                assert set(await _sampling_usage(settings)) == {"stub-llm"}

                # Room for the call, not for the sampling it asks for (its prompt plus
                # maxTokens 100): the client gets a tool error and is not asked.
                used = (await quota.session_metrics(SESSION)).tokens_used_total
                await set_budget(quota, SESSION, used + 40)
                refused = await client.call_tool("test_input_required_result_sampling", {})
                assert refused.is_error and "token budget" in str(refused.content), refused
                assert through.sampled == sampled_directly

        async def nothing_held() -> bool:
            held = await fetch_value(
                settings.database,
                "SELECT count(*) FROM reservations WHERE session_id = $1"
                " AND status IN ('pending', 'accepted')",
                SESSION,
            )
            return bool(held == 0)

        await wait_until(nothing_held, 60, "no tokens left held for the session")


async def test_served_over_http_2026_era_clients_share_one_upstream_and_see_the_same(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )
    start_worker()
    session = "modern-http-user"
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with _server(port, tmp_path / "everything.log"):
        direct = _Host()
        async with direct.client(url) as client:
            seen_directly = await _view(client)
        proxy_port = free_port()
        env = proxy_env(settings)
        proxy = [
            sys.executable, "-m", "tokenquota", "mcp-proxy", "--http", "--port", str(proxy_port),
            "--session", session, "--upstream-url", url,
        ]  # fmt: skip
        async with (
            listening(proxy, proxy_port, tmp_path / "proxy.log", env),
            TokenQuota(settings) as quota,
        ):
            await set_budget(quota, session, 50_000)
            hosts = [_Host(), _Host()]
            seen: list[dict[str, Any]] = []

            async def look(host: _Host) -> None:
                async with host.client(f"http://127.0.0.1:{proxy_port}/mcp") as client:
                    seen.append(await _view(client))

            # Two clients at once, numbering their requests alike: each gets its own
            # answers (no session carries them apart in this era).
            async with anyio.create_task_group() as tasks:
                for host in hosts:
                    tasks.start_soon(look, host)
            assert seen == [seen_directly, seen_directly]
            assert [host.sampled for host in hosts] == [direct.sampled] * 2

            async def settled() -> bool:
                count = await fetch_value(
                    settings.database,
                    "SELECT count(*) FROM usage_events WHERE session_id = $1"
                    " AND payload->>'operation' = 'mcp.sampling/createMessage'",
                    session,
                )
                return bool(count == 2 * direct.sampled)

            await wait_until(settled, 60, "both clients' sampling settled")
