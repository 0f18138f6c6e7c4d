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


class Clock:
    """The gateway's monotonic clock, stepped by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_revoked_key_keeps_working_at_most_the_cache_bound_then_is_refused(
    function_env: dict[str, str],  # noqa: F811
    names: resources.ResourceNames,
) -> None:
    # Given a gateway caching the authorizer's answers for 5 s (the deployed bound is 30 s: same code path)
    _, admin = bootstrap_admin_key(names.table)
    key_id = admin.split("_")[1]
    api, authorizer, clock = Spy(api_handler), Spy(authorizer_handler), Clock()
    with Gateway(api, authorizer=authorizer, authorizer_cache_seconds=5, clock=clock) as gateway:
        assert _get(gateway, "/keys", f"Bearer {admin}")[0] == 200
        assert len(authorizer.events) == 1

        # When the key is revoked (by itself: it is the admin key)
        clock.now += 1
        assert _get(gateway, f"/keys/{key_id}", f"Bearer {admin}", method="DELETE")[0] == 204

        # Then it keeps working, from the cache, until 5 s after the answer was cached, with its scope intact
        clock.now += 3.9
        status, listed = _get(gateway, "/keys", f"Bearer {admin}")
        assert status == 200 and listed["items"][0]["revoked_at"] is not None
        assert len(authorizer.events) == 1
        assert api.events[-1]["requestContext"]["authorizer"]["lambda"]["scope"] == "admin"

        # And from the bound on it is refused: the authorizer is asked again and reads the revocation
        clock.now += 0.1
        status, body = _get(gateway, "/keys", f"Bearer {admin}")
        assert (status, body["code"]) == (403, "forbidden")
        assert len(authorizer.events) == 2
        calls = len(api.events)
        # The refusal is cached too: refused again, the authorizer not asked, the function never called
        clock.now += 4.9
        assert _get(gateway, "/keys", f"Bearer {admin}")[0] == 403
        assert len(authorizer.events) == 2 and len(api.events) == calls


def test_the_authorizer_runs_once_per_key_per_bound_not_per_request(stack: tuple[Gateway, Spy, Spy, str]) -> None:
    gateway, api, authorizer, admin = stack
    # The gateway's default: the deployed stack's bound (runly_core.resources.AUTHORIZER_RESULT_TTL_SECONDS).
    assert gateway.authorizer_cache.ttl_seconds == resources.AUTHORIZER_RESULT_TTL_SECONDS

    for _ in range(3):
        assert _get(gateway, "/keys", f"Bearer {admin}")[0] == 200
    assert _get(gateway, "/runs", f"Bearer {admin}")[0] == 200  # another route: the same cached answer

    assert len(authorizer.events) == 1 and len(api.events) == 4
    assert _get(gateway, "/keys", "Bearer rly_0123456789abcdef_" + "a" * 43)[0] == 403
    assert len(authorizer.events) == 2  # another header: asked


def test_with_a_bound_of_zero_every_request_runs_the_authorizer(
    function_env: dict[str, str],  # noqa: F811
    names: resources.ResourceNames,
) -> None:
    _, admin = bootstrap_admin_key(names.table)
    authorizer = Spy(authorizer_handler)
    with Gateway(api_handler, authorizer=authorizer, authorizer_cache_seconds=0) as gateway:
        for _ in range(2):
            assert _get(gateway, "/keys", f"Bearer {admin}")[0] == 200
    assert len(authorizer.events) == 2


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
