"""The reservation API against a running worker: strict decisions in log order, errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.support import fetch_value, set_budget, settings_env, snapshot, wait_until
from tokenquota.config import ReservationSettings, Settings
from tokenquota.errors import TokenBudgetExhaustedError, TokenQuotaExceededError
from tokenquota.producers import Reservation
from tokenquota.producers.reservations import TokenQuota

pytestmark = pytest.mark.integration


def strict(settings: Settings) -> Settings:
    return settings.model_copy(update={"reservations": ReservationSettings(decision_timeout=60)})


async def test_200_concurrent_strict_reservations_never_exceed_the_budget_even_after_replay(
    pipeline_settings: Settings, start_worker: object
) -> None:
    settings = strict(pipeline_settings)
    worker = start_worker()  # type: ignore[operator]
    async with TokenQuota(settings) as quota:
        await set_budget(quota, "shared", 10_000)
        results = await asyncio.gather(
            *[quota.reserve("shared", 100) for _ in range(200)], return_exceptions=True
        )
        accepted = [r for r in results if isinstance(r, Reservation)]
        rejected = [r for r in results if isinstance(r, TokenQuotaExceededError)]
        assert (len(accepted), len(rejected)) == (100, 100), results[:3]
        assert all(r.status == "accepted" for r in accepted)
        assert all(e.requested == 100 and e.limit == 10_000 for e in rejected)
        await asyncio.gather(*[r.settle(60, 40, model="gpt-4o") for r in accepted])

        async def settled() -> bool:
            return (await quota.session_metrics("shared")).tokens_used_total == 10_000

        await wait_until(settled, 60, "every settlement", [worker])
        metrics = await quota.session_metrics("shared")
        assert metrics.available_tokens == 0 and metrics.tokens_held == 0
        with pytest.raises(TokenBudgetExhaustedError):  # step 1: refused without an event
            await quota.reserve("shared", 1)
    before = await snapshot(settings.database)
    settled_count = await fetch_value(
        settings.database, "SELECT count(*) FROM reservations WHERE status = 'settled'"
    )
    assert settled_count == 100
    replay = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tokenquota", "replay"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    assert "events/s" in replay.stderr and "projections swapped in" in replay.stdout
    after = await snapshot(settings.database)
    assert after == before
    rejected_after = await fetch_value(
        settings.database, "SELECT count(*) FROM reservations WHERE status = 'rejected'"
    )
    assert rejected_after == 100


async def test_a_plainly_short_budget_is_refused_without_emitting(
    pipeline_settings: Settings, start_worker: object
) -> None:
    start_worker()  # type: ignore[operator]
    async with TokenQuota(strict(pipeline_settings)) as quota:
        await set_budget(quota, "small", 500)
        with pytest.raises(TokenQuotaExceededError) as caught:
            await quota.reserve("small", 501)
        assert (caught.value.available, caught.value.limit) == (500, 500)
        ledger = await fetch_value(pipeline_settings.database, "SELECT count(*) FROM usage_events")
        assert ledger == 1  # only the BudgetSet: the refused call emitted nothing
        async with await quota.reserve("small", 400, task_id="t1") as held:
            assert (await quota.available_tokens("small")) == 100
            await held.settle(450, 0)
        record = await quota.reservation(held.reservation_id)

        async def settled() -> bool:
            found = await quota.reservation(held.reservation_id)
            return found is not None and found.status == "settled"

        await wait_until(settled, 30, "the settlement")
        record = await quota.reservation(held.reservation_id)
        assert record is not None and record.overage_tokens == 50
        optimistic = await quota.reserve("small", 10, mode="optimistic")
        assert optimistic.status == "pending"
        await optimistic.release()


async def test_no_worker_means_a_clear_error_in_strict_mode(pipeline_settings: Settings) -> None:
    settings = pipeline_settings.model_copy(
        update={"reservations": ReservationSettings(decision_timeout=1)}
    )
    async with TokenQuota(settings) as quota:
        with pytest.raises(Exception, match="is `tokenquota worker` running"):
            await quota.reserve("nobody-decides", 10)
