"""The spool file: order, durability of what was written, torn tails, the size bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenquota.errors import IntegrationError
from tokenquota.producers import SpoolFullError
from tokenquota.producers.spool import Spool, SpooledMessage


def messages(count: int, start: int = 0) -> list[SpooledMessage]:
    return [
        SpooledMessage(f"k{i % 3}".encode(), f"value-{i}".encode())
        for i in range(start, start + count)
    ]


def test_messages_come_back_in_order_across_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(messages(3))
    spool.append(messages(2, start=3))
    spool.close()
    reopened = Spool(tmp_path, 1 << 20)
    read, length = reopened.read()
    assert read == messages(5)
    assert length == reopened.size


def test_a_torn_tail_is_cut_and_everything_before_it_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(messages(4))
    spool.close()
    with spool.path.open("ab") as handle:
        handle.write(b"\x00\x00\x00\x30\x12\x34")  # a crash in the middle of a frame
    reopened = Spool(tmp_path, 1 << 20)
    assert reopened.read()[0] == messages(4)


def test_discarding_the_head_keeps_what_was_appended_after(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(messages(2))
    _, sent = spool.read()
    spool.append(messages(1, start=2))
    spool.discard_head(sent)
    assert spool.read()[0] == messages(1, start=2)


def test_a_full_spool_refuses_the_whole_append_with_a_clear_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 100)
    spool.append(messages(2))
    size = spool.size
    with pytest.raises(SpoolFullError, match=r"spool .* is full .* NOT accepted"):
        spool.append(messages(10))
    assert spool.size == size
    assert len(spool.read()[0]) == 2


def test_two_emitters_cannot_share_one_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path, 100)
    with pytest.raises(IntegrationError, match="in use by another emitter"):
        Spool(tmp_path, 100)
    first.close()
    Spool(tmp_path, 100).close()  # released: the next owner may open it
