"""Orchestrator tasks under budget: hold, run, settle, release, concurrency and priority."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.support import fetch_value, set_budget, wait_for_usage, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.errors import TokenQuotaExceededError
from tokenquota.producers import TokenQuota
from tokenquota.producers.integrations.orchestrator import (
    kilocode_token_budget,
    release_task_budget,
    route_with_token_budget,
    setup_token_hooks,
    waiting_tasks,
)
from tokenquota.producers.token_counter import TokenCounter, payload_text
from tokenquota.sections import OrchestratorSettings

pytestmark = pytest.mark.integration


def orchestrated(settings: Settings, max_tasks: int = 2) -> Settings:
    return settings.model_copy(
        update={
            "reservations": ReservationSettings(decision_timeout=60),
            "orchestrator": OrchestratorSettings(max_concurrent_tasks=max_tasks),
        }
    )


class MiniOrchestrator:
    """The smallest orchestrator satisfying the TaskOrchestrator protocol."""

    def __init__(self) -> None:
        self.tasks: dict[str, Callable[..., Awaitable[Any]]] = {}

    def task(self, name: str | None = None) -> Callable[[Any], Any]:
        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            self.tasks[name or fn.__name__] = fn
            return fn

        return register

    async def run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self.tasks[name](*args, **kwargs)


async def allocation(settings: Settings, session: str, task: str) -> tuple[int, int] | None:
    row = await fetch_value(
        settings.database,
        "SELECT array[allocated_tokens, tokens_used] FROM task_token_allocations"
        " WHERE session_id = $1 AND task_id = $2",
        session,
        task,
    )
    return None if row is None else (row[0], row[1])


async def test_held_tokens_run_the_task_and_settle_reported_usage(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = orchestrated(pipeline_settings)
    start_worker()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "s1", 5_000)
        assert await kilocode_token_budget("s1", "plan", 3_000, quota=quota)
        assert not await kilocode_token_budget("s1", "too-big", 2_500, quota=quota)

        async def plan(goal: str) -> dict[str, Any]:
            return {"plan": f"do {goal}", "usage": {"input_tokens": 1_200, "output_tokens": 800}}

        result = await route_with_token_budget("s1", plan, "it", task_id="plan", quota=quota)
        assert result["plan"] == "do it"
        await wait_for_usage(quota, "s1", 2_000)
        assert await allocation(settings, "s1", "plan") == (3_000, 2_000)
        by = await fetch_value(
            settings.database,
            "SELECT payload->>'counted_by' FROM usage_events"
            " WHERE event_type = 'TokenUsed' AND task_id = 'plan'",
        )
        assert by == "provider"

        assert await kilocode_token_budget("s1", "unused", 1_000, quota=quota)
        assert await release_task_budget("s1", "unused")
        assert not await release_task_budget("s1", "unused")

        async def shorten(text: str) -> str:
            return text[:5]

        counter = TokenCounter(cache_size=0)
        await route_with_token_budget("s1", shorten, "abcdefghij", quota=quota)
        expected = (
            2_000 + counter.count(payload_text([["abcdefghij"], {}])) + counter.count("abcde")
        )
        await wait_for_usage(quota, "s1", expected)


async def test_a_failing_or_cancelled_task_releases_its_tokens(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = orchestrated(pipeline_settings)
    start_worker()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "s2", 1_000)
        started = asyncio.Event()

        async def crash() -> None:
            raise RuntimeError("model timeout")

        async def hang() -> None:
            started.set()
            await asyncio.Event().wait()

        async def released(count: int) -> bool:
            done = await fetch_value(
                settings.database,
                "SELECT count(*) FROM reservations WHERE session_id = 's2' AND status = 'released'",
            )
            return bool(done == count)

        with pytest.raises(RuntimeError, match="model timeout"):
            await route_with_token_budget("s2", crash, estimated_tokens=900, quota=quota)
        # The release is a TokenUsed event: the worker applies it before the tokens are free.
        await wait_until(lambda: released(1), 60, "the failed task's release")
        running = asyncio.create_task(
            route_with_token_budget("s2", hang, estimated_tokens=900, quota=quota)
        )
        await asyncio.wait_for(started.wait(), 60)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

        await wait_until(lambda: released(2), 60, "the cancelled task's release")
        metrics = await quota.session_metrics("s2")
        assert (metrics.tokens_used_total, metrics.tokens_held) == (0, 0)
        with pytest.raises(TokenQuotaExceededError):
            await route_with_token_budget("s2", crash, estimated_tokens=1_001, quota=quota)


async def test_a_result_that_cannot_be_counted_releases_its_tokens(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = orchestrated(pipeline_settings)
    start_worker()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "s5", 1_000)

        async def tabulate() -> dict[Any, str]:
            return {("row", 1): "no usage reported, and tuple keys cannot be encoded"}

        with pytest.raises(TypeError, match="keys must be"):
            await route_with_token_budget("s5", tabulate, estimated_tokens=900, quota=quota)

        async def released() -> bool:
            status = await fetch_value(
                settings.database,
                "SELECT string_agg(status, ',') FROM reservations WHERE session_id = 's5'",
            )
            return bool(status == "released")

        await wait_until(released, 60, "the release of the uncounted task's reservation")
        metrics = await quota.session_metrics("s5")
        assert (metrics.tokens_used_total, metrics.tokens_held) == (0, 0)


async def test_tasks_beyond_the_limit_wait_and_start_by_priority(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = orchestrated(pipeline_settings, max_tasks=2)
    start_worker()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "s3", 100_000)
        gates = {"a": asyncio.Event(), "b": asyncio.Event()}
        running = 0
        peak = 0
        order: list[str] = []

        async def work(label: str) -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            order.append(label)
            if label in gates:
                await gates[label].wait()
            running -= 1
            return label

        def start(label: str, priority: Any) -> asyncio.Task[str]:
            return asyncio.create_task(
                route_with_token_budget(
                    "s3", work, label, estimated_tokens=10, priority=priority, quota=quota
                )
            )

        first = [start("a", "normal"), start("b", "normal")]
        await wait_until(_true_when(lambda: len(order) == 2), 60, "two tasks running")
        queued = [start("low", "low"), start("normal", "normal"), start("high", "high")]
        # All three wait for a slot before one frees: the limit holds them back.
        await wait_until(_true_when(lambda: waiting_tasks("s3") == 3), 60, "three tasks queued")
        assert order == ["a", "b"]
        # One slot frees: the queue drains through it one task at a time, by priority.
        gates["a"].set()
        await asyncio.wait_for(asyncio.gather(first[0], *queued), 60)
        gates["b"].set()
        await asyncio.wait_for(first[1], 60)
        assert peak == 2
        assert order[2:] == ["high", "normal", "low"]


def _true_when(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return check()

    return probe


async def test_setup_token_hooks_budgets_every_registered_task(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = orchestrated(pipeline_settings)
    start_worker()
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "s4", 10_000)
        orchestrator = MiniOrchestrator()
        await setup_token_hooks(orchestrator, quota=quota)

        @orchestrator.task()
        async def summarize(session_id: str, text: str) -> dict[str, Any]:
            return {"summary": text[:3], "usage": {"prompt_tokens": 40, "completion_tokens": 2}}

        assert (await orchestrator.run("summarize", "s4", "hello"))["summary"] == "hel"
        assert (await orchestrator.run("summarize", session_id="s4", text="again"))[
            "summary"
        ] == "aga"
        await wait_for_usage(quota, "s4", 84)
        assert await allocation(settings, "s4", "summarize") is not None
