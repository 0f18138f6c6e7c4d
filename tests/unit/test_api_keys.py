"""API key secrets: their shape, their hash, which scopes take an environment."""

from __future__ import annotations

import pytest

from runly_core.contracts import Scope
from runly_core.keys import InvalidKeyRequest, hash_secret, key_id_of, new_key, secret_matches


def test_a_new_key_stores_only_the_hash_of_a_secret_that_names_it() -> None:
    record, secret = new_key(name="ci", scope=Scope.WRITE, environment=None, created_by="k0")

    assert secret.startswith(f"rly_{record.key_id}_") and len(secret) == len("rly_") + 16 + 1 + 43
    assert key_id_of(secret) == record.key_id
    assert record.secret_sha256 == hash_secret(secret) and secret not in record.model_dump_json()
    assert secret_matches(secret, record)
    assert not secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), record)
    assert record.view().prefix == f"rly_{record.key_id}_" and record.active


def test_two_keys_never_share_id_or_secret() -> None:
    made = [new_key(name="n", scope=Scope.READ, environment=None, created_by="k0") for _ in range(200)]
    assert len({record.key_id for record, _ in made}) == len({secret for _, secret in made}) == 200


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "rly_",
        "rly_0123456789abcdef_short",
        "rly_0123456789ABCDEF_" + "a" * 43,  # ids are lower-case hex
        "xyz_0123456789abcdef_" + "a" * 43,
        "rly_0123456789abcdef_" + "a" * 44,
        "rly_0123456789abcdef_" + "a" * 42 + "!",
        " rly_0123456789abcdef_" + "a" * 43,
    ],
)
def test_malformed_secrets_name_no_key(candidate: str) -> None:
    assert key_id_of(candidate) is None


def test_node_keys_need_an_environment_and_only_they_take_one() -> None:
    record, _ = new_key(name="eu nodes", scope=Scope.NODE, environment="production", created_by="k0")
    assert record.environment == "production"
    with pytest.raises(InvalidKeyRequest) as missing:
        new_key(name="n", scope=Scope.NODE, environment=None, created_by="k0")
    assert missing.value.field == "environment"
    for scope in (Scope.ADMIN, Scope.WRITE, Scope.READ):
        with pytest.raises(InvalidKeyRequest):
            new_key(name="n", scope=scope, environment="production", created_by="k0")
