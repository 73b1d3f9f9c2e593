"""The worker's Prometheus metrics and its /metrics server (`worker.metrics_port`).

Names follow Prometheus conventions (`_total` counters, `_seconds` durations); the lag
gauge has kafka_exporter's name and labels. No metric has a per-session label: per-session
numbers belong to the read models.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from faust.types import TP, Message
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from tokenquota.projections import BatchResult

__all__ = [
    "BATCHES",
    "BATCH_SECONDS",
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "DUPLICATES",
    "EVENTS_APPLIED",
    "EVENTS_STAGED",
    "EVENT_STAGE_SECONDS",
    "RESERVATIONS",
    "STAGES",
    "forget_lag",
    "lags_after",
    "observe_batch",
    "observe_lag",
    "observe_stages",
    "serve_metrics",
]

log = logging.getLogger("tokenquota.worker")

EVENTS_APPLIED = Counter(
    "tokenquota_events_applied_total", "Events the worker applied to the projections"
)
DUPLICATES = Counter(
    "tokenquota_duplicate_events_total", "Events dropped because the ledger already held them"
)
BATCHES = Counter("tokenquota_batches_total", "Batches applied, each in one transaction")
BATCH_SECONDS = Histogram(
    "tokenquota_batch_duration_seconds",
    "Time to apply one batch (decode excluded), retries included",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RESERVATIONS = Counter(
    "tokenquota_reservations_total",
    "Reservations the worker decided, by status and rejection reason",
    ["status", "reason"],
)
DEAD_LETTERS = Counter(
    "tokenquota_dlq_messages_total",
    "Messages sent to the dead-letter topic, by kind",
    ["kind"],
)
#: Where an event's time goes between its record's timestamp and its batch's commit:
#: sent, appended and fetched ("broker": from the record's timestamp, the producer's clock
#: unless the broker stamps append times, until the consumer hands its fetch over), waiting
#: for the decoder ("queued"), decoded ("decode"), waiting for the transaction before its
#: own ("waiting"), and its batch's transaction: fold, writes, checkpoint and commit,
#: retries included ("transaction").
STAGES = ("broker", "queued", "decode", "waiting", "transaction")
EVENT_STAGE_SECONDS = Counter(
    "tokenquota_event_stage_seconds_total",
    "Seconds the worker's events spent in each stage, summed over the events (divide by "
    "tokenquota_event_stage_events_total for the mean per event)",
    ["stage"],
)
EVENTS_STAGED = Counter(
    "tokenquota_event_stage_events_total",
    "Events whose stages tokenquota_event_stage_seconds_total sums (dead letters included)",
)
CONSUMER_LAG = Gauge(
    "kafka_consumergroup_lag",
    "Messages of a partition the worker has not applied yet (highwater minus next offset)",
    ["consumergroup", "topic", "partition"],
)


def observe_batch(result: BatchResult, seconds: float) -> None:
    """Count one applied batch."""
    BATCHES.inc()
    BATCH_SECONDS.observe(seconds)
    EVENTS_APPLIED.inc(result.applied)
    if result.duplicates:
        DUPLICATES.inc(result.duplicates)
    for decision in result.decisions:
        RESERVATIONS.labels(decision.status, decision.reason or "").inc()


def observe_stages(stages: Mapping[str, float], events: int) -> None:
    """Add one batch's seconds per stage (each summed over its `events` events)."""
    for stage, seconds in stages.items():
        EVENT_STAGE_SECONDS.labels(stage).inc(max(seconds, 0.0))
    EVENTS_STAGED.inc(events)


def observe_lag(group: str, lags: Iterable[tuple[str, int, int]]) -> None:
    """Set the lag gauge of each (topic, partition, lag)."""
    for topic, partition, lag in lags:
        CONSUMER_LAG.labels(group, topic, str(partition)).set(lag)


def forget_lag(group: str, partitions: Iterable[TP]) -> None:
    """Drop the lag of partitions this worker no longer holds (another worker reports
    them now); a revoked partition's last value would otherwise stay for good."""
    for tp in partitions:
        with contextlib.suppress(KeyError):  # never observed here
            CONSUMER_LAG.remove(group, tp.topic, str(tp.partition))


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on host:port from a background thread."""
    start_http_server(port, addr=host)
    log.info("worker metrics on http://%s:%d/metrics", host, port)


def lags_after(
    messages: Sequence[Message], highwater: Callable[[TP], int | None]
) -> list[tuple[str, int, int]]:
    """(topic, partition, lag) of each partition in `messages` once they are applied, by
    the consumer's `highwater(tp)`."""
    last: dict[TP, int] = {}
    for message in messages:
        last[message.tp] = max(last.get(message.tp, -1), message.offset)
    lags = []
    for tp, offset in last.items():
        end = highwater(tp)
        if end is not None:
            lags.append((tp.topic, tp.partition, max(end - offset - 1, 0)))
    return lags
