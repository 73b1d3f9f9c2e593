"""The worker's Prometheus metrics, scraped from a running worker."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import budget, reserved, used, wait_until
from tokenquota.config import Settings, WorkerSettings
from tokenquota.embedded import WorkerProcess
from tokenquota.health import check_integration_health_async
from tokenquota.processors.metrics import STAGES
from tokenquota.producers import Emitter
from tokenquota.schemas import Event, utc_now

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(worker: WorkerProcess) -> set[tuple[str, int]]:
    """The addresses the worker process listens on."""
    assert worker.pid is not None
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(worker.pid).net_connections("tcp")
        if c.status == psutil.CONN_LISTEN
    }


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_worker_with_a_metrics_port_counts_what_it_applied(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    port = free_port()
    worker = start_worker(env={"WORKER_METRICS_PORT": str(port)})
    now = utc_now()
    sent = time.time()
    events: list[Event] = [
        budget("m", now, daily=100, monthly=1_000, hard=10_000),
        reserved("m", 50, now),
        reserved("m", 500, now),  # over the daily limit
        *[used("m", 1, now) for _ in range(7)],
    ]
    async with Emitter(
        pipeline_settings.kafka, pipeline_settings.emitter, pipeline_settings.spool_dir
    ) as emitter:
        await emitter.emit_many(events)
    url = f"http://127.0.0.1:{port}/metrics"

    async def counted() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                text = (await client.get(url)).text
        except httpx.HTTPError:
            return False
        return samples(text).get(("tokenquota_events_applied_total", ()), 0) >= len(events)

    await wait_until(counted, 60, "the metrics counting every event")
    counted_at = time.time()
    assert _listening(worker) == {("127.0.0.1", port)}  # metrics_host's default
    async with httpx.AsyncClient() as client:
        got = samples((await client.get(url)).text)
    assert got[("tokenquota_events_applied_total", ())] == len(events)
    assert got[("tokenquota_batches_total", ())] >= 1
    assert (
        got[("tokenquota_batch_duration_seconds_count", ())]
        == got[("tokenquota_batches_total", ())]
    )
    accepted = ("tokenquota_reservations_total", (("reason", ""), ("status", "accepted")))
    rejected = (
        "tokenquota_reservations_total",
        (("reason", "daily_limit"), ("status", "rejected")),
    )
    assert got[accepted] == 1 and got[rejected] == 1
    lags = {labels: v for (name, labels), v in got.items() if name == "kafka_consumergroup_lag"}
    assert lags and set(lags.values()) == {0.0}
    assert all(
        dict(labels)["consumergroup"] == pipeline_settings.worker.group_id for labels in lags
    )
    assert not any("session" in str(labels) for _, labels in got)
    # Every event's time from its record's stamp to its batch's commit, by stage: each
    # stage timed, and together no more than the events took here from send to counted.
    assert got[("tokenquota_event_stage_events_total", ())] == len(events)
    stages = {
        dict(labels)["stage"]: v
        for (name, labels), v in got.items()
        if name == "tokenquota_event_stage_seconds_total"
    }
    assert set(stages) == set(STAGES)
    assert stages["broker"] > 0 and stages["transaction"] > 0
    assert sum(stages.values()) <= len(events) * (counted_at - sent)


async def test_a_worker_serves_no_metrics_unless_its_port_is_set(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    assert WorkerSettings().metrics_port is None
    assert WorkerSettings().metrics_host == "127.0.0.1"
    # Empty counts as unset: the defaults, whatever the test's own environment holds.
    worker = start_worker(env={"WORKER_METRICS_PORT": "", "WORKER_METRICS_HOST": ""})

    async def running() -> bool:
        health = await check_integration_health_async(pipeline_settings)
        return health.worker.status != "down"

    # Metrics would be served before the worker starts consuming (processors/worker.py).
    await wait_until(running, 60, "the worker to report its status", [worker])
    assert _listening(worker) == set()
