"""How much a spool directory holds, read from outside the emitter that owns it."""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path

from .spool import _HEAD, _HEAD_CRC, _HEAD_MAGIC, _SEGMENT

__all__ = ["pending_bytes"]


def pending_bytes(directory: Path) -> int:
    """Bytes a spool directory holds that no broker has acknowledged yet, read without
    taking the spool's lock (an estimate while an emitter writes to it); 0 when there is
    no spool."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    sizes = {}
    for name in names:
        if match := _SEGMENT.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                sizes[int(match.group(1) or 0)] = (directory / name).stat().st_size
    head_number, offset = None, 0
    with contextlib.suppress(FileNotFoundError, OSError):
        data = (directory / "usage.spool.head").read_bytes()
        if len(data) >= _HEAD.size + _HEAD_CRC.size:
            magic, number, head, _ = _HEAD.unpack(data[: _HEAD.size])
            (crc,) = _HEAD_CRC.unpack_from(data, _HEAD.size)
            if magic == _HEAD_MAGIC and zlib.crc32(data[: _HEAD.size]) == crc:
                head_number, offset = number, head
    if head_number not in sizes:
        return sum(sizes.values())
    waiting = sum(size for number, size in sizes.items() if number > head_number)
    return waiting + max(sizes[head_number] - offset, 0)
