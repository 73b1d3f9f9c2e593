"""Producers: the client core (the emitter with its durable spool, the reservation API,
token counting) and, under `integrations/`, the hooks (MCP, orchestrator, memory store,
external LLM APIs).

One import line per integration::

    from tokenquota.producers import mcp_token_decorator, setup_mcp_token_hooks
    from tokenquota.producers import kilocode_token_budget, route_with_token_budget
    from tokenquota.producers import integrate_with_memory, track_memory_operation
    from tokenquota.producers import integrate_with_external_apis, manage_api_tokens

The integrations are imported on first use (PEP 562): the client core alone (what the
CLI's reports and the worker need) does not pay for importing the MCP SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .defaults import (
    close_default_quota,
    current_account,
    current_session,
    get_quota,
    reserve,
    session_scope,
    use_quota,
)
from .emitter import Delivery, Emitter
from .reservations import Reservation, TokenQuota
from .spool import SpoolFullError, SpoolWriteError
from .token_counter import TokenCounter, Tokens, token_counter

if TYPE_CHECKING:
    from .integrations.external_apis import (
        APIConfig,
        ExternalAPIClient,
        integrate_with_external_apis,
        manage_api_tokens,
    )
    from .integrations.mcp_hooks import McpMeter, mcp_token_decorator, setup_mcp_token_hooks
    from .integrations.memory import (
        MemoryStorage,
        TokenAwareMemoryStorage,
        integrate_with_memory,
        track_memory_operation,
    )
    from .integrations.orchestrator import (
        TaskOrchestrator,
        kilocode_token_budget,
        release_task_budget,
        route_with_token_budget,
        setup_token_hooks,
        waiting_tasks,
    )

#: Each integration's public names, by the module (under integrations/) that defines them.
_INTEGRATIONS = {
    "external_apis": (
        "APIConfig", "ExternalAPIClient", "integrate_with_external_apis", "manage_api_tokens",
    ),
    "mcp_hooks": ("McpMeter", "mcp_token_decorator", "setup_mcp_token_hooks"),
    "memory": (
        "MemoryStorage", "TokenAwareMemoryStorage", "integrate_with_memory",
        "track_memory_operation",
    ),
    "orchestrator": (
        "TaskOrchestrator", "kilocode_token_budget", "release_task_budget",
        "route_with_token_budget", "setup_token_hooks", "waiting_tasks",
    ),
}  # fmt: skip
_LAZY = {name: module for module, names in _INTEGRATIONS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".integrations.{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "APIConfig",
    "Delivery",
    "Emitter",
    "ExternalAPIClient",
    "McpMeter",
    "MemoryStorage",
    "Reservation",
    "SpoolFullError",
    "SpoolWriteError",
    "TaskOrchestrator",
    "TokenAwareMemoryStorage",
    "TokenCounter",
    "TokenQuota",
    "Tokens",
    "close_default_quota",
    "current_account",
    "current_session",
    "get_quota",
    "integrate_with_external_apis",
    "integrate_with_memory",
    "kilocode_token_budget",
    "manage_api_tokens",
    "mcp_token_decorator",
    "release_task_budget",
    "reserve",
    "route_with_token_budget",
    "session_scope",
    "setup_mcp_token_hooks",
    "setup_token_hooks",
    "token_counter",
    "track_memory_operation",
    "use_quota",
    "waiting_tasks",
]
