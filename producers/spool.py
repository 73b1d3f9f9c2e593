"""A durable, ordered, bounded local spool for messages the broker has not acknowledged.

One append-only file of framed records (length, CRC-32, key, value), fsync'd on every
append. A torn record at the end (a crash mid-write) is cut off when the spool opens;
everything before it is kept in order.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from tokenquota.errors import IntegrationError

__all__ = ["Spool", "SpoolFullError", "SpooledMessage"]

_HEADER = struct.Struct(">II")  # payload length, crc32 of payload
_KEY_LENGTH = struct.Struct(">H")


class SpoolFullError(IntegrationError):
    """The broker is unreachable and the spool has reached its size bound."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One message waiting in the spool."""

    key: bytes
    value: bytes


class Spool:
    """The spool file `<directory>/usage.spool`. Not safe for two processes at once."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.path = directory / "usage.spool"
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = (directory / "usage.spool.lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise IntegrationError(
                f"the spool {self.path} is in use by another emitter process; give each "
                "process its own emitter.spool_dir"
            ) from None
        self.path.touch(exist_ok=True)
        self._size = self._recover()

    def close(self) -> None:
        """Release the spool for another process (its contents stay on disk)."""
        self._lock.close()

    @property
    def size(self) -> int:
        """Bytes in the spool; 0 when empty."""
        return self._size

    def append(self, messages: list[SpooledMessage]) -> None:
        """Write messages at the end and fsync; all of them or, with SpoolFullError, none."""
        data = b"".join(_frame(m) for m in messages)
        if self._size + len(data) > self.max_bytes:
            raise SpoolFullError(
                f"the broker is unreachable and the spool {self.path} is full "
                f"({self._size} of {self.max_bytes} bytes, emitter.spool_max_bytes); "
                f"{len(messages)} event(s) were NOT accepted"
            )
        with self.path.open("ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self._size += len(data)

    def read(self) -> tuple[list[SpooledMessage], int]:
        """Every message in order, and the byte length they occupy."""
        messages, end = _parse(self.path.read_bytes())
        return messages, end

    def discard_head(self, length: int) -> None:
        """Drop the first `length` bytes (messages the broker has acknowledged)."""
        if length == self._size:  # the usual case: everything was delivered
            with self.path.open("r+b") as handle:
                handle.truncate(0)
                os.fsync(handle.fileno())
            self._size = 0
            return
        rest = self.path.read_bytes()[length:]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            handle.write(rest)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        _fsync_dir(self.path.parent)
        self._size = len(rest)

    def _recover(self) -> int:
        data = self.path.read_bytes()
        _, end = _parse(data)
        if end < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(end)
                os.fsync(handle.fileno())
        return end


def _frame(message: SpooledMessage) -> bytes:
    payload = _KEY_LENGTH.pack(len(message.key)) + message.key + message.value
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _parse(data: bytes) -> tuple[list[SpooledMessage], int]:
    messages = []
    position = 0
    while position + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, position)
        start = position + _HEADER.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break  # a torn or corrupt tail: keep what came before it
        (key_length,) = _KEY_LENGTH.unpack_from(payload)
        key = payload[_KEY_LENGTH.size : _KEY_LENGTH.size + key_length]
        messages.append(SpooledMessage(key, payload[_KEY_LENGTH.size + key_length :]))
        position = start + length
    return messages, position


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
