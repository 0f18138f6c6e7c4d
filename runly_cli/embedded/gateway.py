"""The local stand-in for Amazon API Gateway (HTTP API, Lambda proxy, payload format 2.0).

Each HTTP request on 127.0.0.1 becomes the event API Gateway would send, and the
very handler the CDK stack deploys (``runly_core.resources.API_FUNCTION_HANDLER``) is
called with it, so the API code runs unchanged locally. The handler's return value
is turned into the HTTP response by the same rules API Gateway applies.

With an authorizer (the CDK stack's: ``runly_core.resources.AUTHORIZER_FUNCTION_HANDLER``), every
request but those of the open routes (``runly_core.resources.OPEN_ROUTES``) goes through it first, as
on AWS with a Lambda REQUEST authorizer (payload 2.0, simple responses, identity source
``$request.header.Authorization``): no Authorization header -> 401 without calling it;
``isAuthorized`` false -> 403; true -> the function gets the authorizer's context at
``requestContext.authorizer.lambda``. Its answers are cached as API Gateway caches them: per value of
the identity source (the Authorization header), answer and context alike, for
``runly_core.resources.AUTHORIZER_RESULT_TTL_SECONDS`` from the call that produced them (``AuthorizerCache``);
a failed call (an exception, a malformed answer) is not cached. One difference: API Gateway answers those 401/403 with
``{"message": ...}`` (an HTTP API cannot reshape its own responses); here they are ErrorBody.

Run it as a process::

    python -m runly_cli.embedded.gateway --handler functions.api.app.lambda_handler \
        --authorizer functions.authorizer.app.lambda_handler --port 0 --ready-file PATH

Reference: https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html
and https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-lambda-authorizer.html
"""

from __future__ import annotations

import argparse
import base64
import decimal
import importlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from runly_core.contracts import ErrorBody
from runly_core.resources import (
    API_FUNCTION_HANDLER,
    AUTHORIZATION_HEADER,
    AUTHORIZER_FUNCTION_HANDLER,
    AUTHORIZER_RESULT_TTL_SECONDS,
    FUNCTIONS_MEMORY_MB,
    FUNCTIONS_TIMEOUT_SECONDS,
    LOCAL_ACCOUNT,
    LOCAL_REGION,
    OPEN_ROUTES,
    is_open_route,
)

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(f"{__name__}.access")

Handler = Callable[[dict[str, Any], Any], Any]
Response = tuple[int, list[tuple[str, str]], bytes]

# API Gateway's quota for a request payload; above it the client gets 413 and Lambda is never called.
MAX_REQUEST_BODY_BYTES = 10 * 1024 * 1024
# Lambda's limit for a synchronous invocation, request event and response alike. Smaller than
# API Gateway's, so it is the one an API actually hits; enforcing it locally shows that before a deploy.
MAX_INVOCATION_PAYLOAD_BYTES = 6 * 1024 * 1024
# A rejected body is still read and thrown away up to this size: closing a socket with unread
# data makes the kernel send RST, and the client would see "connection reset" instead of the 413.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
_IO_CHUNK_BYTES = 64 * 1024

LOCAL_API_ID = "local"
LOCAL_FUNCTION_NAME = "runly-local-api"
LOCAL_AUTHORIZER_NAME = "runly-local-authorizer"

# Content types whose bodies API Gateway passes as text; every other body arrives base64-encoded.
_TEXT_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/graphql",
        "application/x-yaml",
        "application/yaml",
    }
)
# Hop-by-hop and framing headers are the gateway's business, whatever the function returns.
_RESPONSE_HEADERS_OWNED_BY_GATEWAY = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
# API Gateway's request time: English month names whatever the locale, hence no strftime("%b").
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ROUTE_PARAMETER = re.compile(r"\{([^}/]+?)(\+?)\}")


# ---------------------------------------------------------------- request -> event


def is_textual_content_type(content_type: str | None) -> bool:
    """Whether API Gateway hands a body of this type to the function as text rather than base64."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_MEDIA_TYPES
        or media_type.endswith("+json")
        or media_type.endswith("+xml")
    )


def format_request_time(epoch_seconds: float) -> str:
    """``12/Mar/2020:19:03:58 +0000``, the format of ``requestContext.time``."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return f"{moment.day:02d}/{_MONTHS[moment.month - 1]}/{moment.year}:{moment:%H:%M:%S} +0000"


def new_request_id() -> str:
    # Shaped like API Gateway's (e.g. "JKJaXmPLvHcESHA="): 16 characters of base64.
    return base64.b64encode(secrets.token_bytes(11)).decode("ascii")


def match_route(route_key: str, raw_path: str) -> dict[str, str] | None:
    """The path parameters of ``raw_path`` under a route key such as ``GET /items/{item_id}``.

    Returns None when the route has no parameters (``$default`` included) or the path does not match.
    """
    if route_key == "$default" or " " not in route_key:
        return None
    route_path = route_key.split(" ", 1)[1]
    names: list[str] = []
    pattern = ""
    position = 0
    for found in _ROUTE_PARAMETER.finditer(route_path):
        pattern += re.escape(route_path[position : found.start()])
        names.append(found.group(1))
        # {proxy+} is greedy and spans segments; a plain {name} is one segment.
        pattern += "(.+)" if found.group(2) else "([^/]+)"
        position = found.end()
    if not names:
        return None
    pattern += re.escape(route_path[position:])
    matched = re.fullmatch(pattern, raw_path)
    if matched is None:
        return None
    return {name: unquote(value) for name, value in zip(names, matched.groups(), strict=True)}


def build_event(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    route_key: str = "$default",
    stage: str = "$default",
    api_id: str = LOCAL_API_ID,
    protocol: str = "HTTP/1.1",
    request_id: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API event (payload format 2.0) for one request.

    ``raw_path`` includes the stage prefix when ``stage`` is not ``$default``, as on AWS.
    ``request_id`` and ``now`` (epoch seconds) default to a fresh id and the current time.
    """
    joined_headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "cookie":
            # Format 2.0 moves cookies out of the headers into their own list, one entry per cookie.
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        joined_headers[lower] = f"{joined_headers[lower]},{value}" if lower in joined_headers else value

    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value

    timestamp = time.time() if now is None else now
    request_id = request_id or new_request_id()
    host = joined_headers.get("host") or "localhost"
    domain_name = urlsplit(f"//{host}").hostname or host  # without the port, as on AWS

    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = joined_headers
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": LOCAL_ACCOUNT,
        "apiId": api_id,
        "domainName": domain_name,
        "domainPrefix": domain_name.split(".", 1)[0],
        "http": {
            "method": method.upper(),
            "path": raw_path,
            "protocol": protocol,
            "sourceIp": source_ip,
            "userAgent": joined_headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": stage,
        "time": format_request_time(timestamp),
        "timeEpoch": int(timestamp * 1000),
    }
    path_parameters = match_route(route_key, raw_path)
    if path_parameters:
        event["pathParameters"] = path_parameters
    if body:
        text = _as_text(body) if is_textual_content_type(joined_headers.get("content-type")) else None
        event["body"] = text if text is not None else base64.b64encode(body).decode("ascii")
        event["isBase64Encoded"] = text is None
    else:
        # A request without a body has no "body" key on AWS either.
        event["isBase64Encoded"] = False
    return event


def _as_text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        # A "text" body that is not UTF-8 could not survive as a JSON string; base64 keeps it intact.
        return None


def build_authorizer_event(event: dict[str, Any], identity_source: list[str]) -> dict[str, Any]:
    """The Lambda REQUEST authorizer event (payload 2.0) API Gateway sends for the request ``event``.

    Everything the request event carries except its body, plus ``type``, ``routeArn`` and ``identitySource``
    (the values of the identity sources, in order).
    """
    context = event["requestContext"]
    route_arn = (
        f"arn:aws:execute-api:{LOCAL_REGION}:{context['accountId']}:{context['apiId']}/{context['stage']}"
        f"/{context['http']['method']}{event['rawPath']}"
    )
    authorizer_event: dict[str, Any] = {
        "version": "2.0",
        "type": "REQUEST",
        "routeArn": route_arn,
        "identitySource": list(identity_source),
        "routeKey": event["routeKey"],
        "rawPath": event["rawPath"],
        "rawQueryString": event["rawQueryString"],
    }
    for optional in ("cookies", "headers", "queryStringParameters"):
        if optional in event:
            authorizer_event[optional] = event[optional]
    authorizer_event["requestContext"] = json.loads(json.dumps(context))
    if "pathParameters" in event:
        authorizer_event["pathParameters"] = event["pathParameters"]
    return authorizer_event


# ---------------------------------------------------------------- result -> response


def lambda_json(value: Any) -> str:
    """Serialize a function's result as the Python Lambda runtime does (Decimal becomes a number)."""
    return json.dumps(value, default=_decimal_as_number)


def _decimal_as_number(value: object) -> Any:
    # boto3's DynamoDB resource returns numbers as Decimal; the Lambda runtime accepts them.
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def error_response(status: int, code: str, message: str, *, request_id: str | None = None) -> Response:
    body = ErrorBody(code=code, message=message, correlation_id=request_id).model_dump_json(exclude_none=True)
    return status, [("content-type", "application/json")], body.encode("utf-8")


def internal_error_response(request_id: str | None = None) -> Response:
    """API Gateway's answer when the function fails: 500, no detail (that stays in the log)."""
    return error_response(500, "internal_error", "Internal Server Error", request_id=request_id)


def to_http_response(result: Any, *, request_id: str | None = None) -> Response:
    """Map a function's (JSON-compatible) result to ``(status, headers, body)`` by the 2.0 rules.

    A dict with ``statusCode`` is a response: statusCode, headers, cookies (one Set-Cookie each),
    body, isBase64Encoded. Anything else is the body of a 200 application/json response: JSON
    text for objects, numbers and lists; a string as it is. A malformed response is a 500, as on AWS.
    """
    if not (isinstance(result, dict) and "statusCode" in result):
        body = result if isinstance(result, str) else lambda_json(result)
        return 200, [("content-type", "application/json")], body.encode("utf-8")
    try:
        return _proxy_response(result)
    except (TypeError, ValueError) as exc:
        logger.error("malformed Lambda response (request %s): %s", request_id, exc)
        return internal_error_response(request_id)


def _proxy_response(result: dict[str, Any]) -> Response:
    status = result["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"statusCode must be an HTTP status, got {status!r}")

    headers: list[tuple[str, str]] = []
    raw_headers = result.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise TypeError("headers must be an object")
    for name, value in raw_headers.items():
        if str(name).lower() in _RESPONSE_HEADERS_OWNED_BY_GATEWAY:
            continue
        headers.append((str(name), _header_value(value)))
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list):
        raise TypeError("cookies must be a list")
    headers.extend(("set-cookie", str(cookie)) for cookie in cookies)

    body = result.get("body")
    if body is None:
        payload = b""
    elif not isinstance(body, str):
        raise TypeError("body must be a string")
    elif result.get("isBase64Encoded") is True:
        payload = base64.b64decode(body, validate=True)
    else:
        payload = body.encode("utf-8")
    return status, headers, payload


def _header_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise TypeError(f"header values must be strings or numbers, got {type(value).__name__}")


# ---------------------------------------------------------------- the function


class LocalLambdaContext:
    """The parts of the Lambda context object that handlers and Powertools read."""

    def __init__(
        self,
        *,
        aws_request_id: str,
        function_name: str = LOCAL_FUNCTION_NAME,
        memory_limit_in_mb: int = FUNCTIONS_MEMORY_MB,
        timeout_seconds: float = FUNCTIONS_TIMEOUT_SECONDS,
        account: str = LOCAL_ACCOUNT,
        region: str = LOCAL_REGION,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = aws_request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self.identity: Any = None
        self.client_context: Any = None
        self.tenant_id: str | None = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def resolve_handler(dotted_path: str) -> Handler:
    """Import ``pkg.module.attr`` (the form of a Lambda handler setting) and return the callable."""
    module_name, _, attribute = dotted_path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"handler must look like 'package.module.function', got {dotted_path!r}")
    module = importlib.import_module(module_name)
    try:
        handler = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(handler):
        raise ValueError(f"{dotted_path!r} is not callable")
    return handler  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the server


class _BodyTooLarge(Exception):
    def __init__(self, unread_bytes: int) -> None:
        super().__init__(unread_bytes)
        self.unread_bytes = unread_bytes  # still in the socket, 0 when unknown


class _MalformedRequest(Exception):
    pass


class AuthorizerCache:
    """The authorizer's answers by identity-source values, each for ``ttl_seconds`` from when it was produced,
    as API Gateway caches a Lambda authorizer's results (``AuthorizerResultTtlInSeconds``). A TTL of 0 caches
    nothing. ``clock`` (monotonic seconds) is injectable so tests can step past the TTL without sleeping.

    At most ``max_entries`` answers are kept (the oldest dropped first): every distinct header a client sends
    would otherwise be kept until it expired.
    """

    def __init__(
        self, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000
    ) -> None:
        if ttl_seconds < 0:
            raise ValueError("the authorizer cache TTL cannot be negative")
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.max_entries = max_entries
        self._answers: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, identity: Sequence[str]) -> dict[str, Any] | None:
        key = tuple(identity)
        with self._lock:
            cached = self._answers.get(key)
            if cached is None:
                return None
            expires, answer = cached
            if self.clock() >= expires:
                del self._answers[key]
                return None
            return answer

    def put(self, identity: Sequence[str], answer: dict[str, Any]) -> None:
        if self.ttl_seconds <= 0:
            return
        now = self.clock()
        with self._lock:
            self._answers.pop(tuple(identity), None)  # re-inserted last: the dict's order is the expiry order
            self._answers[tuple(identity)] = (now + self.ttl_seconds, answer)
            while len(self._answers) > self.max_entries:
                del self._answers[next(iter(self._answers))]


class Gateway:
    """API Gateway on a local port in front of one Lambda handler.

    Invocations are serialized by default: one Lambda execution environment runs one event
    at a time, and handler code leans on that (Powertools keeps ``current_event`` on the
    resolver and log keys on the logger, both module-level). ``serialize_invocations=False``
    lets requests overlap, for handlers known to be thread-safe.
    """

    def __init__(
        self,
        handler: Handler | str = API_FUNCTION_HANDLER,
        *,
        authorizer: Handler | str | None = None,
        open_routes: Sequence[tuple[str, str]] = OPEN_ROUTES,
        host: str = "127.0.0.1",
        port: int = 0,
        function_name: str = LOCAL_FUNCTION_NAME,
        timeout_seconds: float = FUNCTIONS_TIMEOUT_SECONDS,
        memory_limit_in_mb: int = FUNCTIONS_MEMORY_MB,
        max_body_bytes: int = MAX_REQUEST_BODY_BYTES,
        max_invocation_bytes: int = MAX_INVOCATION_PAYLOAD_BYTES,
        serialize_invocations: bool = True,
        api_id: str = LOCAL_API_ID,
        authorizer_cache_seconds: float = AUTHORIZER_RESULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler: Handler = resolve_handler(handler) if isinstance(handler, str) else handler
        self.authorizer: Handler | None = resolve_handler(authorizer) if isinstance(authorizer, str) else authorizer
        self.open_routes = frozenset((method.upper(), path) for method, path in open_routes)
        self.host = host
        self.port = port
        self.function_name = function_name
        self.timeout_seconds = timeout_seconds
        self.memory_limit_in_mb = memory_limit_in_mb
        self.max_body_bytes = max_body_bytes
        self.max_invocation_bytes = max_invocation_bytes
        self.api_id = api_id
        self._invocation_lock: threading.Lock | None = threading.Lock() if serialize_invocations else None
        # The authorizer is a function of its own, with its own execution environment (and lock).
        self._authorizer_lock: threading.Lock | None = threading.Lock() if serialize_invocations else None
        self.authorizer_cache = AuthorizerCache(authorizer_cache_seconds, clock=clock)
        self._server: _GatewayServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        host, port = self._server.server_address[:2]
        # A wildcard bind is reachable on loopback; the URL must be one a client can dial.
        reachable = "127.0.0.1" if host in ("0.0.0.0", "") else str(host)
        return f"http://{reachable}:{port}"

    def start(self) -> Gateway:
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        self._server = _GatewayServer((self.host, self.port), _GatewayRequestHandler, gateway=self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="runly-gateway", daemon=True
        )
        self._thread.start()
        logger.info("gateway for %s listening on %s", _handler_name(self.handler), self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(self, event: dict[str, Any]) -> Response:
        """Answer one request event: the authorizer first (unless the route is open), then the function."""
        if self.authorizer is not None and not self.is_open_route(event):
            refused = self.authorize(event)
            if refused is not None:
                return refused
        return self.invoke(event)

    def is_open_route(self, event: dict[str, Any]) -> bool:
        return is_open_route(event["requestContext"]["http"]["method"], event["rawPath"], self.open_routes)

    def authorize(self, event: dict[str, Any]) -> Response | None:
        """Run the authorizer as API Gateway does (or take its cached answer for this Authorization header);
        None when allowed (the context is then in ``event``), else the response the client gets."""
        request_id: str = event["requestContext"]["requestId"]
        identity = (event.get("headers") or {}).get(AUTHORIZATION_HEADER.lower(), "")
        if not identity:
            # A missing identity source: API Gateway answers 401 and does not call the authorizer.
            return error_response(401, "unauthorized", "Unauthorized", request_id=request_id)
        result = self.authorizer_cache.get([identity])
        if result is None:
            called = self._authorizer_answer(event, identity, request_id)
            if not isinstance(called, dict):
                return called
            result = called
            self.authorizer_cache.put([identity], result)
        if not result["isAuthorized"]:
            return error_response(403, "forbidden", "Forbidden", request_id=request_id)
        event["requestContext"]["authorizer"] = {"lambda": dict(result.get("context") or {})}
        return None

    def _authorizer_answer(self, event: dict[str, Any], identity: str, request_id: str) -> dict[str, Any] | Response:
        """The authorizer's answer to ``event``, checked (a boolean isAuthorized, a context object), or the 500
        the client gets when the call fails or its answer is malformed."""
        context = LocalLambdaContext(
            aws_request_id=str(uuid.uuid4()),
            function_name=LOCAL_AUTHORIZER_NAME,
            memory_limit_in_mb=self.memory_limit_in_mb,
            timeout_seconds=self.timeout_seconds,
        )
        authorizer_event = json.loads(lambda_json(build_authorizer_event(event, [identity])))
        try:
            result = json.loads(lambda_json(self._call_authorizer(authorizer_event, context)))
        except Exception:
            logger.exception("authorizer failed (request %s)", request_id)
            return internal_error_response(request_id)
        if not isinstance(result, dict) or not isinstance(result.get("isAuthorized"), bool):
            logger.error("authorizer answered without a boolean isAuthorized (request %s)", request_id)
            return internal_error_response(request_id)
        if not isinstance(result.get("context") or {}, dict):
            logger.error("authorizer context is not an object (request %s)", request_id)
            return internal_error_response(request_id)
        return result

    def _call_authorizer(self, event: dict[str, Any], context: LocalLambdaContext) -> Any:
        assert self.authorizer is not None
        if self._authorizer_lock is None:
            return self.authorizer(event, context)
        with self._authorizer_lock:
            return self.authorizer(event, context)

    def invoke(self, event: dict[str, Any]) -> Response:
        """Call the handler with ``event`` as Lambda would and map the outcome to an HTTP response."""
        request_id: str = event["requestContext"]["requestId"]
        encoded_event = lambda_json(event)
        if len(encoded_event.encode("utf-8")) > self.max_invocation_bytes:
            return error_response(
                413,
                "payload_too_large",
                f"The request exceeds Lambda's {self.max_invocation_bytes}-byte invocation payload limit",
                request_id=request_id,
            )
        context = LocalLambdaContext(
            aws_request_id=request_id,
            function_name=self.function_name,
            memory_limit_in_mb=self.memory_limit_in_mb,
            timeout_seconds=self.timeout_seconds,
        )
        try:
            # The function gets the event as Lambda delivers it: parsed from JSON, shared with nobody.
            result = self._call(json.loads(encoded_event), context)
            encoded_result = lambda_json(result)
        except Exception:
            logger.exception("handler %s failed (request %s)", _handler_name(self.handler), request_id)
            return internal_error_response(request_id)
        if len(encoded_result.encode("utf-8")) > self.max_invocation_bytes:
            logger.error("response of request %s exceeds Lambda's payload limit", request_id)
            return internal_error_response(request_id)
        return to_http_response(json.loads(encoded_result), request_id=request_id)

    def _call(self, event: dict[str, Any], context: LocalLambdaContext) -> Any:
        if self._invocation_lock is None:
            return self.handler(event, context)
        with self._invocation_lock:
            return self.handler(event, context)


class _GatewayServer(ThreadingHTTPServer):
    # Daemon threads: an idle keep-alive connection must not keep the process alive at shutdown.
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler_class: type[BaseHTTPRequestHandler], *, gateway: Gateway
    ) -> None:
        self.gateway = gateway
        super().__init__(address, handler_class)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr; a client hanging up is routine, anything else is logged.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            logger.debug("connection from %s ended: %r", client_address[0], error)
        else:
            logger.exception("error serving %s", client_address[0])


class _GatewayRequestHandler(BaseHTTPRequestHandler):
    server: _GatewayServer
    protocol_version = "HTTP/1.1"  # keep-alive, as clients of API Gateway get
    # A response goes out as two writes (headers, body): with Nagle's algorithm the body waits for the ACK of
    # the headers, which a keep-alive client delays up to 40 ms. API Gateway adds no such stall.
    disable_nagle_algorithm = True
    server_version = "runly-local-gateway"
    # Drops idle keep-alive connections and stalled uploads instead of holding a thread forever.
    timeout = 60

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def handle_expect_100(self) -> bool:
        # Refuse an announced oversized body before the client sends it.
        declared = self.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.server.gateway.max_body_bytes:
            self._reject_too_large(unread_bytes=0)
            return False
        return super().handle_expect_100()

    def _handle(self) -> None:
        gateway = self.server.gateway
        try:
            body = self._read_body(gateway.max_body_bytes)
        except _BodyTooLarge as exc:
            self._reject_too_large(unread_bytes=exc.unread_bytes)
            return
        except _MalformedRequest as exc:
            self.close_connection = True
            self._send(error_response(400, "bad_request", str(exc)), request_id=None)
            return
        target = urlsplit(self.path)
        headers = list(self.headers.items())
        present = {name.lower() for name, _ in headers}
        # What API Gateway adds for the function, so code building absolute URLs works locally too.
        for name, value in (
            ("x-forwarded-for", self.client_address[0]),
            ("x-forwarded-port", str(self.server.server_address[1])),
            ("x-forwarded-proto", "http"),
        ):
            if name not in present:
                headers.append((name, value))
        event = build_event(
            method=self.command,
            raw_path=target.path or "/",
            raw_query=target.query,
            headers=headers,
            body=body,
            source_ip=self.client_address[0],
            api_id=gateway.api_id,
            protocol=self.request_version,
        )
        request_id = event["requestContext"]["requestId"]
        self._send(gateway.handle(event), request_id=request_id)

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        declared = self.headers.get("Content-Length")
        if declared is None:
            return b""
        if not declared.strip().isdigit():
            raise _MalformedRequest(f"invalid Content-Length {declared!r}")
        length = int(declared)
        if length > limit:
            raise _BodyTooLarge(length)
        return self.rfile.read(length)

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _MalformedRequest("invalid chunk size") from None
            if size == 0:
                # Trailers end with an empty line.
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(chunks)
            total += size
            if total > limit:
                # The rest of the chunked body is not worth parsing; the connection closes after the 413.
                raise _BodyTooLarge(0)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _reject_too_large(self, *, unread_bytes: int) -> None:
        limit = self.server.gateway.max_body_bytes
        unread = unread_bytes
        if unread <= _DRAIN_LIMIT_BYTES:
            while unread > 0:
                chunk = self.rfile.read(min(unread, _IO_CHUNK_BYTES))
                if not chunk:
                    break
                unread -= len(chunk)
        self.close_connection = True
        message = f"Request Entity Too Large: the body exceeds API Gateway's {limit}-byte payload limit"
        self._send(error_response(413, "payload_too_large", message), request_id=None)

    def _send(self, response: Response, *, request_id: str | None) -> None:
        status, headers, body = response
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if request_id:
            self.send_header("apigw-requestid", request_id)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        access_logger.debug('%s "%s" %s', self.client_address[0], self.requestline, code)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server writes to stderr by default; route its notes (bad requests, timeouts) to logging.
        logger.info("%s %s", self.client_address[0], format % args)


def _handler_name(handler: Handler) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"


# ---------------------------------------------------------------- process entry point


def write_ready_file(path: Path, url: str) -> None:
    """Write ``url`` to ``path`` atomically: a watcher sees either no file or the whole URL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(url + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runly_cli.embedded.gateway",
        description="Local API Gateway (HTTP API) in front of a Lambda handler.",
    )
    parser.add_argument("--handler", default=API_FUNCTION_HANDLER, help="dotted path of the Lambda handler")
    parser.add_argument(
        "--authorizer",
        default=AUTHORIZER_FUNCTION_HANDLER,
        help="dotted path of the Lambda REQUEST authorizer run before the handler (except on open routes)",
    )
    parser.add_argument("--no-authorizer", action="store_true", help="call the handler without any authorizer")
    parser.add_argument(
        "--authorizer-cache-seconds",
        type=float,
        default=AUTHORIZER_RESULT_TTL_SECONDS,
        help="how long an authorizer answer is reused for the same Authorization header (API Gateway's result "
        f"TTL; default {AUTHORIZER_RESULT_TTL_SECONDS}, the deployed stack's); 0 calls it on every request",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ready-file", type=Path, help="where to write the URL once listening")
    parser.add_argument("--function-name", default=LOCAL_FUNCTION_NAME)
    parser.add_argument("--log-level", default="INFO", help="DEBUG also logs every request")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        handler = resolve_handler(args.handler)
    except (ImportError, ValueError) as exc:
        parser.error(f"cannot load handler {args.handler!r}: {exc}")
    authorizer: Handler | None = None
    if not args.no_authorizer:
        try:
            authorizer = resolve_handler(args.authorizer)
        except (ImportError, ValueError) as exc:
            parser.error(f"cannot load authorizer {args.authorizer!r}: {exc}")

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("%s received, stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    gateway = Gateway(
        handler,
        authorizer=authorizer,
        host=args.host,
        port=args.port,
        function_name=args.function_name,
        authorizer_cache_seconds=args.authorizer_cache_seconds,
    ).start()
    try:
        if args.ready_file is not None:
            write_ready_file(args.ready_file, gateway.url)
        print(gateway.url, flush=True)
        # A timed wait keeps the main thread returning to the interpreter, where signal handlers run.
        while not stopping.wait(timeout=1.0):
            pass
    finally:
        gateway.stop()
        if args.ready_file is not None:
            # A stale ready file would point the next reader at a dead port.
            args.ready_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
