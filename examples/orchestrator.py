"""A small asyncio orchestrator whose every task runs under the session's budget.

Needs the stack: run `make run`, then, with the addresses it prints,
KAFKA_BOOTSTRAP_SERVERS=... DATABASE_URL=... .venv/bin/python examples/orchestrator.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from _demo import demo_session, settled

from tokenquota import TokenQuotaExceededError
from tokenquota.producers import (
    close_default_quota,
    kilocode_token_budget,
    route_with_token_budget,
    setup_token_hooks,
)

Task = Callable[..., Awaitable[Any]]


class Orchestrator:
    """Registers tasks with `@orchestrator.task()` and runs them by name (TaskOrchestrator)."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}

    def task(self, name: str | None = None) -> Callable[[Task], Task]:
        def register(fn: Task) -> Task:
            self.tasks[name or fn.__name__] = fn
            return fn

        return register

    async def run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self.tasks[name](*args, **kwargs)


async def main() -> None:
    orchestrator = Orchestrator()
    await setup_token_hooks(orchestrator)

    @orchestrator.task()
    async def answer(session_id: str, question: str) -> dict[str, Any]:
        # A real task calls a model; it reports the usage the model returned.
        return {
            "answer": f"About {question!r}: yes.",
            "usage": {"input_tokens": 900, "output_tokens": 120},
        }

    session = await demo_session("agent", 5_000)
    print(await orchestrator.run("answer", session, "budgets"))

    if await kilocode_token_budget(session, "report", required_tokens=2_000):

        async def report(topic: str) -> str:
            return f"Report on {topic}."

        print(await route_with_token_budget(session, report, "spend", task_id="report"))
    try:
        await route_with_token_budget(session, report, "more", estimated_tokens=50_000)
    except TokenQuotaExceededError as refused:
        print("refused:", refused)
    print(session, "used", await settled(session, 1_020), "tokens")
    await close_default_quota()


if __name__ == "__main__":
    asyncio.run(main())
