"""Running the worker process (`tokenquota worker`)."""

from __future__ import annotations

from typing import NoReturn

import faust

from tokenquota.config import Settings

from .app import create_app
from .metrics import serve_metrics
from .notifier import attach_notifier

__all__ = ["run_worker"]


def run_worker(settings: Settings) -> NoReturn:
    """Run the projection worker until SIGINT/SIGTERM; faust owns the event loop."""
    app = create_app(settings)
    attach_notifier(app, settings)  # when alerts.webhook_url is set
    if settings.worker.metrics_port is not None:
        serve_metrics(settings.worker.metrics_port, settings.worker.metrics_host)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        logfile=str(settings.log_file) if settings.log_file else None,
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
