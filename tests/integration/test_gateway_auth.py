"""The local gateway runs the authorizer before the API function as API Gateway does, over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from functions.api.app import lambda_handler as api_handler
from functions.authorizer.app import lambda_handler as authorizer_handler
from runly_cli.commands.keys import bootstrap_admin_key
from runly_cli.embedded.gateway import Gateway
from runly_core import resources
from tests.support.api import function_env  # noqa: F401  (fixture)


class Spy:
    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        return self.handler(event, context)


@pytest.fixture
def stack(function_env: dict[str, str], names: resources.ResourceNames) -> Iterator[tuple[Gateway, Spy, Spy, str]]:  # noqa: F811
    _, admin = bootstrap_admin_key(names.table)
    api, authorizer = Spy(api_handler), Spy(authorizer_handler)
    with Gateway(api, authorizer=authorizer) as gateway:
        yield gateway, api, authorizer, admin


def _get(gateway: Gateway, path: str, authorization: str | None = None, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(gateway.url + path, method=method)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode()


def test_no_authorization_header_is_401_without_calling_the_authorizer(stack: tuple[Gateway, Spy, Spy, str]) -> None:
    gateway, api, authorizer, _ = stack

    status, body = _get(gateway, "/runs")

    assert (status, body["code"]) == (401, "unauthorized")
    assert authorizer.events == [] and api.events == []


def test_a_refused_key_is_403_and_the_function_is_not_called(stack: tuple[Gateway, Spy, Spy, str]) -> None:
    gateway, api, authorizer, _ = stack

    status, body = _get(gateway, "/runs", "Bearer rly_0123456789abcdef_" + "a" * 43)

    assert (status, body["code"]) == (403, "forbidden")
    [event] = authorizer.events
    assert event["type"] == "REQUEST" and event["identitySource"] == ["Bearer rly_0123456789abcdef_" + "a" * 43]
    assert api.events == []


def test_an_allowed_key_reaches_the_function_with_the_authorizers_context(
    stack: tuple[Gateway, Spy, Spy, str],
) -> None:
    gateway, api, authorizer, admin = stack

    status, body = _get(gateway, "/keys", f"Bearer {admin}")

    assert status == 200 and len(body["items"]) == 1
    [event] = api.events
    assert event["requestContext"]["authorizer"] == {
        "lambda": {"key_id": admin.split("_")[1], "scope": "admin", "environment": ""}
    }
    assert len(authorizer.events) == 1


def test_a_revoked_key_stops_working_on_the_next_request(stack: tuple[Gateway, Spy, Spy, str]) -> None:
    gateway, _, _, admin = stack
    key_id = admin.split("_")[1]
    assert _get(gateway, "/keys", f"Bearer {admin}")[0] == 200

    assert _get(gateway, f"/keys/{key_id}", f"Bearer {admin}", method="DELETE")[0] == 204

    assert _get(gateway, "/keys", f"Bearer {admin}")[0] == 403


@pytest.mark.parametrize(("method", "path"), resources.OPEN_ROUTES)
def test_open_routes_skip_the_authorizer(stack: tuple[Gateway, Spy, Spy, str], method: str, path: str) -> None:
    gateway, api, authorizer, _ = stack

    assert _get(gateway, path.replace("{asset}", "app.js"), method=method)[0] == 200
    assert authorizer.events == [] and len(api.events) == 1


@pytest.mark.parametrize(
    "answer",
    [
        RuntimeError("authorizer down"),
        {"isAuthorized": "yes"},
        ["not", "a", "dict"],
        {"isAuthorized": True, "context": 3},
    ],
)
def test_an_authorizer_that_fails_or_answers_nonsense_is_a_500(function_env: dict[str, str], answer: Any) -> None:  # noqa: F811
    def authorizer(event: dict[str, Any], context: Any) -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    api = Spy(api_handler)
    with Gateway(api, authorizer=authorizer) as gateway:
        status, body = _get(gateway, "/runs", "Bearer whatever")

    assert (status, body["code"]) == (500, "internal_error")
    assert api.events == []
