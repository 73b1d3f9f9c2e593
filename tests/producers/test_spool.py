"""The spool file: order, durability of what was written, torn tails, the size bound."""

from __future__ import annotations

import struct
import zlib
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


def frames(batch: list[SpooledMessage]) -> bytes:
    """The bytes a spool writes for `batch` (length, CRC-32, key length, key, value)."""
    out = b""
    for m in batch:
        payload = struct.pack(">H", len(m.key)) + m.key + m.value
        out += struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    return out


def test_a_tear_in_the_middle_of_the_file_hides_none_of_the_frames_after_it(
    tmp_path: Path,
) -> None:
    # What an append after a failed, unrolled-back append used to leave on disk.
    torn = frames(messages(3, start=100))[:-7]
    (tmp_path / "usage.spool").write_bytes(
        frames(messages(4)) + torn + frames(messages(3, start=4))
    )
    spool = Spool(tmp_path, 1 << 20)
    read, length = spool.read()
    # The torn append's whole frames cannot be told from accepted ones, so they are kept.
    assert read == messages(4) + messages(2, start=100) + messages(3, start=4)
    assert length == spool.size
    spool.close()
    assert Spool(tmp_path, 1 << 20).read()[0] == read  # and the file was not cut at the tear


def test_a_corrupt_frame_in_the_middle_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    data = bytearray(frames(messages(6)))
    data[len(frames(messages(2))) + 12] ^= 0xFF  # flip a byte in the third frame's payload
    (tmp_path / "usage.spool").write_bytes(bytes(data))
    spool = Spool(tmp_path, 1 << 20)
    read, length = spool.read()
    assert read == messages(2) + messages(3, start=3)
    spool.discard_head(length)
    assert spool.size == 0


def test_a_frame_corrupted_while_spooled_neither_stalls_reading_nor_hides_the_rest(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(messages(1))
    spool.append(messages(2, start=1))
    with spool.path.open("r+b") as handle:  # the disk corrupts the first frame
        handle.seek(10)
        handle.write(b"\xff")
    read, length = spool.read()
    assert read == messages(2, start=1)
    assert length == spool.size  # the corrupt bytes are counted, so discarding removes them
    spool.discard_head(length)
    assert spool.size == 0


def test_writing_after_a_leftover_tear_overwrites_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(messages(2))
    with spool.path.open("ab") as handle:  # a failed write left part of a frame behind
        handle.write(frames(messages(1, start=50))[:9])
    spool.append(messages(2, start=2))
    assert spool.read()[0] == messages(4)
    spool.close()
    assert Spool(tmp_path, 1 << 20).read()[0] == messages(4)


def test_discarding_the_head_does_not_rewrite_what_is_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(messages(10))
    first = spool.size
    spool.append(messages(990, start=10))
    inode, size = spool.path.stat().st_ino, spool.path.stat().st_size
    spool.discard_head(first)
    assert (spool.path.stat().st_ino, spool.path.stat().st_size) == (inode, size)
    assert spool.size == size - first  # bytes waiting, not bytes on disk
    spool.close()
    reopened = Spool(tmp_path, 1 << 20)  # the new head was made durable
    assert reopened.read()[0] == messages(990, start=10)
    assert reopened.size == size - first


def test_chunks_are_bounded_and_come_back_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    for start in range(0, 1000, 100):
        spool.append(messages(100, start=start))
    frame = len(frames(messages(1, start=999)))
    read: list[SpooledMessage] = []
    while spool.size:
        chunk, length = spool.read_chunk(max_bytes=500, max_messages=7)
        assert 1 <= len(chunk) <= 7 and length < 500 + frame
        read += chunk
        spool.discard_head(length)
    assert read == messages(1000)


def test_segments_roll_over_and_each_is_deleted_once_the_head_has_passed_it(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, 1 << 20, segment_bytes=300)
    for start in range(0, 100, 10):
        spool.append(messages(10, start=start))
    assert len(list(tmp_path.glob("usage.spool*[0-9]"))) >= 2
    first_half = len(frames(messages(50)))
    spool.discard_head(first_half)
    spool.close()
    reopened = Spool(tmp_path, 1 << 20, segment_bytes=300)
    assert reopened.read()[0] == messages(50, start=50)
    assert reopened.size == len(frames(messages(50, start=50)))
    while reopened.size:
        reopened.discard_head(reopened.read_chunk(1 << 20, 1000)[1])
    spool_files = {p.name for p in tmp_path.iterdir()} - {"usage.spool.lock", "usage.spool.head"}
    assert len(spool_files) == 1  # one empty segment is left
    assert all((tmp_path / name).stat().st_size == 0 for name in spool_files)
    reopened.append(messages(1, start=100))
    reopened.close()
    assert Spool(tmp_path, 1 << 20).read()[0] == messages(1, start=100)


def test_an_unreadable_head_file_re_sends_rather_than_skips(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(messages(5))
    spool.append(messages(5, start=5))
    spool.discard_head(len(frames(messages(5))))
    spool.close()
    head = tmp_path / "usage.spool.head"
    head.write_bytes(head.read_bytes()[:-1] + b"\x00")  # a torn head record
    assert Spool(tmp_path, 1 << 20).read()[0] == messages(10)


def test_a_head_that_does_not_match_its_segment_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(messages(10))
    spool.discard_head(len(frames(messages(5))))
    spool.close()
    # An older tokenquota, which knows no head file, emptied the spool and wrote anew.
    spool.path.write_bytes(frames(messages(8, start=20)))
    assert Spool(tmp_path, 1 << 20).read()[0] == messages(8, start=20)


def test_the_size_bound_counts_only_the_bytes_still_waiting(tmp_path: Path) -> None:
    two = len(frames(messages(2)))
    spool = Spool(tmp_path, two * 2)
    spool.append(messages(2))
    spool.append(messages(2, start=2))
    with pytest.raises(SpoolFullError):
        spool.append(messages(2, start=4))
    spool.discard_head(two)
    spool.append(messages(2, start=4))
    assert spool.read()[0] == messages(4, start=2)
