"""Every example does what it says; those that need the stack run against `tokenquota dev`.

Each example has a check of its own below: what it must print and, for those that talk
to the stack, what must have landed in the projections (usage, reservations, costs).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tokenquota.config import env_var_names
from tokenquota.embedded import free_port
from tokenquota.producers.encodings import EncodingName, get_encoding

EXAMPLES = sorted(
    p for p in (Path(__file__).parents[2] / "examples").glob("*.py") if not p.name.startswith("_")
)
NEEDS_STACK = "Needs the stack"


def tokens(text: str, encoding: EncodingName = "o200k_base") -> int:
    """tiktoken's count of `text`, straight from the encoding."""
    return len(get_encoding(encoding).encode_ordinary(text))


def compact(value: Any) -> str:
    """A tool payload as the hooks count it: compact JSON."""
    return json.dumps(value, separators=(",", ":"))


def _clean_environment(**overrides: str) -> dict[str, str]:
    ours = {v for variables in env_var_names().values() for v in variables}
    env = {k: v for k, v in os.environ.items() if k not in ours and k != "TOKENQUOTA_CONFIG"}
    return env | overrides


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`tokenquota dev` (what `make run` runs), and the environment its clients need."""
    data = tmp_path_factory.mktemp("dev")
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenquota", "dev"],
        env=_clean_environment(TOKENQUOTA_DATA_DIR=str(data / "stack"), API_PORT=str(free_port())),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    found: dict[str, str] = {}
    lines: list[str] = []
    try:
        for line in process.stdout:  # ends when the process exits
            lines.append(line)
            name, _, value = line.strip().partition("=")
            if name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
                found[name] = value
            if "Press Ctrl-C" in line:
                break
        assert len(found) == 2, "tokenquota dev did not start:\n" + "".join(lines)
        yield _clean_environment(**found, TOKENQUOTA_DATA_DIR=str(data / "client"))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


# -- what the projections hold --------------------------------------------------------


def _rows(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url)  # `tokenquota dev` uses schema public
        try:
            return [dict(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _usage(database_url: str, session: str) -> list[tuple[str, int, int, str]]:
    """The session's TokenUsed events in the ledger: (operation, input, output, counted_by)."""
    rows = _rows(
        database_url,
        "SELECT payload FROM usage_events WHERE session_id = $1 AND event_type = 'TokenUsed'"
        " ORDER BY occurred_at",
        session,
    )
    used = [json.loads(row["payload"]) for row in rows]
    return [(u["operation"], u["input_tokens"], u["output_tokens"], u["counted_by"]) for u in used]


def _settled_usage(
    database_url: str, session: str, events: int, timeout: float = 60
) -> list[tuple[str, int, int, str]]:
    """The session's usage once `events` TokenUsed are applied and it holds no tokens."""
    deadline = time.monotonic() + timeout
    while True:
        usage = _usage(database_url, session)
        if len(usage) >= events and _held(database_url, session) == 0:
            return usage
        if time.monotonic() > deadline:
            raise AssertionError(f"{session}: {len(usage)} of {events} usage events applied")
        time.sleep(0.1)  # polling the projection: there is no event to wait on


def _budget(database_url: str, session: str) -> dict[str, Any] | None:
    rows = _rows(database_url, "SELECT * FROM session_token_budgets WHERE session_id = $1", session)
    return rows[0] if rows else None


def _held(database_url: str, session: str) -> int:
    rows = _rows(
        database_url,
        "SELECT count(*) AS n FROM reservations WHERE session_id = $1 AND status = 'accepted'",
        session,
    )
    return int(rows[0]["n"])


def _reservations(database_url: str, session: str) -> list[tuple[str, int | None]]:
    rows = _rows(
        database_url,
        "SELECT status, settled_tokens FROM reservations WHERE session_id = $1"
        " ORDER BY requested_at",
        session,
    )
    return [(row["status"], row["settled_tokens"]) for row in rows]


def _session_of(stdout: str, suffix: str) -> tuple[str, int]:
    """The session and the usage the example's last line reports: '<session> used N <suffix>'."""
    match = re.search(rf"^(\S+) used (\d+) {re.escape(suffix)}$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1), int(match.group(2))


# -- the checks, one per example ------------------------------------------------------


def check_build_and_encode_events(stdout: str) -> None:
    lines = stdout.splitlines()
    assert [line.split()[0] for line in lines[:4]] == [
        "BudgetSet",
        "TokenReserved",
        "TokenUsed",
        "ApiCost",
    ]
    assert all('bytes  {"event_id":"' in line for line in lines[:4]), lines[:4]
    assert "rejected as expected:" in lines
    for error in (
        "  input_tokens: Input should be greater than or equal to 0",
        "  session_id: Field required",
        "  output_tokens: Field required",
    ):
        assert error in lines, stdout


def check_count_tokens(stdout: str) -> None:
    text = "Budgets hold when every token is counted once."
    chat = (
        3
        + 2 * 3
        + sum(
            tokens(t) for t in ("system", "You are terse.", "user", "How many tokens is this chat?")
        )
    )
    assert stdout.splitlines() == [
        f"            gpt-4o: {tokens(text)} tokens (tiktoken)",
        f"             gpt-4: {tokens(text, 'cl100k_base')} tokens (tiktoken)",
        f" claude-sonnet-4-5: {tokens(text)} tokens (estimate)",
        f"batch: {[tokens(t) for t in ('one', 'two words', 'three more words')]}",
        f"chat prompt: {chat} tokens",
    ]


def check_plain_mcp_server(stdout: str) -> None:
    # Run bare it only explains itself; mcp_proxy.py serves it behind the proxy.
    assert stdout.startswith("usage: python examples/plain_mcp_server.py --stdio"), stdout


def check_mcp_tools(stdout: str, database_url: str) -> None:
    text = "Budgets hold. Everything else follows."
    assert "summarize -> Budgets hold.\n" in stdout
    assert "word_count -> 5\n" in stdout
    refused = re.search(
        r"^over budget -> isError: True \| token budget: session '(mcp-broke-\w+)': requested "
        r"40\d\d tokens, 5 available under its hard limit of 5 tokens$",
        stdout,
        re.MULTILINE,
    )
    assert refused, stdout
    alice, reported = _session_of(stdout, "tokens, settled by the worker")
    usage = _settled_usage(database_url, alice, 2)
    arguments = tokens(compact({"text": text}))
    assert usage == [
        ("mcp.tool:summarize", arguments, tokens("Budgets hold."), "tiktoken"),
        ("mcp.tool:word_count", arguments, tokens("5"), "tiktoken"),
    ]
    total = sum(i + o for _, i, o, _ in usage)
    assert reported == total
    assert _reservations(database_url, alice) == [
        ("settled", arguments + tokens("Budgets hold.")),
        ("settled", arguments + tokens("5")),
    ]
    budget = _budget(database_url, alice)
    assert budget is not None and budget["tokens_used_total"] == total
    # The refusal came from the projection: nothing was reserved or used for that session.
    broke = refused.group(1)
    assert _reservations(database_url, broke) == [] and _usage(database_url, broke) == []


def check_mcp_proxy(stdout: str, database_url: str) -> None:
    assert "tools served through the proxy: ['reverse', 'fail']\n" in stdout
    assert "reverse -> deretem\n" in stdout
    session, reported = _session_of(stdout, "tokens")
    usage = _settled_usage(database_url, session, 1)
    arguments, result = tokens(compact({"text": "metered"})), tokens("deretem")
    assert usage == [("mcp.tool:reverse", arguments, result, "tiktoken")]
    assert reported == arguments + result
    assert _reservations(database_url, session) == [("settled", arguments + result)]


def check_orchestrator(stdout: str, database_url: str) -> None:
    lines = stdout.splitlines()
    assert lines[0] == str(
        {"answer": "About 'budgets': yes.", "usage": {"input_tokens": 900, "output_tokens": 120}}
    )
    assert lines[1] == "Report on spend."
    session, reported = _session_of(stdout, "tokens")
    assert re.fullmatch(
        rf"refused: session '{session}': requested 50000 tokens, \d+ available under its "
        r"hard limit of 5000 tokens",
        lines[2],
    ), lines[2]
    usage = _settled_usage(database_url, session, 2)
    assert usage[0] == ("task:answer", 900, 120, "provider")  # the usage the task reported
    operation, report_in, report_out, counted_by = usage[1]
    assert (operation, report_out, counted_by) == (
        "task:report",
        tokens("Report on spend."),
        "tiktoken",
    )
    assert reported == 1020 + report_in + report_out
    tasks = _rows(
        database_url,
        "SELECT task_id, allocated_tokens, tokens_used FROM task_token_allocations"
        " WHERE session_id = $1 ORDER BY task_id",
        session,
    )
    assert [(t["task_id"], t["tokens_used"]) for t in tasks] == [
        ("answer", 1020),
        ("report", report_in + report_out),
    ]
    assert tasks[1]["allocated_tokens"] == 2000  # what kilocode_token_budget held
    # The refused run reserved nothing: two reservations, both settled.
    assert [status for status, _ in _reservations(database_url, session)] == ["settled"] * 2


def check_memory_store(stdout: str, database_url: str) -> None:
    note = "The budget for March is 300k tokens."
    assert f"retrieve -> {[note]}\n" in stdout
    session, _ = _session_of(stdout, "tokens over store, retrieve, consolidate")
    usage = _settled_usage(database_url, session, 3)
    expected = [
        ("memory.store", tokens(note), 0, "tiktoken"),
        ("memory.retrieve", tokens("budget"), tokens(note), "tiktoken"),
        ("memory.consolidate", tokens("March budget: 300k."), 0, "tiktoken"),
    ]
    assert usage == expected
    budget = _budget(database_url, session)
    assert budget is not None
    assert budget["tokens_used_total"] == sum(i + o for _, i, o, _ in expected)


def check_external_apis(stdout: str, database_url: str) -> None:
    assert "openai -> Budgets hold.\n" in stdout
    assert "anthropic (streamed) -> Budgets hold.\n" in stdout
    session, reported = _session_of(stdout, "tokens, as the providers reported them")
    usage = _settled_usage(database_url, session, 2)
    # The stub reports 120 input tokens (20 of them cached) and 30 output tokens; Anthropic
    # counts cache reads beside its input tokens.
    assert usage == [
        ("openai.chat", 120, 30, "provider"),
        ("anthropic.messages", 140, 30, "provider"),
    ]
    assert reported == 320
    costs = _rows(
        database_url,
        "SELECT api_name, requests, tokens_used, cost_usd FROM external_api_tokens"
        " WHERE session_id = $1 ORDER BY api_name",
        session,
    )
    # genai-prices per million tokens: gpt-4o 2.50 input, 1.25 cached, 10 output;
    # claude-sonnet-4-5 3 input, 0.30 cache read, 15 output.
    gpt_4o = (100 * Decimal("2.50") + 20 * Decimal("1.25") + 30 * 10) / 1_000_000
    sonnet = (120 * 3 + 20 * Decimal("0.30") + 30 * 15) / 1_000_000
    assert [(c["api_name"], c["requests"], c["tokens_used"], c["cost_usd"]) for c in costs] == [
        ("anthropic", 1, 170, sonnet),
        ("openai", 1, 150, gpt_4o),
    ]


def check_team_budget(stdout: str, database_url: str) -> None:
    first, second = stdout.splitlines()[:2]
    team = re.fullmatch(r"alice's call used 550 of (example-\w+/research)'s 1000 tokens", first)
    assert team is not None, first
    assert second == (
        f"bob refused by {team[1]}: account '{team[1]}': requested 600 tokens, 450 available "
        "under its daily limit of 1000 tokens"
    )
    rows = _rows(
        database_url,
        "SELECT account, tokens_used_total, (SELECT sum(reservations_refused)::int"
        " FROM account_usage_daily u WHERE u.account = b.account) AS refused"
        " FROM account_budgets b WHERE account = $1",
        team[1],
    )
    assert [tuple(r.values()) for r in rows] == [(team[1], 550, 1)]


OFFLINE_CHECKS: dict[str, Callable[[str], None]] = {
    "build_and_encode_events.py": check_build_and_encode_events,
    "count_tokens.py": check_count_tokens,
    "plain_mcp_server.py": check_plain_mcp_server,
}
STACK_CHECKS: dict[str, Callable[[str, str], None]] = {
    "mcp_tools.py": check_mcp_tools,
    "mcp_proxy.py": check_mcp_proxy,
    "orchestrator.py": check_orchestrator,
    "memory_store.py": check_memory_store,
    "external_apis.py": check_external_apis,
    "team_budget.py": check_team_budget,
}


def test_every_example_has_a_check() -> None:
    assert EXAMPLES
    offline = {p.name for p in EXAMPLES if NEEDS_STACK not in p.read_text()}
    stack = {p.name for p in EXAMPLES if NEEDS_STACK in p.read_text()}
    assert (offline, stack) == (set(OFFLINE_CHECKS), set(STACK_CHECKS))


@pytest.mark.parametrize("example", sorted(OFFLINE_CHECKS))
def test_example_runs(example: str) -> None:
    path = Path(__file__).parents[2] / "examples" / example
    run = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    OFFLINE_CHECKS[example](run.stdout)


@pytest.mark.integration
@pytest.mark.parametrize("example", sorted(STACK_CHECKS))
def test_example_runs_against_the_dev_stack(example: str, dev_stack: dict[str, str]) -> None:
    path = Path(__file__).parents[2] / "examples" / example
    run = subprocess.run(
        [sys.executable, str(path)],
        env=dev_stack,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    STACK_CHECKS[example](run.stdout, dev_stack["DATABASE_URL"])
