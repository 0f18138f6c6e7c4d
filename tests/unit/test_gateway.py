"""The local API Gateway: requests in, payload 2.0 events to the handler, responses out, over real HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from runly_cli.embedded.gateway import (
    MAX_REQUEST_BODY_BYTES,
    AuthorizerCache,
    Gateway,
    LocalLambdaContext,
    build_event,
    is_textual_content_type,
    resolve_handler,
    to_http_response,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "xyzzy-secret-detail"


def echo_handler(event: dict[str, Any], context: Any) -> Any:
    """A Lambda handler whose paths exercise each response rule; by default it echoes what it got."""
    path = event["rawPath"]
    if path == "/boom":
        raise RuntimeError(SECRET)
    if path == "/bare":
        return {"hello": "world", "n": 1}
    if path == "/text":
        return "plain words"
    if path == "/respond":
        return {
            "statusCode": 201,
            "headers": {"content-type": "text/plain", "x-answer": 42},
            "cookies": ["session=abc; Path=/; HttpOnly", "theme=dark"],
            "body": "created",
        }
    if path == "/binary":
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/octet-stream"},
            "body": base64.b64encode(b"\x00\xffbin").decode("ascii"),
            "isBase64Encoded": True,
        }
    if path == "/malformed":
        return {"statusCode": "a teapot", "body": SECRET}
    echoed = {
        "event": event,
        "context": {
            "function_name": context.function_name,
            "aws_request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
        },
    }
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(echoed)}


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    with Gateway(echo_handler) as running:
        yield running


def call(
    gateway: Gateway,
    method: str,
    target: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> tuple[int, Message, bytes]:
    """One request through urllib; 4xx/5xx come back as values, not exceptions."""
    request = urllib.request.Request(gateway.url + target, data=body, method=method)
    for name, value in headers or []:
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def echoed(body: bytes) -> dict[str, Any]:
    return json.loads(body)["event"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the event


def test_request_line_becomes_method_path_and_query(gateway: Gateway) -> None:
    status, _, body = call(gateway, "GET", "/runs/r-1?tag=a&tag=b&name=x%20y&empty=")

    assert status == 200
    event = echoed(body)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/runs/r-1"
    assert event["rawQueryString"] == "tag=a&tag=b&name=x%20y&empty="
    assert event["queryStringParameters"] == {"tag": "a,b", "name": "x y", "empty": ""}
    http = event["requestContext"]["http"]
    assert http == {
        "method": "GET",
        "path": "/runs/r-1",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": http["userAgent"],
    }
    assert http["userAgent"].startswith("Python-urllib")
    assert event["isBase64Encoded"] is False
    assert "body" not in event
    assert "cookies" not in event


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_api_gateway_method_reaches_the_handler(gateway: Gateway, method: str) -> None:
    status, _, body = call(gateway, method, "/thing")

    assert status == 200
    assert echoed(body)["requestContext"]["http"]["method"] == method


def test_head_gets_headers_without_a_body(gateway: Gateway) -> None:
    status, headers, body = call(gateway, "HEAD", "/thing")

    assert status == 200
    assert int(headers["Content-Length"]) > 0
    assert body == b""


def test_headers_are_lower_cased_and_repeats_joined_and_cookies_split_out(gateway: Gateway) -> None:
    # Given a client that repeats a header and sends two Cookie headers (urllib cannot repeat headers)
    connection = http.client.HTTPConnection(gateway.url.removeprefix("http://"), timeout=10)
    try:
        connection.putrequest("GET", "/hello")
        connection.putheader("X-Trace-Tag", "one")
        connection.putheader("X-Trace-Tag", "two")
        connection.putheader("Cookie", "session=abc; theme=dark")
        connection.putheader("Cookie", "lang=en")
        connection.endheaders()
        # When the gateway turns it into an event
        response = connection.getresponse()
        event = echoed(response.read())
        # Then one connection serves a second request (keep-alive framing is right)
        connection.request("GET", "/again")
        second = connection.getresponse()
        assert echoed(second.read())["rawPath"] == "/again"
    finally:
        connection.close()

    assert response.status == 200
    assert all(name == name.lower() for name in event["headers"])
    assert event["headers"]["x-trace-tag"] == "one,two"
    assert event["headers"]["host"] == gateway.url.removeprefix("http://")
    assert event["cookies"] == ["session=abc", "theme=dark", "lang=en"]
    assert "cookie" not in event["headers"]
    assert event["requestContext"]["domainName"] == "127.0.0.1"
    assert event["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert event["headers"]["x-forwarded-proto"] == "http"


def test_request_context_and_lambda_context_identify_the_request(gateway: Gateway) -> None:
    _, first_headers, first = call(gateway, "GET", "/one")
    _, _, second = call(gateway, "GET", "/two")

    context = echoed(first)["requestContext"]
    assert context["accountId"] == "123456789012"
    assert context["apiId"] == "local"
    assert context["stage"] == "$default"
    assert context["routeKey"] == "$default"
    assert abs(context["timeEpoch"] - time.time() * 1000) < 60_000
    assert context["requestId"] != echoed(second)["requestContext"]["requestId"]
    lambda_context = json.loads(first)["context"]
    assert lambda_context["aws_request_id"] == context["requestId"]
    assert first_headers["apigw-requestid"] == context["requestId"]
    assert 0 < lambda_context["remaining_ms"] <= 29_000


def test_text_body_arrives_as_text(gateway: Gateway) -> None:
    payload = json.dumps({"name": "nightly", "größe": 3}).encode()

    _, _, body = call(gateway, "POST", "/runs", headers=[("Content-Type", "application/json")], body=payload)

    event = echoed(body)
    assert event["isBase64Encoded"] is False
    assert event["body"] == payload.decode()


def test_binary_body_arrives_base64_encoded(gateway: Gateway) -> None:
    payload = bytes(range(256))

    _, _, body = call(gateway, "PUT", "/blob", headers=[("Content-Type", "application/octet-stream")], body=payload)

    event = echoed(body)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_chunked_body_is_read_whole(gateway: Gateway) -> None:
    connection = http.client.HTTPConnection(gateway.url.removeprefix("http://"), timeout=10)
    try:
        connection.request(
            "POST",
            "/chunked",
            body=iter([b'{"a":', b" 1}"]),
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        event = echoed(connection.getresponse().read())
    finally:
        connection.close()

    assert event["body"] == '{"a": 1}'


@pytest.mark.parametrize(
    ("content_type", "textual"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("text/plain", True),
        ("text/csv", True),
        ("application/problem+json", True),
        ("application/xml", True),
        ("application/atom+xml", True),
        ("application/x-www-form-urlencoded", True),
        ("application/octet-stream", False),
        ("image/png", False),
        ("application/gzip", False),
        (None, False),
    ],
)
def test_which_content_types_are_passed_as_text(content_type: str | None, textual: bool) -> None:
    assert is_textual_content_type(content_type) is textual


def test_build_event_fields_follow_payload_format_2() -> None:
    event = build_event(
        method="post",
        raw_path="/items/a%20b/files/x/y.txt",
        raw_query="",
        headers=[("Host", "abc123.execute-api.us-east-1.amazonaws.com"), ("Content-Type", "text/plain")],
        body=b"hi",
        source_ip="203.0.113.9",
        route_key="POST /items/{item_id}/files/{path+}",
        request_id="JKJaXmPLvHcESHA=",
        now=1584039838.5,
    )

    assert event["pathParameters"] == {"item_id": "a b", "path": "x/y.txt"}
    assert "queryStringParameters" not in event
    context = event["requestContext"]
    assert context["time"] == "12/Mar/2020:19:03:58 +0000"
    assert context["timeEpoch"] == 1584039838500
    assert context["domainName"] == "abc123.execute-api.us-east-1.amazonaws.com"
    assert context["domainPrefix"] == "abc123"
    assert context["routeKey"] == "POST /items/{item_id}/files/{path+}"
    assert context["http"]["method"] == "POST"
    assert context["http"]["sourceIp"] == "203.0.113.9"
    assert event["body"] == "hi"
    assert event["isBase64Encoded"] is False


def test_lambda_context_counts_down_from_the_timeout() -> None:
    context = LocalLambdaContext(aws_request_id="r-1", timeout_seconds=2)

    assert 0 < context.get_remaining_time_in_millis() <= 2000
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:runly-local-api"
    assert context.log_group_name == "/aws/lambda/runly-local-api"
    assert LocalLambdaContext(aws_request_id="r-2", timeout_seconds=0).get_remaining_time_in_millis() == 0


# ---------------------------------------------------------------- the response


def test_proxy_response_sets_status_headers_and_one_set_cookie_per_cookie(gateway: Gateway) -> None:
    status, headers, body = call(gateway, "POST", "/respond")

    assert status == 201
    assert body == b"created"
    assert headers["Content-Type"] == "text/plain"
    assert headers["X-Answer"] == "42"
    assert headers.get_all("Set-Cookie") == ["session=abc; Path=/; HttpOnly", "theme=dark"]


def test_value_without_status_code_becomes_200_json(gateway: Gateway) -> None:
    status, headers, body = call(gateway, "GET", "/bare")

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"hello": "world", "n": 1}


def test_string_result_is_the_body_as_is(gateway: Gateway) -> None:
    status, headers, body = call(gateway, "GET", "/text")

    assert (status, headers["Content-Type"], body) == (200, "application/json", b"plain words")


def test_base64_encoded_response_body_is_decoded(gateway: Gateway) -> None:
    status, headers, body = call(gateway, "GET", "/binary")

    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert body == b"\x00\xffbin"


@pytest.mark.parametrize("path", ["/boom", "/malformed"])
def test_handler_failure_is_an_opaque_500(gateway: Gateway, path: str) -> None:
    status, headers, body = call(gateway, "GET", path)

    assert status == 500
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == "internal_error"
    assert error["message"] == "Internal Server Error"
    assert error["correlation_id"] == headers["apigw-requestid"]
    assert SECRET not in body.decode()
    assert "Traceback" not in body.decode()


def test_failure_traceback_goes_to_the_log(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR", logger="runly_cli.embedded.gateway"):
        call(gateway, "GET", "/boom")

    assert any(SECRET in (record.exc_text or "") for record in caplog.records)


def test_to_http_response_rules() -> None:
    assert to_http_response([1, 2]) == (200, [("content-type", "application/json")], b"[1, 2]")
    assert to_http_response({"statusCode": 204}) == (204, [], b"")
    assert to_http_response({"statusCode": 200, "body": {"not": "a string"}})[0] == 500
    assert to_http_response({"statusCode": 200, "headers": {"Content-Length": "999"}, "body": "ok"}) == (
        200,
        [],
        b"ok",
    )


# ---------------------------------------------------------------- limits


def test_body_over_api_gateway_limit_is_413_without_invoking() -> None:
    invoked: list[dict[str, Any]] = []
    with Gateway(lambda event, context: invoked.append(event)) as gateway:
        status, _, body = call(
            gateway,
            "POST",
            "/big",
            headers=[("Content-Type", "application/octet-stream")],
            body=b"x" * (MAX_REQUEST_BODY_BYTES + 1),
        )

    assert status == 413
    assert json.loads(body)["code"] == "payload_too_large"
    assert invoked == []


def test_body_at_a_smaller_configured_limit_passes_and_one_byte_more_does_not() -> None:
    invoked: list[dict[str, Any]] = []
    with Gateway(lambda event, context: invoked.append(event), max_body_bytes=1024) as gateway:
        at_limit, _, _ = call(gateway, "POST", "/ok", headers=[("Content-Type", "text/plain")], body=b"a" * 1024)
        over, _, _ = call(gateway, "POST", "/big", headers=[("Content-Type", "text/plain")], body=b"a" * 1025)

    assert (at_limit, over) == (200, 413)
    assert [event["rawPath"] for event in invoked] == ["/ok"]


def test_event_over_lambda_invocation_limit_is_413_without_invoking() -> None:
    invoked: list[dict[str, Any]] = []
    with Gateway(lambda event, context: invoked.append(event), max_invocation_bytes=2048) as gateway:
        status, _, _ = call(gateway, "POST", "/big", headers=[("Content-Type", "text/plain")], body=b"a" * 4096)

    assert status == 413
    assert invoked == []


# ---------------------------------------------------------------- Powertools accepts the events


class Item(BaseModel):
    # At module level: the route's string annotations (PEP 563) are resolved against module globals.
    name: str
    size: int


def test_powertools_http_resolver_app_works_through_the_gateway() -> None:
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

    app = APIGatewayHttpResolver(enable_validation=True)
    log = Logger(service="gateway-test")

    @app.get("/items/<item_id>")
    def get_item(item_id: str) -> dict[str, Any]:
        return {
            "item_id": item_id,
            "q": app.current_event.get_query_string_value("q"),
            "theme": app.current_event.resolved_cookies_field.get("theme"),
            "request_id": app.lambda_context.aws_request_id,
        }

    @app.post("/items")
    def create_item(item: Item) -> tuple[dict[str, Any], int]:
        return item.model_dump(), 201

    @log.inject_lambda_context
    def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return app.resolve(event, context)

    with Gateway(lambda_handler) as gateway:
        got_status, got_headers, got = call(gateway, "GET", "/items/i-7?q=blue", headers=[("Cookie", "theme=dark")])
        made_status, _, made = call(
            gateway,
            "POST",
            "/items",
            headers=[("Content-Type", "application/json")],
            body=json.dumps({"name": "box", "size": 3}).encode(),
        )
        invalid_status, _, _ = call(
            gateway, "POST", "/items", headers=[("Content-Type", "application/json")], body=b'{"name": "box"}'
        )
        missing_status, _, _ = call(gateway, "GET", "/nowhere")

    assert got_status == 200
    assert json.loads(got) == {
        "item_id": "i-7",
        "q": "blue",
        "theme": "dark",
        "request_id": got_headers["apigw-requestid"],
    }
    assert (made_status, json.loads(made)) == (201, {"name": "box", "size": 3})
    assert invalid_status == 422
    assert missing_status == 404


# ---------------------------------------------------------------- handler loading and the process


def test_resolve_handler_imports_a_dotted_path() -> None:
    assert resolve_handler("tests.unit.test_gateway.echo_handler") is echo_handler
    with pytest.raises(ValueError, match="no attribute"):
        resolve_handler("tests.unit.test_gateway.missing")
    with pytest.raises(ValueError, match=r"package\.module\.function"):
        resolve_handler("echo_handler")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_main_serves_until_signalled_then_exits_cleanly(tmp_path: Path, stop_signal: signal.Signals) -> None:
    # Given the gateway started as a process, the way the embedded stack starts it
    ready_file = tmp_path / "gateway.url"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runly_cli.embedded.gateway",
            "--handler",
            "tests.unit.test_gateway.echo_handler",
            "--no-authorizer",
            "--port",
            "0",
            "--ready-file",
            str(ready_file),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not ready_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gateway never became ready: {process.communicate(timeout=5)}")
            time.sleep(0.02)
        url = ready_file.read_text().strip()

        # When a request is made and then the signal is sent
        with urllib.request.urlopen(f"{url}/ping?x=1", timeout=10) as response:
            event = json.loads(response.read())["event"]
        process.send_signal(stop_signal)
        stdout, _ = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    # Then it served, announced its URL on stdout too, and stopped cleanly
    assert event["rawPath"] == "/ping"
    assert event["queryStringParameters"] == {"x": "1"}
    assert stdout.splitlines()[0] == url
    assert process.returncode == 0
    assert not ready_file.exists()


# ---------------------------------------------------------------- the authorizer's result cache


class _Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_an_authorizer_answer_is_reused_for_the_same_header_until_its_ttl_has_passed() -> None:
    clock = _Clock()
    cache = AuthorizerCache(10, clock=clock)
    allowed = {"isAuthorized": True, "context": {"key_id": "k1", "scope": "read", "environment": ""}}
    cache.put(["Bearer a"], allowed)

    assert cache.get(["Bearer a"]) == allowed and cache.get(["Bearer b"]) is None
    clock.now += 9.999
    assert cache.get(["Bearer a"]) == allowed
    clock.now += 0.001
    assert cache.get(["Bearer a"]) is None  # expired at exactly the TTL, as a bound must


def test_a_ttl_of_zero_caches_nothing_and_a_negative_one_is_refused() -> None:
    cache = AuthorizerCache(0)
    cache.put(["Bearer a"], {"isAuthorized": False})
    assert cache.get(["Bearer a"]) is None
    with pytest.raises(ValueError, match="negative"):
        AuthorizerCache(-1)


def test_the_cache_keeps_at_most_its_entries_dropping_the_oldest() -> None:
    cache = AuthorizerCache(60, clock=_Clock(), max_entries=2)
    for header in ("Bearer a", "Bearer b", "Bearer c"):
        cache.put([header], {"isAuthorized": False})
    assert cache.get(["Bearer a"]) is None
    assert cache.get(["Bearer b"]) == cache.get(["Bearer c"]) == {"isAuthorized": False}
