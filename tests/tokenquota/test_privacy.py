"""Keyed hashing of session ids (pure)."""

from __future__ import annotations

from pydantic import SecretStr

from tokenquota.privacy import stored_session_id
from tokenquota.sections import PrivacySettings

ON = PrivacySettings(hash_session_ids=True, session_id_key=SecretStr("k" * 32))


def test_a_raw_id_is_hashed_and_the_stored_form_is_kept() -> None:
    stored = stored_session_id(ON, "alice")
    assert stored.startswith("h:") and len(stored) == 66 and "alice" not in stored
    assert stored_session_id(ON, stored) == stored  # a look-up by the stored id
    assert stored_session_id(PrivacySettings(), "alice") == "alice"  # hashing off


def test_a_raw_id_that_only_starts_like_a_hash_is_hashed_too() -> None:
    for raw in ("h:alice", "h:" + "0" * 63, "h:" + "G" * 64):
        stored = stored_session_id(ON, raw)
        assert stored != raw and stored.startswith("h:") and len(stored) == 66
