from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.auth import require
from functions.api.dependencies import environments, key_store
from functions.api.observability import count
from functions.api.openapi import declare
from functions.logic import keys
from runly_core.contracts import CreatedKey, CreateKeyRequest, KeyList, Scope

router = APIGatewayHttpRouter()


@router.post(
    "",
    summary="Create an API key; its secret is in this response and nowhere else",
    status_code=201,
    responses=declare(201, "The new key, with its secret (store it now: it is not kept)", 404, 409),
    tags=["keys"],
)
def create_key(body: CreateKeyRequest) -> CreatedKey:
    caller = require(router.current_event, Scope.ADMIN)
    created = keys.create(body, store=key_store(), environments=environments(), created_by=caller.key_id)
    count("KeysCreated")
    return created


@router.get("", summary="List API keys (never their secrets), revoked ones included", tags=["keys"])
def list_keys() -> KeyList:
    require(router.current_event, Scope.ADMIN)
    return keys.list_keys(store=key_store())


@router.delete(
    "/<key_id>",
    summary="Revoke an API key: it stops working at once",
    status_code=204,
    responses=declare(204, "Revoked", 404, body=False),
    tags=["keys"],
)
def revoke_key(key_id: str) -> Response[None]:
    require(router.current_event, Scope.ADMIN)
    keys.revoke(key_id, store=key_store())
    count("KeysRevoked")
    return Response(status_code=204, body=None)
