"""`tokenquota api`: the HTTP API (FastAPI on uvicorn), and `api hash-token`."""

from __future__ import annotations

import ipaddress
import logging
import secrets
import signal
import sys
from typing import Annotated

import typer

from .cli_run import fail, settings_of
from .config import Settings

__all__ = ["api_app", "serve_api"]

log = logging.getLogger("tokenquota.api")

api_app = typer.Typer(no_args_is_help=False, invoke_without_command=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(settings: Settings, host: str) -> str | None:
    """Why serving on `host` is refused (no tokens beyond loopback), or None."""
    if settings.api.tokens or _loopback(host):
        return None
    return (
        f"refusing to serve on {host} without API tokens: anyone who reaches it could change "
        "budgets. Configure api.tokens (see `tokenquota api hash-token --help`) or bind "
        "127.0.0.1"
    )


def serve_api(settings: Settings, host: str, port: int) -> None:
    """Run the API until Ctrl-C (uvicorn)."""
    import uvicorn

    from tokenquota.api import create_app

    if not settings.api.tokens:
        log.warning(
            "no api.tokens configured: serving %s only, and every caller may read and change "
            "everything",
            host,
        )
    log.info("tokenquota API on http://%s:%d (docs at /docs)", host, port)
    # uvicorn shuts down gracefully on SIGTERM as on SIGINT, then re-raises the signal; as
    # KeyboardInterrupt (which uvicorn.run swallows) a requested stop exits 0, not -15.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


@api_app.callback()
def api(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (default api.host).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default api.port, 8787).", min=1, max=65535)
    ] = None,
) -> None:
    """Serve the HTTP API: JSON read models, budgets, event ingest, reservations, health
    (/readyz), Prometheus metrics (/metrics) and its docs (/docs).

    Without api.tokens it binds 127.0.0.1 only; any other address needs tokens.

    Example: tokenquota api --port 8787
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_of(ctx)
    bind = host or settings.api.host
    problem = check_binding(settings, bind)
    if problem is not None:
        fail(problem, code=2)
    serve_api(settings, bind, port or settings.api.port)


@api_app.command("hash-token")
def hash_token_command(
    generate: Annotated[
        bool, typer.Option("--generate", help="Make a new random token and print both.")
    ] = False,
) -> None:
    """Print the SHA-256 that api.tokens[].sha256 holds for a token read from stdin.

    Example: tokenquota api hash-token --generate
    """
    from tokenquota.api.auth import hash_token

    if generate:
        token = secrets.token_urlsafe(32)
        sys.stdout.write(f"token:  {token}\nsha256: {hash_token(token)}\n")
        return
    token = sys.stdin.readline().strip()
    if not token:
        fail("no token on stdin (or pass --generate)", code=2)
    sys.stdout.write(hash_token(token) + "\n")
