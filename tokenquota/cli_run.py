"""What every operator command shares: its settings, running it, and its user errors.

A user mistake or an unreachable server is one line on stderr (`error: ...`) and a
non-zero exit code, never a traceback: 1 for what went wrong at run time, 2 for a bad
configuration or argument.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import asyncpg
import typer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from .cli_format import OutputFormat
from .config import ConfigError, Settings, load_settings
from .errors import IntegrationError
from .logs import configure_logging

if TYPE_CHECKING:
    from .dashboard import AsyncTokenDashboard

__all__ = [
    "FormatOption",
    "SessionArgument",
    "err",
    "fail",
    "out",
    "parse_day",
    "parse_moment",
    "print_error",
    "read_dashboard",
    "require_session",
    "run",
    "run_app",
    "settings_of",
]

T = TypeVar("T")

FormatOption = Annotated[
    OutputFormat,
    typer.Option("--format", "-f", help="table (for people), json or csv (for scripts)."),
]
SessionArgument = Annotated[str, typer.Argument(help="The session id, as its events name it.")]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_error(message: str) -> None:
    """Print `error: message` on stderr, the message as it is (never read as markup: it
    may quote what the user typed)."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `code`."""
    print_error(message)
    raise typer.Exit(code)


def settings_of(ctx: typer.Context, *, database: bool = True) -> Settings:
    """The settings of `--config` and the environment, with a running `tokenquota dev`'s
    servers where none are configured; exit 2 when the database is needed and unknown."""
    from .cli_stack import with_dev_stack

    config_file = ctx.find_root().obj
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        fail(str(exc), code=2)
    configure_logging(settings.log_level, settings.log_file)
    if settings.log_level == "INFO":  # the default: no Kafka client chatter on a terminal
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    settings = with_dev_stack(settings)
    if database and not settings.database.is_configured:
        fail(
            "no database configured: set DATABASE_URL (or database.url in --config), or start "
            "`tokenquota dev` (make run) in this directory",
            code=2,
        )
    return settings


def _where(settings: Settings) -> str:
    try:
        parts = urlsplit(settings.database.dsn())
    except ConfigError:
        return "PostgreSQL"
    return f"PostgreSQL at {parts.hostname or 'localhost'}:{parts.port or 5432}"


def run(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; turn what a user can cause or fix into one line and an exit code."""
    from .errors import QueryValueError, UnknownSessionError

    try:
        return asyncio.run(work)
    except UnknownSessionError as exc:
        fail(str(exc))
    except QueryValueError as exc:  # a date near year 9999, a NUL in a session id
        fail(str(exc), code=2)
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        fail(
            f"the database schema {settings.database.schema_name!r} is not set up: run "
            "`tokenquota init` (or start `tokenquota dev`)"
        )
    except asyncpg.InvalidPasswordError as exc:
        fail(f"{_where(settings)} refused the login: {exc}")
    except asyncpg.PostgresError as exc:
        fail(f"{_where(settings)}: {exc}")
    except ConfigError as exc:
        fail(str(exc), code=2)
    except IntegrationError as exc:
        fail(str(exc))
    except (OSError, TimeoutError) as exc:
        fail(
            f"{_where(settings)} is unreachable ({exc or type(exc).__name__}): is "
            "`tokenquota dev` running, or DATABASE_URL right?"
        )
    except KafkaError as exc:
        fail(f"Kafka at {settings.kafka.bootstrap_servers}: {exc}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        fail(f"{where}: {message}" if where else message, code=2)


async def require_session(dashboard: AsyncTokenDashboard, session_id: str | None) -> None:
    """Raise UnknownSessionError, as `usage` does, when `session_id` is given and no applied
    event has named it (one primary-key lookup)."""
    if session_id is None:
        return
    from .errors import UnknownSessionError

    if not await dashboard.session_known(session_id):
        raise UnknownSessionError(session_id)


def read_dashboard(
    settings: Settings,
    call: Callable[[AsyncTokenDashboard], Awaitable[T]],
    *,
    session: str | None = None,
) -> T:
    """`call` on a dashboard, run as `run` does; refuses an unknown `session` first."""

    async def read() -> T:
        from .dashboard import AsyncTokenDashboard

        async with AsyncTokenDashboard(settings) as dashboard:
            await require_session(dashboard, session)
            return await call(dashboard)

    return run(settings, read())


def parse_day(value: str | None) -> date | None:
    """A `YYYY-MM-DD` option (also `today` / `yesterday`, UTC); exit 2 when it is not one."""
    if value is None:
        return None
    today = datetime.now(UTC).date()
    if value == "today":
        return today
    if value == "yesterday":
        return date.fromordinal(today.toordinal() - 1)
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"bad date {value!r}: use YYYY-MM-DD (e.g. {today.isoformat()})", code=2)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_moment(value: str | None) -> datetime | None:
    """A `--since`: an ISO 8601 time or date (UTC unless it names a zone) or a duration
    back from now (`30m`, `2h`, `7d`); exit 2 when it is neither."""
    if value is None:
        return None
    text = value.strip()
    try:
        # ASCII digits only: int() reads other scripts' digits, and '²' passes isdigit().
        if text[:-1].isascii() and text[:-1].isdigit() and text[-1:] in _UNITS:
            from datetime import timedelta

            return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):  # OverflowError: back past year 1
        fail(
            f"bad time {value!r}: use an ISO 8601 time (2026-12-03T09:00, UTC unless it names "
            "a zone), a date, or a duration back from now (30m, 2h, 7d)",
            code=2,
        )
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def run_app(app: typer.Typer, args: list[str] | None = None) -> None:
    """Run the `tokenquota` command: a usage mistake (an unknown option, a missing or bad
    argument) is one `error:` line naming the command's --help, exit code 2."""
    try:
        code = app(args=args, standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # click's exceptions, as typer vendors them
        ctx = getattr(exc, "ctx", None)
        exit_code = getattr(exc, "exit_code", 1)
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(exit_code)  # building the error printed the help
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        format_message = getattr(exc, "format_message", None)
        message = str(format_message() if callable(format_message) else exc).rstrip(".")
        print_error(f"{message}{where}")
        sys.exit(exit_code)
    sys.exit(code if isinstance(code, int) else 0)
