"""The API's document declares 400/413/415 on exactly the routes Powertools reads a JSON body for.

``functions.api.openapi.reads_body`` answers from the route's signature, without building Powertools' validation
models at import; this checks it against Powertools' own answer for every documented route.
"""

from __future__ import annotations

import pytest
from aws_lambda_powertools.event_handler.openapi.dependant import get_dependant

from functions.api import openapi
from functions.api.app import app

ROUTES = [route for route in openapi.registered_routes(app) if route.include_in_schema]


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: f"{route.method} {route.openapi_path}")
def test_reads_body_agrees_with_powertools(route: object) -> None:
    dependant = get_dependant(path=route.openapi_path, call=route.func)  # type: ignore[attr-defined]
    assert openapi.reads_body(route) is bool(dependant.body_params)  # type: ignore[arg-type]


def test_some_routes_read_a_body_and_some_do_not() -> None:
    answers = {openapi.reads_body(route) for route in ROUTES}
    assert answers == {True, False}
