"""Every route of the API x every kind of caller: who gets in (2xx or a 4xx about the request) and who gets
401 (no key) or 403 (a key without the scope). The routes are read from the app, so a new route without an
entry here fails the test."""

from __future__ import annotations

import re
from typing import Any

import pytest

from functions.api import openapi
from functions.api.app import app
from runly_core.contracts import Scope
from runly_core.resources import OPEN_ROUTES
from tests.support.api import call, module_function_env  # noqa: F401  (fixture)

# (method, path as the app registers it) -> (the scope it needs, a well-formed body)
MATRIX: dict[tuple[str, str], tuple[Scope, Any]] = {
    ("POST", "/runs"): (Scope.WRITE, {"package": "hello", "job": "hello"}),
    ("POST", "/runs/batch"): (Scope.WRITE, {"runs": [{"package": "hello", "job": "hello"}]}),
    ("GET", "/runs"): (Scope.READ, None),
    ("GET", "/runs/<run_id>"): (Scope.READ, None),
    ("POST", "/runs/<run_id>/cancel"): (Scope.WRITE, None),
    ("POST", "/runs/<run_id>/requeue"): (Scope.WRITE, {"resume": False}),
    ("GET", "/runs/<run_id>/logs"): (Scope.READ, None),
    ("POST", "/packages/uploads"): (Scope.WRITE, {"name": "hello", "version": "1.0.0", "sha256": "0" * 64, "size": 9}),
    ("POST", "/packages"): (Scope.WRITE, {"name": "hello", "version": "1.0.0", "sha256": "0" * 64, "size": 9}),
    ("GET", "/packages"): (Scope.READ, None),
    ("GET", "/packages/<name>/versions"): (Scope.READ, None),
    ("GET", "/packages/<name>/versions/<version>"): (Scope.READ, None),
    ("GET", "/environments/<environment>/pins"): (Scope.READ, None),
    ("GET", "/environments/<environment>/pins/<package>"): (Scope.READ, None),
    ("PUT", "/environments/<environment>/pins/<package>"): (Scope.ADMIN, {"specifier": ">=1,<2"}),
    ("DELETE", "/environments/<environment>/pins/<package>"): (Scope.ADMIN, None),
    ("GET", "/environments/<environment>/variables"): (Scope.READ, None),
    ("GET", "/environments/<environment>/variables/<name>"): (Scope.READ, None),
    ("PUT", "/environments/<environment>/variables/<name>"): (Scope.ADMIN, {"value": "eu-west-1"}),
    ("DELETE", "/environments/<environment>/variables/<name>"): (Scope.ADMIN, None),
    ("GET", "/environments/<environment>/secrets"): (Scope.READ, None),
    ("GET", "/environments/<environment>/secrets/<name>"): (Scope.READ, None),
    ("PUT", "/environments/<environment>/secrets/<name>"): (Scope.ADMIN, {"value": "s3cr3t"}),
    ("DELETE", "/environments/<environment>/secrets/<name>"): (Scope.ADMIN, None),
    ("GET", "/nodes"): (Scope.READ, None),
    ("POST", "/nodes/<node_id>/drain"): (Scope.ADMIN, None),
    ("POST", "/keys"): (Scope.ADMIN, {"name": "matrix", "scope": "read"}),
    ("GET", "/keys"): (Scope.ADMIN, None),
    ("DELETE", "/keys/<key_id>"): (Scope.ADMIN, None),
    ("GET", "/me"): (Scope.READ, None),
    ("POST", "/schedules"): (
        Scope.WRITE,
        {"name": "matrix", "package": "hello", "job": "hello", "expression": "rate(1 hour)"},
    ),
    ("GET", "/schedules"): (Scope.READ, None),
    ("GET", "/schedules/<schedule_id>"): (Scope.READ, None),
    ("PATCH", "/schedules/<schedule_id>"): (Scope.WRITE, {"enabled": False}),
    ("DELETE", "/schedules/<schedule_id>"): (Scope.WRITE, None),
}
PATH_VALUES = {
    "run_id": "run_default_20260101000000_0123456789ab",
    "name": "hello",
    "version": "1.0.0",
    "environment": "default",
    "package": "hello",
    "node_id": "node-1",
    "key_id": "0123456789abcdef",
    "schedule_id": "sch_0123456789abcdef",
    "asset": "app.js",  # an open route's: the dashboard's files
}
# Who calls: no key, or a key of each scope (the node key acts for the environment the paths name).
CALLERS: list[tuple[Scope | None, str | None]] = [
    (None, None),
    (Scope.READ, None),
    (Scope.WRITE, None),
    (Scope.ADMIN, None),
    (Scope.NODE, "default"),
]
IMPLIED = {
    Scope.ADMIN: {Scope.ADMIN, Scope.WRITE, Scope.READ},
    Scope.WRITE: {Scope.WRITE, Scope.READ},
    Scope.READ: {Scope.READ},
    Scope.NODE: {Scope.NODE, Scope.READ},
}


def _routes() -> dict[tuple[str, str], bool]:
    return {(route.method, route.path): route.include_in_schema for route in openapi.registered_routes(app)}


def _as_route_key(path: str) -> str:
    """The app's /runs/<run_id> as API Gateway (and runly_core.resources.OPEN_ROUTES) spell it: /runs/{run_id}."""
    return re.sub(r"<(\w+)>", r"{\1}", path)


def test_every_route_has_a_matrix_entry_and_only_the_open_routes_are_undocumented() -> None:
    routes = _routes()
    assert {key for key, documented in routes.items() if documented} == set(MATRIX)
    assert {(method, _as_route_key(path)) for (method, path), documented in routes.items() if not documented} == set(
        OPEN_ROUTES
    )


@pytest.mark.usefixtures("module_function_env")
@pytest.mark.parametrize("route", sorted(MATRIX), ids=" ".join)
@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: "no key" if c[0] is None else c[0].value)
def test_route_answers_each_caller_by_its_scope(
    route: tuple[str, str], caller: tuple[Scope | None, str | None]
) -> None:
    method, template = route
    needed, body = MATRIX[route]
    path = re.sub(r"<(\w+)>", lambda m: PATH_VALUES[m.group(1)], template)
    scope, environment = caller

    answer = call(method, path, scope=scope, environment=environment, body=body)

    assert (isinstance(answer.body, dict) and {"code", "message"} <= set(answer.body)) or answer.status < 400
    if scope is None:
        assert (answer.status, answer.body["code"]) == (401, "unauthorized")
    elif needed in IMPLIED[scope]:
        assert answer.status not in (401, 403) and answer.status < 500, answer.body
    else:
        assert (answer.status, answer.body["code"]) == (403, "forbidden"), answer.body


@pytest.mark.usefixtures("module_function_env")
@pytest.mark.parametrize(("method", "path"), OPEN_ROUTES)
def test_open_routes_answer_without_a_key(method: str, path: str) -> None:
    answer = call(method, re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path), scope=None)
    assert answer.status == 200
