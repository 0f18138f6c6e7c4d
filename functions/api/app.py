"""The control plane's HTTP API: one Lambda function behind API Gateway (HTTP API, payload 2.0).

Handlers are thin: parse (Powertools + pydantic), call one use case, return a model.
Domain errors become HTTP responses here and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import ServiceError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.api import openapi
from functions.api.auth import caller_from_event
from functions.api.observability import capture_lambda_handler, count, flush_spans, logger, publish_metrics
from functions.api.routers import dashboard, environments, keys, nodes, packages, runs, schedules
from functions.logic.errors import (
    BadRequest,
    Conflict,
    DomainError,
    NotFound,
    TooLarge,
    Unavailable,
    Unprocessable,
)
from runly_core import strict_json
from runly_core.contracts import ErrorBody
from runly_core.resources import MAX_API_BODY_BYTES, is_open_route
from runly_core.table import Unread


def read_body(text: str) -> Any:
    """Every request body, whatever the route: JSON within runly_core.strict_json's limits (docs/api.md), else a 400
    naming the field (syntax errors stay JSONDecodeError: the 400 "not valid JSON" below)."""
    try:
        return strict_json.loads(text)
    except strict_json.JsonRefused as exc:
        raise BadRequest(f"{exc.field or 'the body'}: {exc.problem}", field=exc.field) from exc


app = APIGatewayHttpResolver(enable_validation=True, json_body_deserializer=read_body)
app.include_router(runs.router, prefix="/runs")
app.include_router(packages.router, prefix="/packages")
app.include_router(nodes.router, prefix="/nodes")
app.include_router(keys.router, prefix="/keys")
app.include_router(environments.router, prefix="/environments")
app.include_router(schedules.router, prefix="/schedules")
app.include_router(dashboard.router)  # the page and its assets (open routes), and GET /me
# Open routes (runly_core.resources.OPEN_ROUTES): the document and Swagger UI, whose assets Powertools bundles and
# inlines into the page, so it works with no internet access. Both are built when asked for, not at import.


@app.get(openapi.SWAGGER_ROUTE, include_in_schema=False)
def swagger_ui() -> Response[str]:
    return openapi.serve(app, openapi.SWAGGER_ROUTE)


@app.get(openapi.DOCUMENT_ROUTE, include_in_schema=False)
def openapi_document() -> Response[str]:
    return openapi.serve(app, openapi.DOCUMENT_ROUTE)


# Keep after every include_router: documents the errors that every protected route shares.
openapi.declare_shared_errors(app)


def _refuse_unknown_query_parameters(
    resolver: APIGatewayHttpResolver, next_middleware: NextMiddleware
) -> Response[Any]:
    """422 for a query parameter the route does not declare: a misspelt filter must not be silently ignored."""
    route = resolver.context.get("_route")  # where Powertools keeps the matched route during a request
    if route is not None and route.include_in_schema:
        declared = {param.alias for param in route.dependant.query_params}
        for name in resolver.current_event.query_string_parameters or {}:
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                return _error(
                    422,
                    ErrorBody(
                        code="invalid_request",
                        message=f"unknown query parameter {name!r} (this operation takes: {known})",
                        field=name or None,
                    ),
                )
    return next_middleware(resolver)


app.use(middlewares=[_refuse_unknown_query_parameters])

_STATUS: dict[type[DomainError], int] = {
    BadRequest: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unprocessable: 422,
    Unavailable: 503,
}


_SERVICE_ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
}


def _error(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump_json(exclude_none=True),
        headers=headers,
    )


def _error_event(status: int, message: str) -> dict[str, Any]:
    """An error answered before the resolver runs, as the Lambda proxy result the resolver would build."""
    body = ErrorBody(code=_SERVICE_ERROR_CODES[status], message=message).model_dump_json(exclude_none=True)
    return {"statusCode": status, "headers": {"Content-Type": content_types.APPLICATION_JSON}, "body": body}


@app.exception_handler(DomainError)
def _domain_error(exc: DomainError) -> Response[Any]:
    return _error(_STATUS.get(type(exc), 400), ErrorBody(code=exc.code, message=exc.message, field=exc.field))


@app.exception_handler(Unread)
def _unread(exc: Unread) -> Response[Any]:
    # A batch read DynamoDB kept refusing (throttled): nothing partial is answered.
    return _error(503, ErrorBody(code="unavailable", message="the store is busy; nothing was read, retry"))


@app.exception_handler(ServiceError)
def _service_error(exc: ServiceError) -> Response[Any]:
    # Powertools' own HTTP errors (UnauthorizedError, ForbiddenError, NotFoundError...), in the one error shape.
    code = _SERVICE_ERROR_CODES.get(exc.status_code, HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_"))
    return _error(exc.status_code, ErrorBody(code=code, message=str(exc.msg)))


@app.exception_handler(RequestUnsupportedContentType)
def _unsupported_content_type(exc: RequestUnsupportedContentType) -> Response[Any]:
    return _error(415, ErrorBody(code="unsupported_media_type", message="send the body as application/json"))


@app.exception_handler(RequestValidationError)
def _invalid_request(exc: RequestValidationError) -> Response[Any]:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return _error(400, ErrorBody(code="bad_request", message="the body is not valid JSON"))
    # Powertools prefixes the location with where it came from ("body", "query"...): keep only the field path.
    # A list position is written as an index: runs[3].config, as the batch's own checks name it.
    field = ""
    for part in first.get("loc", ()):
        if part in ("body", "query", "path", "header"):
            continue
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    return _error(
        422,
        ErrorBody(code="invalid_request", message=str(first.get("msg", "invalid request")), field=field or None),
    )


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[Any]:
    # The request id: the same id is in API Gateway's access log and the apigw-requestid response header.
    correlation_id = logger.get_correlation_id() or str(uuid.uuid4())
    logger.exception("unhandled error", extra={"correlation_id": correlation_id})
    count("UnhandledErrors")
    return _error(500, ErrorBody(code="internal_error", message="internal error", correlation_id=correlation_id))


@app.not_found
def _no_route(exc: Exception) -> Response[Any]:
    path = app.current_event.raw_path
    allowed = sorted({route.method for route in openapi.registered_routes(app) if route.rule.match(path)})
    if allowed:
        return _error(
            405,
            ErrorBody(code="method_not_allowed", message=f"{path} allows {', '.join(allowed)}"),
            headers={"Allow": ", ".join(allowed)},
        )
    return _error(404, ErrorBody(code="not_found", message=f"no route {path}"))


def _body_bytes(event: dict[str, Any]) -> bytes | None:
    """The request body as sent, or None when it is not even valid base64."""
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None


def _refused_before_routing(event: dict[str, Any]) -> dict[str, Any] | None:
    """401 for a request that reached us without the authorizer's identity (API Gateway answers that itself; the
    check keeps the function safe behind a misconfigured route), 413 for a body over the API's limit, 400 for a
    body that is not UTF-8 text (the API reads JSON only; API Gateway passes such a body base64-encoded)."""
    http = (event.get("requestContext") or {}).get("http") or {}
    if not is_open_route(str(http.get("method", "")), event.get("rawPath", "")):
        try:
            caller_from_event(event)
        except ServiceError as exc:
            return _error_event(401, str(exc.msg))
    body = _body_bytes(event)
    if body is None:
        return _error_event(400, "the body is not valid base64")
    if len(body) > MAX_API_BODY_BYTES:
        return _error_event(413, f"the body exceeds the API's {MAX_API_BODY_BYTES}-byte limit")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return _error_event(400, "the body is not UTF-8 text")
    return None


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        return _refused_before_routing(event) or app.resolve(event, context)
    finally:
        publish_metrics()
        flush_spans()
