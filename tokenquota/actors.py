"""Who an administrative event names as its actor: the log is the audit trail."""

from __future__ import annotations

import functools
import getpass

__all__ = ["os_actor", "token_actor"]


@functools.cache  # the API names it on every call made without tokens
def os_actor() -> str:
    """The OS user running this process, as `os:<user>` (`os:unknown` when it has none)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        user = "unknown"
    return f"os:{user}"[:200]


def token_actor(name: str) -> str:
    """The actor of a call made with the API token called `name`, as `token:<name>`."""
    return f"token:{name}"[:200]
