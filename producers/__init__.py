"""Producers: the emitter with its durable spool, the reservation API, token counting
and the integration hooks (MCP, orchestrator, memory store, external LLM APIs).
"""

from .defaults import close_default_quota, current_session, get_quota, session_scope, use_quota
from .emitter import Delivery, Emitter
from .mcp_hooks import McpMeter, mcp_token_decorator, setup_mcp_token_hooks
from .reservations import Reservation, TokenQuota, reserve
from .spool import SpoolFullError
from .token_counter import TokenCounter, Tokens, token_counter

__all__ = [
    "Delivery",
    "Emitter",
    "McpMeter",
    "Reservation",
    "SpoolFullError",
    "TokenCounter",
    "TokenQuota",
    "Tokens",
    "close_default_quota",
    "current_session",
    "get_quota",
    "mcp_token_decorator",
    "reserve",
    "session_scope",
    "setup_mcp_token_hooks",
    "token_counter",
    "use_quota",
]
