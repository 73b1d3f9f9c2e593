"""The `tokenquota` command."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.text import Text

from .cli_api import api_app
from .cli_checkpoints import checkpoints_app
from .cli_dlq import dlq_app
from .cli_ops import register as register_ops
from .cli_run import fail, run_app
from .cli_stack import remove_stack_file, write_stack_file
from .config import ConfigError, Settings, load_settings
from .devstack import run_dev
from .embedded import ApiProcess, DemoProcess, WorkerProcess, api_url
from .errors import DevStackError, IntegrationError
from .logs import configure_logging
from .projections import MigrationError
from .provision import ProvisionReport, migrate_database, provision
from .schemas.schema_files import SCHEMA_DIR, stale_schema_files, write_schema_files

__all__ = ["app", "main"]

app = typer.Typer(
    name="tokenquota",
    help="Exact token budgets for LLM agents and MCP tools, event-sourced through Kafka."
    "\n\nExample: tokenquota usage alice --format json",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: never break a printed URL or message across lines, even when piped.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _settings(ctx: typer.Context) -> Settings:
    config_file: Path | None = ctx.obj
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        fail(str(exc), code=2)
    configure_logging(settings.log_level, settings.log_file)
    return settings


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="TOKENQUOTA_CONFIG",
            help="JSON configuration file (environment variables override it).",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    ctx.obj = config


def _print_report(settings: Settings, report: ProvisionReport) -> None:
    for topic in report.topics:
        state = "created" if topic.created else "exists"
        found = ", ".join(
            f"{name}={topic.configs.get(name, 'the broker default')}"
            for name in topic.wanted_configs
        )
        out.print(f"  topic    {topic.name}: {state}, {topic.partitions} partitions, {found}")
        if topic.mismatch:
            out.print(
                f"  [yellow]warning:[/] {topic.name} has {topic.partitions} partitions, "
                f"configured {topic.wanted_partitions}; left unchanged (changing it would "
                "move sessions to other partitions)"
            )
        for name, value in topic.differing_configs.items():
            out.print(
                f"  [yellow]warning:[/] {topic.name} has {name}={value or 'the broker default'}"
                f", tokenquota creates it with {topic.wanted_configs[name]}; left unchanged. "
                + _CONFIG_ADVICE.get(name, "")
                + f" To change it: kafka-configs.sh --alter --entity-type topics --entity-name "
                f"{topic.name} --add-config {name}={topic.wanted_configs[name]}",
                highlight=False,
            )
    applied = ", ".join(report.migrations_applied) or "none pending"
    out.print(f"  database schema {settings.database.schema_name!r}: migrations applied: {applied}")
    out.print(
        f"  defaults (token_limits, worker.max_clock_skew) in the log: {report.defaults.reason}"
    )


_CONFIG_ADVICE = {
    "retention.ms": "Events the broker deletes can no longer be replayed from the topic "
    "(`tokenquota replay --from-ledger` still can).",
    "retention.bytes": "Events the broker deletes can no longer be replayed from the topic "
    "(`tokenquota replay --from-ledger` still can).",
    "message.timestamp.type": "Without broker timestamps the log clock follows the producing "
    "clients' send times.",
}


@app.command()
def dev(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where embedded PostgreSQL keeps its data \\[env: TOKENQUOTA_DATA_DIR]."),
    ] = None,
    api: Annotated[
        bool, typer.Option("--api/--no-api", help="Also serve the HTTP API (api.host:api.port).")
    ] = True,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo/--no-demo",
            help="Also run `tokenquota demo` (a workload of four demo sessions) once the "
            "worker and the API are up; its log is <data dir>/logs/demo.log.",
        ),
    ] = False,
) -> None:
    """Run the embedded dev stack (broker + PostgreSQL), the worker and the HTTP API.

    It runs until Ctrl-C or SIGTERM. Servers named by KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are
    used instead of embedded ones. The embedded broker keeps events in memory only. The
    API and its dashboard page listen on http://127.0.0.1:8787/ (API_PORT chooses another
    port). `make run` runs `tokenquota dev --demo`.

    Example: tokenquota dev --data-dir ./dev-data --no-api
    """
    settings = _settings(ctx)
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    page = f"{api_url(settings.api.host, settings.api.port)}/"

    def starting() -> None:
        if api:
            out.print(f"tokenquota dashboard: {page} (starting...)", highlight=False)

    def ready(
        effective: Settings,
        report: ProvisionReport,
        worker: WorkerProcess,
        api_process: ApiProcess | None,
        demo_process: DemoProcess | None,
    ) -> None:
        out.print("[bold green]tokenquota dev stack is up[/]")
        out.print(f"  KAFKA_BOOTSTRAP_SERVERS={effective.kafka.bootstrap_servers}")
        out.print(f"  KAFKA_PARTITIONS={effective.kafka.partitions}")
        out.print(f"  DATABASE_URL={effective.database.dsn()}")
        _print_report(effective, report)
        out.print(f"  worker   pid {worker.pid}, log {worker.log_path}")
        if api_process is not None:
            out.print(
                f"  api      {api_process.url}  (docs /docs), pid {api_process.pid}, "
                f"log {api_process.log_path}"
            )
        if demo_process is not None:
            out.print(
                f"  demo     pid {demo_process.pid}, log {demo_process.log_path}",
                highlight=False,
            )
        stack_file = write_stack_file(effective)
        out.print(f"  other tokenquota commands run here use these servers ({stack_file})")
        if api_process is not None:
            out.print(f"Dashboard: {api_process.url}/", highlight=False)
        out.print("Press Ctrl-C to stop.", highlight=False)

    def notice(message: str) -> None:
        err.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)

    worker_env = {"TOKENQUOTA_CONFIG": str(ctx.obj)} if ctx.obj else {}
    try:
        crash = asyncio.run(
            run_dev(
                settings,
                ready,
                worker_env=worker_env,
                with_api=api,
                with_demo=demo,
                on_starting=starting,
                on_notice=notice,
            )
        )
    except (DevStackError, IntegrationError, MigrationError) as exc:
        fail(str(exc))
    finally:
        remove_stack_file(settings)
    if crash is not None:
        fail(crash)
    out.print("tokenquota dev stack stopped")


@app.command("demo")
def demo_command(
    ctx: typer.Context,
    duration: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).",
            min=0,
        ),
    ] = None,
) -> None:
    """Run a demo workload through the real hooks until stopped, for the dashboard to show.

    Four sessions (demo-research-agent, demo-support-bot, demo-batch-summarizer,
    demo-tiny-budget) get budgets, then call MCP tools and the OpenAI and Anthropic SDKs
    (against a stub LLM server it starts on 127.0.0.1) at a few events per second: usage,
    costs by model, refused reservations and threshold alerts. It uses the servers
    configured, else those of the `tokenquota dev` running here.

    Example: tokenquota demo --duration 60
    """
    from .cli_run import run, settings_of
    from .demo import run_demo

    settings = settings_of(ctx)
    if settings.log_level == "INFO":  # the default: no line per HTTP request or refused tool
        for chatty in ("httpx", "httpx2", "mcp"):  # httpx2: the anthropic SDK's
            logging.getLogger(chatty).setLevel(logging.WARNING)
    if settings.kafka.bootstrap_servers is None:
        fail(
            "no Kafka configured: set KAFKA_BOOTSTRAP_SERVERS, or start `tokenquota dev` "
            "(make run) in this directory",
            code=2,
        )

    def say(line: str) -> None:
        out.print(line, highlight=False, markup=False)

    run(settings, run_demo(settings, duration=duration, say=say))


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the topics and apply the migrations on the configured Kafka and PostgreSQL.

    Safe to repeat: existing topics and applied migrations are left as they are.

    Example: KAFKA_BOOTSTRAP_SERVERS=kafka:9092 DATABASE_URL=postgresql://db/tq tokenquota init
    """
    settings = _settings(ctx)
    try:
        report = asyncio.run(provision(settings))
    except (IntegrationError, MigrationError, ConfigError) as exc:
        fail(str(exc))
    out.print("[bold green]tokenquota init done[/]")
    _print_report(settings, report)


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Apply pending database migrations (a second run changes nothing).

    Example: DATABASE_URL=postgresql://tokenquota:secret@db/token_management tokenquota migrate
    """
    settings = _settings(ctx)
    try:
        applied = asyncio.run(migrate_database(settings.database))
    except (IntegrationError, MigrationError, ConfigError) as exc:
        fail(str(exc))
    out.print(f"migrations applied: {', '.join(applied) or 'none pending'}")


@app.command()
def schemas(
    check: Annotated[
        bool, typer.Option("--check", help="Fail when the files are stale; write nothing.")
    ] = False,
) -> None:
    """Write the JSON Schema file of every event into schemas/json/.

    Example: tokenquota schemas --check
    """
    if check:
        stale = stale_schema_files()
        if stale:
            fail(
                f"stale JSON Schema files in {SCHEMA_DIR}: {', '.join(stale)}; "
                "run `tokenquota schemas`"
            )
        out.print(f"JSON Schema files in {SCHEMA_DIR} are up to date")
        return
    changed = write_schema_files()
    out.print(f"{len(changed)} file(s) written in {SCHEMA_DIR}")


@app.command()
def worker(ctx: typer.Context) -> None:
    """Run the projection worker: consume the usage topic, apply it to PostgreSQL.

    Creates missing topics and applies pending migrations first. Run several with the
    same worker.group_id to share the partitions.

    Example: WORKER_METRICS_PORT=9464 tokenquota worker
    """
    settings = _settings(ctx)
    try:
        report = asyncio.run(provision(settings, publish_defaults=False))
    except (IntegrationError, MigrationError, ConfigError) as exc:
        fail(str(exc))
    if report.defaults.warning is not None:
        err.print(Text.assemble(("warning:", "yellow"), " ", report.defaults.warning))
    from .processors import run_worker

    run_worker(settings)


@app.command()
def replay(
    ctx: typer.Context,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Rebuild from what the topic holds even when it is not all the projections "
            "were built from (their balances then lose what the topic lost).",
        ),
    ] = False,
    from_ledger: Annotated[
        bool,
        typer.Option(
            "--from-ledger",
            help="Rebuild from the ledger table usage_events instead of the topic (after "
            "retention deleted events, or a broker lost them).",
        ),
    ] = False,
) -> None:
    """Rebuild every projection from the start of the usage topic and swap it in atomically.

    Replay refuses, changing nothing, when the topic no longer holds all of the log the
    projections were built from. The replaced tables are kept in the schema
    <schema>__previous until the next replay. A running worker may keep running: its
    batches wait for the swap.

    Example: tokenquota replay --from-ledger
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from .projections.ledger_replay import replay_from_ledger
    from .projections.replay import ReplayError, replay_into

    settings = _settings(ctx)
    if from_ledger and force:
        fail("--force and --from-ledger exclude each other: the ledger holds the whole log")
    if settings.kafka.bootstrap_servers is None and not from_ledger:
        fail("kafka.bootstrap_servers is not set (KAFKA_BOOTSTRAP_SERVERS)", code=2)
    columns = (
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TextColumn("{task.fields[rate]} events/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("replay", total=None, rate="-")

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "-")

        try:
            database = settings.database
            if from_ledger:
                running = replay_from_ledger(
                    database.dsn(), database.schema_name, on_progress=on_progress
                )
            else:
                running = replay_into(
                    settings.kafka.bootstrap_servers or "",
                    settings.kafka.usage_topic,
                    database.dsn(),
                    database.schema_name,
                    force=force,
                    on_progress=on_progress,
                )
            report = asyncio.run(running)
        except (ReplayError, ConfigError, MigrationError) as exc:
            fail(str(exc))
        except (OSError, asyncpg.PostgresError, KafkaError) as exc:
            fail(f"replay failed, live projections unchanged: {exc}")
    source = "ledger rows" if from_ledger else "messages"
    out.print(
        f"[bold green]replayed[/] {report.events} {source}: {report.applied} events applied, "
        f"{report.skipped} skipped (invalid or refused, as the worker did); projections "
        "swapped in"
    )


@app.command(
    "mcp-proxy",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def mcp_proxy(
    ctx: typer.Context,
    http: Annotated[
        bool, typer.Option("--http", help="Serve streamable HTTP instead of stdio.")
    ] = False,
    host: Annotated[
        str | None,
        typer.Option(
            help="HTTP host (with --http); default mcp.host, 127.0.0.1 \\[env: MCP_HOST]."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="HTTP port (with --http); default mcp.port, 8765 \\[env: MCP_PORT].",
            min=1,
            max=65535,
        ),
    ] = None,
    session: Annotated[
        str | None,
        typer.Option(
            help=(
                "Bill every call to this session, whatever session the client names, "
                "unless mcp.session_sources lists a client source before config "
                "\\[env: MCP_SESSION_ID]."
            )
        ),
    ] = None,
    account: Annotated[
        str | None,
        typer.Option(
            help=(
                "The budget tree node (tenant/team/user) of the sessions billed: every node "
                "above them with limits must have room too \\[env: MCP_ACCOUNT]."
            )
        ),
    ] = None,
    upstream_url: Annotated[
        str | None,
        typer.Option(
            "--upstream-url",
            help="A remote MCP server (streamable HTTP) instead of a command.",
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            help="'Name: value' sent to --upstream-url with every request (repeatable).",
        ),
    ] = None,
) -> None:
    """Serve any MCP server unchanged, with budgets on every tool call and sampling.

    Usage: tokenquota mcp-proxy [--session ID] [--account PATH] [--http] -- <command> \\[args...]
           tokenquota mcp-proxy [--session ID] --upstream-url URL [--header 'K: V'...]

    Without --session (or mcp.session_id) the client names the session: the _meta key
    tokenquota/session, the header x-tokenquota-session, or its clientInfo name, each
    limited to mcp.client_session_prefix when that is set. mcp.timeout (MCP_TIMEOUT) bounds
    each wait for the upstream server's answer.

    Example: tokenquota mcp-proxy --session alice -- npx -y @modelcontextprotocol/server-memory
    """
    from .producers.integrations.mcp_proxy import run_proxy_sync

    command = [arg for arg in ctx.args if arg != "--"]
    if not command and upstream_url is None:
        fail(
            "no upstream server: tokenquota mcp-proxy -- <command> [args...], "
            "or --upstream-url URL",
            code=2,
        )
    if command and upstream_url is not None:
        fail("give either an upstream command (after --) or --upstream-url, not both", code=2)
    if upstream_url is not None and not upstream_url.startswith(("http://", "https://")):
        fail(f"--upstream-url {upstream_url!r}: use an http:// or https:// URL", code=2)
    headers: dict[str, str] = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            fail(f"--header {item!r}: use 'Name: value'", code=2)
        headers[name.strip()] = value.strip()
    if headers and upstream_url is None:
        fail("--header goes with --upstream-url", code=2)
    settings = _with_mcp(_settings(ctx), session, account)
    try:
        run_proxy_sync(
            command,
            settings,
            transport="http" if http else "stdio",
            host=settings.mcp.host if host is None else host,
            port=settings.mcp.port if port is None else port,
            upstream_url=upstream_url,
            headers=headers,
        )
    except (IntegrationError, OSError) as exc:
        fail(f"mcp-proxy: {exc}")


@app.command("mcp-server")
def mcp_server(
    ctx: typer.Context,
    http: Annotated[
        bool, typer.Option("--http", help="Serve streamable HTTP instead of stdio.")
    ] = False,
    host: Annotated[str, typer.Option(help="HTTP host (with --http).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (with --http).")] = 8766,
    session: Annotated[
        str | None,
        typer.Option(
            help=(
                "Act for this session only: tools may leave session_id out, and a call "
                "naming another session is refused unless mcp.session_sources lists meta "
                "before config \\[env: MCP_SESSION_ID]."
            )
        ),
    ] = None,
    account: Annotated[
        str | None,
        typer.Option(
            help=(
                "The budget tree node (tenant/team/user) of the sessions served: reservations "
                "name it, or a node below it that the call names (any other is refused); "
                "check_budget and usage_report show each node above the session "
                "\\[env: MCP_ACCOUNT]."
            )
        ),
    ] = None,
) -> None:
    """An MCP server with budget tools: check_budget, reserve_tokens, record_usage, usage_report.

    Without --session (or mcp.session_id) each call names its session_id, limited to
    mcp.client_session_prefix when that is set. Without --account (or mcp.account) a
    session's account is its own, or the one reserve_tokens and record_usage name.

    Example: tokenquota mcp-server --http --session agent-7 --account acme/research/alice
    """
    from .producers.integrations.mcp_budget_server import create_budget_server

    settings = _with_mcp(_settings(ctx), session, account)
    server = create_budget_server(settings)
    if http:
        server.run("streamable-http", host=host, port=port)
    else:
        server.run("stdio")


def _with_mcp(settings: Settings, session: str | None, account: str | None) -> Settings:
    """`settings` with `--session` and `--account` as mcp.session_id and mcp.account (exit 2
    with the rule for an account that is not a path)."""
    from pydantic import ValidationError

    from .cli_accounts import account_rule
    from .sections import McpSettings

    given = {k: v for k, v in (("session_id", session), ("account", account)) if v is not None}
    if not given:
        return settings
    try:
        mcp = McpSettings(**{**settings.mcp.model_dump(), **given})
    except ValidationError as exc:
        problem = exc.errors()[0]
        pattern = problem["type"] == "string_pattern_mismatch"
        fail(f"--account {account!r}: {account_rule() if pattern else problem['msg']}", code=2)
    return settings.model_copy(update={"mcp": mcp})


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the effective configuration as JSON (secrets masked).

    Example: TOKENQUOTA_CONFIG=tokenquota.json tokenquota config
    """
    settings = _settings(ctx)
    sys.stdout.write(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2) + "\n")


# The operator commands: budget, usage, report, top, costs, reservations, alerts, health,
# tail, audit (tokenquota/cli_ops.py).
register_ops(app)
app.add_typer(api_app, name="api")
app.add_typer(dlq_app, name="dlq")
app.add_typer(checkpoints_app, name="checkpoints")


def main() -> None:
    """Console-script entry point (usage mistakes are one line, see cli_run.run_app)."""
    run_app(app)
