"""Logging set-up from LOG_LEVEL and LOG_FILE."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["configure_logging"]


def configure_logging(level: str, log_file: Path | None = None) -> None:
    """Log to stderr (rich) and, when given, to `log_file` (plain text, appended).

    Never to stdout: the MCP commands speak their protocol there.
    """
    console = Console(stderr=True)
    handlers: list[logging.Handler] = [
        RichHandler(console=console, show_path=False, rich_tracebacks=True)
    ]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        handlers.append(file_handler)
    logging.basicConfig(level=level, handlers=handlers, force=True, format="%(message)s")
