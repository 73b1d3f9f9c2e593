"""The embedded broker's partition rule (pure: settings in, a count out)."""

from __future__ import annotations

import pytest

from tokenquota.config import KafkaSettings, load_settings
from tokenquota.embedded import EMBEDDED_PARTITIONS, embedded_partitions


def test_unconfigured_partitions_take_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KAFKA_PARTITIONS", raising=False)
    kafka = load_settings().kafka
    assert kafka.partitions != EMBEDDED_PARTITIONS  # the configured-Kafka default differs
    assert embedded_partitions(kafka) == EMBEDDED_PARTITIONS


def test_configured_partitions_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PARTITIONS", "3")
    assert embedded_partitions(load_settings().kafka) == 3
    assert embedded_partitions(KafkaSettings(partitions=12)) == 12
