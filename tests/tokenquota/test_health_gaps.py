"""The worker's health when messages left the log before they were applied (pure: the
embedded broker cannot delete records, so the log's bounds are given)."""

from __future__ import annotations

from typing import Any

from tokenquota.config import KafkaSettings, Settings
from tokenquota.health import _worker
from tokenquota.kafka_probe import LogBounds

SETTINGS = Settings(kafka=KafkaSettings(usage_topic="t.usage"))
#: One worker that wrote its status a second ago and applied a batch two seconds ago.
RUNNING: list[Any] = [
    {"member": "host:1", "silent_for": 1.0, "batch_age": 2.0},
]


def test_a_checkpoint_before_the_logs_start_makes_the_worker_down_with_the_way_out() -> None:
    bounds = {0: LogBounds(first=0, end=10), 1: LogBounds(first=6, end=10)}
    health = _worker(SETTINGS, bounds, {0: 10, 1: 3}, RUNNING)
    assert health.status == "down"
    assert health.reason.startswith("partition 1: offsets 3 to 5 left the log before they")
    assert "`tokenquota checkpoints accept-gap --partition 1`" in health.reason
    assert health.details["log_gaps"] == [{"partition": 1, "from_offset": 3, "to_offset": 6}]


def test_several_gaps_are_counted_and_no_checkpoint_is_no_gap() -> None:
    bounds = {p: LogBounds(first=6, end=10) for p in range(3)}
    health = _worker(SETTINGS, bounds, {0: 2, 2: 5}, RUNNING)  # partition 1: none applied
    assert health.status == "down"
    assert health.reason.endswith("(2 partitions have such a gap)")
    assert [g["partition"] for g in health.details["log_gaps"]] == [0, 2]


def test_a_checkpoint_at_or_past_the_logs_start_is_no_gap() -> None:
    bounds = {0: LogBounds(first=6, end=10), 1: LogBounds(first=10, end=10)}
    health = _worker(SETTINGS, bounds, {0: 6, 1: 12}, RUNNING)
    assert health.status == "ok"
    assert "log_gaps" not in health.details
