"""The envelope every tokenquota event carries, and the field types events share."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

import uuid6
from pydantic import UUID7, AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "ACCOUNT_MAX_DEPTH",
    "ACCOUNT_PATTERN",
    "ACCOUNT_RULE",
    "ACCOUNT_SEGMENT_MAX",
    "BIGINT_MAX",
    "ID_MAX_LENGTH",
    "NO_CONTROL_CHARACTERS",
    "AccountPath",
    "Component",
    "EventBase",
    "Identifier",
    "Source",
    "TokenCount",
    "UtcDatetime",
    "account_root",
    "ancestors",
    "new_event_id",
    "partition_key",
    "utc_now",
]

#: Tokens are stored as PostgreSQL BIGINT; anything larger is rejected at the edge.
BIGINT_MAX = 2**63 - 1
#: Session, task and similar identifiers are stored as VARCHAR(255).
ID_MAX_LENGTH = 255

Component = Literal["mcp", "orchestrator", "memory", "external_api", "cli", "sdk"]


#: Text without control characters. A pattern rather than a Python validator: pydantic
#: checks it in Rust, on every event every consumer decodes.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: A non-empty, bounded identifier without control characters.
Identifier = Annotated[
    str, Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=NO_CONTROL_CHARACTERS)
]
#: An account path holds at most this many segments ("tenant/team/user" is three)...
ACCOUNT_MAX_DEPTH = 8
#: ...of at most this many characters each.
ACCOUNT_SEGMENT_MAX = 64
_SEGMENT = rf"[^/\x00-\x1f\x7f]{{1,{ACCOUNT_SEGMENT_MAX}}}"
#: Where a session sits in a budget tree: "acme/research/alice" is the session's user
#: node, under the team "acme/research", under the tenant "acme" (its first segment).
ACCOUNT_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT}){{0,{ACCOUNT_MAX_DEPTH - 1}}}$"
#: What an account path may be, in words (its pattern says little to a user).
ACCOUNT_RULE = (
    f"an account path is 1 to {ACCOUNT_MAX_DEPTH} segments of 1 to {ACCOUNT_SEGMENT_MAX} "
    "characters, separated by '/', without control characters"
)
AccountPath = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=ACCOUNT_PATTERN)]
#: A timezone-aware timestamp, normalised to UTC. Naive datetimes are rejected.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
#: A token count that fits a PostgreSQL BIGINT.
TokenCount = Annotated[int, Field(ge=0, le=BIGINT_MAX)]


def new_event_id() -> uuid.UUID:
    """A fresh UUIDv7: time-ordered, so ledger inserts stay index-friendly."""
    return uuid.UUID(int=uuid6.uuid7().int)


def utc_now() -> datetime:
    """The current time in UTC (what a producer stamps on a new event)."""
    return datetime.now(UTC)


class Source(BaseModel):
    """Which integration emitted an event."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    component: Component
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_CONTROL_CHARACTERS)]


class EventBase(BaseModel):
    """Fields common to every event. Subclasses add `event_type` and their body."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    event_id: UUID7 = Field(
        default_factory=new_event_id,
        description="UUIDv7; the idempotency key: an event_id is counted at most once.",
        json_schema_extra={"format": "uuid"},  # the standard format; the version is checked
    )
    schema_version: Literal[1] = 1
    occurred_at: UtcDatetime = Field(
        default_factory=utc_now,
        description="When it happened, in UTC. Budget windows are computed from this.",
    )
    session_id: Identifier = Field(
        description="The budget owner; also the Kafka partition key when there is no account."
    )
    task_id: Identifier | None = None
    source: Source
    account: AccountPath | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description=(
            "The budget tree node the session belongs to (tenant/team/user...); every event "
            "of a session names the same one. Its first segment is then the partition key."
        ),
    )


def account_root(account: str) -> str:
    """The tenant of an account path: its first segment."""
    return account.partition("/")[0]


@functools.lru_cache(maxsize=65536)
def ancestors(account: str) -> tuple[str, ...]:
    """The nodes from the tenant down to `account`: "a/b/c" -> ("a", "a/b", "a/b/c")."""
    parts = account.split("/")
    return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))


def partition_key(event: EventBase) -> bytes:
    """The Kafka key of `event`: its tenant when it names an account (a whole tree is then
    decided in one partition, in log order), else its session."""
    account = event.account
    return (account.partition("/")[0] if account is not None else event.session_id).encode()
