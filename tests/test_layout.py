"""The installed layout and the public surface of each package."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]

PUBLIC = {
    "tokenquota": {
        "AsyncTokenDashboard", "ConfigError", "DevStackError", "IntegrationError",
        "ReservationExpiredError", "Settings", "TokenBudgetExhaustedError", "TokenDashboard",
        "TokenQuotaExceededError", "UnknownSessionError", "UsdBudgetExceededError", "__version__",
        "check_integration_health", "check_integration_health_async", "load_settings",
    },
    "tokenquota.schemas": {
        "BIGINT_MAX", "DEFAULTS_SESSION", "ID_MAX_LENGTH", "USAGE_TOKENS_MAX", "AccountPath",
        "ApiCost", "BudgetSet", "Component", "CountedBy", "DefaultsSet", "Event",
        "EventDecodeError", "EventType", "FieldError", "Money", "Priority", "Source",
        "TokenReserved", "TokenUsed", "account_root", "ancestors", "check_limits",
        "check_timezone", "check_usd_limits", "decode", "encode", "format_usd", "new_event_id",
        "partition_key", "utc_now",
    },
    "tokenquota.projections": {
        "ALERT_NAMESPACE", "BUILTIN_DEFAULTS", "DATABASE_FAILURES", "EXPECTED_COLUMNS",
        "PROJECTION_TABLES",
        "PROJECTION_VIEWS", "AccountMetrics", "BatchResult", "Decision", "account_metrics",
        "FoldConfig", "Folded", "Headroom", "Limits", "LogRecord", "Migration", "MigrationError",
        "PartitionState", "PoisonEventError", "PoisonHandler", "ProjectionState",
        "ReservationRecord", "SessionBudget", "SessionMetrics", "UsdLimits", "UsdMetrics",
        "alert_level", "apply_batch",
        "apply_batch_isolating", "apply_migrations", "available_tokens", "connect",
        "decision_channel", "fold", "headroom", "is_permanent", "load_migrations", "new_session",
        "projection_lock_key", "quote_schema", "reservation", "schema_drift", "session_metrics",
        "sessions_metrics", "undo_open_transaction",
    },
    "tokenquota.producers": {
        "APIConfig", "Delivery", "Emitter", "ExternalAPIClient", "McpMeter", "MemoryStorage",
        "Reservation", "SpoolFullError", "SpoolWriteError", "TaskOrchestrator",
        "TokenAwareMemoryStorage", "TokenCounter", "TokenQuota", "Tokens", "close_default_quota",
        "current_account", "current_session",
        "get_quota", "integrate_with_external_apis", "integrate_with_memory",
        "kilocode_token_budget", "manage_api_tokens", "mcp_token_decorator",
        "release_task_budget", "reserve", "route_with_token_budget", "session_scope",
        "setup_mcp_token_hooks", "setup_token_hooks", "token_counter", "track_memory_operation",
        "use_quota", "waiting_tasks",
    },
    "tokenquota.processors": {
        "DeadLetter", "Projector", "create_app", "dead_letter_headers",
        "parse_dead_letter_headers", "run_worker",
    },
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_surface_is_what_we_export(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == PUBLIC[package]
    assert all(hasattr(module, name) for name in module.__all__)


@pytest.mark.parametrize(
    ("package", "folder"),
    [
        ("tokenquota.schemas", "schemas"),
        ("tokenquota.producers", "producers"),
        ("tokenquota.processors", "processors"),
        ("tokenquota.projections", "projections"),
    ],
)
def test_top_level_folders_are_the_subpackages(package: str, folder: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).parent == REPO / folder


def test_no_top_level_schemas_or_producers_package_is_installed(tmp_path: Path) -> None:
    probe = (
        "import importlib.util, json; "
        "print(json.dumps([n for n in ('schemas', 'producers', 'processors', 'projections') "
        "if importlib.util.find_spec(n) is not None]))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"
