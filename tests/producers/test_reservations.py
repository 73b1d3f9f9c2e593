"""The reservation API against a running worker: strict decisions in log order, errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import (
    fetch_value,
    set_budget,
    settings_env,
    snapshot,
    used,
    wait_for_usage,
    wait_until,
)
from tokenquota.config import ReservationSettings, Settings
from tokenquota.embedded import WorkerProcess
from tokenquota.errors import (
    IntegrationError,
    ReservationExpiredError,
    TokenBudgetExhaustedError,
    TokenQuotaExceededError,
)
from tokenquota.producers import Reservation
from tokenquota.producers.decisions import decision_error
from tokenquota.producers.reservations import TokenQuota
from tokenquota.schemas import utc_now

pytestmark = pytest.mark.integration

WorkerStarter = Callable[..., WorkerProcess]  # the start_worker fixture


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


async def test_a_recent_read_never_refuses_what_it_passes_the_worker_decides(
    pipeline_settings: Settings, start_worker: object, tmp_path: Path
) -> None:
    start_worker()  # type: ignore[operator]
    hour = ReservationSettings(decision_timeout=60, precheck_max_age=3600)
    fresh = ReservationSettings(decision_timeout=60, precheck_max_age=0)
    other_spool = pipeline_settings.emitter.model_copy(update={"spool_dir": tmp_path / "other"})
    async with (
        TokenQuota(pipeline_settings.model_copy(update={"reservations": hour})) as cached,
        TokenQuota(
            pipeline_settings.model_copy(update={"reservations": fresh, "emitter": other_spool})
        ) as other,
    ):
        await set_budget(cached, "shared-read", 1_000)
        first = await cached.reserve("shared-read", 100)  # read: 1,000 available
        held = await other.reserve("shared-read", 800)  # another client takes 800
        ledger = "SELECT count(*) FROM usage_events WHERE event_type = 'TokenReserved'"
        # The read says 900 are left for this client: no read now, the worker refuses.
        with pytest.raises(TokenQuotaExceededError) as caught:
            await cached.reserve("shared-read", 500)
        assert (caught.value.available, caught.value.limit) == (100, 1_000)
        assert await fetch_value(pipeline_settings.database, ledger) == 3
        # What the read cannot cover is read fresh and refused before anything is emitted.
        with pytest.raises(TokenQuotaExceededError) as caught:
            await cached.reserve("shared-read", 901)
        assert caught.value.available == 100
        # So is everything of a client that reads every time (precheck_max_age=0).
        with pytest.raises(TokenQuotaExceededError):
            await other.reserve("shared-read", 101)
        assert await fetch_value(pipeline_settings.database, ledger) == 3
        await first.release()
        await held.release()


def undecided(settings: Settings, *, fail_open: bool) -> Settings:
    """Settings whose strict reservations give up on a decision after half a second."""
    options = ReservationSettings(decision_timeout=0.5, fail_open=fail_open)
    return settings.model_copy(update={"reservations": options})


async def test_no_worker_means_a_clear_error_in_strict_mode_and_the_reservation_is_released(
    pipeline_settings: Settings, start_worker: WorkerStarter
) -> None:
    async with TokenQuota(undecided(pipeline_settings, fail_open=False)) as quota:
        with pytest.raises(IntegrationError, match="is `tokenquota worker` running") as caught:
            await quota.reserve("nobody-decides", 10)
        assert type(caught.value) is IntegrationError
        worker = start_worker()

        async def released() -> bool:
            status: str | None = await fetch_value(
                pipeline_settings.database,
                "SELECT status FROM reservations WHERE session_id = 'nobody-decides'",
            )
            return status == "released"

        await wait_until(released, 60, "the undecided reservation to be released", [worker])


async def test_fail_open_hands_back_the_undecided_reservation_and_its_settle_closes_it(
    pipeline_settings: Settings, start_worker: WorkerStarter
) -> None:
    async with TokenQuota(undecided(pipeline_settings, fail_open=True)) as quota:
        held = await quota.reserve("decided-later", 100)  # no worker: no decision comes
        assert (held.status, held.verified, held.delivery) == ("pending", False, "acked")
        await held.settle(60, 20, model="gpt-4o")
        worker = start_worker()
        await wait_for_usage(quota, "decided-later", 80)
        record = await quota.reservation(held.reservation_id)
        assert record is not None
        assert (record.status, record.settled_tokens) == ("settled", 80)
        unmatched = await fetch_value(
            pipeline_settings.database,
            "SELECT count(*) FROM integration_logs WHERE action = 'unmatched_settlement'",
        )
        assert unmatched == 0
        assert worker.exit_code() is None


async def test_an_acceptance_that_arrives_after_the_expiry_is_an_expiry_error(
    pipeline_settings: Settings, start_worker: WorkerStarter
) -> None:
    worker = start_worker()
    async with TokenQuota(strict(pipeline_settings)) as quota:
        await set_budget(quota, "short-lived", 10_000)
        # A millisecond is less than any round trip through broker, worker and PostgreSQL.
        with pytest.raises(ReservationExpiredError, match=r"expired at .* before") as caught:
            await quota.reserve("short-lived", 100, ttl=0.001)
        assert caught.value.session_id == "short-lived"
        record = await quota.reservation(caught.value.reservation_id)
        assert record is not None and record.status in ("accepted", "rejected")
        metrics = await quota.session_metrics("short-lived")
        assert (metrics.tokens_held, metrics.available_tokens) == (0, 10_000)
        assert worker.exit_code() is None


async def test_a_polled_expired_status_is_an_expiry_error_not_a_budget_error(
    pipeline_settings: Settings, start_worker: WorkerStarter
) -> None:
    worker = start_worker()
    async with TokenQuota(strict(pipeline_settings)) as quota:
        await set_budget(quota, "lapsed", 10_000)
        held = await quota.reserve("lapsed", 100, ttl=1, mode="optimistic")

        async def decided() -> bool:
            return await quota.reservation(held.reservation_id) is not None

        await wait_until(decided, 60, "the worker's decision", [worker])

        async def past_its_expiry() -> bool:
            return utc_now() > held.event.expires_at

        await wait_until(past_its_expiry, 30, "the reservation's expiry")
        # Any later event of the session makes the worker mark it expired in the table.
        await quota.emit(used("lapsed", 5, utc_now()))

        async def expired() -> bool:
            record = await quota.reservation(held.reservation_id)
            assert record is not None
            return record.status == "expired" or record.reason == "expired"

        await wait_until(expired, 60, "the reservation to be marked expired", [worker])
        # What the poll of a strict reserve() reads, and what it makes of it:
        record = await quota.reservation(held.reservation_id)
        assert record is not None
        error = decision_error(held.event, record.status, record, utc_now())
        assert type(error) is ReservationExpiredError
        assert error.reservation_id == held.reservation_id
