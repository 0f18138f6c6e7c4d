"""What every request goes through: authentication, body limits, routing errors, unexpected failures, the
OpenAPI document and Swagger UI. Every error is an ErrorBody."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from functions.api import openapi
from functions.api.app import app
from runly_core.contracts import ErrorBody, Scope
from runly_core.resources import MAX_API_BODY_BYTES
from tests.support.api import Answer, api_event, call, invoke, module_function_env  # noqa: F401  (fixture)
from tests.support.auth import as_caller

EVENTS = Path(__file__).resolve().parents[1] / "events"

pytestmark = pytest.mark.usefixtures("module_function_env")


def _error(answer: Answer, status: int, code: str) -> ErrorBody:
    assert answer.status == status, answer.body
    error = ErrorBody.model_validate(answer.body)
    assert error.code == code
    return error


def test_a_request_without_the_authorizers_identity_is_401() -> None:
    _error(call("GET", "/runs", scope=None), 401, "unauthorized")
    # Also on unknown routes: who you are comes before what you ask for, as on API Gateway.
    _error(call("GET", "/nowhere", scope=None), 401, "unauthorized")
    # A context the authorizer would never produce is no identity either.
    event = api_event("GET", "/runs")
    event["requestContext"]["authorizer"] = {"lambda": {"key_id": "k", "scope": "superuser", "environment": ""}}
    _error(invoke(event), 401, "unauthorized")


def test_an_unknown_route_is_404_and_a_known_path_with_another_method_405() -> None:
    _error(call("GET", "/nowhere"), 404, "not_found")
    answer = call("PUT", "/keys")
    _error(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == "GET, POST"
    assert call("PATCH", "/runs/run_1").headers["allow"] == "GET"


def test_a_body_over_the_api_limit_is_413_before_anything_runs() -> None:
    event = as_caller(api_event("POST", "/keys", raw_body=b'{"name": "' + b"x" * MAX_API_BODY_BYTES + b'"}'))
    _error(invoke(event), 413, "payload_too_large")
    at_limit = b'{"name": "n", "scope": "read", "pad": "' + b"x" * 100 + b'"}'
    assert invoke(as_caller(api_event("POST", "/keys", raw_body=at_limit))).status == 422  # read, then validated


def test_malformed_json_is_400_and_a_foreign_content_type_415() -> None:
    _error(invoke(as_caller(api_event("POST", "/keys", raw_body=b"{not json"))), 400, "bad_request")
    event = api_event("POST", "/keys", raw_body=b"name=x", headers=[("content-type", "text/plain")])
    event["headers"]["content-type"] = "text/plain"
    _error(invoke(as_caller(event)), 415, "unsupported_media_type")


def test_an_unexpected_failure_is_500_with_the_request_id_and_no_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.api.observability import logger
    from functions.logic import keys

    log = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", log)

    def explode(**_: Any) -> None:
        raise RuntimeError("secret detail: table runly-test-store is on fire")

    monkeypatch.setattr(keys, "list_keys", explode)
    event = as_caller(api_event("GET", "/keys"))

    error = _error(invoke(event), 500, "internal_error")

    assert error.correlation_id == event["requestContext"]["requestId"]
    assert "fire" not in error.message and error.field is None
    logged = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    [failure] = [line for line in logged if line.get("message") == "unhandled error"]
    assert failure["correlation_id"] == error.correlation_id and "fire" in failure["exception"]


def test_the_fixture_event_of_a_node_key_lists_only_its_environments_nodes() -> None:
    # The API function with the event API Gateway sends once the authorizer allowed a node key of "default".
    event = json.loads((EVENTS / "api_list_nodes.json").read_text())
    answer = invoke(event)
    assert answer.status == 200 and all(node["environment"] == "default" for node in answer.body["items"])

    event["rawQueryString"] = "environment=staging"
    event["queryStringParameters"] = {"environment": "staging"}
    _error(invoke(event), 403, "forbidden")


# ---------------------------------------------------------------- OpenAPI and Swagger UI


def test_docs_openapi_json_is_the_document_the_code_generates() -> None:
    committed = json.loads(openapi.DOCUMENT_PATH.read_text())
    generated = json.loads(openapi.document(app))
    assert generated == committed, "docs/openapi.json is out of date: run `make openapi`"


def test_the_document_is_openapi_3_1_with_bearer_keys_and_error_bodies() -> None:
    document = json.loads(openapi.document(app))
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"][openapi.SECURITY_SCHEME]["scheme"] == "bearer"
    assert document["security"] == [{openapi.SECURITY_SCHEME: []}]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"401", "403", "422"} <= statuses, f"{method} {path}"
            assert any(status.startswith("2") for status in statuses), f"{method} {path}"
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, f"{method} {path} {status}"


def test_the_document_and_swagger_ui_are_served_without_a_key_and_work_offline() -> None:
    served = call("GET", "/openapi.json", scope=None)
    assert served.status == 200 and served.body == json.loads(openapi.document(app))

    page = call("GET", "/docs", scope=None)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    # The Swagger UI assets are inlined (Powertools bundles them): nothing is fetched from a CDN.
    assert "<script src=" not in page.body and "cdn" not in page.body.lower()
    assert "SwaggerUIBundle" in page.body


def test_an_authorized_caller_does_not_change_the_open_routes() -> None:
    assert call("GET", "/openapi.json", scope=Scope.READ).status == 200


def test_a_body_that_is_not_utf8_is_400() -> None:
    event = as_caller(api_event("POST", "/keys", raw_body=b'{"name": "\xff\xfe"}'))
    assert event["isBase64Encoded"] is True  # as API Gateway passes a body that is not text
    _error(invoke(event), 400, "bad_request")


def test_an_unknown_query_parameter_is_422_naming_it() -> None:
    error = _error(call("GET", "/nodes", query="enviroment=staging"), 422, "invalid_request")
    assert error.field == "enviroment" and "environment" in error.message
    assert call("GET", "/nodes", query="environment=staging").status == 200
    assert call("GET", "/keys", query="x=1").status == 422
