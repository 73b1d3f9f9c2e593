"""PostgreSQL projections of the usage log: migrations, the pure fold, the store, the read side."""

from .alerts import ALERT_NAMESPACE
from .budget import Headroom, alert_level, headroom
from .database import connect, quote_schema, undo_open_transaction
from .expected_schema import EXPECTED_COLUMNS, schema_drift
from .fold import PoisonEventError, fold, new_session
from .migrator import Migration, MigrationError, apply_migrations, load_migrations
from .read import (
    AccountMetrics,
    SessionMetrics,
    UsdMetrics,
    account_metrics,
    available_tokens,
    reservation,
    session_metrics,
    sessions_metrics,
)
from .state import (
    BUILTIN_DEFAULTS,
    Decision,
    FoldConfig,
    Folded,
    Limits,
    LogRecord,
    PartitionState,
    ProjectionState,
    ReservationRecord,
    SessionBudget,
    UsdLimits,
)
from .store import (
    PROJECTION_TABLES,
    PROJECTION_VIEWS,
    BatchResult,
    PoisonHandler,
    apply_batch,
    apply_batch_isolating,
    decision_channel,
    is_permanent,
    projection_lock_key,
)

__all__ = [
    "ALERT_NAMESPACE",
    "BUILTIN_DEFAULTS",
    "EXPECTED_COLUMNS",
    "PROJECTION_TABLES",
    "PROJECTION_VIEWS",
    "AccountMetrics",
    "BatchResult",
    "Decision",
    "FoldConfig",
    "Folded",
    "Headroom",
    "Limits",
    "LogRecord",
    "Migration",
    "MigrationError",
    "PartitionState",
    "PoisonEventError",
    "PoisonHandler",
    "ProjectionState",
    "ReservationRecord",
    "SessionBudget",
    "SessionMetrics",
    "UsdLimits",
    "UsdMetrics",
    "account_metrics",
    "alert_level",
    "apply_batch",
    "apply_batch_isolating",
    "apply_migrations",
    "available_tokens",
    "connect",
    "decision_channel",
    "fold",
    "headroom",
    "is_permanent",
    "load_migrations",
    "new_session",
    "projection_lock_key",
    "quote_schema",
    "reservation",
    "schema_drift",
    "session_metrics",
    "sessions_metrics",
    "undo_open_transaction",
]
