"""Where a running `tokenquota dev` serves, for the other commands of the same checkout.

The dev stack listens on free ports. So that `tokenquota budget show alice` works in a
second terminal after `make run` without exporting anything, `dev` writes
`<data dir>/dev-stack.json` (its PID, the servers' addresses and the usage topic's
partitions) when it is up and removes it when it stops; a command finding neither
KAFKA_BOOTSTRAP_SERVERS nor DATABASE_URL configured uses the file's servers while that
PID is alive, and the file's partitions with its broker unless KAFKA_PARTITIONS is set.
Configured servers always win.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pydantic import SecretStr

from .config import Settings

__all__ = ["STACK_FILE", "remove_stack_file", "with_dev_stack", "write_stack_file"]

STACK_FILE = "dev-stack.json"


def _path(settings: Settings) -> Path:
    return settings.data_dir.resolve() / STACK_FILE


def write_stack_file(effective: Settings, pid: int | None = None) -> Path:
    """Record the dev stack's servers (the settings `dev` runs on) for other commands."""
    path = _path(effective)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": pid if pid is not None else os.getpid(),
        "kafka_bootstrap_servers": effective.kafka.bootstrap_servers,
        "kafka_partitions": effective.kafka.partitions,
        "database_url": effective.database.dsn(),
        "database_schema": effective.database.schema_name,
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record) + "\n")
    temporary.replace(path)
    return path


def remove_stack_file(effective: Settings) -> None:
    """Remove the record `write_stack_file` made (when it is this process's)."""
    path = _path(effective)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def with_dev_stack(settings: Settings) -> Settings:
    """`settings` with the running dev stack's servers where none are configured."""
    if settings.kafka.bootstrap_servers is not None and settings.database.is_configured:
        return settings
    try:
        record = json.loads(_path(settings).read_text())
    except (OSError, ValueError):
        return settings
    if not isinstance(record, dict) or not _alive(record.get("pid")):
        return settings
    kafka, database = settings.kafka, settings.database
    servers = record.get("kafka_bootstrap_servers")
    if kafka.bootstrap_servers is None and isinstance(servers, str) and servers:
        update_kafka: dict[str, object] = {"bootstrap_servers": servers}
        partitions = record.get("kafka_partitions")
        wanted = type(partitions) is int and partitions > 0
        if wanted and "partitions" not in kafka.model_fields_set:
            update_kafka["partitions"] = partitions
        kafka = kafka.model_copy(update=update_kafka)
    url = record.get("database_url")
    if not database.is_configured and isinstance(url, str) and url:
        update: dict[str, object] = {"url": SecretStr(url)}
        schema = record.get("database_schema")
        if isinstance(schema, str) and schema:
            update["schema_name"] = schema
        database = database.model_copy(update=update)
    return settings.model_copy(update={"kafka": kafka, "database": database})
