"""Where an event's time goes in the worker, read from its /metrics between two moments.

The worker sums, per stage, the seconds its events spent there
(`tokenquota_event_stage_seconds_total`, see `tokenquota.processors.metrics.STAGES`);
the difference of two scrapes divided by the events staged between them is the mean
per event of each stage over that interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tokenquota.processors.metrics import STAGES

__all__ = ["StageTotals", "scrape_stages"]


@dataclass(frozen=True)
class StageTotals:
    """Seconds per stage summed over events, and the events they sum over."""

    seconds: dict[str, float]
    events: float

    def mean_ms_since(self, before: StageTotals) -> dict[str, float]:
        """Mean milliseconds per event of each stage between `before` and these totals."""
        events = self.events - before.events
        if events <= 0:
            return dict.fromkeys(STAGES, 0.0)
        return {
            stage: (self.seconds.get(stage, 0.0) - before.seconds.get(stage, 0.0)) / events * 1000
            for stage in STAGES
        }


async def scrape_stages(port: int) -> StageTotals:
    """The worker's stage totals now (its /metrics on 127.0.0.1:`port`)."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    seconds: dict[str, float] = {}
    events = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "tokenquota_event_stage_seconds_total":
                seconds[sample.labels["stage"]] = sample.value
            elif sample.name == "tokenquota_event_stage_events_total":
                events = sample.value
    return StageTotals(seconds, events)
