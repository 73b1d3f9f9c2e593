"""tokenquota: exact token budgets for LLM agents and MCP tools.

Hooks emit immutable events to Kafka, a worker projects them into PostgreSQL, and
replaying the log rebuilds every balance. Subpackages: `tokenquota.schemas` (events),
`tokenquota.producers` (hooks), `tokenquota.processors` (worker),
`tokenquota.projections` (PostgreSQL).
"""

from importlib.metadata import PackageNotFoundError, version

from .config import ConfigError, Settings, load_settings
from .errors import (
    DevStackError,
    IntegrationError,
    ReservationExpiredError,
    TokenBudgetExhaustedError,
    TokenQuotaExceededError,
)

try:
    __version__ = version("tokenquota")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "ConfigError",
    "DevStackError",
    "IntegrationError",
    "ReservationExpiredError",
    "Settings",
    "TokenBudgetExhaustedError",
    "TokenQuotaExceededError",
    "__version__",
    "load_settings",
]
