"""PostgreSQL projections of the usage log: migrations, the pure fold, the store, the read side."""

from .budget import Headroom, alert_level, headroom
from .database import connect, quote_schema
from .expected_schema import EXPECTED_COLUMNS, schema_drift
from .fold import FoldConfig, fold, new_session
from .migrator import Migration, MigrationError, apply_migrations, load_migrations
from .read import SessionMetrics, available_tokens, reservation, session_metrics
from .state import Decision, Folded, Limits, ProjectionState, ReservationRecord, SessionBudget
from .store import (
    PROJECTION_TABLES,
    BatchResult,
    LogRecord,
    apply_batch,
    decision_channel,
    projection_lock_key,
)

__all__ = [
    "EXPECTED_COLUMNS",
    "PROJECTION_TABLES",
    "BatchResult",
    "Decision",
    "FoldConfig",
    "Folded",
    "Headroom",
    "Limits",
    "LogRecord",
    "Migration",
    "MigrationError",
    "ProjectionState",
    "ReservationRecord",
    "SessionBudget",
    "SessionMetrics",
    "alert_level",
    "apply_batch",
    "apply_migrations",
    "available_tokens",
    "connect",
    "decision_channel",
    "fold",
    "headroom",
    "load_migrations",
    "new_session",
    "projection_lock_key",
    "quote_schema",
    "reservation",
    "schema_drift",
    "session_metrics",
]
