"""The fault campaign's oracle finds each kind of broken run it is meant to find."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from benchmarks.fault_oracle import LedgerRow, Recorded, RunOutput, check

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)


def _event(kind: str, session: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "event_type": kind, "session_id": session, **fields}


def budget(
    session: str, limit: int, account: str | None = None, usd: str | None = None
) -> dict[str, Any]:
    return _event("BudgetSet", session, hard_limit=limit, account=account, total_usd_limit=usd)


def node_budget(account: str, limit: int) -> dict[str, Any]:
    return _event("BudgetSet", "*", hard_limit=limit, account=account, target="account")


def reserved(
    session: str, tokens: int, account: str | None = None, usd: str | None = None
) -> dict[str, Any]:
    expires = (T0 + timedelta(minutes=5)).isoformat()
    return _event("TokenReserved", session, reservation_id=str(uuid.uuid4()), tokens=tokens,
                  expires_at=expires, account=account, reserved_usd=usd)  # fmt: skip


def cost(session: str, usd: str, rid: str | None = None) -> dict[str, Any]:
    return _event("ApiCost", session, cost_usd=usd, reservation_id=rid, account=None)


def used(
    session: str, tokens: int, rid: str | None = None, account: str | None = None
) -> dict[str, Any]:
    return _event("TokenUsed", session, input_tokens=tokens, output_tokens=0,
                  reservation_id=rid, account=account)  # fmt: skip


class Run:
    """A consistent run of `events` (all acked, in one partition), to be broken by a test."""

    def __init__(self, events: list[dict[str, Any]], decisions: dict[str, str]) -> None:
        self.events = events
        self.recorded = Recorded({e["event_id"]: e for e in events},
                                 {e["event_id"]: "acked" for e in events}, ["00ff"])  # fmt: skip
        sessions: dict[str, int] = {}
        nodes: dict[str, int] = {}
        dollars: dict[str, Decimal] = {}
        for e in events:
            if e["event_type"] == "ApiCost":
                dollars[e["session_id"]] = dollars.get(e["session_id"], 0) + Decimal(e["cost_usd"])
            if e["event_type"] == "TokenUsed":
                sessions[e["session_id"]] = sessions.get(e["session_id"], 0) + e["input_tokens"]
                for node in _ancestors(e.get("account")):
                    nodes[node] = nodes.get(node, 0) + e["input_tokens"]
        self.output = RunOutput(
            ledger=[LedgerRow(0, i, T0, e) for i, e in enumerate(events)],
            decisions={
                e["reservation_id"]: (decisions[e["reservation_id"]], None, None)
                for e in events if e["event_type"] == "TokenReserved"
            },
            sessions=sessions, nodes=nodes, session_days=dict(sessions), dead_letters=["00ff"],
            sessions_usd=dollars,
        )  # fmt: skip

    def broken(self) -> list[str]:
        return [i.name for i in check(self.recorded, self.output) if not i.held]


def _ancestors(account: str | None) -> list[str]:
    parts = account.split("/") if account else []
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def a_run() -> Run:
    a, b = reserved("s", 60), reserved("s", 60)
    events = [budget("s", 100), a, b, used("s", 50, a["reservation_id"]),
              reserved("s", 10)]  # fmt: skip
    decisions = {a["reservation_id"]: "settled", b["reservation_id"]: "rejected",
                 events[-1]["reservation_id"]: "accepted"}  # fmt: skip
    return Run(events, decisions)


def test_a_consistent_run_breaks_nothing() -> None:
    assert a_run().broken() == []


def test_a_lost_event_is_found() -> None:
    run = a_run()
    run.output.ledger.pop()  # type: ignore[attr-defined]
    del run.output.decisions[run.events[-1]["reservation_id"]]  # type: ignore[attr-defined]
    assert run.broken() == ["every acked or spooled event is in the ledger"]


def test_a_broken_dedup_that_counts_an_event_twice_is_found() -> None:
    run = a_run()
    run.output.sessions["s"] += 50  # type: ignore[index]
    assert run.broken() == [
        "each session's and node's tokens and dollars are its ledger usage, counted once"
    ]


def a_priced_run() -> Run:
    """A session of 0.01 USD: a 0.008 hold refuses 0.005 until its cost (0.003) comes; a
    settled reservation holds its dollars until its cost, a released one gives them back."""
    a, b, c = reserved("p", 1, usd="0.008"), reserved("p", 1, usd="0.005"), reserved("p", 1)
    d, e = reserved("p", 1, usd="0.004"), reserved("p", 1, usd="0.004")
    f = reserved("p", 1, usd="0.002")
    events = [
        budget("p", 100, usd="0.01"), a, b,
        cost("p", "0.003", a["reservation_id"]),  # 0.007 left
        c, d,  # 0.003 left, held by d
        used("p", 1, d["reservation_id"]), e,  # settled, not yet costed: still held
        used("p", 0, d["reservation_id"]),  # a release after the settlement changes nothing
        e, used("p", 0, d["reservation_id"]), f,
    ]  # fmt: skip
    events[9] = reserved("p", 1, usd="0.004")  # another one, also refused
    decisions = {
        a["reservation_id"]: "accepted", b["reservation_id"]: "rejected",
        c["reservation_id"]: "accepted", d["reservation_id"]: "settled",
        e["reservation_id"]: "rejected", events[9]["reservation_id"]: "rejected",
        f["reservation_id"]: "accepted",
    }  # fmt: skip
    run = Run(events, decisions)
    for rid, (status, _, _) in list(run.output.decisions.items()):
        if status == "rejected":
            run.output.decisions[rid] = (status, "total_usd_limit", None)  # type: ignore[index]
    return run


def test_dollars_held_and_spent_are_checked_against_a_usd_limit() -> None:
    assert a_priced_run().broken() == []
    over = a_priced_run()
    rid = over.events[2]["reservation_id"]  # 0.005 with 0.002 left
    over.output.decisions[rid] = ("accepted", None, None)  # type: ignore[index]
    assert over.broken() == ["no accepted reservation took a session or node past its limit"]
    needless = a_priced_run()
    rid = needless.events[-1]["reservation_id"]  # 0.002 with 0.003 left
    needless.output.decisions[rid] = ("rejected", "total_usd_limit", None)  # type: ignore[index]
    assert needless.broken() == ["every rejection was needed, and names the level that refused"]


def test_dollars_counted_twice_are_found() -> None:
    run = a_priced_run()
    run.output.sessions_usd["p"] += Decimal("0.003")  # type: ignore[index]
    assert run.broken() == [
        "each session's and node's tokens and dollars are its ledger usage, counted once"
    ]


def test_what_the_http_api_answered_is_held_to() -> None:
    run = a_run()
    lost, invalid = str(uuid.uuid4()), run.events[-1]["event_id"]
    run.recorded = dataclasses.replace(run.recorded, claimed={lost: "acked"}, invalid=[invalid])
    assert run.broken() == [
        "every acked or spooled event is in the ledger",
        "the ledger holds only events a producer sent, each once",
    ]


def test_an_acceptance_past_a_limit_and_a_needless_rejection_are_found() -> None:
    run = a_run()
    a, b = run.events[1]["reservation_id"], run.events[2]["reservation_id"]
    run.output.decisions[b] = ("accepted", None, None)  # type: ignore[index]
    assert run.broken() == ["no accepted reservation took a session or node past its limit"]
    run.output.decisions[b] = ("rejected", "hard_limit", None)  # type: ignore[index]
    run.output.decisions[a] = ("rejected", "hard_limit", None)  # type: ignore[index]
    assert run.broken() == ["every rejection was needed, and names the level that refused"]


def test_a_team_limit_is_checked_with_the_holds_of_every_session_under_it() -> None:
    team = "acme/research"
    first, second = reserved("alice", 60, f"{team}/alice"), reserved("bob", 60, f"{team}/bob")
    events = [node_budget(team, 100), budget("alice", 1_000, f"{team}/alice"),
              budget("bob", 1_000, f"{team}/bob"), first, second]  # fmt: skip
    right = Run(events, {first["reservation_id"]: "accepted",
                         second["reservation_id"]: "rejected"})  # fmt: skip
    right.output.decisions[second["reservation_id"]] = ("rejected", "hard_limit", team)  # type: ignore[index]
    assert right.broken() == []
    wrong = Run(events, {first["reservation_id"]: "accepted",
                         second["reservation_id"]: "accepted"})  # fmt: skip
    assert wrong.broken() == ["no accepted reservation took a session or node past its limit"]


def test_poison_missing_from_the_dead_letters_is_found() -> None:
    run = a_run()
    run.output.dead_letters.clear()  # type: ignore[attr-defined]
    assert run.broken() == ["the dead-letter topic holds the poison sent and nothing else"]
