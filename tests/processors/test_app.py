"""Building the worker's faust app (no servers: nothing is started)."""

from __future__ import annotations

from pathlib import Path

from tokenquota.config import KafkaSettings, Settings, WorkerSettings
from tokenquota.processors import batch_consumer, create_app
from tokenquota.processors.batch_consumer import BatchApp


def test_the_app_keeps_its_data_under_data_dir_and_batches_the_usage_topic(
    tmp_path: Path,
) -> None:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", usage_topic="usage.events"),
        worker=WorkerSettings(fetch_max_wait=0.02),
        data_dir=tmp_path / "not" / "yet" / "there",
    )
    app = create_app(settings)
    assert isinstance(app, BatchApp)
    assert Path(app.conf.datadir) == tmp_path / "not" / "yet" / "there" / "faust"
    assert Path(app.conf.datadir).is_dir()  # faust itself would only make the last level
    assert app.batch_topics == frozenset({"usage.events"})
    assert app.fetch_max_wait == 0.02
    # the fetcher that ends quietly when stopped during a rebalance, not faust's own
    assert type(app._fetcher) is batch_consumer._Fetcher
