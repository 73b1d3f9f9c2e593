"""The HTTP API: a thin FastAPI adapter over the read side and the producers."""

from __future__ import annotations

__all__: list[str] = []
