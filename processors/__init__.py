"""The faust-streaming worker that projects the usage topic into PostgreSQL."""

from .app import Projector, create_app
from .dlq import DeadLetter, dead_letter_headers, parse_dead_letter_headers
from .worker import run_worker

__all__ = [
    "DeadLetter",
    "Projector",
    "create_app",
    "dead_letter_headers",
    "parse_dead_letter_headers",
    "run_worker",
]
