"""The control plane's HTTP API: one Lambda function behind API Gateway (HTTP API, payload 2.0).

Handlers are thin: parse (Powertools + pydantic), call one use case, return a model.
Domain errors become HTTP responses here and nowhere else.
"""

from __future__ import annotations

import uuid
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.api.routers import packages, runs
from functions.logic.errors import Conflict, DomainError, NotFound, Unavailable, Unprocessable
from runly.contracts import ErrorBody

logger = Logger(service="runly-api")
app = APIGatewayHttpResolver(enable_validation=True)
app.include_router(runs.router, prefix="/runs")
app.include_router(packages.router, prefix="/packages")

_STATUS: dict[type[DomainError], int] = {NotFound: 404, Conflict: 409, Unprocessable: 422, Unavailable: 503}


def _error(status: int, body: ErrorBody) -> Response[Any]:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body.model_dump_json(exclude_none=True)
    )


@app.exception_handler(DomainError)
def _domain_error(exc: DomainError) -> Response[Any]:
    return _error(_STATUS.get(type(exc), 400), ErrorBody(code=exc.code, message=exc.message, field=exc.field))


@app.exception_handler(RequestValidationError)
def _invalid_request(exc: RequestValidationError) -> Response[Any]:
    first = exc.errors()[0] if exc.errors() else {}
    # Powertools prefixes the location with where it came from ("body", "query"...): keep only the field path.
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    return _error(
        422,
        ErrorBody(
            code="invalid_request",
            message=str(first.get("msg", "invalid request")),
            field=".".join(location) or None,
        ),
    )


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[Any]:
    correlation_id = str(uuid.uuid4())
    logger.exception("unhandled error", extra={"correlation_id": correlation_id})
    return _error(500, ErrorBody(code="internal_error", message="internal error", correlation_id=correlation_id))


@app.not_found
def _no_route(exc: Exception) -> Response[Any]:
    return _error(404, ErrorBody(code="not_found", message=f"no route {app.current_event.raw_path}"))


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
