"""The coalescer: one look-up for what concurrent callers ask meanwhile (pure, no servers)."""

from __future__ import annotations

import asyncio

import pytest

from tokenquota.errors import IntegrationError
from tokenquota.producers.coalesce import Coalescer


class Lookups:
    """A look-up that records each call and waits until the test lets it answer."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(keys)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {key: key.upper() for key in keys if key != "missing"}


async def test_a_lone_caller_is_looked_up_at_once() -> None:
    lookups = Lookups()
    assert await asyncio.wait_for(Coalescer(lookups).get("a"), 1) == "A"
    assert lookups.calls == [["a"]]


async def test_callers_that_ask_during_a_look_up_share_the_next_one() -> None:
    lookups = Lookups()
    coalescer = Coalescer(lookups)
    lookups.gate.clear()
    first = asyncio.create_task(coalescer.get("a"))
    await asyncio.sleep(0.01)
    assert lookups.calls == [["a"]]  # running, held at the gate
    rest = [asyncio.create_task(coalescer.get(key)) for key in ("b", "c", "b")]
    await asyncio.sleep(0.01)
    lookups.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest), 1)
    assert results == ["A", "B", "C", "B"]
    assert lookups.calls == [["a"], ["b", "c"]]  # the same key asked twice, looked up once


async def test_at_most_most_keys_per_look_up() -> None:
    lookups = Lookups()
    coalescer = Coalescer(lookups, most=2)
    lookups.gate.clear()
    tasks = [asyncio.create_task(coalescer.get(key)) for key in "abcde"]
    await asyncio.sleep(0.01)
    lookups.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == list("ABCDE")
    assert lookups.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_failing_look_up_fails_its_callers_only() -> None:
    lookups = Lookups()
    coalescer = Coalescer(lookups)
    lookups.fail = IntegrationError("PostgreSQL unreachable")
    with pytest.raises(IntegrationError, match="unreachable"):
        await asyncio.wait_for(coalescer.get("a"), 1)
    lookups.fail = None
    assert await asyncio.wait_for(coalescer.get("b"), 1) == "B"
    with pytest.raises(KeyError):
        await asyncio.wait_for(coalescer.get("missing"), 1)


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    lookups = Lookups()
    coalescer = Coalescer(lookups)
    lookups.gate.clear()
    gone = asyncio.create_task(coalescer.get("a"))
    stays = asyncio.create_task(coalescer.get("a"))
    await asyncio.sleep(0.01)
    gone.cancel()
    lookups.gate.set()
    assert await asyncio.wait_for(stays, 1) == "A"
    assert gone.cancelled()


async def test_close_fails_the_waiting_callers() -> None:
    lookups = Lookups()
    coalescer = Coalescer(lookups)
    lookups.gate.clear()
    running = asyncio.create_task(coalescer.get("a"))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(coalescer.get("b"))
    await asyncio.sleep(0)
    coalescer.close()
    for task in (running, queued):
        with pytest.raises(IntegrationError):
            await asyncio.wait_for(task, 1)
