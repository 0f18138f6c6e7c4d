"""The API's OpenAPI 3.1 document, generated from the routes' type hints, and the responses routes declare.

Every route declares its success and the errors it can answer, all in the one error shape (ErrorBody), so a
client (and the fuzz test) can rely on the document. The errors every protected route shares (401 and 403 from
authorization, 422 from validation, 400/413/415 for bodies) are added in one place by ``declare_shared_errors``;
a route declares its own (404, 409...) with ``responses=declare(...)``.

``make openapi`` rewrites docs/openapi.json; a test fails when it is out of date.

Nothing of the document is built at import (Powertools' OpenAPI models alone are a quarter of the function's
import time): the document and the Swagger UI page are built when first asked for, on the open routes
``/openapi.json`` and ``/docs``, which ``serve`` answers. At import only ``declare_shared_errors`` runs, and it
reads the routes' signatures without building their validation models.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Route
from aws_lambda_powertools.event_handler.openapi.params import Body, Param
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import BaseModel

import runly_core
from runly_core.contracts import ErrorBody

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SECURITY_SCHEME = "apiKey"
DOCUMENT_ROUTE = "/openapi.json"
SWAGGER_ROUTE = "/docs"


@cache
def document_options() -> dict[str, Any]:
    """Keyword arguments of get_openapi_json_schema and of the Swagger UI page: one document, wherever it is
    served. Built on first use: HTTPBearer is one of Powertools' OpenAPI models, whose module is heavy."""
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

    return {
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


def reads_body(route: Route) -> bool:
    """Whether Powertools reads a JSON body for this route: a parameter marked ``Body()``, or one that is neither
    a path, query or header parameter nor a scalar (a model, a list, a dict). Read from the signature alone;
    Powertools' own answer (``get_dependant(...).body_params``) builds a validation model per parameter, which
    at import would cost every cold start (tests/unit/test_openapi_body_routes.py checks both agree)."""
    hints = typing.get_type_hints(route.func, include_extras=True)
    for name, parameter in inspect.signature(route.func).parameters.items():
        hint = hints.get(name, parameter.annotation)
        markers = [*getattr(hint, "__metadata__", ()), parameter.default]
        if any(isinstance(marker, Body) for marker in markers):
            return True
        if any(isinstance(marker, Param) for marker in markers) or name in route.openapi_path:
            continue
        if _is_body_type(typing.get_args(hint)[0] if hasattr(hint, "__metadata__") else hint):
            return True
    return False


def _is_body_type(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Model | None: a body, optional
        return any(_is_body_type(member) for member in typing.get_args(annotation) if member is not type(None))
    return typing.get_origin(annotation) in (list, dict, set, tuple) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )


def shared_errors(route: Route) -> tuple[int, ...]:
    """401/403 (authorization) and 422 (validation) everywhere; 400/413/415 where a JSON body is read."""
    # 422 on every route: Powertools documents it on every route (in its own shape, which this replaces).
    statuses = [401, 403, 422]
    if reads_body(route):
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
    return app.get_openapi_json_schema(**document_options())


def serve(app: APIGatewayHttpResolver, route: str) -> Response[str]:
    """The answer of the open route ``DOCUMENT_ROUTE`` (the document) or ``SWAGGER_ROUTE`` (Swagger UI, as
    Powertools' ``enable_swagger`` serves it: its assets inlined, so it works offline; ``?format=json`` the
    document with the page's server, ``?format=oauth2-redirect`` the OAuth2 redirect page)."""
    if route == DOCUMENT_ROUTE:
        return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=document(app))
    from aws_lambda_powertools.event_handler.openapi.compat import model_json
    from aws_lambda_powertools.event_handler.openapi.models import Server
    from aws_lambda_powertools.event_handler.openapi.swagger_ui import (
        generate_oauth2_redirect_html,
        generate_swagger_html,
    )

    query = app.current_event.query_string_parameters or {}
    if query.get("format") == "oauth2-redirect":
        return Response(status_code=200, content_type="text/html", body=generate_oauth2_redirect_html())
    spec = app.get_openapi_schema(**document_options(), servers=[Server(url=app._get_base_path() or "/")])
    # Escaped as Powertools escapes it: a "</script>" inside the JSON must not end the page's script.
    escaped = model_json(spec, by_alias=True, exclude_none=True, indent=2).replace("</", "<\\/")
    if query.get("format") == "json":
        return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=escaped)
    assets = Path(inspect.getfile(generate_swagger_html)).parent
    page = generate_swagger_html(
        escaped,
        (assets / "swagger-ui-bundle.min.js").read_text(encoding="utf-8"),
        (assets / "swagger-ui.min.css").read_text(encoding="utf-8"),
        "",  # no swagger_base_url: the assets above are inlined
        None,  # no OAuth2 configuration
        False,  # persist_authorization off
    )
    return Response(status_code=200, content_type="text/html", body=page)


def main(argv: list[str] | None = None) -> int:
    """``python -m functions.api.openapi [PATH]``: write the document (to docs/openapi.json by default)."""
    from functions.api.app import app

    target = Path((argv if argv is not None else sys.argv[1:] or [str(DOCUMENT_PATH)])[0])
    target.write_text(json.dumps(json.loads(document(app)), indent=2, sort_keys=False) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
