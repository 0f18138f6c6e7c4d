"""The API's OpenAPI 3.1 document, generated from the routes' type hints, and the responses routes declare.

Every route declares its success and the errors it can answer, all in the one error shape (ErrorBody), so a
client (and the fuzz test) can rely on the document. The errors every protected route shares (401 and 403 from
authorization, 422 from validation, 400/413/415 for bodies) are added in one place by ``declare_shared_errors``;
a route declares its own (404, 409...) with ``responses=declare(...)``.

``make openapi`` rewrites docs/openapi.json; a test fails when it is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.api_gateway import Route
from aws_lambda_powertools.event_handler.openapi.dependant import get_dependant
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

import runly_core
from runly_core.contracts import ErrorBody

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SECURITY_SCHEME = "apiKey"

# Keyword arguments of get_openapi_json_schema and enable_swagger: one document, wherever it is served.
DOCUMENT: dict[str, Any] = {
    "title": "runly",
    "version": runly_core.__version__,
    "description": "The runly control plane: packages, runs, nodes and API keys. Every operation but the "
    "documentation needs `Authorization: Bearer <API key>`; errors are always an ErrorBody.",
    "security_schemes": {
        SECURITY_SCHEME: HTTPBearer(
            description="An API key: `rly_<key id>_<secret>`. Scopes: admin > write > read; node keys act for "
            "one environment.",
            bearerFormat="rly_<key id>_<secret>",
        )
    },
    "security": [{SECURITY_SCHEME: []}],
}

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request (e.g. a body that is not JSON)",
    401: "No API key, or not a valid one",
    403: "The key's scope or environment does not allow this operation",
    404: "Not found",
    405: "Method not allowed on this path",
    409: "Conflicts with the current state",
    413: "Body too large",
    415: "Unsupported content type: send application/json",
    422: "Invalid input; `field` names the offending field",
    503: "A dependency failed; nothing was changed, retry",
}
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def errors(*statuses: int) -> dict[int, OpenAPIResponse]:
    return {
        status: {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"model": ErrorBody}},
        }
        for status in statuses
    }


def declare(status: int, description: str, *error_statuses: int, body: bool = True) -> dict[int, OpenAPIResponse]:
    """``responses=`` of a route: its success (schema from the return type, or none when ``body`` is False) and
    the errors of its own; the shared ones are added by declare_shared_errors."""
    success: OpenAPIResponse = {"description": description}
    if not body:
        success["content"] = {}
    return {status: success, **errors(*error_statuses)}


def registered_routes(app: APIGatewayHttpResolver) -> list[Route]:
    # Powertools keeps no public list of routes; these two hold every route of the app and its routers.
    return [*app._static_routes, *app._dynamic_routes]


def shared_errors(route: Route) -> tuple[int, ...]:
    """401/403 (authorization) and 422 (validation) everywhere; 400/413/415 where a JSON body is read."""
    # A dependant of our own: the route's (route.dependant) would cache the responses declared so far.
    dependant = get_dependant(path=route.openapi_path, call=route.func)
    # 422 on every route: Powertools documents it on every route (in its own shape, which this replaces).
    statuses = [401, 403, 422]
    if dependant.body_params:
        statuses += [400, 413, 415]
    return tuple(statuses)


def declare_shared_errors(app: APIGatewayHttpResolver) -> None:
    """Add the errors every protected route can answer to each documented route (idempotent). Call it after
    every router is included."""
    for route in registered_routes(app):
        if not route.include_in_schema:
            continue
        declared: dict[int, OpenAPIResponse] = dict(
            route.responses or {route.status_code: {"description": route.response_description or "Success"}}
        )
        for status, response in errors(*shared_errors(route)).items():
            declared.setdefault(status, response)
        route.responses = declared


def document(app: APIGatewayHttpResolver) -> str:
    return app.get_openapi_json_schema(**DOCUMENT)


def main(argv: list[str] | None = None) -> int:
    """``python -m functions.api.openapi [PATH]``: write the document (to docs/openapi.json by default)."""
    from functions.api.app import app

    target = Path((argv if argv is not None else sys.argv[1:] or [str(DOCUMENT_PATH)])[0])
    target.write_text(json.dumps(json.loads(document(app)), indent=2, sort_keys=False) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
