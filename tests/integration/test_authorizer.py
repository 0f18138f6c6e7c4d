"""The Lambda authorizer with the events API Gateway sends it (tests/events), against in-process moto."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from functions.api.auth import caller_from_event
from functions.authorizer.app import lambda_handler
from runly_cli.embedded.gateway import build_authorizer_event, build_event
from runly_core import resources
from runly_core.contracts import Scope
from runly_core.keys import hash_secret
from runly_core.records import KeyRecord, iso, utcnow
from tests.support.api import FakeContext, function_env  # noqa: F401  (fixture)

EVENTS = Path(__file__).resolve().parents[1] / "events"
FIXTURE_SECRET = "rly_0123456789abcdef_QmVhcmVyVG9rZW5Gb3JUZXN0c09ubHlfX19fX19fX19"


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def _store_key(names: resources.ResourceNames, **changes: Any) -> KeyRecord:
    record = KeyRecord(
        key_id="0123456789abcdef",
        name="fixture key",
        scope=Scope.NODE,
        environment="staging",
        secret_sha256=hash_secret(FIXTURE_SECRET),
        created_at=iso(utcnow()),
        created_by="bootstrap",
    ).model_copy(update=changes)
    boto3.resource("dynamodb").Table(names.table).put_item(Item=record.to_item())
    return record


def _authorize(event: dict[str, Any]) -> dict[str, Any]:
    return lambda_handler(event, FakeContext())  # type: ignore[arg-type]


@pytest.mark.usefixtures("function_env")
def test_a_valid_key_is_allowed_with_its_identity_in_the_context(names: resources.ResourceNames) -> None:
    _store_key(names)

    answer = _authorize(_event("authorizer_request.json"))

    assert answer == {
        "isAuthorized": True,
        "context": {"key_id": "0123456789abcdef", "scope": "node", "environment": "staging"},
    }
    # And the API function reads that context back as the caller
    api_event = {"requestContext": {"authorizer": {"lambda": answer["context"]}}}
    caller = caller_from_event(api_event)
    assert (caller.key_id, caller.scope, caller.environment) == ("0123456789abcdef", Scope.NODE, "staging")


@pytest.mark.usefixtures("function_env")
def test_a_key_without_environment_passes_an_empty_string(names: resources.ResourceNames) -> None:
    _store_key(names, scope=Scope.ADMIN, environment=None)

    answer = _authorize(_event("authorizer_request.json"))

    assert answer["context"] == {"key_id": "0123456789abcdef", "scope": "admin", "environment": ""}
    assert caller_from_event({"requestContext": {"authorizer": {"lambda": answer["context"]}}}).environment is None


@pytest.mark.usefixtures("function_env")
@pytest.mark.parametrize(
    ("case", "authorization"),
    [
        ("unknown key", None),
        ("wrong secret", "Bearer " + FIXTURE_SECRET[:-1] + "x"),
        ("not a runly key", "Bearer hunter2"),
        ("another scheme", "Basic dXNlcjpwYXNzd29yZA=="),
        ("bearer without a token", "Bearer "),
    ],
)
def test_anything_but_a_stored_matching_key_is_refused(
    names: resources.ResourceNames, case: str, authorization: str | None
) -> None:
    if case != "unknown key":
        _store_key(names)
    event = _event("authorizer_request.json")
    if authorization is not None:
        event["headers"]["authorization"] = authorization
        event["identitySource"] = [authorization]

    assert _authorize(event) == {"isAuthorized": False}


@pytest.mark.usefixtures("function_env")
def test_basic_auth_fixture_is_refused(names: resources.ResourceNames) -> None:
    _store_key(names)
    assert _authorize(_event("authorizer_request_basic_auth.json")) == {"isAuthorized": False}


@pytest.mark.usefixtures("function_env")
def test_a_revoked_key_is_refused_on_the_next_request(names: resources.ResourceNames) -> None:
    _store_key(names)
    event = _event("authorizer_request.json")
    assert _authorize(copy.deepcopy(event))["isAuthorized"] is True

    boto3.resource("dynamodb").Table(names.table).update_item(
        Key={"pk": "KEY#0123456789abcdef", "sk": "KEY"},
        UpdateExpression="SET revoked_at = :now",
        ExpressionAttributeValues={":now": iso(utcnow())},
    )

    assert _authorize(event) == {"isAuthorized": False}


def test_the_local_gateway_builds_the_authorizer_event_api_gateway_sends() -> None:
    # Given the request of the fixture as the local gateway turns it into the function's event
    fixture = _event("authorizer_request.json")
    request_event = build_event(
        method="GET",
        raw_path=fixture["rawPath"],
        raw_query="",
        headers=list(fixture["headers"].items()),
        body=b"",
        source_ip="203.0.113.10",
        route_key=fixture["routeKey"],
        request_id="JKJaXmPLvHcESHA=",
    )

    # When the gateway builds the authorizer's event from it
    built = build_authorizer_event(request_event, [fixture["headers"]["authorization"]])

    # Then it has the fixture's shape, and says the same about the request
    assert set(built) == set(fixture)
    assert set(built["requestContext"]) == set(fixture["requestContext"])
    assert (built["version"], built["type"]) == ("2.0", "REQUEST")
    assert built["identitySource"] == fixture["identitySource"]
    assert built["headers"] == fixture["headers"] and built["pathParameters"] == fixture["pathParameters"]
    assert built["routeArn"].endswith(f"/$default/GET{fixture['rawPath']}")
    assert built["routeArn"].startswith("arn:aws:execute-api:")
    assert "body" not in built
