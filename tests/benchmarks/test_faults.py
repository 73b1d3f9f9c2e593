"""A short seeded fault campaign: every kind of fault once or more under load from the
client, its hooks and the HTTP API, and every invariant of the oracle held (python -m
benchmarks.faults runs it at any length)."""

from __future__ import annotations

import pytest

from benchmarks.faults import FAULTS, campaign

pytestmark = pytest.mark.integration

#: Seconds of load; the whole run (servers, setup, catching up, checks) takes about 60 s.
LOAD_SECONDS = 35
SEED = 17


async def test_a_short_seeded_campaign_holds_every_invariant() -> None:
    async with campaign(LOAD_SECONDS, SEED, producers=3, workers=2) as report:
        assert report.ok, f"seed {SEED}: {report.first_violation()}\n" + "\n".join(report.notes)
    assert set(report.faults) == {name for name, _ in FAULTS}, report.faults
    checked = {inv.name: inv.checked for inv in report.invariants}
    assert all(count > 0 for count in checked.values()), checked
    events = report.events  # (each message says what the run did, for a run that falls short)
    assert events["in the ledger"] > 1_000, events
    assert events["rejected"] > 0, events  # limits were reached, so refusals were tested
    assert events["rejected by a USD limit"] > 0, events
    for hook in ("mcp", "orchestrator", "memory"):  # the hooks' events were checked too
        assert report.events[f"in the ledger from {hook}"] > 0, hook
    assert report.events["HTTP items answered accepted"] > 0
    assert report.events["HTTP items answered invalid"] > 0
