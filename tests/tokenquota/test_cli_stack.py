"""The dev stack's servers file: what other commands of the checkout take from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from tokenquota.cli_stack import with_dev_stack, write_stack_file
from tokenquota.config import DatabaseSettings, KafkaSettings, Settings, load_settings

_SERVERS = "127.0.0.1:19092"


@pytest.fixture(autouse=True)
def _nothing_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TOKENQUOTA_CONFIG", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_PARTITIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TOKENQUOTA_DATA_DIR", str(tmp_path))


def _stack(tmp_path: Path, partitions: int) -> None:
    """Record settings as `dev` runs on them in the servers file of `tmp_path`."""
    effective = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=_SERVERS, partitions=partitions),
        database=DatabaseSettings(url=SecretStr("postgresql://postgres@127.0.0.1:5/tq")),
    )
    write_stack_file(effective)


def test_a_command_takes_the_stacks_broker_and_its_partitions(tmp_path: Path) -> None:
    _stack(tmp_path, 1)
    found = with_dev_stack(load_settings())
    assert (found.kafka.bootstrap_servers, found.kafka.partitions) == (_SERVERS, 1)


def test_configured_partitions_win_over_the_stacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stack(tmp_path, 1)
    monkeypatch.setenv("KAFKA_PARTITIONS", "12")  # the default's value, but configured
    found = with_dev_stack(load_settings())
    assert (found.kafka.bootstrap_servers, found.kafka.partitions) == (_SERVERS, 12)


def test_a_configured_broker_keeps_the_configured_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stack(tmp_path, 1)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    found = with_dev_stack(load_settings())
    assert (found.kafka.bootstrap_servers, found.kafka.partitions) == ("kafka:9092", 12)
