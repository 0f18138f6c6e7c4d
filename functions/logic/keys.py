"""Use cases of API keys: create (the secret is returned once), list (never a secret), revoke."""

from __future__ import annotations

from collections.abc import Collection

from runly_core.contracts import CreatedKey, CreateKeyRequest, KeyList
from runly_core.key_store import KeyExists, KeyNotFound, KeyStore
from runly_core.keys import KEY_ID, InvalidKeyRequest, new_key
from runly_core.records import iso, utcnow

from .errors import Conflict, NotFound, Unprocessable


def create(request: CreateKeyRequest, *, store: KeyStore, environments: Collection[str], created_by: str) -> CreatedKey:
    try:
        record, secret = new_key(
            name=request.name, scope=request.scope, environment=request.environment, created_by=created_by
        )
    except InvalidKeyRequest as exc:
        raise Unprocessable(str(exc), field=exc.field) from exc
    if record.environment is not None and record.environment not in environments:
        raise NotFound(f"unknown environment {record.environment!r}", field="environment")
    try:
        store.put_new(record)
    except KeyExists as exc:  # 64 random bits colliding: say so rather than overwrite a key
        raise Conflict("a key with this id already exists; retry") from exc
    return CreatedKey(**record.view().model_dump(), secret=secret)


def list_keys(*, store: KeyStore) -> KeyList:
    return KeyList(items=[record.view() for record in store.list()])


def revoke(key_id: str, *, store: KeyStore) -> None:
    """Revoke a key: it stops working within the authorizer's cache TTL (runly_core.resources.
    AUTHORIZER_RESULT_TTL_SECONDS). Revoking a revoked key again changes nothing."""
    if not KEY_ID.fullmatch(key_id):
        raise NotFound(f"no key {key_id!r}", field="key_id")
    try:
        store.revoke(key_id, iso(utcnow()))
    except KeyNotFound as exc:
        raise NotFound(f"no key {key_id!r}", field="key_id") from exc
