"""Keyed hashing of session ids (`privacy.hash_session_ids`)."""

from __future__ import annotations

import hashlib
import hmac
import re

from .sections import PrivacySettings

__all__ = ["HASH_PREFIX", "stored_session_id"]

#: What a hashed session id starts with, so that it is never taken for a raw one twice.
HASH_PREFIX = "h:"
_HASHED = re.compile(HASH_PREFIX + "[0-9a-f]{64}")


def stored_session_id(privacy: PrivacySettings, session_id: str) -> str:
    """The session id as it is emitted and stored: `session_id` itself, or with
    `hash_session_ids` on, `h:` + hex HMAC-SHA256(session_id_key, session_id) (66 chars).

    An id that already has that form is returned as is, so a look-up may pass either the
    raw id or the stored one; any other id is hashed, `h:` at its start or not.
    """
    if not privacy.hash_session_ids or _HASHED.fullmatch(session_id):
        return session_id
    assert privacy.session_id_key is not None  # PrivacySettings refuses it otherwise
    key = privacy.session_id_key.get_secret_value().encode()
    return HASH_PREFIX + hmac.new(key, session_id.encode(), hashlib.sha256).hexdigest()
