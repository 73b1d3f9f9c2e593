"""MCP tools under budget: the decorator and the server-wide hooks, against a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer

from tests.producers.integrations.mcp_support import session_meta, text_of, tokens
from tests.support import fetch_value, set_budget, wait_for_usage, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.producers import TokenQuota, mcp_token_decorator, setup_mcp_token_hooks
from tokenquota.producers.budgets import set_account_budget
from tokenquota.producers.integrations.mcp_hooks import fair_reservation
from tokenquota.sections import McpSettings

pytestmark = pytest.mark.integration


def metered_settings(settings: Settings, per_request: int = 1000) -> Settings:
    return settings.model_copy(
        update={
            "mcp": McpSettings(token_budget_per_request=per_request),
            "reservations": ReservationSettings(decision_timeout=60),
        }
    )


async def test_the_decorator_settles_counted_tokens_and_refuses_over_budget_calls(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = metered_settings(pipeline_settings)
    start_worker()
    async with TokenQuota(settings) as quota:
        server = MCPServer(name="notes")

        @server.tool()
        @mcp_token_decorator(settings=settings, quota=quota)
        async def shout(text: str, ctx: Context) -> str:
            """Upper-case a text."""
            return text.upper() + "!"

        only_meta = settings.model_copy(
            update={"mcp": settings.mcp.model_copy(update={"session_sources": ("meta",)})}
        )

        @server.tool()
        @mcp_token_decorator(settings=only_meta, quota=quota)
        async def whisper(text: str, ctx: Context) -> str:
            """Lower-case a text."""
            return text.lower()

        await set_budget(quota, "alice", 10_000)
        await set_budget(quota, "bob", 500)
        await set_budget(quota, "carol", 2)
        async with Client(server) as client:
            result = await client.call_tool(
                "shout", {"text": "hello there"}, meta=session_meta("alice")
            )
            assert not result.is_error and text_of(result) == "HELLO THERE!"
            expected = tokens({"text": "hello there"}) + tokens("HELLO THERE!")
            await wait_for_usage(quota, "alice", expected)

            # 500 tokens left, under the 1000 of mcp.token_budget_per_request: the call
            # reserves its input and what is left, and runs.
            small = await client.call_tool("shout", {"text": "hi"}, meta=session_meta("bob"))
            assert not small.is_error and text_of(small) == "HI!"
            await wait_for_usage(quota, "bob", tokens({"text": "hi"}) + tokens("HI!"))
            # Not even the input fits: refused, asking for the input and the allowance.
            refused = await client.call_tool("shout", {"text": "hi"}, meta=session_meta("carol"))
            assert refused.is_error
            message = text_of(refused)
            wanted = tokens({"text": "hi"}) + 1000
            assert "'carol'" in message and f"requested {wanted} tokens" in message
            assert "2 available" in message

            missing = await client.call_tool("whisper", {"text": "hi"})
            assert missing.is_error and "no tokenquota session" in text_of(missing)

            again = await client.call_tool(
                "shout", {"text": "still up"}, meta=session_meta("alice")
            )
            assert text_of(again) == "STILL UP!"
            expected += tokens({"text": "still up"}) + tokens("STILL UP!")
            await wait_for_usage(quota, "alice", expected)
        assert (await quota.session_metrics("carol")).tokens_used_total == 0
        row = await fetch_value(
            settings.database,
            "SELECT (payload->>'counted_by') || ' ' || (payload->>'operation') FROM usage_events"
            " WHERE event_type = 'TokenUsed' AND session_id = 'alice' LIMIT 1",
        )
        assert row == "tiktoken mcp.tool:shout"


async def test_server_hooks_meter_every_tool_once_with_a_configured_session(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    base = metered_settings(pipeline_settings, per_request=200)
    settings = base.model_copy(
        update={
            "mcp": base.mcp.model_copy(
                update={"session_id": "ide", "token_budget_per_request": 200}
            )
        }
    )
    start_worker()
    async with TokenQuota(settings) as quota:
        server = MCPServer(name="tools")

        @server.tool()
        async def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        @server.tool()
        @mcp_token_decorator(settings=settings, quota=quota)
        async def repeat(word: str, times: int) -> str:
            """Repeat a word."""
            return " ".join([word] * times)

        setup_mcp_token_hooks(server, settings=settings, quota=quota)

        @server.tool()  # registered after the hooks: metered too
        async def late(x: str) -> dict[str, str]:
            """Echo as a structure."""
            return {"echo": x}

        await set_budget(quota, "ide", 10_000)
        await set_budget(quota, "other", 100)
        async with Client(server) as client:
            assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
            assert (
                text_of(await client.call_tool("repeat", {"word": "ok", "times": 3})) == "ok ok ok"
            )
            late_result = await client.call_tool("late", {"x": "y"})
            assert not late_result.is_error
            # A client naming another session is billed to the configured one.
            config_wins = await client.call_tool(
                "add", {"a": 1, "b": 1}, meta=session_meta("other")
            )
            assert not config_wins.is_error and text_of(config_wins) == "2"
        expected = (
            tokens({"a": 2, "b": 3})
            + tokens("5")
            + tokens({"word": "ok", "times": 3})
            + tokens("ok ok ok")
            + tokens({"x": "y"})
            + tokens(text_of(late_result))
            + tokens({"a": 1, "b": 1})
            + tokens("2")
        )
        await wait_for_usage(quota, "ide", expected)
        used_events = await fetch_value(
            settings.database,
            "SELECT count(*) FROM usage_events"
            " WHERE event_type = 'TokenUsed' AND session_id = 'ide'",
        )
        assert used_events == 4  # one per call: the decorated tool was not counted twice
        assert (await quota.session_metrics("other")).tokens_used_total == 0
        assert (
            await fetch_value(
                settings.database, "SELECT count(*) FROM usage_events WHERE session_id = 'other'"
            )
            == 1
        )  # its BudgetSet, nothing else


async def test_a_trusted_client_names_its_session_within_the_allowed_prefix(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    base = metered_settings(pipeline_settings, per_request=200)
    trusting = base.mcp.model_copy(
        update={
            "session_id": "ide",
            "session_sources": ("meta", "config"),  # the client's _meta before the config
            "client_session_prefix": "team-",
        }
    )
    settings = base.model_copy(update={"mcp": trusting})
    start_worker()
    async with TokenQuota(settings) as quota:
        server = MCPServer(name="tools")

        @server.tool()
        async def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        setup_mcp_token_hooks(server, settings=settings, quota=quota)
        client_info = settings.model_copy(
            update={"mcp": trusting.model_copy(update={"session_sources": ("client",)})}
        )
        decorated = MCPServer(name="decorated")

        @decorated.tool()
        @mcp_token_decorator(settings=client_info, quota=quota)
        async def double(n: int, ctx: Context) -> int:
            """Double a number."""
            return 2 * n

        await set_budget(quota, "ide", 10_000)
        await set_budget(quota, "team-a", 10_000)
        await set_budget(quota, "outsider", 10_000)
        async with Client(server) as client:
            own = await client.call_tool("add", {"a": 1, "b": 2}, meta=session_meta("team-a"))
            assert not own.is_error and text_of(own) == "3"
            outside = await client.call_tool("add", {"a": 1, "b": 3}, meta=session_meta("outsider"))
            assert outside.is_error
            assert text_of(outside) == (
                "session 'outsider' from the request _meta key 'tokenquota/session' is not "
                "allowed: a session named by the client must start with 'team-' "
                "(mcp.client_session_prefix)"
            )
            configured = await client.call_tool("add", {"a": 2, "b": 2})
            assert not configured.is_error and text_of(configured) == "4"
        async with Client(decorated) as client:
            named = await client.call_tool("double", {"n": 4})
            assert named.is_error  # the client's clientInfo name is not under 'team-'
            assert "from the client's clientInfo.name is not allowed" in text_of(named)
        await wait_for_usage(quota, "team-a", tokens({"a": 1, "b": 2}) + tokens("3"))
        await wait_for_usage(quota, "ide", tokens({"a": 2, "b": 2}) + tokens("4"))
        assert (await quota.session_metrics("outsider")).tokens_used_total == 0
        reservations = await fetch_value(settings.database, "SELECT count(*) FROM reservations")
        assert reservations == 2  # the refused calls reserved nothing


async def test_a_result_that_cannot_be_counted_releases_its_reservation(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = metered_settings(pipeline_settings, per_request=300)
    start_worker()
    async with TokenQuota(settings) as quota:
        server = MCPServer(name="tables")

        @server.tool()
        @mcp_token_decorator(settings=settings, quota=quota)
        async def table(ctx: Context) -> Any:
            """A result the meter cannot encode to count it (tuple keys)."""
            return {("row", 1): "x"}

        await set_budget(quota, "carol", 1_000)
        async with Client(server) as client:
            failed = await client.call_tool("table", {}, meta=session_meta("carol"))
            assert failed.is_error

        async def released() -> bool:
            status = await fetch_value(
                settings.database,
                "SELECT string_agg(status, ',') FROM reservations WHERE session_id = 'carol'",
            )
            return bool(status == "released")

        await wait_until(released, 60, "the release of the uncounted call's reservation")
        metrics = await quota.session_metrics("carol")
        assert (metrics.tokens_used_total, metrics.tokens_held) == (0, 0)


@pytest.mark.parametrize(
    ("input_tokens", "allowance", "room", "reserved"),
    [
        (50, 4000, 100_000, 4050),  # plenty of room: the whole allowance
        (50, 4000, 1_000, 1000),  # less room than the allowance: what is left
        (50, 4000, 51, 51),  # one token of output fits
        (50, 4000, 50, 4050),  # the input alone fills it: asks for all, to be refused
        (50, 4000, 0, 4050),
        (0, 1, -5, 1),  # never nothing
    ],
)
def test_a_tool_call_reserves_its_input_and_an_allowance_cut_to_what_is_left(
    input_tokens: int, allowance: int, room: int, reserved: int
) -> None:
    assert fair_reservation(input_tokens, allowance, room) == reserved


async def test_with_mcp_account_the_calls_count_in_the_tree_and_its_node_refuses(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    base = metered_settings(pipeline_settings, per_request=200)
    mcp = base.mcp.model_copy(update={"session_id": "tree-ide", "account": "acme/dev/ide"})
    settings = base.model_copy(update={"mcp": mcp})
    start_worker()
    async with TokenQuota(settings) as quota:
        server = MCPServer(name="tools")

        @server.tool()
        async def echo(text: str) -> str:
            """Echo."""
            return text

        setup_mcp_token_hooks(server, settings=settings, quota=quota)
        await set_account_budget(
            quota, "acme/dev", daily_limit=300, monthly_limit=300, hard_limit=300, actor="test"
        )
        async with Client(server) as client:
            assert text_of(await client.call_tool("echo", {"text": "hello"})) == "hello"
            # The session has its defaults' room; the team node has less than the input.
            refused = await client.call_tool("echo", {"text": "word " * 400})
        assert refused.is_error and "account 'acme/dev'" in text_of(refused), text_of(refused)
        first = tokens({"text": "hello"}) + tokens("hello")
        await wait_for_usage(quota, "tree-ide", first)
        session = await quota.session_metrics("tree-ide")
        assert session.account == "acme/dev/ide"
        tenant, team, ide = await quota.account_metrics("acme/dev/ide")
        assert tenant.tokens_used_total == team.tokens_used_total == ide.tokens_used_total == first
        assert team.reservations_rejected == 1

        # A team with less left than the output allowance (200): the call reserves what
        # the team has left, not the allowance, and fits.
        await set_account_budget(
            quota, "acme/dev", daily_limit=100, monthly_limit=300, hard_limit=300, actor="test"
        )
        async with Client(server) as client:
            small = await client.call_tool("echo", {"text": "again"})
        assert text_of(small) == "again"
        second = tokens({"text": "again"}) + tokens("again")
        await wait_for_usage(quota, "tree-ide", first + second)
        held = await fetch_value(
            settings.database,
            "SELECT tokens FROM reservations WHERE session_id = 'tree-ide'"
            " AND status = 'settled' ORDER BY requested_at DESC LIMIT 1",
        )
        assert held == 100 - first  # the team's daily room, not input + 200


def named(session: str, account: Any) -> Any:
    """A request `_meta` naming `session` and `account` (mcp.account_meta_key)."""
    return {**session_meta(session), "tokenquota/account": account}


async def accounts_of(settings: Settings, session: str) -> list[str | None]:
    """The accounts the events of `session` in the ledger name, each once."""
    found = await fetch_value(
        settings.database,
        "SELECT array_agg(DISTINCT payload->>'account') FROM usage_events"
        " WHERE session_id = $1 AND event_type <> 'BudgetSet'",
        session,
    )
    return list(found or [])


async def test_a_client_names_its_account_under_mcp_account_and_keeps_it_per_session(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    base = metered_settings(pipeline_settings, per_request=200)
    mcp = base.mcp.model_copy(update={"session_sources": ("meta",), "account": "acme/research"})
    settings = base.model_copy(update={"mcp": mcp})
    start_worker()
    async with TokenQuota(settings) as quota:

        def server_with_hooks() -> MCPServer[Any]:
            server = MCPServer(name="tools")

            @server.tool()
            async def echo(text: str) -> str:
                """Echo."""
                return text

            setup_mcp_token_hooks(server, settings=settings, quota=quota)
            return server

        # Without mcp.account, the decorator takes the client's account as given.
        unbound = settings.model_copy(update={"mcp": mcp.model_copy(update={"account": None})})
        decorated = MCPServer(name="decorated")

        @decorated.tool()
        @mcp_token_decorator(settings=unbound, quota=quota)
        async def double(n: int, ctx: Context) -> int:
            """Double a number."""
            return 2 * n

        async with Client(server_with_hooks()) as client:
            below = await client.call_tool(
                "echo", {"text": "hi"}, meta=named("alice-1", "acme/research/alice")
            )
            assert not below.is_error and text_of(below) == "hi", text_of(below)
            outside = await client.call_tool(
                "echo", {"text": "hi"}, meta=named("ops-1", "acme/ops")
            )
            assert outside.is_error
            assert text_of(outside) == (
                "account 'acme/ops' from the request _meta key 'tokenquota/account' is not "
                "allowed: an account named by the client must be 'acme/research' or below it "
                "(mcp.account)"
            )
            malformed = await client.call_tool(
                "echo", {"text": "hi"}, meta=named("bad-1", "acme//x")
            )
            assert malformed.is_error
            assert text_of(malformed) == (
                "account 'acme//x' from the request _meta key 'tokenquota/account' is not an "
                "account path: an account path is 1 to 8 segments of 1 to 64 characters, "
                "separated by '/', without control characters"
            )
            not_text = await client.call_tool("echo", {"text": "hi"}, meta=named("bad-1", 7))
            assert not_text.is_error and "account 7 from the request _meta" in text_of(not_text)
            switched = await client.call_tool(
                "echo", {"text": "hi"}, meta=named("alice-1", "acme/research/bob")
            )
            assert switched.is_error
            assert text_of(switched) == (
                "session 'alice-1' is billed to account 'acme/research/alice' here; this call "
                "names account 'acme/research/bob': every event of a session names the same "
                "account (use another session for another account)"
            )
            # Naming none: mcp.account, as before.
            plain = await client.call_tool("echo", {"text": "yo"}, meta=session_meta("plain-1"))
            assert not plain.is_error, text_of(plain)
        async with Client(decorated) as client:
            free = await client.call_tool("double", {"n": 4}, meta=named("free-1", "solo/x"))
            assert not free.is_error and text_of(free) == "8", text_of(free)

        alice_used = tokens({"text": "hi"}) + tokens("hi")
        plain_used = tokens({"text": "yo"}) + tokens("yo")
        await wait_for_usage(quota, "alice-1", alice_used)
        await wait_for_usage(quota, "plain-1", plain_used)
        await wait_for_usage(quota, "free-1", tokens({"n": 4}) + tokens(8))
        assert await accounts_of(settings, "alice-1") == ["acme/research/alice"]
        assert await accounts_of(settings, "plain-1") == ["acme/research"]
        assert await accounts_of(settings, "free-1") == ["solo/x"]
        for refused in ("ops-1", "bad-1"):
            assert await accounts_of(settings, refused) == []
        assert (await quota.session_metrics("alice-1")).account == "acme/research/alice"
        nodes = await quota.account_metrics("acme/research/alice")
        both = alice_used + plain_used  # acme and acme/research hold both sessions
        assert [node.tokens_used_total for node in nodes] == [both, both, alice_used]

        # Another server (a restart, a second replica): the session's stored account holds.
        async with Client(server_with_hooks()) as client:
            stored = await client.call_tool(
                "echo", {"text": "hi"}, meta=named("alice-1", "acme/research/bob")
            )
        assert stored.is_error
        assert text_of(stored) == (
            "session 'alice-1' belongs to account 'acme/research/alice' (its events so far); "
            "this call names account 'acme/research/bob': every event of a session names "
            "the same account (use another session for another account)"
        )
        assert await fetch_value(settings.database, "SELECT count(*) FROM reservations") == 3
