"""The API clients against a real HTTP server on 127.0.0.1 that misbehaves on purpose: it drops connections,
throttles with Retry-After, fails with 503, and counts the TCP connections it accepts.

What is asserted is what the server saw (requests, their Idempotency-Key, connections) and what the caller got.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from runly_client.client import (
    ApiConnectionError,
    AsyncRunlyClient,
    NotFound,
    RateLimited,
    RetryPolicy,
    RunlyClient,
    ServerError,
    retry_after_seconds,
)
from runly_core.contracts import IDEMPOTENCY_KEY, EnqueueRunRequest, ErrorBody, RunState, RunView

# Retries without real waiting, unless a test asks the server for a Retry-After.
FAST = RetryPolicy(retries=3, base_delay=0.01, max_delay=0.05)
REQUEST = EnqueueRunRequest(package="thumbs", job="resize", config={"width": 200})


def run_json(run_id: str = "run_1", state: RunState = RunState.QUEUED) -> bytes:
    return RunView(
        id=run_id, state=state, package="thumbs", version="1.0.0", job="resize", environment="default",
        config={"width": 200}, timeout_seconds=3600, max_attempts=3, created_at=datetime.now(UTC),
    ).model_dump_json().encode()  # fmt: skip


@dataclass
class Seen:
    method: str
    path: str
    connection: int
    headers: dict[str, str]
    body: bytes


# What the server does with a request: "drop" (read it, close the connection, answer nothing), or
# (status, extra headers, body).
Action = str | tuple[int, dict[str, str], bytes]


@dataclass
class Script:
    """The server's answers, in order; once they run out, every request gets ``then``."""

    answers: list[Action] = field(default_factory=list)
    then: Action = (200, {}, b"")
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> Action:
        with self.lock:
            return self.answers.pop(0) if self.answers else self.then


def error(status: int, code: str, **headers: str) -> Action:
    return status, headers, ErrorBody(code=code, message=f"{code} on purpose").model_dump_json().encode()


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script(then=(200, {}, run_json()))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK stall between them

        def setup(self) -> None:
            super().setup()
            with script.lock:
                script.connections += 1
                self.connection_number = script.connections

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with script.lock:
                script.seen.append(
                    Seen(self.command, self.path, self.connection_number, {k: v for k, v in self.headers.items()}, body)
                )
            action = script.next()
            if action == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            assert not isinstance(action, str)
            status, headers, payload = action
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up on this answer (a timeout test): expected

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def client(url: str, **options: Any) -> RunlyClient:
    return RunlyClient(url, api_key="rly_test", retry=options.pop("retry", FAST), **options)


# ---------------------------------------------------------------- retries


def test_a_dropped_connection_is_retried_for_a_get(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = ["drop", "drop"]
    with client(url) as api:
        run = api.get_run("run_1")
    assert run.id == "run_1"
    assert [s.path for s in script.seen] == ["/runs/run_1"] * 3
    assert script.connections == 3  # each drop cost its connection; the third request got a new one


def test_429_waits_as_long_as_retry_after_says_even_for_a_post_that_is_not_idempotent(
    server: tuple[str, Script],
) -> None:
    # Given a server that throttles the first cancel, asking for one second
    url, script = server
    script.answers = [error(429, "throttled", **{"Retry-After": "1"})]
    with client(url) as api:
        started = time.monotonic()
        run = api.cancel_run("run_1")
        waited = time.monotonic() - started
    # Then the client waited the second (its own backoff would be under 0.05 s) and sent the cancel again:
    # a 429 says the request was not acted on
    assert run.id == "run_1"
    assert waited >= 0.95
    assert [(s.method, s.path) for s in script.seen] == [("POST", "/runs/run_1/cancel")] * 2


def test_a_retry_after_beyond_the_policy_is_raised_at_once(server: tuple[str, Script]) -> None:
    url, script = server
    script.then = error(429, "throttled", **{"Retry-After": "3600"})
    with client(url) as api, pytest.raises(RateLimited) as raised:
        api.get_run("run_1")
    assert raised.value.retry_after == 3600 and raised.value.error.code == "throttled"
    assert len(script.seen) == 1


def test_an_enqueue_gets_an_idempotency_key_and_is_retried_under_it_after_503(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [error(503, "unavailable"), "drop"]
    with client(url) as api:
        run = api.enqueue(REQUEST)
    assert run.id == "run_1"
    keys = [s.headers.get("Idempotency-Key") for s in script.seen]
    assert len(keys) == 3 and len(set(keys)) == 1  # three tries, one key
    assert keys[0] is not None
    assert re.fullmatch(IDEMPOTENCY_KEY, keys[0])
    assert json.loads(script.seen[0].body) == {**REQUEST.model_dump(mode="json", exclude_none=True)}
    # two enqueues are two runs: each call has its own key
    with client(url) as api:
        api.enqueue(REQUEST)
    assert script.seen[-1].headers["Idempotency-Key"] != keys[0]


def test_the_callers_idempotency_key_is_the_one_every_try_carries(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [error(502, "bad_gateway")]
    with client(url) as api:
        api.enqueue(REQUEST, idempotency_key="order-42")
    assert [s.headers.get("Idempotency-Key") for s in script.seen] == ["order-42", "order-42"]


@pytest.mark.parametrize("failure", ["drop", "503"])
def test_an_enqueue_without_a_key_is_never_repeated(server: tuple[str, Script], failure: str) -> None:
    # Given a client told not to generate keys, and a server that fails the enqueue after reading it
    url, script = server
    script.answers = ["drop" if failure == "drop" else error(503, "unavailable")]
    with client(url, generate_idempotency_keys=False) as api:
        expected = ApiConnectionError if failure == "drop" else ServerError
        with pytest.raises(expected) as raised:
            api.enqueue(REQUEST)
    # Then the request was sent once, without a key: repeating it could enqueue the run twice
    assert len(script.seen) == 1 and "Idempotency-Key" not in script.seen[0].headers
    if failure == "drop":
        assert "not repeated" in str(raised.value)
    else:
        assert raised.value.status == 503  # type: ignore[attr-defined]


def test_an_enqueue_hands_on_the_callers_trace_or_the_current_span(server: tuple[str, Script]) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    url, script = server
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with client(url) as api:
        api.enqueue(REQUEST, traceparent=given)
        # Within an application's span (its own tracer provider): that span's context, unless told otherwise
        with TracerProvider().get_tracer("app").start_as_current_span("handle request") as current:
            api.enqueue(REQUEST)
    sent = [s.headers.get("traceparent") for s in script.seen]
    context = current.get_span_context()
    assert sent == [given, f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"]
    assert trace.get_current_span().get_span_context().is_valid is False


def test_a_batch_is_retried_only_when_every_run_has_a_key(server: tuple[str, Script]) -> None:
    url, script = server
    answer = json.dumps({"runs": [json.loads(run_json("run_1")), json.loads(run_json("run_2"))]}).encode()
    script.then = (201, {}, answer)
    script.answers = [error(503, "unavailable")]
    with client(url) as api:
        runs = api.enqueue_many([REQUEST, REQUEST], idempotency_keys=["mine", None])
    assert [r.id for r in runs] == ["run_1", "run_2"]
    bodies = [json.loads(s.body) for s in script.seen]
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # the same keys on the retry
    assert bodies[0]["runs"][0]["idempotency_key"] == "mine" and bodies[0]["runs"][1]["idempotency_key"]

    script.seen.clear()
    script.answers = [error(503, "unavailable")]
    with client(url, generate_idempotency_keys=False) as api, pytest.raises(ServerError):
        api.enqueue_many([REQUEST, REQUEST], idempotency_keys=["mine", None])
    assert len(script.seen) == 1


def test_the_api_error_body_reaches_the_caller_after_the_last_retry(server: tuple[str, Script]) -> None:
    url, script = server
    script.then = error(503, "unavailable")
    with client(url) as api, pytest.raises(ServerError) as raised:
        api.get_run("run_1")
    assert len(script.seen) == FAST.retries + 1
    assert raised.value.status == 503 and raised.value.error.code == "unavailable"
    assert str(raised.value) == "HTTP 503 unavailable: unavailable on purpose"


def test_a_4xx_is_raised_at_once_with_its_error_body(server: tuple[str, Script]) -> None:
    url, script = server
    script.then = (
        404,
        {},
        ErrorBody(code="not_found", message="no run run_9", field="run_id").model_dump_json().encode(),
    )
    with client(url) as api, pytest.raises(NotFound) as raised:
        api.get_run("run_9")
    assert len(script.seen) == 1
    assert raised.value.error == ErrorBody(code="not_found", message="no run run_9", field="run_id")
    assert "(field run_id)" in str(raised.value)


def test_a_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with client(f"http://127.0.0.1:{port}", generate_idempotency_keys=False) as api:
        started = time.monotonic()
        with pytest.raises(ApiConnectionError) as raised:
            api.enqueue(REQUEST)  # never sent: safe to try again even without a key
    assert "after 4 tries" in str(raised.value) and "ConnectError" in str(raised.value)
    assert time.monotonic() - started < 5


def test_a_read_timeout_is_an_api_connection_error(server: tuple[str, Script]) -> None:
    url, script = server
    release = threading.Event()
    original_next = script.next

    def stall() -> Action:
        release.wait(5)
        return original_next()

    script.next = stall  # type: ignore[method-assign]
    try:
        with client(url, timeout=0.3, retry=RetryPolicy(retries=1, base_delay=0.01)) as api:
            with pytest.raises(ApiConnectionError, match="timed out"):
                api.get_run("run_1")
    finally:
        release.set()
    assert len(script.seen) == 2  # a GET: tried again after the first timed out


# ---------------------------------------------------------------- connections


def test_requests_reuse_one_kept_alive_connection(server: tuple[str, Script]) -> None:
    url, script = server
    with client(url) as api:
        for _ in range(20):
            api.get_run("run_1")
    assert len(script.seen) == 20 and script.connections == 1
    assert {s.connection for s in script.seen} == {1}


def test_without_keep_alive_each_request_opens_a_connection(server: tuple[str, Script]) -> None:
    url, script = server
    with client(url, limits=httpx.Limits(max_keepalive_connections=0)) as api:
        for _ in range(5):
            api.get_run("run_1")
    assert script.connections == 5


def test_the_api_key_and_user_agent_are_sent(server: tuple[str, Script]) -> None:
    url, script = server
    with client(url) as api:
        api.get_run("run_1")
    assert script.seen[0].headers["Authorization"] == "Bearer rly_test"
    assert script.seen[0].headers["User-Agent"].startswith("runly-client/")


# ---------------------------------------------------------------- the async client: the same rules


def test_the_async_client_retries_and_keeps_one_connection(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [error(503, "unavailable"), "drop"]

    async def main() -> list[RunView]:
        async with AsyncRunlyClient(url, api_key="rly_test", retry=FAST) as api:
            first = await api.enqueue(REQUEST)
            rest = [await api.get_run("run_1") for _ in range(5)]
            return [first, *rest]

    runs = asyncio.run(main())
    assert [r.id for r in runs] == ["run_1"] * 6
    keys = {s.headers.get("Idempotency-Key") for s in script.seen if s.method == "POST"}
    assert len([s for s in script.seen if s.method == "POST"]) == 3 and len(keys) == 1 and None not in keys
    # the drop cost one connection; everything after it shared the next one
    assert script.connections == 2


def test_the_async_client_does_not_repeat_an_enqueue_without_a_key(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [error(503, "unavailable")]

    async def main() -> None:
        async with AsyncRunlyClient(url, retry=FAST, generate_idempotency_keys=False) as api:
            await api.enqueue(REQUEST)

    with pytest.raises(ServerError):
        asyncio.run(main())
    assert len(script.seen) == 1


# ---------------------------------------------------------------- the policy itself


def _response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


def _get() -> Any:
    from runly_client.client import _Request

    return _Request("GET", "/runs/x", lambda r: r)


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(retries=10, base_delay=0.5, max_delay=4.0)
    pauses: Callable[[int], list[float]] = lambda attempt: [  # noqa: E731
        policy.pause(_get(), attempt, _response(503)) or -1.0 for _ in range(300)
    ]
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (8, 4.0)]:
        drawn = pauses(attempt)
        assert all(0 <= p <= ceiling for p in drawn)
        assert max(drawn) > ceiling * 0.8 and min(drawn) < ceiling * 0.2  # spread over the whole range
    assert policy.pause(_get(), 10, _response(503)) is None  # out of retries
    assert policy.pause(_get(), 0, _response(400)) is None


def test_retry_after_may_be_an_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert retry_after_seconds(_response(503, **{"Retry-After": later}), now=now) == 7
    assert retry_after_seconds(_response(503, **{"Retry-After": "soon"})) is None
    assert retry_after_seconds(_response(503, **{"Retry-After": "2"})) == 2
