"""`tokenquota demo`: a steady workload through the real hooks, for the dashboard to show.

Four sessions, each with a budget of its own, set by a BudgetSet (`set_budget`) on top of
what the session has used already, so that a restarted demo starts with room again:

- `demo-research-agent` (300,000 tokens): a web search through a metered MCP tool, then
  a long-context call to gpt-4o or claude-sonnet-4-5, every 3 s or so; full in about
  five minutes.
- `demo-support-bot` (25,000 tokens): two conversations at once with claude-haiku-4-5
  (some streamed), now and then an order look-up tool; it crosses its warning threshold
  in about 50 s and its critical one a few seconds later, then runs out.
- `demo-batch-summarizer` (200,000 tokens): every 8 s a batch of four documents
  summarized by a metered MCP tool at once, then one gpt-4.1-mini responses call.
- `demo-tiny-budget` (3,000 tokens): every 4 s two gpt-4o-mini calls at once, each
  asking for 60% of what is left, so the worker accepts one strict reservation and
  refuses the other (refused at its limit: an alert), until too little is left for a
  call.

A session that has had no room for its next call for 45 s gets its budget raised again
by the same amount (a BudgetSet by the actor `demo-operator`), so the demo runs on for
as long as it is left running. The calls go through the official openai and anthropic
SDKs wrapped by `integrate_with_external_apis` (reservations, TokenUsed, ApiCost with
genai-prices costs) to the stub LLM server of `tokenquota.llm_stub`, started here on a
free port of 127.0.0.1; the MCP tools are served in-process under
`mcp_token_decorator`. Every event comes from a hook; none is written by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from mcp.server.mcpserver import Context, MCPServer

from .config import Settings
from .errors import IntegrationError, TokenQuotaExceededError
from .llm_stub import FakeLLM, Usage, running_fake_llm
from .producers import TokenQuota, token_counter
from .producers.budgets import set_budget
from .schemas import Source
from .sections import McpSettings

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["SESSIONS", "DemoSession", "DemoTotals", "run_demo"]

#: How long a session goes without room for its next call before its budget is raised.
TOP_UP_AFTER = 45.0
#: How often the demo prints where each session stands.
SUMMARY_EVERY = 20.0
_ACTOR = "tokenquota demo"
_OPERATOR = "demo-operator"


@dataclass(frozen=True)
class DemoSession:
    """A session of the demo: its id, the tokens each budget grants, the room its
    smallest call needs (less than that for TOP_UP_AFTER seconds: the budget is raised)."""

    session_id: str
    budget: int
    smallest_call: int


RESEARCH = DemoSession("demo-research-agent", 300_000, 6_000)
SUPPORT = DemoSession("demo-support-bot", 25_000, 1_000)
BATCH = DemoSession("demo-batch-summarizer", 200_000, 4_000)
TINY = DemoSession("demo-tiny-budget", 3_000, 200)
SESSIONS = (RESEARCH, SUPPORT, BATCH, TINY)


@dataclass
class DemoTotals:
    """What the demo did: calls answered, and refusals (by the worker or before sending)."""

    calls: int = 0
    tool_calls: int = 0
    refused: int = 0
    budgets_set: int = 0
    by_session: dict[str, int] = field(default_factory=dict)

    def answered(self, session: DemoSession, *, tool: bool = False) -> None:
        self.calls += not tool
        self.tool_calls += tool
        self.by_session[session.session_id] = self.by_session.get(session.session_id, 0) + 1


# -- text -------------------------------------------------------------------------------

_SENTENCES = (
    "The quarterly report shows token spend rising with every new agent deployment.",
    "Each tool call is reserved before it runs and settled with what it really used.",
    "Customers ask where their order is, whether it can be changed and when it ships.",
    "The retrieval step returns the ten most relevant passages from the knowledge base.",
    "Budgets are decided on the log's clock, so a wrong producer clock cannot move them.",
    "A summary keeps the names, the numbers and the decisions, and drops the rest.",
    "The incident review lists what failed, what was noticed first and what fixed it.",
    "Prices per million tokens differ by model, by cached input and by output.",
)
_QUESTIONS = (
    "What changed in our spend this week, and which agent drove it?",
    "Where is order {n}, and can the delivery address still be changed?",
    "Compare the three vendors' answers and list their disagreements.",
    "Draft a short reply explaining the refund policy for order {n}.",
)


def _text(rng: random.Random, sentences: int) -> str:
    """About 16 tokens per sentence; the same few texts recur (the counter's cache hits)."""
    start = rng.randrange(len(_SENTENCES))
    return " ".join(_SENTENCES[(start + i) % len(_SENTENCES)] for i in range(sentences))


def _question(rng: random.Random) -> str:
    return rng.choice(_QUESTIONS).format(n=rng.randrange(1000, 1020))


def _stub_usage(rng: random.Random) -> Callable[[dict[str, Any]], Usage]:
    """What the stub reports for a request: its prompt as the hooks count it (so what is
    settled never exceeds what was reserved) and 35-95% of its output limit."""

    def usage(body: dict[str, Any]) -> Usage:
        model = str(body.get("model") or "gpt-4o")
        prompt = int(token_counter.count_messages(body.get("messages") or [], model))
        for key in ("system", "instructions"):
            if body.get(key):
                prompt += token_counter.count_payload(body[key], model)
        source = body.get("input")
        if isinstance(source, str):
            prompt += token_counter.count(source, model)
        limit = next(
            (
                int(body[key])
                for key in ("max_tokens", "max_completion_tokens", "max_output_tokens")
                if isinstance(body.get(key), int)
            ),
            512,
        )
        return prompt, max(1, int(limit * rng.uniform(0.35, 0.95))), 0

    return usage


# -- the workload -----------------------------------------------------------------------


class _Workload:
    """The agents of the four sessions and the operator, on one client and one stub."""

    def __init__(
        self,
        quota: TokenQuota,
        api: Any,
        mcp: Client,
        say: Callable[[str], None],
        rng: random.Random,
    ) -> None:
        self.quota = quota
        self.api = api
        self.mcp = mcp
        self.say = say
        self.rng = rng
        self.totals = DemoTotals()
        self._no_room_since: dict[str, float] = {}

    async def pause(self, seconds: float) -> None:
        """Sleep about `seconds` (±30%), so the sessions' events interleave."""
        await asyncio.sleep(seconds * self.rng.uniform(0.7, 1.3))

    def refused(self, session: DemoSession, what: str, error: object) -> None:
        """A call the budget refused, or (IntegrationError) that tokenquota could not
        decide; the demo goes on either way."""
        if isinstance(error, IntegrationError):
            self.say(f"{session.session_id}: {what} failed: {error}")
            return
        self.totals.refused += 1
        self.say(f"{session.session_id}: {what} refused: {error}")

    async def grant(self, session: DemoSession, actor: str) -> None:
        """A budget of `session.budget` tokens on top of what the session has used."""
        metrics = await self.quota.session_metrics(session.session_id)
        await set_budget(
            self.quota,
            session.session_id,
            daily_limit=metrics.tokens_used_today + session.budget,
            monthly_limit=metrics.tokens_used_month + session.budget,
            hard_limit=metrics.tokens_used_total + session.budget,
            warning_threshold=Decimal("0.8"),
            critical_threshold=Decimal("0.95"),
            actor=actor,
            timeout=60,
            source=Source(component="sdk", name="tokenquota demo"),
        )
        self.totals.budgets_set += 1
        self.say(
            f"{session.session_id}: budget of {session.budget:,} tokens set by {actor} "
            f"(hard limit {metrics.tokens_used_total + session.budget:,})"
        )

    # -- the calls, through the hooks ---------------------------------------------------

    async def tool(self, session: DemoSession, name: str, arguments: dict[str, Any]) -> bool:
        """One metered MCP tool call; False when the budget refused it."""
        meta = cast(Any, {"tokenquota/session": session.session_id})
        result = await self.mcp.call_tool(name, arguments, meta=meta)
        if result.is_error:
            text = getattr(result.content[0], "text", "") if result.content else ""
            self.refused(session, f"tool {name}", text)
            return False
        self.totals.answered(session, tool=True)
        return True

    async def chat(self, session: DemoSession, model: str, prompt: str, max_tokens: int) -> bool:
        """One metered OpenAI chat completion; False when the budget refused it."""
        messages = [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": prompt},
        ]
        try:
            await self.api.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens,
                session_id=session.session_id,
            )  # fmt: skip
        except (TokenQuotaExceededError, IntegrationError) as exc:
            self.refused(session, f"{model} call", exc)
            return False
        self.totals.answered(session)
        return True

    async def claude(
        self, session: DemoSession, model: str, prompt: str, max_tokens: int, *, stream: bool
    ) -> bool:
        """One metered Anthropic message, streamed or not; False when refused."""
        messages = [{"role": "user", "content": prompt}]
        try:
            reply = await self.api.messages.create(
                model=model, max_tokens=max_tokens, messages=messages, stream=stream,
                system="Answer as a helpful support agent.", session_id=session.session_id,
            )  # fmt: skip
            if stream:
                async for _ in reply:
                    pass
        except (TokenQuotaExceededError, IntegrationError) as exc:
            self.refused(session, f"{model} call", exc)
            return False
        self.totals.answered(session)
        return True

    async def responses(self, session: DemoSession, model: str, text: str, limit: int) -> bool:
        """One metered OpenAI responses call; False when refused."""
        try:
            await self.api.responses.create(
                model=model, input=text, max_output_tokens=limit, session_id=session.session_id,
                instructions="Merge these summaries into one paragraph.",
            )  # fmt: skip
        except (TokenQuotaExceededError, IntegrationError) as exc:
            self.refused(session, f"{model} call", exc)
            return False
        self.totals.answered(session)
        return True

    # -- the agents ---------------------------------------------------------------------

    async def research_agent(self) -> None:
        turn = 0
        while True:
            turn += 1
            await self.tool(RESEARCH, "web_search", {"query": _question(self.rng)})
            context = f"{_text(self.rng, 140)}\n\nQuestion: {_question(self.rng)}"
            if turn % 2:
                await self.chat(RESEARCH, "gpt-4o", context, 1_500)
            else:
                await self.claude(RESEARCH, "claude-sonnet-4-5", context, 1_500, stream=False)
            await self.pause(3.0)

    async def support_conversation(self, first_pause: float) -> None:
        await asyncio.sleep(first_pause)
        turn = 0
        while True:
            turn += 1
            if turn % 3 == 0:
                order = f"A-{self.rng.randrange(1000, 1020)}"
                await self.tool(SUPPORT, "lookup_order", {"order_id": order})
            prompt = f"{_text(self.rng, 18)}\n\nCustomer: {_question(self.rng)}"
            await self.claude(SUPPORT, "claude-haiku-4-5", prompt, 500, stream=turn % 2 == 0)
            await self.pause(2.4)

    async def batch_summarizer(self) -> None:
        await asyncio.sleep(1.0)
        while True:
            documents = [_text(self.rng, 40) for _ in range(4)]
            done = await asyncio.gather(
                *(self.tool(BATCH, "summarize", {"document": d}) for d in documents)
            )
            if any(done):
                await self.responses(BATCH, "gpt-4.1-mini", _text(self.rng, 24), 800)
            await self.pause(8.0)

    async def tiny_budget(self) -> None:
        """Two calls at once, each asking for 60% of what is left: both pass the client's
        check (each fits), and the worker, deciding in log order, refuses the second."""
        await asyncio.sleep(0.5)
        prompt = "Summarize the last message in one line."
        counted = token_counter.count_messages(
            [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": prompt},
            ],
            "gpt-4o-mini",
        )
        while True:
            room = await self.quota.available_tokens(TINY.session_id)
            ask = room * 3 // 5 - int(counted)
            if ask >= 32:
                await asyncio.gather(
                    self.chat(TINY, "gpt-4o-mini", prompt, ask),
                    self.chat(TINY, "gpt-4o-mini", prompt, ask),
                )
            else:  # too little left for a call: this one is refused before it is sent
                await self.chat(TINY, "gpt-4o-mini", prompt, 256)
            await self.pause(4.0)

    async def operator(self) -> None:
        """Every 5 s: raise the budget of a session that has had no room for its next call
        for TOP_UP_AFTER seconds; every SUMMARY_EVERY s, print where each session stands."""
        last_summary = time.monotonic()
        while True:
            await asyncio.sleep(5.0)
            summary = time.monotonic() - last_summary >= SUMMARY_EVERY
            try:
                await self._oversee(summary=summary)
            except IntegrationError as exc:
                self.say(f"{_OPERATOR}: {exc}")
            if summary:
                last_summary = time.monotonic()

    async def _oversee(self, *, summary: bool) -> None:
        now = time.monotonic()
        standing = []
        for session in SESSIONS:
            metrics = await self.quota.session_metrics(session.session_id)
            standing.append(
                f"{session.session_id} {metrics.tokens_used_total:,}/"
                f"{metrics.limits.hard_limit:,} ({metrics.reservations_rejected} refused "
                "by the worker)"
            )
            if metrics.available_tokens >= session.smallest_call:
                self._no_room_since.pop(session.session_id, None)
                continue
            since = self._no_room_since.setdefault(session.session_id, now)
            if now - since >= TOP_UP_AFTER:
                await self.grant(session, _OPERATOR)
                self._no_room_since.pop(session.session_id, None)
        if summary:
            t = self.totals
            self.say(
                f"demo: {t.calls} LLM calls, {t.tool_calls} tool calls, {t.refused} refused; "
                f"used/hard limit: {'; '.join(standing)}"
            )


def _tools(settings: Settings, quota: TokenQuota) -> MCPServer[Any]:
    """The demo's MCP server: three tools, each metered by `mcp_token_decorator`.

    (Context is imported at module level: the tools' annotations are read by name.)"""
    from .producers import McpMeter, mcp_token_decorator

    server: MCPServer[Any] = MCPServer(name="demo-tools")
    meter = McpMeter(settings, quota=quota, server_name="demo-tools")

    @server.tool()
    @mcp_token_decorator(meter)
    async def web_search(query: str, ctx: Context[Any, Any]) -> str:
        """Search the web (canned results)."""
        return "\n".join(f"{i}. {s}" for i, s in enumerate(_SENTENCES, 1))

    @server.tool()
    @mcp_token_decorator(meter)
    async def lookup_order(order_id: str, ctx: Context[Any, Any]) -> str:
        """An order's status."""
        return f"Order {order_id}: shipped yesterday, arrives Thursday; address changes closed."

    @server.tool()
    @mcp_token_decorator(meter)
    async def summarize(document: str, ctx: Context[Any, Any]) -> str:
        """The document's first sentence."""
        return document.split(".")[0] + "."

    return server


def demo_settings(settings: Settings) -> Settings:
    """`settings` with MCP sessions named by each call's `_meta` (the demo's sessions),
    whatever mcp.session_id or a client prefix the configuration sets."""
    mcp = McpSettings(
        **{
            **settings.mcp.model_dump(),
            "session_id": None,
            "session_sources": ("meta",),
            "client_session_prefix": None,
        }
    )
    return settings.model_copy(update={"mcp": mcp})


async def _workload(settings: Settings, say: Callable[[str], None]) -> DemoTotals:
    """Start the stub, the client, the SDKs and the tools; set the budgets; run the agents
    until cancelled."""
    try:
        import anthropic
        import openai
    except ImportError:
        raise IntegrationError(
            "the demo needs the openai and anthropic packages: pip install 'tokenquota[embedded]'"
        ) from None
    from mcp import Client

    from .producers import APIConfig, integrate_with_external_apis

    settings = demo_settings(settings)
    rng = random.Random()  # noqa: S311  (a workload's pace, not a secret)
    async with contextlib.AsyncExitStack() as stack:
        stub = await stack.enter_async_context(
            running_fake_llm(FakeLLM(usage_of=_stub_usage(rng), keep_requests=False))
        )
        say(f"stub LLM server (OpenAI and Anthropic wire formats) on {stub.url}")
        quota = await stack.enter_async_context(
            TokenQuota(settings, source=Source(component="sdk", name="tokenquota demo"))
        )
        openai_client = openai.AsyncOpenAI(
            base_url=f"{stub.url}/v1",
            api_key="demo-stub",
            http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
        )
        stack.push_async_callback(openai_client.close)
        anthropic_client = anthropic.AsyncAnthropic(
            base_url=stub.url,
            api_key="demo-stub",
            http_client=anthropic.DefaultAsyncHttpxClient(trust_env=False),
        )
        stack.push_async_callback(anthropic_client.close)
        api = await integrate_with_external_apis(
            APIConfig("openai", openai_client),
            APIConfig("anthropic", anthropic_client),
            settings=settings,
            quota=quota,
        )
        mcp = await stack.enter_async_context(Client(_tools(settings, quota)))
        work = _Workload(quota, api, mcp, say, rng)
        await asyncio.gather(*(work.grant(s, _ACTOR) for s in SESSIONS))
        say("demo running: " + ", ".join(s.session_id for s in SESSIONS))
        try:
            async with asyncio.TaskGroup() as group:
                for agent in _agents(work):
                    group.create_task(agent)
        finally:
            t = work.totals
            say(
                f"demo stopping: {t.calls} LLM calls, {t.tool_calls} tool calls, "
                f"{t.refused} refused, {t.budgets_set} budgets set"
            )
    return work.totals


def _agents(work: _Workload) -> Iterator[Coroutine[Any, Any, None]]:
    yield work.research_agent()
    yield work.support_conversation(0.2)
    yield work.support_conversation(1.5)
    yield work.batch_summarizer()
    yield work.tiny_budget()
    yield work.operator()


async def run_demo(
    settings: Settings,
    *,
    duration: float | None = None,
    say: Callable[[str], None] = print,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    """Run the workload until a stop signal or, with `duration`, that many seconds;
    raise what stopped it otherwise (an unreachable server, say)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(_workload(settings, say), name="tokenquota-demo")
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopped}, timeout=duration, return_when="FIRST_COMPLETED")
        if work.done():
            work.result()  # it only ends on its own by failing
            return
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
    finally:
        stopped.cancel()
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
