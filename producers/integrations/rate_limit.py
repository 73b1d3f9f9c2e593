"""Client-side rate limits per external API: requests and tokens per rolling minute."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]

_WINDOW = 60.0


class RateLimiter:
    """At most `requests_per_minute` calls and `tokens_per_minute` tokens in any 60 s.

    `acquire` waits for room; a single request larger than the token limit is let
    through alone rather than waiting forever.
    """

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._calls: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = asyncio.Lock()

    def _prune(self, now: float) -> None:
        while self._calls and now - self._calls[0][0] >= _WINDOW:
            self._calls.popleft()

    def wait_time(self, tokens: int = 0) -> float:
        """Seconds until a call of `tokens` fits (0 when it fits now)."""
        now = self._clock()
        self._prune(now)
        waits = [0.0]
        if len(self._calls) >= self.requests_per_minute:
            waits.append(
                self._calls[len(self._calls) - self.requests_per_minute][0] + _WINDOW - now
            )
        if self.tokens_per_minute is not None and self._calls:
            used = sum(t for _, t in self._calls)
            excess = used + tokens - self.tokens_per_minute
            if excess > 0 and tokens <= self.tokens_per_minute:
                freed = 0
                for at, spent in self._calls:
                    freed += spent
                    if freed >= excess:
                        waits.append(at + _WINDOW - now)
                        break
        return max(waits)

    def has_capacity(self, tokens: int = 0) -> bool:
        """Whether a call of `tokens` would go out now without waiting."""
        return self.wait_time(tokens) == 0

    async def acquire(self, tokens: int = 0) -> float:
        """Wait until a call of `tokens` fits, record it, and return the seconds waited."""
        waited = 0.0
        async with self._lock:
            while (delay := self.wait_time(tokens)) > 0:
                await asyncio.sleep(delay)
                waited += delay
            self._calls.append((self._clock(), tokens))
        return waited
