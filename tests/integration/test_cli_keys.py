"""`runly keys bootstrap`: the first admin key of a fresh deployment, written with the caller's AWS credentials."""

from __future__ import annotations

import boto3
import pytest
from typer.testing import CliRunner

from runly_cli.main import app
from runly_core import resources
from runly_core.keys import hash_secret, key_id_of
from runly_core.records import KeyRecord, key_key


def _stored(names: resources.ResourceNames, secret: str) -> KeyRecord:
    key_id = key_id_of(secret)
    assert key_id is not None, secret
    item = boto3.resource("dynamodb").Table(names.table).get_item(Key=key_key(key_id))["Item"]
    return KeyRecord.model_validate(item)


@pytest.mark.usefixtures("aws")
def test_bootstrap_prints_a_working_admin_secret_once_then_refuses_unless_forced(
    names: resources.ResourceNames,
) -> None:
    runner = CliRunner()

    # When the first admin key is bootstrapped
    first = runner.invoke(app, ["keys", "bootstrap", "--table", names.table])

    # Then its secret is the one line on stdout, and the table holds its hash only
    assert first.exit_code == 0, first.output
    secret = first.stdout.strip()
    record = _stored(names, secret)
    assert record.scope.value == "admin" and record.environment is None and record.created_by == "bootstrap"
    assert record.secret_sha256 == hash_secret(secret)

    # When bootstrapped again, it refuses and names the existing key
    again = runner.invoke(app, ["keys", "bootstrap", "--table", names.table])
    assert again.exit_code == 1 and record.key_id in again.stderr and again.stdout == ""

    # Unless forced: a second admin key, the first one untouched
    forced = runner.invoke(app, ["keys", "bootstrap", "--table", names.table, "--force", "--name", "break glass"])
    assert forced.exit_code == 0
    second = _stored(names, forced.stdout.strip())
    assert second.key_id != record.key_id and second.name == "break glass"
    assert _stored(names, secret).active


@pytest.mark.usefixtures("aws")
def test_bootstrap_of_a_missing_table_fails_cleanly() -> None:
    result = CliRunner().invoke(app, ["keys", "bootstrap", "--table", "no-such-table"])
    assert result.exit_code == 1 and "could not write the key" in result.stderr
