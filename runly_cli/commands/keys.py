"""``runly keys``: the first admin key of a fresh deployment.

Every API call needs a key, and keys are created over the API by an admin key: the first admin key therefore
comes from outside the API. ``runly keys bootstrap`` writes it straight to the deployment's DynamoDB table with
the caller's AWS credentials (whoever may write that table may do anything anyway) and prints its secret once.
The embedded stack makes its admin key with the same function.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from runly_core.contracts import Scope
from runly_core.key_store import KeyStore
from runly_core.keys import BOOTSTRAP_CREATOR, new_key
from runly_core.records import KeyRecord

keys_app = typer.Typer(no_args_is_help=True, help="API keys: bootstrap the first admin key of a deployment.")

BOOTSTRAP_KEY_NAME = "bootstrap admin"


class AdminKeyExists(Exception):
    def __init__(self, key_ids: list[str]) -> None:
        super().__init__(f"active admin keys already exist: {', '.join(key_ids)}")
        self.key_ids = key_ids


def bootstrap_admin_key(
    table_name: str, *, dynamodb: Any = None, name: str = BOOTSTRAP_KEY_NAME, force: bool = False
) -> tuple[KeyRecord, str]:
    """Write a new admin key to the table; returns its record and its secret (not stored anywhere).

    Refuses (AdminKeyExists) when an active admin key exists, unless ``force``: a second admin key is then
    made beside the others, none is revoked. ``dynamodb`` is a boto3 DynamoDB service resource (default: from
    the caller's AWS configuration). The key is written by the API's own key store (runly_core.key_store).
    """
    if dynamodb is None:
        import boto3  # here, not at import: the CLI loads this module for every command

        dynamodb = boto3.resource("dynamodb")
    store = KeyStore(table_name, resource=dynamodb)
    if not force:
        existing = store.active_admin_keys()
        if existing:
            raise AdminKeyExists([record.key_id for record in existing])
    record, secret = new_key(name=name, scope=Scope.ADMIN, environment=None, created_by=BOOTSTRAP_CREATOR)
    store.put_new(record)
    return record, secret


@keys_app.command("bootstrap")
def bootstrap(
    table: Annotated[str, typer.Option(help="the deployment's DynamoDB table (the stack's TableName output)")],
    force: Annotated[bool, typer.Option(help="make another admin key even if one exists")] = False,
    name: Annotated[str, typer.Option(help="what the key is for")] = BOOTSTRAP_KEY_NAME,
    region: Annotated[str | None, typer.Option(help="AWS region of the table (default: your AWS config)")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="DynamoDB endpoint (local testing)")] = None,
) -> None:
    """Create the first admin key of a deployment with your AWS credentials; prints its secret once."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        record, secret = bootstrap_admin_key(
            table,
            dynamodb=boto3.resource("dynamodb", region_name=region, endpoint_url=endpoint_url),
            name=name,
            force=force,
        )
    except AdminKeyExists as exc:
        typer.echo(f"refused: {exc}. Create more keys with an admin key (POST /keys), or pass --force.", err=True)
        raise typer.Exit(1) from exc
    except (BotoCoreError, ClientError) as exc:
        typer.echo(f"could not write the key to table {table!r}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"admin key {record.key_id} created; its secret (shown this once, keep it safe):", err=True)
    typer.echo(secret)
