"""`tokenquota mcp-proxy` in front of the MCP Python SDK's own example servers (its sdist's
examples, see sdk_examples): the story servers over stdio, whose clients see through the
proxy what they see directly, in both protocol eras; servers that page their lists; the
stories' own clients through the proxy served over streamable HTTP; and the SDK's
everything-server as a remote upstream. The tool calls and sampling are metered.

Each test runs its servers side by side (most of the time is processes starting and
metered calls waiting for the worker's decision), and compares once all have run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client import ClientRequestContext, IncomingMessage
from mcp.client.stdio import StdioServerParameters
from mcp.client.subscriptions import ResourceUpdated, ToolsListChanged
from mcp.shared.exceptions import MCPError

from tests.producers.integrations.sdk_examples import (
    everything_server,
    examples_env,
    sdk_examples,
    story_server,
)
from tests.support import fetch_value, set_budget, settings_env, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.embedded import free_port, port_in_use
from tokenquota.producers import TokenQuota

pytestmark = [
    pytest.mark.integration,
    # The SDK's client sets the logging level we ask for: deprecated in the 2026 era.
    pytest.mark.filterwarnings("ignore:The logging capability is deprecated"),
    # ...and of ping and subscriptions, gone from it, even in a handshake-era session.
    pytest.mark.filterwarnings("ignore:.* is removed as of 2026-07-28"),
]

Mode = Literal["legacy", "auto"]
#: What the client's stand-in LLM answers every sampling request with.
REPLY = "[canned summary]"
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
#: How many servers (or clients) start at once: the machine has two cores.
AT_ONCE = 4


def _settings(pipeline_settings: Settings) -> Settings:
    return pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=60)}
    )


def _proxy_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **settings_env(settings),
        "LOG_LEVEL": "WARNING",
        "MCP_TOKEN_BUDGET_PER_REQUEST": "300",
        **extra,
    }


class _Recorder:
    """A client's callbacks, declaring roots, sampling and elicitation: they record, in
    order, every request and notification the server sent the client. Its tool calls
    wait for `budgeted` (when given)."""

    def __init__(self, budgeted: anyio.Event | None = None) -> None:
        self.got: list[Any] = []
        self.budgeted = budgeted
        #: The ids of the client's subscriptions/listen streams.
        self.listened: list[types.RequestId] = []

    def sent(self) -> list[Any]:
        """What the server sent, each notification's subscription id in its `_meta`
        checked to be one of the client's streams, then left out: the SDK's client numbers
        its streams process-wide, so a second client's ids are not the first's."""
        sent = []
        for got in self.got:
            params = getattr(got, "params", None)
            meta = getattr(params, "meta", None)
            if params is not None and isinstance(meta, dict) and SUBSCRIPTION_ID in meta:
                assert meta[SUBSCRIPTION_ID] in self.listened, (got, self.listened)
                meta = {key: value for key, value in meta.items() if key != SUBSCRIPTION_ID}
                got = got.model_copy(update={"params": params.model_copy(update={"meta": meta})})
            if isinstance(got, types.ProgressNotification):
                # The token is the number the client gave its call, which depends on how
                # many requests it made first (once in CI, two more through the proxy
                # under load); that the progress reached the call's callback is recorded
                # as ("progress", …) beside it.
                got = got.model_copy(
                    update={"params": got.params.model_copy(update={"progress_token": 0})}
                )
            sent.append(got)
        return sent

    async def roots(self, context: ClientRequestContext) -> types.ListRootsResult:
        self.got.append("roots/list")
        return types.ListRootsResult(
            roots=[
                types.Root(uri="file:///workspace/project", name="project"),
                types.Root(uri="file:///workspace/scratch"),
            ]
        )

    async def sample(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.got.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=REPLY),
            model="stub-model",
            stop_reason="endTurn",
        )

    async def elicit(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        """Accept: a URL at once, a form with its required fields (true or "alice")."""
        self.got.append(params)
        if isinstance(params, types.ElicitRequestURLParams):
            return types.ElicitResult(action="accept")
        schema = params.requested_schema
        content: dict[str, str | int | float | bool | list[str] | None] = {
            name: True if field.get("type") == "boolean" else "alice"
            for name, field in schema["properties"].items()
            if name in schema.get("required", ())
        }
        return types.ElicitResult(action="accept", content=content)

    async def message(self, message: IncomingMessage) -> None:
        self.got.append(repr(message) if isinstance(message, Exception) else message)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.got.append(params)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.got.append(("progress", progress, total, message))

    def client(self, server: StdioServerParameters | str, mode: Mode) -> Client:
        return Client(
            server,
            cache=None,
            mode=mode,
            read_timeout_seconds=60,
            list_roots_callback=self.roots,
            sampling_callback=self.sample,
            elicitation_callback=self.elicit,
            message_handler=self.message,
            logging_callback=self.log,
            log_level="info",  # the 2026 era sends log notifications only when asked
        )


async def _outcome(request: Awaitable[Any]) -> Any:
    """A request's result, or the MCP error it failed with (compared as well)."""
    try:
        return await request
    except MCPError as exc:
        return ("MCPError", exc.code, exc.message)


async def _handshake_and_lists(client: Client) -> dict[str, Any]:
    return {
        "server": client.server_info,
        "capabilities": client.server_capabilities,
        "instructions": client.instructions,
        "protocol": client.protocol_version,
        **await _lists(client),
    }


async def _lists(client: Client) -> dict[str, Any]:
    return {
        "tools": await _outcome(client.list_tools()),
        "prompts": await _outcome(client.list_prompts()),
        "resources": await _outcome(client.list_resources()),
        "templates": await _outcome(client.list_resource_templates()),
    }


async def _call(
    client: Client, recorder: _Recorder, seen: dict[str, Any], tool: str, arguments: dict[str, Any]
) -> None:
    """Call `tool`, its outcome in `seen` under `call <n> <tool>`."""
    if recorder.budgeted is not None:
        await recorder.budgeted.wait()
    number = sum(key.startswith("call ") for key in seen)
    called = client.call_tool(tool, arguments, progress_callback=recorder.progress)
    seen[f"call {number} {tool}"] = await _outcome(called)


def _billed(seen: dict[str, Any], recorder: _Recorder) -> Counter[str]:
    """The usage events (operation: how many) the proxy emits for what `seen` shows was
    done through it: each tool call's, settled with its result's count (or released, a
    usage of no tokens, when it came back as an MCP error); each sampling request's."""
    usage = Counter(
        f"mcp.tool:{key.split(' ', 2)[2]}" if isinstance(value, types.CallToolResult) else "release"
        for key, value in seen.items()
        if key.startswith("call ")
    )
    sampled = sum(isinstance(got, types.CreateMessageRequestParams) for got in recorder.got)
    if sampled:
        usage["mcp.sampling/createMessage"] = sampled
    return usage


async def _metered(settings: Settings, session: str, *expected: Counter[str]) -> None:
    """The session's usage events are one of `expected` (operation: how many, each as many
    events), and they reached session_token_budgets and integration_logs."""

    async def operations() -> Counter[str]:
        counted = await fetch_value(
            settings.database,
            "SELECT coalesce(jsonb_object_agg(operation, n), '{}'::jsonb)::text FROM ("
            " SELECT payload->>'operation' AS operation, count(*) AS n FROM usage_events"
            " WHERE session_id = $1 AND event_type = 'TokenUsed' GROUP BY 1) AS used",
            session,
        )
        return Counter(json.loads(counted))

    events = min(usage.total() for usage in expected)

    async def all_applied() -> bool:
        return (await operations()).total() >= events

    await wait_until(all_applied, 60, f"{session}'s {events} usage events applied")
    used = await operations()
    assert used in expected, (session, used)
    total = await fetch_value(
        settings.database,
        "SELECT tokens_used_total FROM session_token_budgets WHERE session_id = $1",
        session,
    )
    assert total > 0
    logged = await fetch_value(
        settings.database,
        "SELECT count(*) FROM integration_logs WHERE session_id = $1"
        " AND integration_type = 'mcp' AND action = 'token_used'",
        session,
    )
    assert logged == used.total()


View = Callable[[Client, _Recorder], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Case:
    """A client's `view` of an upstream server, directly and through the proxy: a stdio
    server's command `upstream` (run with `env`), or a streamable HTTP server's `url`."""

    label: str
    mode: Mode
    view: View
    upstream: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None

    def direct(self) -> StdioServerParameters | str:
        if self.url is not None:
            return self.url
        return StdioServerParameters(
            command=self.upstream[0], args=list(self.upstream[1:]), env=self.env
        )

    def proxied(self, settings: Settings, session: str, spool: Path) -> StdioServerParameters:
        """`tokenquota mcp-proxy --session <session>` in front of it, spooling in `spool`."""
        args = ["-m", "tokenquota", "mcp-proxy", "--session", session]
        args += ["--upstream-url", self.url] if self.url else ["--", *self.upstream]
        env = _proxy_env(settings, **self.env, EMITTER_SPOOL_DIR=str(spool))
        return StdioServerParameters(command=sys.executable, args=args, env=env)


@dataclass
class Seen:
    """What a case's client saw directly and through the proxy, and was sent."""

    directly: dict[str, Any]
    through: dict[str, Any]
    sent_directly: _Recorder
    sent_through: _Recorder


async def _compare(
    settings: Settings, quota: TokenQuota, session: str, cases: Sequence[Case], spool: Path
) -> dict[str, Seen]:
    """Run every case directly and through `tokenquota mcp-proxy --session <session>`,
    all side by side, while the session gets its budget (which the tool calls through the
    proxy wait for); check they saw the same and were sent the same, and that what went
    through the proxy was metered.

    Each proxy spools in a folder of its own under `spool`: two proxies of one command
    would share theirs (and the second would refuse to start)."""
    directly: dict[str, tuple[dict[str, Any], _Recorder]] = {}
    through: dict[str, tuple[dict[str, Any], _Recorder]] = {}
    limiter = anyio.CapacityLimiter(AT_ONCE)
    budgeted = anyio.Event()

    async def budget() -> None:
        await set_budget(quota, session, 100_000)
        budgeted.set()

    async def run(
        case: Case, server: StdioServerParameters | str, into: dict[str, Any], proxied: bool
    ) -> None:
        recorder = _Recorder(budgeted if proxied else None)
        async with limiter, recorder.client(server, case.mode) as client:
            into[case.label] = (await case.view(client, recorder), recorder)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(budget)
        for case in cases:
            tasks.start_soon(run, case, case.direct(), directly, False)
        for number, case in enumerate(cases):
            proxy = case.proxied(settings, session, spool / str(number))
            tasks.start_soon(run, case, proxy, through, True)

    seen: dict[str, Seen] = {}
    billed: Counter[str] = Counter()
    for case in cases:
        direct_view, sent_directly = directly[case.label]
        view, sent_through = through[case.label]
        assert view == direct_view, case.label
        assert sent_through.sent() == sent_directly.sent(), case.label
        billed += _billed(view, sent_through)
        seen[case.label] = Seen(direct_view, view, sent_directly, sent_through)
    await _metered(settings, session, billed)
    return seen


# -- the story servers over stdio ----------------------------------------------------------


@dataclass(frozen=True)
class Story:
    """One of the SDK's stories (examples/stories/<name>) and what a client does with it:
    its calls, then its reads, prompts and completions, then its calls of the handshake
    era (the server pushes a request to the client, which the 2026 era has no channel for
    over stdio)."""

    name: str
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    reads: tuple[str, ...] = ()
    prompts: tuple[tuple[str, dict[str, str]], ...] = ()
    completions: tuple[tuple[str, dict[str, str]], ...] = ()
    legacy_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    modes: tuple[Mode, ...] = ("legacy", "auto")

    async def view(self, client: Client, recorder: _Recorder, mode: Mode) -> dict[str, Any]:
        """What a client sees of the story's server, and the lists again after the calls."""
        seen = await _handshake_and_lists(client)
        for tool, arguments in self.calls:
            await _call(client, recorder, seen, tool, arguments)
        for uri in self.reads:
            seen[f"read {uri}"] = await _outcome(client.read_resource(uri))
        for name, arguments in self.prompts:
            seen[f"prompt {name}"] = await _outcome(client.get_prompt(name, arguments))
        for name, argument in self.completions:
            ref = types.PromptReference(type="ref/prompt", name=name)
            seen[f"complete {name}"] = await _outcome(client.complete(ref, argument))
        if mode == "legacy":
            for tool, arguments in self.legacy_calls:
                await _call(client, recorder, seen, tool, arguments)
            seen["ping"] = await client.send_ping()  # gone from the 2026 era
        seen["lists at the end"] = await _lists(client)
        return seen


STORIES = (
    Story(
        "tools",
        calls=(
            ("calc", {"op": "add", "a": 2, "b": 3}),
            ("calc", {"op": "mul", "a": 2.5, "b": -4}),
            ("calc", {"op": "pow", "a": 2, "b": 3}),  # no such op: an error result
            ("echo", {"text": "hi"}),
        ),
        modes=("legacy",),  # stickynotes has tools of the 2026 era (each case costs seconds)
    ),
    Story(
        "prompts",
        prompts=(
            ("greet", {"name": "Ada"}),
            ("code_review", {"language": "rust", "code": "fn main() {}"}),
            ("no_such_prompt", {}),
        ),
        completions=(("code_review", {"name": "language", "value": "py"}),),
    ),
    Story(
        "resources",
        reads=("config://app", "greeting://world", "unknown://nothing"),
        modes=("legacy",),  # stickynotes has resources of the 2026 era
    ),
    # Progress and log notifications during the call.
    Story("streaming", calls=(("countdown", {"steps": 3}),)),
    # Tools add and remove resources, announced by resources/list_changed; clearing the
    # board asks for a confirmation (elicitation).
    Story(
        "stickynotes",
        calls=(
            ("add_note", {"text": "Buy milk"}),
            ("add_note", {"text": "Walk the dog"}),
            ("remove_note", {"note_id": "1"}),
        ),
        reads=("note:///2", "note:///1"),
        legacy_calls=(("remove_all", {}),),
    ),
    Story("sampling", legacy_calls=(("summarize", {"text": "hello world"}),), modes=("legacy",)),
    Story(
        "legacy_elicitation",
        legacy_calls=(("register_user", {}), ("link_account", {"provider": "github"})),
        modes=("legacy",),
    ),
)


async def _subscriptions(client: Client, recorder: _Recorder) -> dict[str, Any]:
    """The subscriptions story (the 2026 era's subscriptions/listen): the stream delivers
    the update of the note it watches, not another's, and the tool list's change."""
    seen = await _handshake_and_lists(client)
    events = []
    async with client.listen(
        tools_list_changed=True, resource_subscriptions=["note://todo"]
    ) as stream:
        recorder.listened.append(stream.subscription_id)
        seen["honored"] = stream.honored
        await _call(client, recorder, seen, "edit_note", {"name": "journal", "text": "day two"})
        await _call(client, recorder, seen, "edit_note", {"name": "todo", "text": "water plants"})
        with anyio.fail_after(10):
            events.append(await anext(stream))
        await _call(client, recorder, seen, "enable_search", {})
        with anyio.fail_after(10):
            events.append(await anext(stream))
    seen["events"] = events
    seen["lists at the end"] = await _lists(client)
    await _call(client, recorder, seen, "search", {"query": "water"})
    return seen


def _story_case(story: Story, mode: Mode) -> Case:
    async def view(client: Client, recorder: _Recorder) -> dict[str, Any]:
        return await story.view(client, recorder, mode)

    return Case(f"{story.name} ({mode})", mode, view, story_server(story.name), examples_env())


async def test_the_story_servers_look_the_same_through_the_proxy_in_both_eras_and_are_metered(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    cases = [_story_case(story, mode) for story in STORIES for mode in story.modes]
    subscriptions = story_server("subscriptions")
    cases.append(
        Case("subscriptions (auto)", "auto", _subscriptions, subscriptions, examples_env())
    )
    async with TokenQuota(settings) as quota:
        seen = await _compare(settings, quota, "sdk-stories", cases, tmp_path / "spool")

    # What was compared is what the stories say their servers do (not, say, errors).
    tools = seen["tools (legacy)"].directly
    assert tools["call 0 calc"].structured_content == {"op": "add", "result": 5.0}
    assert tools["call 2 calc"].is_error
    resources = seen["resources (legacy)"].directly
    assert resources["read greeting://world"].contents[0].text == "Hello, world!"
    assert [t.uri_template for t in resources["templates"].resource_templates] == [
        "greeting://{name}"
    ]
    for mode in ("legacy", "auto"):
        prompts = seen[f"prompts ({mode})"].directly
        assert prompts["protocol"] == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        assert "Ada" in str(prompts["prompt greet"].messages[0].content)
        assert prompts["complete code_review"].completion.values == ["python", "pytorch"]
        assert prompts["prompt no_such_prompt"][0] == "MCPError"
        sent = seen[f"streaming ({mode})"].sent_through.got
        assert [got for got in sent if isinstance(got, tuple)] == [
            ("progress", float(i), 3.0, f"step {i}/3") for i in (1, 2, 3)
        ]
        logged = [
            got.data for got in sent if isinstance(got, types.LoggingMessageNotificationParams)
        ]
        assert logged == ["step 1/3", "step 2/3", "step 3/3"]
        notes = seen[f"stickynotes ({mode})"].directly
        assert notes["call 0 add_note"].structured_content == {"id": "1", "uri": "note:///1"}
        assert notes["read note:///2"].contents[0].text == "Walk the dog"
    # In the handshake era, clearing the board asked first (an elicitation).
    board = seen["stickynotes (legacy)"]
    assert board.directly["call 3 remove_all"].structured_content == {
        "status": "cleared",
        "removed": 1,
    }
    sent = board.sent_through.got
    assert sum(isinstance(got, types.ResourceListChangedNotification) for got in sent) == 4
    assert seen["sampling (legacy)"].through["call 0 summarize"].content[0].text == REPLY
    subscribed = seen["subscriptions (auto)"].through
    assert subscribed["events"] == [ResourceUpdated(uri="note://todo"), ToolsListChanged()]
    assert subscribed["call 3 search"].content[0].text == "todo"
    elicited = seen["legacy_elicitation (legacy)"].through
    assert elicited["call 0 register_user"].content[0].text == "registered alice (plan: free)"
    assert elicited["call 1 link_account"].content[0].text == "linked github"


# -- lists in pages ------------------------------------------------------------------------


async def _pages(list_page: Callable[[str | None], Awaitable[Any]]) -> list[Any]:
    """Every page of a list, following its cursors until a page has none."""
    pages = [await _outcome(list_page(None))]
    while getattr(pages[-1], "next_cursor", None) is not None:
        assert len(pages) < 20, "a list that never ends"
        pages.append(await _outcome(list_page(pages[-1].next_cursor)))
    return pages


async def _every_page(client: Client) -> dict[str, Any]:
    return {
        "tools": await _pages(lambda cursor: client.list_tools(cursor=cursor)),
        "prompts": await _pages(lambda cursor: client.list_prompts(cursor=cursor)),
        "resources": await _pages(lambda cursor: client.list_resources(cursor=cursor)),
        "templates": await _pages(lambda cursor: client.list_resource_templates(cursor=cursor)),
    }


async def _pagination_story(client: Client, recorder: _Recorder) -> dict[str, Any]:
    """The pagination story's lowlevel server: resources in pages of two, a cursor it
    does not know is an error."""
    return {
        "protocol": client.protocol_version,
        "pages": await _every_page(client),
        "unknown cursor": await _outcome(client.list_resources(cursor="99")),
        "bad cursor": await _outcome(client.list_resources(cursor="next")),
    }


async def _simple_pagination(client: Client, recorder: _Recorder) -> dict[str, Any]:
    """servers/simple-pagination: tools in pages of 5, resources of 10, prompts of 7."""
    seen = {"handshake": await _handshake_and_lists(client), "pages": await _every_page(client)}
    await _call(client, recorder, seen, "tool_7", {"input": "paged"})
    await _call(client, recorder, seen, "tool_99", {})  # unknown: an error
    seen["read"] = await _outcome(client.read_resource("file:///path/to/resource_12.txt"))
    seen["prompt"] = await _outcome(client.get_prompt("prompt_13", {"arg1": "value"}))
    seen["skipping ahead"] = await _outcome(client.list_tools(cursor="20"))
    return seen


async def test_lists_in_pages_look_the_same_through_the_proxy_cursor_for_cursor(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    simple = [sys.executable, "-m", "mcp_simple_pagination"]
    simple_env = examples_env("servers", "simple-pagination")
    story = story_server("pagination", "server_lowlevel")
    cases = [
        Case("story", "legacy", _pagination_story, story, examples_env()),
        Case("simple (legacy)", "legacy", _simple_pagination, simple, simple_env),
        Case("simple (auto)", "auto", _simple_pagination, simple, simple_env),
    ]
    async with TokenQuota(settings) as quota:
        seen = await _compare(settings, quota, "sdk-pages", cases, tmp_path / "spool")

    pages = seen["story"].through["pages"]["resources"]
    assert [[r.name for r in page.resources] for page in pages] == [
        ["alpha", "beta"],
        ["gamma", "delta"],
        ["epsilon", "zeta"],
    ]
    assert [page.next_cursor for page in pages] == ["2", "4", None]
    assert seen["story"].through["unknown cursor"][0] == "MCPError"
    for mode in ("legacy", "auto"):
        simple_seen = seen[f"simple ({mode})"].through
        assert simple_seen["handshake"]["protocol"] == (
            "2025-11-25" if mode == "legacy" else "2026-07-28"
        )
        pages = simple_seen["pages"]
        assert [len(page.tools) for page in pages["tools"]] == [5, 5, 5, 5, 5]
        assert [len(page.resources) for page in pages["resources"]] == [10, 10, 10]
        assert [len(page.prompts) for page in pages["prompts"]] == [7, 7, 6]
        assert [page.next_cursor for page in pages["prompts"]] == ["7", "14", None]
        assert "tool_7" in str(simple_seen["call 0 tool_7"].content)
        assert simple_seen["skipping ahead"].tools[0].name == "tool_21"


# -- the stories' own clients, through the proxy served over HTTP -------------------------

#: Stories whose client, through the proxy over streamable HTTP, must get the server's
#: requests and notifications on the right streams: in the handshake era (`--legacy`)
#: sampling, roots and elicitation during a call, progress and logging, a cancellation;
#: in the 2026-07-28 era (sessionless POSTs) a subscriptions/listen stream and a tool
#: that asks for input in its result. With each, what the proxy meters for the run
#: (operation: how many, one of these).
HTTP_STORIES: dict[str, tuple[Literal["legacy", "modern"], list[Counter[str]]]] = {
    "sampling": (
        "legacy",
        [Counter({"mcp.tool:summarize": 1, "mcp.sampling/createMessage": 1})],
    ),
    "roots": ("legacy", [Counter({"mcp.tool:show_roots": 1})]),
    "legacy_elicitation": (
        "legacy",
        [Counter({"mcp.tool:register_user": 1, "mcp.tool:link_account": 1})],
    ),
    # Its client cancels its second call: released, unless its result got there first.
    "streaming": (
        "legacy",
        [Counter({"mcp.tool:countdown": 2, "release": 1}), Counter({"mcp.tool:countdown": 3})],
    ),
    "subscriptions": (
        "modern",
        [Counter({"mcp.tool:edit_note": 2, "mcp.tool:enable_search": 1, "mcp.tool:search": 1})],
    ),
    # Asked, answered and retried twice; the retry with a tampered requestState is
    # refused by the server (an error answer: released).
    "mrtr": ("modern", [Counter({"mcp.tool:deploy": 4, "release": 1})]),
}


async def test_the_stories_own_clients_pass_through_the_proxy_served_over_http(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    examples = sdk_examples()
    env = {**os.environ, **_proxy_env(settings, **examples_env())}
    proxies: dict[str, tuple[asyncio.subprocess.Process, int]] = {}
    try:
        for name in HTTP_STORIES:
            port = free_port()
            with (tmp_path / f"proxy-{name}.log").open("wb") as log:
                proxies[name] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tokenquota", "mcp-proxy", "--http", "--port", str(port),
                    "--session", f"http-{name}", "--", *story_server(name),
                    env={**env, "EMITTER_SPOOL_DIR": str(tmp_path / "spool" / name)},
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                ), port  # fmt: skip

        async def listening() -> bool:
            for name, (proxy, port) in proxies.items():
                assert proxy.returncode is None, (tmp_path / f"proxy-{name}.log").read_text()
                if not port_in_use("127.0.0.1", port):
                    return False
            return True

        await wait_until(listening, 30, "the proxies listening over HTTP")
        ran: dict[str, tuple[int | None, str]] = {}
        limiter = anyio.CapacityLimiter(AT_ONCE)

        async def run_client(name: str) -> None:
            url = f"http://127.0.0.1:{proxies[name][1]}/mcp"
            async with limiter:
                client = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", f"stories.{name}.client", "--http", url,
                    *(["--legacy"] if HTTP_STORIES[name][0] == "legacy" else []),
                    cwd=examples, env={**os.environ, **examples_env()},
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    _, err = await asyncio.wait_for(client.communicate(), 90)
                finally:
                    if client.returncode is None:
                        client.kill()
            ran[name] = (client.returncode, err.decode(errors="replace"))

        async with TokenQuota(settings) as quota:
            async with anyio.create_task_group() as tasks:
                for name in HTTP_STORIES:
                    tasks.start_soon(set_budget, quota, f"http-{name}", 20_000)
            async with anyio.create_task_group() as tasks:
                for name in HTTP_STORIES:
                    tasks.start_soon(run_client, name)
        for name, (code, err) in ran.items():
            ok = f"OK: {name} (http/{HTTP_STORIES[name][0]})"
            assert code == 0 and ok in err, f"{name}:\n{err[-3000:]}"

        async def upstreams_stopped() -> bool:
            # Each session's upstream server ends with the client's session (DELETE); the
            # 2026-07-28 era has no sessions: its one upstream serves every client.
            return all(
                len(psutil.Process(proxy.pid).children()) == (HTTP_STORIES[name][0] == "modern")
                for name, (proxy, _) in proxies.items()
            )

        await wait_until(upstreams_stopped, 15, "the sessions' upstream servers stopped")
    finally:
        for proxy, _ in proxies.values():
            if proxy.returncode is None:
                proxy.terminate()
        for proxy, _ in proxies.values():
            await asyncio.wait_for(proxy.wait(), 15)

    for name, (_, expected) in HTTP_STORIES.items():
        await _metered(settings, f"http-{name}", *expected)


# -- the SDK's everything-server, a remote upstream ----------------------------------------


async def _everything(client: Client, recorder: _Recorder) -> dict[str, Any]:
    """The everything-server's lists, content of each kind, a server's requests and
    notifications during calls, reads, prompts, completions and subscriptions."""
    seen = await _handshake_and_lists(client)
    for tool, arguments in (
        ("test_simple_text", {}),
        ("test_image_content", {}),
        ("test_audio_content", {}),
        ("test_embedded_resource", {}),
        ("test_multiple_content_types", {}),
        ("test_tool_with_logging", {}),
        ("test_tool_with_progress", {}),
        ("test_sampling", {"prompt": "Summarize the budgets"}),
        ("test_elicitation", {"message": "Who are you?"}),
        ("test_error_handling", {}),
        ("json_schema_2020_12_tool", {}),
    ):
        await _call(client, recorder, seen, tool, arguments)
    for uri in ("test://static-text", "test://static-binary", "test://template/7/data"):
        seen[f"read {uri}"] = await _outcome(client.read_resource(uri))
    for name, prompt_arguments in (
        ("test_simple_prompt", {}),
        ("test_prompt_with_arguments", {"arg1": "one", "arg2": "two"}),
        ("test_prompt_with_embedded_resource", {"resourceUri": "test://static-text"}),
        ("test_prompt_with_image", {}),
    ):
        seen[f"prompt {name}"] = await _outcome(client.get_prompt(name, prompt_arguments))
    ref = types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments")
    seen["complete"] = await _outcome(client.complete(ref, {"name": "arg1", "value": "o"}))
    seen["subscribe"] = await _outcome(client.subscribe_resource("test://watched-resource"))
    seen["unsubscribe"] = await _outcome(client.unsubscribe_resource("test://watched-resource"))
    seen["logging"] = await _outcome(client.set_logging_level("debug"))
    seen["ping"] = await client.send_ping()
    return seen


async def test_the_sdks_everything_server_looks_the_same_through_the_proxy_as_a_remote_upstream(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = _settings(pipeline_settings)
    start_worker()
    port = free_port()
    command, env = everything_server(port)
    with (tmp_path / "everything.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            *command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:

        async def listening() -> bool:
            assert server.returncode is None, (tmp_path / "everything.log").read_text()
            return port_in_use("127.0.0.1", port)

        await wait_until(listening, 30, "the everything-server listening over HTTP")
        case = Case("everything", "legacy", _everything, url=f"http://127.0.0.1:{port}/mcp")
        async with TokenQuota(settings) as quota:
            seen = await _compare(settings, quota, "sdk-everything", [case], tmp_path / "spool")
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)

    everything = seen["everything"].through
    assert everything["server"].name == "mcp-conformance-test-server"
    assert everything["call 7 test_sampling"].content[0].text == f"LLM response: {REPLY}"
    assert "action=accept" in everything["call 8 test_elicitation"].content[0].text
    assert everything["call 9 test_error_handling"].is_error
    sent = seen["everything"].sent_through.got
    assert sum(isinstance(got, types.LoggingMessageNotificationParams) for got in sent) >= 3
    assert [got[1] for got in sent if isinstance(got, tuple)] == [0, 50, 100]
