"""Logging set-up from LOG_LEVEL and LOG_FILE."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["configure_logging"]


class _OneLineRetries(logging.Filter):
    """asyncpg's pool logs a whole traceback each time it fails to reconnect (every few
    seconds while PostgreSQL is down): keep the line, with the error at its end."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


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
    pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OneLineRetries) for f in pool.filters):
        pool.addFilter(_OneLineRetries())
