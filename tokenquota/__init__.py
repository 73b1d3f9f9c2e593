"""tokenquota: exact token budgets for LLM agents and MCP tools.

Hooks emit immutable events to Kafka, a worker projects them into PostgreSQL, and
replaying the log rebuilds every balance. Subpackages: `tokenquota.schemas` (events),
`tokenquota.producers` (hooks), `tokenquota.processors` (worker),
`tokenquota.projections` (PostgreSQL).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .config import ConfigError, Settings, load_settings
from .errors import (
    DevStackError,
    IntegrationError,
    ReservationExpiredError,
    TokenBudgetExhaustedError,
    TokenQuotaExceededError,
    UnknownSessionError,
    UsdBudgetExceededError,
)

if TYPE_CHECKING:
    from .dashboard import AsyncTokenDashboard, TokenDashboard
    from .health import check_integration_health, check_integration_health_async

try:
    __version__ = version("tokenquota")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "AsyncTokenDashboard",
    "ConfigError",
    "DevStackError",
    "IntegrationError",
    "ReservationExpiredError",
    "Settings",
    "TokenBudgetExhaustedError",
    "TokenDashboard",
    "TokenQuotaExceededError",
    "UnknownSessionError",
    "UsdBudgetExceededError",
    "__version__",
    "check_integration_health",
    "check_integration_health_async",
    "load_settings",
]

#: Imported on first use: they pull in the producers and the Kafka client, which
#: `import tokenquota` alone should not.
_LAZY = {
    "AsyncTokenDashboard": ".dashboard",
    "TokenDashboard": ".dashboard",
    "check_integration_health": ".health",
    "check_integration_health_async": ".health",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
