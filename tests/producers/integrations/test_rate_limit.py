"""The client-side rate limiter, on a fake clock."""

from __future__ import annotations

from tokenquota.producers.integrations.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_requests_per_minute_roll_over_a_60_second_window() -> None:
    clock = Clock()
    limiter = RateLimiter(2, clock=clock)
    assert await limiter.acquire() == 0
    clock.now += 10
    assert await limiter.acquire() == 0
    assert not limiter.has_capacity()
    assert limiter.wait_time() == 50  # the first call leaves the window at +60
    clock.now += 50
    assert limiter.has_capacity()


async def test_tokens_per_minute_wait_for_enough_to_expire() -> None:
    clock = Clock()
    limiter = RateLimiter(100, tokens_per_minute=1_000, clock=clock)
    await limiter.acquire(600)
    clock.now += 20
    await limiter.acquire(300)
    assert limiter.has_capacity(100)
    assert not limiter.has_capacity(200)
    assert limiter.wait_time(200) == 40  # when the 600 expire
    assert limiter.has_capacity(5_000) is False or limiter.wait_time(5_000) == 0
    clock.now += 40
    assert limiter.has_capacity(700)
