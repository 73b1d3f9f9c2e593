"""Producers: the emitter with its durable spool, and the reservation API.

Integration hooks (MCP, orchestrator, memory, external APIs) arrive with their issue.
"""

from .emitter import Delivery, Emitter
from .reservations import Reservation, TokenQuota, reserve
from .spool import SpoolFullError

__all__ = ["Delivery", "Emitter", "Reservation", "SpoolFullError", "TokenQuota", "reserve"]
