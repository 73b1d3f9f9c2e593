"""A team budget refusing a call that the session's own budget would have allowed.

Needs the stack: run `make run`, then, with the addresses it prints,
KAFKA_BOOTSTRAP_SERVERS=... DATABASE_URL=... .venv/bin/python examples/team_budget.py
"""

from __future__ import annotations

import asyncio
import uuid

from tokenquota import TokenQuotaExceededError
from tokenquota.producers import close_default_quota, get_quota
from tokenquota.producers.budgets import set_account_budget, set_budget


async def main() -> None:
    quota = await get_quota()
    team = f"example-{uuid.uuid4().hex[:8]}/research"
    alice, bob = f"{team}/alice", f"{team}/bob"
    # The team may spend 1,000 tokens a day; each of its sessions, 800.
    await set_account_budget(
        quota, team, daily_limit=1_000, monthly_limit=20_000, hard_limit=100_000, actor="example"
    )
    sessions = {alice: f"alice-{uuid.uuid4().hex[:8]}", bob: f"bob-{uuid.uuid4().hex[:8]}"}
    for account, session in sessions.items():
        # The session's first event names its account: every later one does too.
        await (await quota.reserve(session, 1, account=account)).release()
        await set_budget(
            quota, session, daily_limit=800, monthly_limit=8_000, hard_limit=80_000, actor="example"
        )
    async with await quota.reserve(sessions[alice], 600, account=alice) as call:
        await call.settle(input_tokens=450, output_tokens=100, model="gpt-4o")
    print(f"alice's call used 550 of {team}'s 1000 tokens")
    try:
        await quota.reserve(sessions[bob], 600, account=bob)  # bob's own budget has 800 left
    except TokenQuotaExceededError as refused:
        print(f"bob refused by {refused.refused_by}: {refused}")
    await close_default_quota()


if __name__ == "__main__":
    asyncio.run(main())
