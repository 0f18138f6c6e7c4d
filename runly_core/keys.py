"""API key secrets: how they are made, hashed and recognised.

A secret reads ``rly_<key_id>_<43 url-safe characters>``: the key id says which item to fetch, the rest is 32
random bytes. Only the SHA-256 of the whole secret is stored. A plain (unsalted, fast) hash is enough because the
secret is high-entropy: there is nothing to guess, and no dictionary to precompute. Comparisons are constant-time.

Used by the API (create), the authorizer (check), and the bootstrap of the first admin key (CLI, embedded stack).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from runly_core.contracts import Scope
from runly_core.records import KEY_SECRET_PREFIX, KeyRecord, iso, utcnow

KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_SECRET = re.compile(rf"^{KEY_SECRET_PREFIX}_([0-9a-f]{{16}})_[A-Za-z0-9_-]{{43}}$")
BOOTSTRAP_CREATOR = "bootstrap"


class InvalidKeyRequest(ValueError):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The key id a well-formed secret names, or None: a malformed secret costs no lookup."""
    matched = _SECRET.fullmatch(secret)
    return matched.group(1) if matched else None


def secret_matches(secret: str, record: KeyRecord) -> bool:
    return hmac.compare_digest(hash_secret(secret), record.secret_sha256)


def check_scope_environment(scope: Scope, environment: str | None) -> None:
    """Node keys act for exactly one environment; the other scopes for every environment."""
    if scope is Scope.NODE and environment is None:
        raise InvalidKeyRequest("a node key needs the environment its agents join", field="environment")
    if scope is not Scope.NODE and environment is not None:
        raise InvalidKeyRequest(
            f"only node keys are bound to an environment, not {scope.value} keys", field="environment"
        )


def new_key(*, name: str, scope: Scope, environment: str | None, created_by: str) -> tuple[KeyRecord, str]:
    """A new key's record (to store) and its secret (to show once, never to store)."""
    check_scope_environment(scope, environment)
    key_id = secrets.token_hex(8)
    secret = f"{KEY_SECRET_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(
        key_id=key_id,
        name=name,
        scope=scope,
        environment=environment,
        secret_sha256=hash_secret(secret),
        created_at=iso(utcnow()),
        created_by=created_by,
    )
    return record, secret
