"""Memory stores: every operation accounted, by name, with content, query and result counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import fetch_value, wait_for_usage
from tokenquota.config import Settings
from tokenquota.errors import IntegrationError
from tokenquota.producers import TokenQuota, session_scope, token_counter
from tokenquota.producers.integrations.memory import (
    TokenAwareMemoryStorage,
    integrate_with_memory,
    track_memory_operation,
)
from tokenquota.producers.token_counter import TokenCounter

pytestmark = pytest.mark.integration


@dataclass
class Memory:
    content: str
    tags: list[str] = field(default_factory=list)


class DictStorage:
    """A toy store with the MemoryStorage methods."""

    def __init__(self) -> None:
        self.items: dict[str, Memory] = {}

    async def store(self, memory: Memory) -> tuple[bool, str]:
        self.items[memory.content[:8]] = memory
        return True, "stored"

    async def retrieve(self, query: str, n_results: int = 5) -> list[Memory]:
        return [m for m in self.items.values() if query in m.content][:n_results]

    async def search(self, query: str) -> list[Memory]:
        return [m for m in self.items.values() if any(t == query for t in m.tags)]

    async def delete(self, content_hash: str) -> bool:
        return self.items.pop(content_hash, None) is not None

    def size(self) -> int:
        return len(self.items)


def n(text: str) -> int:
    return int(TokenCounter(cache_size=0).count(text))


async def test_each_operation_emits_its_counts_under_the_session(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    async with TokenQuota(pipeline_settings) as quota:
        storage = await integrate_with_memory(DictStorage(), session_id="mem", quota=quota)
        assert isinstance(storage, TokenAwareMemoryStorage)
        first = Memory("the cat sat on the mat", ["pets"])
        second = Memory("budgets are exact", ["work"])
        assert await storage.store(first) == (True, "stored")
        assert await storage.store(memory=second) == (True, "stored")
        found = await storage.retrieve("cat")
        assert found == [first]
        tagged = await storage.search(query="work")
        assert tagged == [second]
        assert await storage.delete("the cat ")
        assert storage.size() == 1  # other attributes pass through

        with session_scope("mem"):
            recorded = await track_memory_operation(
                "consolidate", "summary text", tokens_used=150, quota=quota
            )
        assert recorded == 150
        expected = (
            n(first.content)
            + n(second.content)
            + n("cat")
            + n(first.content)
            + n("work")
            + n(second.content)
            + n("the cat ")
            + 150
        )
        await wait_for_usage(quota, "mem", expected)
        operations = await fetch_value(
            pipeline_settings.database,
            "SELECT string_agg((payload->>'operation') || '=' || (payload->>'input_tokens')"
            " || '/' || (payload->>'output_tokens') || '/' || (payload->>'counted_by'),"
            " ' ' ORDER BY occurred_at, event_id) FROM usage_events WHERE session_id = 'mem'",
        )
        assert operations.split() == [
            f"memory.store={n(first.content)}/0/tiktoken",
            f"memory.store={n(second.content)}/0/tiktoken",
            f"memory.retrieve={n('cat')}/{n(first.content)}/tiktoken",
            f"memory.search={n('work')}/{n(second.content)}/tiktoken",
            f"memory.delete={n('the cat ')}/0/tiktoken",
            "memory.consolidate=150/0/estimate",
        ]


async def test_manual_tracking_counts_content_and_needs_a_session(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    async with TokenQuota(pipeline_settings) as quota:
        with pytest.raises(IntegrationError, match="no session"):
            await track_memory_operation("store", "x", 1, quota=quota)
        counted = await token_counter.count_tokens("a counted memory")
        assert (
            await track_memory_operation(
                "store", "a counted memory", counted, session_id="m2", quota=quota
            )
            == counted
        )
        assert await track_memory_operation("store", "count me", session_id="m2", quota=quota) == n(
            "count me"
        )
        with pytest.raises(ValueError, match="non-negative"):
            await track_memory_operation("store", "x", -1, session_id="m2", quota=quota)
        with pytest.raises(TypeError, match="not a memory store"):
            await integrate_with_memory(object())  # type: ignore[arg-type]
        await wait_for_usage(quota, "m2", int(counted) + n("count me"))
        by = await fetch_value(
            pipeline_settings.database,
            "SELECT string_agg(DISTINCT payload->>'counted_by', ',') FROM usage_events"
            " WHERE session_id = 'm2'",
        )
        assert by == "tiktoken"
