"""The lag gauge follows the partitions this worker holds (pure: the app is built, not run)."""

from __future__ import annotations

from pathlib import Path

from faust.types import TP
from prometheus_client import REGISTRY

from tokenquota.config import KafkaSettings, Settings, WorkerSettings
from tokenquota.processors import create_app
from tokenquota.processors.metrics import observe_lag


def lag(group: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "kafka_consumergroup_lag",
        {"consumergroup": group, "topic": topic, "partition": str(partition)},
    )


async def test_a_revoked_partition_no_longer_reports_a_lag(tmp_path: Path) -> None:
    group = "lag-metric-test"
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", usage_topic="lag.usage",
                            dlq_topic="lag.dlq"),
        worker=WorkerSettings(group_id=group),
        data_dir=tmp_path,
    )  # fmt: skip
    app = create_app(settings)
    observe_lag(group, [("lag.usage", 0, 7), ("lag.usage", 1, 3)])
    assert (lag(group, "lag.usage", 0), lag(group, "lag.usage", 1)) == (7, 3)
    await app.on_partitions_revoked.send({TP("lag.usage", 0), TP("lag.usage", 5)})
    assert lag(group, "lag.usage", 0) is None  # another worker reports it now
    assert lag(group, "lag.usage", 1) == 3
