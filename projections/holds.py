"""What outstanding reservations hold while a batch is folded: the tokens of accepted ones
and the dollars of open USD holds, per session and at every budget tree node above it,
and each tree's holds by expiry. Derived from the reservations loaded for the fold (the
store loads every open hold of the batch's sessions and trees), never stored.

A token hold lasts while its reservation is accepted (until its settlement, release or
expiry); a USD hold from acceptance until the ApiCost naming it, a release or expiry, so
dollars stay held between a call's usage and its bill. The fold changes a reservation's
status; this module keeps the sums that follow from it.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from tokenquota.schemas import account_root, ancestors

from .state import ReservationRecord

__all__ = ["Holds"]

_ZERO = Decimal(0)


class Holds:
    """The holds of the reservations in `reservations` (the fold's own dict, which gains
    the batch's new reservations as they are decided)."""

    def __init__(self, reservations: Mapping[uuid.UUID, ReservationRecord]) -> None:
        self._reservations = reservations
        #: Accepted reservations, and those with an open USD hold, per session.
        self._tokens: dict[str, dict[uuid.UUID, ReservationRecord]] = {}
        self._dollars: dict[str, dict[uuid.UUID, ReservationRecord]] = {}
        #: What the sessions under each tree node hold.
        self._node_tokens: dict[str, int] = {}
        self._node_dollars: dict[str, Decimal] = {}
        #: Each tree's holds by expiry (entries may have ended since they were queued).
        self._expiring: dict[str, list[tuple[datetime, uuid.UUID]]] = {}
        for record in reservations.values():
            self.add(record)

    # -- reading ----------------------------------------------------------------------

    def session_tokens(self, session_id: str) -> int:
        """Tokens the session's accepted reservations hold."""
        return sum(r.tokens for r in self._tokens.get(session_id, {}).values())

    def session_usd(self, session_id: str) -> Decimal:
        """Dollars the session's open USD holds hold."""
        held = self._dollars.get(session_id, {}).values()
        return sum((r.usd_held or _ZERO for r in held), _ZERO)

    def node_tokens(self, account: str) -> int:
        """Tokens held by the accepted reservations of every session under `account`."""
        return self._node_tokens.get(account, 0)

    def node_usd(self, account: str) -> Decimal:
        """Dollars held by the open USD holds of every session under `account`."""
        return self._node_dollars.get(account, _ZERO)

    # -- changing ---------------------------------------------------------------------

    def add(self, record: ReservationRecord) -> None:
        """A reservation that holds (accepted, or with an open USD hold): count it at its
        session and at every node of its account."""
        accepted = record.status == "accepted"
        dollars = record.usd_held
        if accepted:
            self._tokens.setdefault(record.session_id, {})[record.reservation_id] = record
        if dollars is not None:
            self._dollars.setdefault(record.session_id, {})[record.reservation_id] = record
        if record.account is None or not (accepted or dollars is not None):
            return
        tokens = record.tokens if accepted else 0
        for path in ancestors(record.account):
            self._node_tokens[path] = self._node_tokens.get(path, 0) + tokens
            if dollars is not None:
                self._node_dollars[path] = self._node_dollars.get(path, _ZERO) + dollars
        heapq.heappush(
            self._expiring.setdefault(account_root(record.account), []),
            (record.expires_at, record.reservation_id),
        )

    def end_tokens(self, record: ReservationRecord) -> None:
        """An accepted reservation leaves `accepted` (settled, released, expired): its
        tokens are held no more. Call before changing its status."""
        if self._tokens.get(record.session_id, {}).pop(record.reservation_id, None) is None:
            return  # not held (an expired one settled late)
        if record.account is not None:
            for path in ancestors(record.account):
                self._node_tokens[path] -= record.tokens

    def end_usd(self, record: ReservationRecord) -> bool:
        """End a reservation's USD hold (its ApiCost came, or it was released or expired);
        True when one was open (the record changed)."""
        dollars = record.usd_held
        if dollars is None:
            return False
        self._dollars.get(record.session_id, {}).pop(record.reservation_id, None)
        if record.account is not None:
            for path in ancestors(record.account):
                self._node_dollars[path] -= dollars
        record.usd_held = None
        return True

    def expire_session(
        self, session_id: str, clock: datetime
    ) -> tuple[list[ReservationRecord], list[ReservationRecord]]:
        """End the holds of the session's reservations past their time at `clock`: (those
        whose USD hold ended, the accepted ones whose tokens did; their status is the
        caller's to change)."""
        held_usd, held_tokens = self._dollars.get(session_id), self._tokens.get(session_id)
        dollars = [r for r in held_usd.values() if clock > r.expires_at] if held_usd else []
        for record in dollars:
            self.end_usd(record)
        tokens = [r for r in held_tokens.values() if clock > r.expires_at] if held_tokens else []
        for record in tokens:
            self.end_tokens(record)
        return dollars, tokens

    def expire_tree(
        self, root: str, clock: datetime
    ) -> tuple[list[ReservationRecord], list[ReservationRecord]]:
        """`expire_session` for every session of the tree `root`: their holds count at
        nodes an event of any of them may need."""
        dollars: list[ReservationRecord] = []
        tokens: list[ReservationRecord] = []
        queue = self._expiring.get(root)
        while queue and clock > queue[0][0]:
            _, rid = heapq.heappop(queue)
            record = self._reservations[rid]
            if self.end_usd(record):
                dollars.append(record)
            if record.status == "accepted":  # not settled or released since it was queued
                self.end_tokens(record)
                tokens.append(record)
        return dollars, tokens
