"""A durable, ordered, bounded local spool for messages the broker has not acknowledged.

The spool folder holds:

- `usage.spool`, `usage.spool.1`, `usage.spool.2`, …: segments of framed records (payload
  length, CRC-32 of the payload, key length, key, value), oldest first. An append goes to
  the newest segment at the end the spool knows of (never in append mode, so bytes left
  by an earlier failed write are overwritten) and is fsync'd; an append that fails is cut
  off again before the error is raised. A new segment starts once the newest holds
  `segment_bytes`.
- `usage.spool.head`: where the first message not yet acknowledged starts (segment,
  offset, CRC), fsync'd on every discard. Discarding rewrites nothing: the head moves on,
  and a segment is deleted once the head has passed it; a spool emptied by discarding is
  truncated. A missing or unreadable head file means "from the first segment's start":
  acknowledged messages may be re-sent (the ledger drops duplicates), none is skipped.
- `usage.spool.lock`: flock'd by the one process that owns the spool.

Reading skips bytes that do not start a whole frame with a matching CRC and resumes at
the next frame that does, so a torn or corrupt frame never hides the frames after it;
the skipped bytes count as waiting until they are discarded with the frames around them.
Opening cuts off a torn tail. An older tokenquota's spool (one `usage.spool`) opens as a
one-segment spool.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from tokenquota.errors import IntegrationError

__all__ = ["Spool", "SpoolFullError", "SpoolWriteError", "SpooledMessage", "spool_in_use"]

log = logging.getLogger("tokenquota.spool")

_HEADER = struct.Struct(">II")  # payload length, crc32 of payload
_KEY_LENGTH = struct.Struct(">H")
# The head file: magic, segment number, offset in it, the segment's first 8 bytes (tells a
# segment rewritten by something else from ours), then a CRC-32 of all that.
_HEAD = struct.Struct(">4sQQ8s")
_HEAD_CRC = struct.Struct(">I")
_HEAD_MAGIC = b"TQH1"
#: Payloads are under 16 MiB, so a frame's first byte is 0: resynchronising looks only there.
_MAX_PAYLOAD = (1 << 24) - 1
_CANDIDATE = re.compile(rb"\x00(?!\x00\x00[\x00\x01])", re.DOTALL)  # 0, then a length >= 2
_BLOCK = 1 << 20
_UNLIMITED = 1 << 62
_SEGMENT = re.compile(r"usage\.spool(?:\.(\d+))?")
_SEGMENT_BYTES = 16 * 1024 * 1024


class SpoolFullError(IntegrationError):
    """The broker is unreachable and the spool has reached its size bound."""


class SpoolWriteError(IntegrationError):
    """Writing to the spool failed (the disk is full, say); the events were not accepted."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One message waiting in the spool."""

    key: bytes
    value: bytes


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int  # end of its last whole frame; appends go here
    first: bytes | None = None  # its first 8 bytes, read when a head inside it is written


_LOCK = "usage.spool.lock"


def spool_in_use(directory: Path) -> bool:
    """Whether another process holds the spool in `directory` now (a Spool there would
    refuse to open)."""
    lock = directory / _LOCK
    if not lock.exists():
        return False
    with lock.open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
    return False


class Spool:
    """The spool in `directory` (see the module docstring). One process at a time."""

    def __init__(
        self, directory: Path, max_bytes: int, *, segment_bytes: int = _SEGMENT_BYTES
    ) -> None:
        self.directory = directory
        #: The first segment's file (an older tokenquota's only spool file).
        self.path = directory / "usage.spool"
        self.max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = (directory / _LOCK).open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise IntegrationError(
                f"the spool {self.path} is in use by another emitter process; give each "
                "process its own emitter.spool_dir"
            ) from None
        self._head_path = directory / "usage.spool.head"
        self._segments: list[_Segment] = []
        self._head = 0  # offset in the first segment of the first waiting frame
        self._stored = 0  # bytes in all segments
        self._fd = -1  # the newest segment, opened for writing
        self._tail_dirty = False  # a failed write could not be cut off: cut before writing
        self._closed = False
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the spool for another process (its contents stay on disk)."""
        if self._closed:
            return
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._lock.close()

    @property
    def size(self) -> int:
        """Bytes waiting (appended and not discarded); 0 when empty."""
        return self._stored - self._head

    def append(self, messages: list[SpooledMessage]) -> None:
        """Write messages at the end and fsync: all of them, or none with SpoolFullError
        (the size bound) or SpoolWriteError (the write failed and was cut off again)."""
        self._check_open()
        data = b"".join(_frame(m) for m in messages)
        if self.size + len(data) > self.max_bytes:
            raise SpoolFullError(
                f"the broker is unreachable and the spool {self.path} is full "
                f"({self.size} of {self.max_bytes} bytes, emitter.spool_max_bytes); "
                f"{len(messages)} event(s) were NOT accepted"
            )
        if not data:
            return
        if self._segments[-1].size >= self._segment_bytes:
            self._start_segment(len(messages))
        segment = self._segments[-1]
        try:
            if self._tail_dirty:
                os.ftruncate(self._fd, segment.size)
                self._tail_dirty = False
            _write_all(self._fd, data, segment.size)
            os.fsync(self._fd)
        except OSError as exc:
            self._cut(segment)
            raise SpoolWriteError(
                f"could not write {len(messages)} event(s) to the spool {segment.path} "
                f"({exc.strerror or exc}); they were NOT accepted"
            ) from exc
        segment.size += len(data)
        self._stored += len(data)

    def read(self) -> tuple[list[SpooledMessage], int]:
        """Every waiting message in order, and the byte length they occupy (`size`)."""
        self._check_open()
        messages: list[SpooledMessage] = []
        start = self._head
        for segment in self._segments:
            _scan_segment(segment, start, segment.size, messages, _UNLIMITED)
            start = 0
        return messages, self.size

    def read_chunk(self, max_bytes: int, max_messages: int) -> tuple[list[SpooledMessage], int]:
        """The oldest waiting messages, in order: whole frames from the head until
        `max_bytes` or `max_messages` are reached (at least one frame), never past the end
        of a segment; and the byte length they occupy. The length can be more than the frames'
        (corrupt bytes skipped) and the list empty (only corrupt bytes): discarding it
        moves on either way."""
        self._check_open()
        if not self.size:
            return [], 0
        if self._head == self._segments[0].size:  # not expected: the head is at a segment's end
            self._advance(0)
        segment = self._segments[0]
        messages: list[SpooledMessage] = []
        end, _ = _scan_segment(segment, self._head, segment.size, messages, max_bytes, max_messages)
        return messages, end - self._head

    def discard_head(self, length: int) -> None:
        """Drop the first `length` waiting bytes (messages the broker has acknowledged)."""
        self._check_open()
        if length > self.size:
            raise ValueError(f"cannot discard {length} bytes of a spool holding {self.size}")
        if length > 0:
            self._advance(length)

    # -- internals ---------------------------------------------------------------------

    def _advance(self, length: int) -> None:
        """Move the head `length` bytes on, past whole segments (deleted) and, when that
        empties the spool, truncate it."""
        head, passed = self._head + length, 0
        while passed < len(self._segments) - 1 and head >= self._segments[passed].size:
            head -= self._segments[passed].size
            passed += 1
        target = self._segments[passed]
        emptied = passed == len(self._segments) - 1 and head == target.size
        # Durable first: a crash from here on re-sends at most what was acknowledged.
        self._write_head(target, 0 if emptied else head)
        for segment in self._segments[:passed]:
            self._stored -= segment.size
            try:
                segment.path.unlink()
            except OSError as exc:  # the next open deletes it: it is behind the head
                log.warning("could not delete the spool segment %s: %s", segment.path, exc)
        if passed:
            del self._segments[:passed]
            _fsync_dir(self.directory)
        self._head = head
        if emptied and target.size:
            try:
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
            except OSError as exc:  # harmless: the head stays at the end of the data
                log.warning("could not truncate the emptied spool %s: %s", target.path, exc)
                return
            self._stored = target.size = self._head = 0
            target.first = None
            self._tail_dirty = False

    def _check_open(self) -> None:
        if self._closed:
            raise IntegrationError(f"the spool {self.path} is closed")

    def _recover(self) -> None:
        numbers = sorted(
            int(match.group(1) or 0)
            for name in os.listdir(self.directory)
            if (match := _SEGMENT.fullmatch(name))
        )
        head_number, head, head_first = self._read_head()
        if head_number in numbers:
            for number in numbers[: numbers.index(head_number)]:  # behind the head
                self._segment_path(number).unlink(missing_ok=True)
            numbers = numbers[numbers.index(head_number) :]
        else:
            head = 0
        for index, number in enumerate(numbers or [0]):
            path = self._segment_path(number)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                segment = _Segment(number, path, os.fstat(fd).st_size)
                if index == 0 and head and _read_at(fd, 0, 8) != head_first:
                    log.warning("the spool head does not match %s; reading it from its start", path)
                    head = 0
                start = min(head, segment.size) if index == 0 else 0
                _, torn = _scan_fd(fd, segment, start, segment.size, None, _UNLIMITED, _UNLIMITED)
                if torn >= 0:
                    log.warning(
                        "cut a torn tail of %d byte(s) off the spool segment %s",
                        segment.size - torn,
                        path,
                    )
                    os.ftruncate(fd, torn)
                    os.fsync(fd)
                    segment.size = torn
            except BaseException:
                os.close(fd)
                raise
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = fd  # the newest segment's stays open
            self._segments.append(segment)
        self._stored = sum(s.size for s in self._segments)
        self._head = min(head, self._segments[0].size)
        if self._head == self._segments[0].size and (self._head or len(self._segments) > 1):
            self._advance(0)  # a head at the end of a segment: move past it

    def _read_head(self) -> tuple[int | None, int, bytes]:
        """The recorded head: segment number (None when there is no usable record),
        offset, and that segment's first 8 bytes when the head was written."""
        try:
            data = self._head_path.read_bytes()
        except FileNotFoundError:
            return None, 0, b""
        record = data[: _HEAD.size]
        if len(data) >= _HEAD.size + _HEAD_CRC.size:
            magic, number, offset, first = _HEAD.unpack(record)
            (crc,) = _HEAD_CRC.unpack_from(data, _HEAD.size)
            if magic == _HEAD_MAGIC and zlib.crc32(record) == crc:
                return number, offset, first
        log.warning("the spool head file %s is unreadable; ignoring it", self._head_path)
        return None, 0, b""

    def _write_head(self, segment: _Segment, offset: int) -> None:
        if offset and segment.first is None:
            fd = os.open(segment.path, os.O_RDONLY)
            try:
                segment.first = _read_at(fd, 0, 8)
            finally:
                os.close(fd)
        first = segment.first if offset and segment.first else bytes(8)
        record = _HEAD.pack(_HEAD_MAGIC, segment.number, offset, first)
        data = record + _HEAD_CRC.pack(zlib.crc32(record))
        try:
            fd = os.open(self._head_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                _write_all(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolWriteError(
                f"could not record the spool's new head in {self._head_path} "
                f"({exc.strerror or exc}); the acknowledged events stay spooled"
            ) from exc

    def _segment_path(self, number: int) -> Path:
        return self.path if number == 0 else self.directory / f"usage.spool.{number}"

    def _start_segment(self, count: int) -> None:
        number = self._segments[-1].number + 1
        path = self._segment_path(number)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise SpoolWriteError(
                f"could not create the spool segment {path} ({exc.strerror or exc}); "
                f"{count} event(s) were NOT accepted"
            ) from exc
        try:
            _fsync_dir(self.directory)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise SpoolWriteError(
                f"could not create the spool segment {path} ({exc.strerror or exc}); "
                f"{count} event(s) were NOT accepted"
            ) from exc
        os.close(self._fd)
        self._fd = fd
        self._tail_dirty = False
        self._segments.append(_Segment(number, path, 0))

    def _cut(self, segment: _Segment) -> None:
        """Cut a failed write off again; if that fails too, before the next write."""
        try:
            os.ftruncate(self._fd, segment.size)
            os.fsync(self._fd)
        except OSError:
            self._tail_dirty = True


def _scan_segment(
    segment: _Segment,
    start: int,
    end: int,
    out: list[SpooledMessage] | None,
    max_bytes: int,
    max_messages: int = 1 << 62,
) -> tuple[int, int]:
    """`_scan_fd` on the segment's file."""
    fd = os.open(segment.path, os.O_RDONLY)
    try:
        return _scan_fd(fd, segment, start, end, out, max_bytes, max_messages)
    finally:
        os.close(fd)


def _scan_fd(
    fd: int,
    segment: _Segment,
    start: int,
    end: int,
    out: list[SpooledMessage] | None,
    max_bytes: int,
    max_messages: int,
) -> tuple[int, int]:
    """Read whole frames from `start` (into `out` when given), skipping bytes that do not
    start one; stop at `end`, or before the frame that would pass `max_bytes` or
    `max_messages` (the first is always read). Returns where it stopped, and where the
    skipped bytes that run up to `end` start (a torn tail), or -1."""
    position, count, skipped_from = start, 0, -1
    data, base = b"", start  # the file's bytes from `base`
    while position < end:
        if skipped_from < 0 and count and (count >= max_messages or position - start >= max_bytes):
            break
        offset = position - base
        length = _frame_length(data, offset)
        if length < 0 and base + len(data) < end:  # -length bytes from here will tell
            wanted = min(max(-length, _BLOCK), end - position)
            data, base = _read_at(fd, position, wanted), position
            if len(data) < wanted:  # the file is shorter than we knew: it ends here
                end = position + len(data)
            continue
        if length > 0:
            if skipped_from >= 0:
                _report_skip(segment, skipped_from, position)
                skipped_from = -1
            if out is not None:
                (key_length,) = _KEY_LENGTH.unpack_from(data, offset + _HEADER.size)
                key_start = offset + _HEADER.size + _KEY_LENGTH.size
                key_end = key_start + key_length
                out.append(SpooledMessage(data[key_start:key_end], data[key_end : offset + length]))
            count += 1
            position += length
            continue
        # No intact frame starts here: resume at the next byte that could start one.
        if skipped_from < 0:
            skipped_from = position
        found = _CANDIDATE.search(data, offset + 1)
        if found is not None:
            position = base + found.start()
        elif base + len(data) < end:
            position = max(position + 1, base + len(data) - 3)
            data, base = b"", position
        else:
            position = end
    if skipped_from < 0:
        return position, -1
    _report_skip(segment, skipped_from, position)
    return position, skipped_from if position >= end else -1


def _frame(message: SpooledMessage) -> bytes:
    payload = _KEY_LENGTH.pack(len(message.key)) + message.key + message.value
    if len(payload) > _MAX_PAYLOAD:
        raise SpoolWriteError(
            f"an event of {len(message.value)} bytes is too large for the spool (at most "
            f"{_MAX_PAYLOAD - 2 - len(message.key)}); it was NOT accepted"
        )
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _frame_length(data: bytes, offset: int) -> int:
    """The length of the whole, intact frame at `offset`; 0 when none starts there; minus
    the number of bytes from `offset` needed to tell, when `data` ends too soon."""
    available = len(data) - offset
    if available < _HEADER.size:
        return -_HEADER.size
    length: int
    crc: int
    length, crc = _HEADER.unpack_from(data, offset)
    if not _KEY_LENGTH.size <= length <= _MAX_PAYLOAD:
        return 0
    total = _HEADER.size + length
    if available < total:
        return -total
    payload = memoryview(data)[offset + _HEADER.size : offset + total]
    if zlib.crc32(payload) != crc:
        return 0
    (key_length,) = _KEY_LENGTH.unpack_from(payload)
    if key_length > length - _KEY_LENGTH.size:
        return 0
    return total


def _report_skip(segment: _Segment, start: int, end: int) -> None:
    log.warning(
        "skipped %d corrupt byte(s) at offset %d of the spool segment %s; "
        "the whole frames after them are kept",
        end - start,
        start,
        segment.path,
    )


def _read_at(fd: int, offset: int, size: int) -> bytes:
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view, done = memoryview(data), 0
    while done < len(data):
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            raise OSError(28, "No space left on device")
        done += written


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
