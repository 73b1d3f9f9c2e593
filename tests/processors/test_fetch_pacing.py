"""The fetch wait: the configured one when caught up, doubled while behind and empty-handed."""

from __future__ import annotations

from tokenquota.processors.fetch_pacing import BEHIND_WAIT_MAX_MS, next_fetch_wait


def test_caught_up_the_wait_is_the_configured_one_whatever_it_was() -> None:
    assert next_fetch_wait(800, 50, behind=False, received=False) == 50
    assert next_fetch_wait(800, 50, behind=False, received=True) == 50


def test_behind_with_nothing_received_the_wait_doubles_up_to_the_cap() -> None:
    waits = [50]
    for _ in range(10):
        waits.append(next_fetch_wait(waits[-1], 50, behind=True, received=False))
    assert waits[:5] == [50, 100, 200, 400, 800]
    assert waits[-1] == BEHIND_WAIT_MAX_MS


def test_behind_and_receiving_the_wait_stays() -> None:
    assert next_fetch_wait(400, 50, behind=True, received=True) == 400


def test_a_configured_wait_above_the_cap_is_never_shortened() -> None:
    assert next_fetch_wait(9_000, 9_000, behind=True, received=False) == 9_000


def test_a_wait_of_one_ms_grows_too() -> None:
    assert next_fetch_wait(1, 1, behind=True, received=False) == 2
