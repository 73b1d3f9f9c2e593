"""The envelope's limits at their boundaries: the longest session id and account path
accepted, one character or segment more refused with the rule (pure: no servers)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import used
from tokenquota.schemas import EventDecodeError, decode, encode
from tokenquota.schemas.envelope import (
    ACCOUNT_MAX_DEPTH,
    ACCOUNT_RULE,
    ACCOUNT_SEGMENT_MAX,
    ID_MAX_LENGTH,
)


def _wire(**fields: Any) -> str:
    return json.dumps(json.loads(encode(used("s", 1))) | fields)


def _refused(wire: str, field: str) -> str:
    with pytest.raises(EventDecodeError) as caught:
        decode(wire)
    assert [e.path for e in caught.value.errors] == [field]
    return caught.value.errors[0].reason


@pytest.mark.parametrize("field", ["session_id", "task_id"])
def test_the_longest_identifier_is_accepted_and_one_more_character_refused(field: str) -> None:
    assert ID_MAX_LENGTH == 255
    longest = "é" * ID_MAX_LENGTH  # characters, not bytes
    assert getattr(decode(_wire(**{field: longest})), field) == longest
    assert "at most 255 characters" in _refused(_wire(**{field: longest + "x"}), field)


def test_the_deepest_account_is_accepted_and_one_segment_more_refused() -> None:
    assert ACCOUNT_MAX_DEPTH == 8
    deepest = "/".join(["t"] * ACCOUNT_MAX_DEPTH)
    assert decode(_wire(account=deepest)).account == deepest
    assert _refused(_wire(account=deepest + "/t"), "account") == (
        "an account path is 1 to 8 segments of 1 to 64 characters, separated by '/', "
        "without control characters"
    )


def test_the_longest_segment_is_accepted_and_one_more_character_refused() -> None:
    assert ACCOUNT_SEGMENT_MAX == 64
    longest = "acme/" + "s" * ACCOUNT_SEGMENT_MAX
    assert decode(_wire(account=longest)).account == longest
    assert _refused(_wire(account=longest + "s"), "account") == ACCOUNT_RULE


def test_the_longest_account_path_is_accepted_and_one_more_character_refused() -> None:
    # Four segments of 63 characters and three slashes: 255, the column's length.
    longest = "/".join(["a" * 63] * 4)
    assert len(longest) == ID_MAX_LENGTH
    assert decode(_wire(account=longest)).account == longest
    over = "/".join(["a" * 63] * 3 + ["a" * 64])
    assert "at most 255 characters" in _refused(_wire(account=over), "account")
