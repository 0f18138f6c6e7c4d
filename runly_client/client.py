"""Clients of the runly HTTP API: :class:`RunlyClient` (sync) and :class:`AsyncRunlyClient` (asyncio), on httpx.

Both have the same methods with the same arguments and typed results (the models of ``runly_core.contracts``);
the async one's are coroutines (its iterators are async iterators)::

    with RunlyClient("https://api.example.com", api_key="rly_...") as client:
        run = client.enqueue(EnqueueRunRequest(package="thumbs", job="resize", config={"width": 200}))
        run = client.wait(run.id)

    async with AsyncRunlyClient(url, api_key=key) as client:
        run = await client.enqueue(request, idempotency_key=request_id)

Each client keeps one pool of keep-alive connections (close it, or use it as a context manager) and retries,
with capped exponential backoff and full jitter (honouring ``Retry-After``):

- a request that never reached the server (connection refused, connect timeout) and a 429, whatever the method;
- a dropped connection, a read timeout or a 500/502/503/504 only when repeating the request is harmless:
  GET, PUT and DELETE, and an enqueue (``POST /runs``, ``POST /runs/batch``) carrying an ``Idempotency-Key``.
  An enqueue without one gets one generated (``generate_idempotency_keys=False`` turns that off: such an
  enqueue is then sent once, never repeated). Other POSTs (cancel, requeue, register, ...) are not repeated.

Failures raise :class:`ApiError` (the API answered with an error: ``status`` and the API's ``ErrorBody``; one
subclass per kind, e.g. :class:`NotFound`) or :class:`ApiConnectionError` (no answer, after the retries).

How it is built: every operation is written once, as a generator that yields the HTTP exchanges it needs
(:class:`_Request`) and pauses (:class:`_Sleep`) and returns the parsed result; the retry rules are one more
such generator around it. The two clients only carry those steps out, one with ``httpx.Client`` and
``time.sleep``, the other with ``httpx.AsyncClient`` and ``asyncio.sleep``.

"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import httpx
from pydantic import BaseModel

import runly_core
from runly import tracing
from runly_core import backoff
from runly_core.bundle import read_manifest, sha256_file
from runly_core.contracts import (
    CreatedKey,
    CreateKeyRequest,
    CreateScheduleRequest,
    EnqueueBatchItem,
    EnqueueBatchResponse,
    EnqueueRunRequest,
    ErrorBody,
    KeyIdentity,
    KeyList,
    KeyView,
    LogPage,
    NodeList,
    NodeView,
    PackageSummary,
    PackageSummaryList,
    PackageVersionList,
    PackageVersionView,
    Pin,
    PinList,
    PinRequest,
    RegisterPackageRequest,
    RequeueRunRequest,
    RunPage,
    RunView,
    ScheduleList,
    ScheduleView,
    SecretList,
    SecretView,
    UpdateScheduleRequest,
    UploadRequest,
    UploadTicket,
    ValueRequest,
    VariableList,
    VariableView,
)

__all__ = [
    "ApiConnectionError",
    "ApiError",
    "AsyncRunlyClient",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "RunlyClient",
    "RunlyClientError",
    "ServerError",
    "Unauthorized",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
M = TypeVar("M", bound=BaseModel)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Statuses that say "not now" about a request the server may have acted on; 429 says it did not.
_RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
USER_AGENT = f"runly-client/{runly_core.__version__} httpx/{httpx.__version__}"


# ---------------------------------------------------------------- errors


class RunlyClientError(Exception):
    """Base of every error the clients raise."""


class ApiError(RunlyClientError):
    """The API answered with an error: ``status`` and its :class:`~runly_core.contracts.ErrorBody` (``error``)."""

    def __init__(self, status: int, error: ErrorBody, *, retry_after: float | None = None) -> None:
        where = f" (field {error.field})" if error.field else ""
        super().__init__(f"HTTP {status} {error.code}: {error.message}{where}")
        self.status = status
        self.error = error
        self.retry_after = retry_after  # seconds, when the response said (429, 503)


class BadRequest(ApiError):
    """400 or 422: the request is invalid; ``error.field`` names what."""


class Unauthorized(ApiError):
    """401: no API key, or not a valid one."""


class Forbidden(ApiError):
    """403: the key's scope or environment does not allow this."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: the request conflicts with the current state (a run already finished, an Idempotency-Key reused
    for another request, a version outside the environment's pin)."""


class PayloadTooLarge(ApiError):
    """413."""


class RateLimited(ApiError):
    """429, still, after the retries."""


class ServerError(ApiError):
    """5xx, still, after the retries (or at once, for a request that is not safe to repeat)."""


_ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: BadRequest, 429: RateLimited,
}  # fmt: skip


class ApiConnectionError(RunlyClientError):
    """No answer from the API (connection refused or dropped, a timeout), after the retries allowed."""


def api_error(response: httpx.Response) -> ApiError:
    """The exception for an error response: its ErrorBody, or one made from whatever else the body was."""
    try:
        error = ErrorBody.model_validate_json(response.content)
    except ValueError:
        text = response.content.decode("utf-8", errors="replace").strip()[:500]
        error = ErrorBody(code="http_error", message=text or response.reason_phrase or f"HTTP {response.status_code}")
    kind = _ERRORS_BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else ApiError)
    return kind(response.status_code, error, retry_after=retry_after_seconds(response))


def retry_after_seconds(response: httpx.Response, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now (it may be a number of seconds or an HTTP date); None if absent or bad."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# ---------------------------------------------------------------- the steps of an operation


def _with_trace(headers: dict[str, str], traceparent: str | None) -> dict[str, str]:
    """``headers`` with the trace the runs continue: the caller's, else the current OpenTelemetry span's, if any."""
    trace = traceparent or (str(current) if (current := tracing.current_traceparent()) else None)
    return {**headers, tracing.TRACEPARENT_HEADER: trace} if trace else headers


@dataclass(frozen=True)
class _Request(Generic[T]):
    """One HTTP exchange an operation needs; ``parse`` turns the successful response into its result."""

    method: str
    path: str  # below the API's base URL; an absolute URL when ``api`` is False
    parse: Callable[[httpx.Response], T]
    json: Any = field(default=None, repr=False)  # may hold a secret's value (set_secret): never in a repr
    content: bytes | None = field(default=None, repr=False)
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    api: bool = True  # False: not the runly API (a presigned S3 URL): no API key is sent
    timeout: float | None = None  # this exchange's own (e.g. a large upload)
    idempotent: bool | None = None  # None: by method; True: POST made safe to repeat (an Idempotency-Key)

    @property
    def repeatable(self) -> bool:
        return self.idempotent if self.idempotent is not None else self.method in _IDEMPOTENT_METHODS

    def describe(self) -> str:
        return f"{self.method} {self.path if self.api else urllib.parse.urlsplit(self.path).netloc}"


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Emit(Generic[T]):
    """A value an iterating operation hands to its caller (a run of iter_runs, a piece of follow_logs)."""

    value: T


_Step = _Request[Any] | _Sleep | _Emit[Any]
# An operation: yields steps, is sent each exchange's result (None after a sleep or an emit), returns its result.
Operation = Generator[_Step, Any, T]
# A step the clients carry out: a raw exchange (the retry rules decide what its outcome means), or a pause.
_Outcome = httpx.Response | httpx.TransportError


@dataclass(frozen=True)
class _Exchange:
    request: _Request[Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How the clients retry (see the module's documentation for what is retried).

    ``retries`` more tries after the first; the pause before retry n (from 0) is ``Retry-After`` when the response
    gives one (up to ``max_retry_after``; beyond it the error is raised at once, carrying ``retry_after``), else
    uniform in [0, min(``max_delay``, ``base_delay`` * 2**n)] (full jitter).
    """

    retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def pause(self, request: _Request[Any], attempt: int, outcome: _Outcome) -> float | None:
        """Seconds before repeating ``request`` after ``outcome`` of its try ``attempt`` (from 0); None: don't."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, httpx.TransportError):
            # A request that never left (no connection) is safe to send again, whatever it does.
            never_sent = isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            if not (never_sent or request.repeatable):
                return None
            return backoff.delay(attempt, base=self.base_delay, cap=self.max_delay)
        status = outcome.status_code
        if status != 429 and not (status in _RETRYABLE_STATUSES and request.repeatable):
            return None
        asked = retry_after_seconds(outcome)
        if asked is not None:
            return asked if asked <= self.max_retry_after else None
        return backoff.delay(attempt, base=self.base_delay, cap=self.max_delay)


def _with_retries(operation: Operation[T], policy: RetryPolicy) -> Generator[_Exchange | _Sleep | _Emit[Any], Any, T]:
    """``operation`` with the retry rules applied: each of its requests becomes tries (raw exchanges, pauses)
    until one succeeds (its parsed result is sent back in) or fails for good (the error is thrown in)."""
    reply: Any = None
    step: _Step | None = None  # the operation's next step, when it is already known (after a throw)
    while True:
        if step is None:
            try:
                step = operation.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        current, step = step, None
        if not isinstance(current, _Request):
            reply = yield current
            continue
        attempt = 0
        while True:
            outcome = yield _Exchange(current)
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                reply = current.parse(outcome)
                break
            pause = policy.pause(current, attempt, outcome)
            if pause is None:
                try:  # the operation may handle the error and go on
                    step = operation.throw(_failure(current, outcome, attempt))
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                break
            what = outcome if isinstance(outcome, httpx.TransportError) else f"HTTP {outcome.status_code}"
            log.info("%s: %s; retry %d of %d in %.2f s", current.describe(), what, attempt + 1, policy.retries, pause)
            yield _Sleep(pause)
            attempt += 1


def _failure(request: _Request[Any], outcome: _Outcome, attempts: int) -> RunlyClientError:
    if isinstance(outcome, httpx.Response):
        return api_error(outcome)
    tries = f" (after {attempts + 1} tries)" if attempts else ""
    kind = "timed out" if isinstance(outcome, httpx.TimeoutException) else "failed"
    message = f"{request.describe()} {kind}{tries}: {type(outcome).__name__}: {outcome}"
    if not request.repeatable and not isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout):
        message += " (not repeated: it may have been done; an enqueue with an Idempotency-Key is safe to repeat)"
    return ApiConnectionError(message)


# ---------------------------------------------------------------- the operations, written once


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _nothing(response: httpx.Response) -> None:
    return None


def _text(response: httpx.Response) -> str:
    return response.content.decode("utf-8", errors="replace")


def _query(**values: Any) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def _tag_filter(tags: Mapping[str, str] | None) -> str | None:
    # One ``tag`` parameter, the pairs joined with commas: what API Gateway makes of a repeated one (a tag's value
    # holds no comma, runly_core.contracts.check_tag_value).
    return ",".join(f"{key}:{value}" for key, value in tags.items()) if tags else None


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key (what an enqueue gets when its caller gives none)."""
    return f"rly-{uuid.uuid4().hex}"


class _Operations:
    """Every operation of the API as a generator of steps; each client binds each to a method of its own."""

    def __init__(self, *, timeout: httpx.Timeout, generate_idempotency_keys: bool) -> None:
        self.timeout = timeout
        self.generate_idempotency_keys = generate_idempotency_keys

    # packages
    def push(self, bundle: Path) -> Operation[PackageVersionView]:
        """Upload a bundle to the feed (presigned PUT with its SHA-256) and register it."""
        manifest = read_manifest(bundle)
        digest = sha256_file(bundle)
        size = bundle.stat().st_size
        upload = UploadRequest(name=manifest.name, version=manifest.version, sha256=digest, size=size)
        ticket: UploadTicket = yield _Request(
            "POST", "/packages/uploads", _model(UploadTicket), json=upload.model_dump()
        )
        try:
            yield _Request(
                ticket.method, ticket.url, _nothing, content=bundle.read_bytes(), headers=dict(ticket.headers),
                api=False, timeout=max(self.timeout.read or 0.0, 120.0),
            )  # fmt: skip
        except ApiError as exc:
            # 412: an earlier push uploaded these very bytes (the key is their SHA-256 and the PUT creates only,
            # so whatever is there is this bundle); registering is what is left to do.
            if exc.status != HTTPStatus.PRECONDITION_FAILED:
                raise
        register = RegisterPackageRequest(name=manifest.name, version=manifest.version, sha256=digest, size=size)
        return (yield _Request("POST", "/packages", _model(PackageVersionView), json=register.model_dump()))

    def list_packages(self) -> Operation[list[PackageSummary]]:
        return (yield _Request("GET", "/packages", _model(PackageSummaryList))).items  # type: ignore[no-any-return]

    def list_versions(self, name: str) -> Operation[list[PackageVersionView]]:
        """A package's versions, newest first."""
        page = yield _Request("GET", f"/packages/{_q(name)}/versions", _model(PackageVersionList))
        return page.items  # type: ignore[no-any-return]

    def get_version(self, name: str, version: str) -> Operation[PackageVersionView]:
        return (yield _Request("GET", f"/packages/{_q(name)}/versions/{_q(version)}", _model(PackageVersionView)))

    # runs
    def enqueue(
        self, request: EnqueueRunRequest, *, idempotency_key: str | None = None, traceparent: str | None = None
    ) -> Operation[RunView]:
        """Enqueue a run. The same ``idempotency_key`` and request give back the run the first call created (for
        24 h): pass one derived from what asks for the run (a request id, an order id) to make a whole retry of
        yours safe. Without one, a key is generated for this call, so that the client's own retries are safe.

        A delayed run: ``request.not_before`` (an aware datetime) or ``request.delay_seconds``, up to a year.

        ``traceparent`` (W3C trace context): the trace the run continues; by default the current OpenTelemetry
        span's where the application uses OpenTelemetry, else none (the run starts a trace: its ``trace_id``)."""
        key = idempotency_key or (new_idempotency_key() if self.generate_idempotency_keys else None)
        headers = {IDEMPOTENCY_HEADER: key} if key else {}
        return (
            yield _Request(
                "POST", "/runs", _model(RunView), json=request.model_dump(mode="json", exclude_none=True),
                headers=_with_trace(headers, traceparent), idempotent=key is not None,
            )
        )  # fmt: skip

    def enqueue_many(
        self,
        requests: Sequence[EnqueueRunRequest],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        traceparent: str | None = None,
    ) -> Operation[list[RunView]]:
        """Enqueue up to 100 runs in one request (POST /runs/batch); returns them in the order given.

        Every request is checked before any run is recorded: one bad request raises ApiError naming it
        (``runs[<index>]...``) and nothing is enqueued. ``idempotency_keys`` (one per request, None for none) work
        as ``idempotency_key`` does for ``enqueue``; a request without one gets one generated.
        """
        keys: list[str | None] = list(idempotency_keys) if idempotency_keys is not None else [None] * len(requests)
        if len(keys) != len(requests):
            raise ValueError(f"{len(keys)} idempotency keys for {len(requests)} requests")
        if self.generate_idempotency_keys:
            keys = [key or new_idempotency_key() for key in keys]
        items = [
            EnqueueBatchItem(**request.model_dump(), idempotency_key=key).model_dump(mode="json", exclude_none=True)
            for request, key in zip(requests, keys, strict=True)
        ]
        answer = yield _Request(
            "POST", "/runs/batch", _model(EnqueueBatchResponse), json={"runs": items},
            headers=_with_trace({}, traceparent), idempotent=all(key is not None for key in keys),
        )  # fmt: skip
        return answer.runs  # type: ignore[no-any-return]

    def get_run(self, run_id: str) -> Operation[RunView]:
        return (yield _Request("GET", f"/runs/{_q(run_id)}", _model(RunView)))

    def wait(self, run_id: str, *, timeout: float = 300.0, interval: float = 0.25) -> Operation[RunView]:
        """The run once it is finished (Succeeded, Failed, Cancelled or TimedOut); TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            run: RunView = yield from self.get_run(run_id)
            if run.state.terminal:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run.state} after {timeout:.0f} s")
            yield _Sleep(interval)

    def list_runs(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        tags: Mapping[str, str] | None = None,
        **filters: str | None,
    ) -> Operation[RunPage]:
        """GET /runs; filters: state, package, job, environment, created_after, created_before, schedule_id, and
        ``tags`` (runs with every one of these tags)."""
        params = _query(**filters, limit=limit, cursor=cursor, tag=_tag_filter(tags))
        return (yield _Request("GET", "/runs", _model(RunPage), params=params))

    def iter_runs(
        self, *, page_size: int = 100, tags: Mapping[str, str] | None = None, **filters: str | None
    ) -> Operation[None]:
        """Every run matching the filters (see list_runs), newest first, following the cursor page by page."""
        cursor: str | None = None
        while True:
            page: RunPage = yield from self.list_runs(limit=page_size, cursor=cursor, tags=tags, **filters)
            for run in page.items:
                yield _Emit(run)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel_run(self, run_id: str) -> Operation[RunView]:
        return (yield _Request("POST", f"/runs/{_q(run_id)}/cancel", _model(RunView)))

    def requeue_run(self, run_id: str, *, resume: bool = False) -> Operation[RunView]:
        body = RequeueRunRequest(resume=resume).model_dump()
        return (yield _Request("POST", f"/runs/{_q(run_id)}/requeue", _model(RunView), json=body))

    def get_logs(self, run_id: str, *, attempt: int | None = None, cursor: str | None = None) -> Operation[LogPage]:
        params = _query(attempt=attempt, cursor=cursor)
        return (yield _Request("GET", f"/runs/{_q(run_id)}/logs", _model(LogPage), params=params))

    def download_logs(self, run_id: str, *, attempt: int | None = None) -> Operation[str]:
        """An attempt's whole output (the latest attempt by default); up to 4 MB, else page with get_logs."""
        params = _query(download="true", attempt=attempt)
        return (
            yield _Request("GET", f"/runs/{_q(run_id)}/logs", _text, params=params, headers={"Accept": "text/plain"})
        )

    def follow_logs(self, run_id: str, *, attempt: int | None = None, interval: float = 1.0) -> Operation[None]:
        """The output as it is shipped: of ``attempt`` (the latest by default) and of every attempt after it,
        until the run is finished and all of it has been read."""
        cursor: str | None = None
        while True:
            page: LogPage = yield from self.get_logs(run_id, attempt=attempt, cursor=cursor)
            if page.text:
                yield _Emit(page.text)
            if page.complete:
                run: RunView = yield from self.get_run(run_id)
                if run.attempts and run.attempts[-1].number > page.attempt:
                    attempt, cursor = page.attempt + 1, None
                    continue
                if run.state.terminal:
                    return
                yield _Sleep(interval)  # between attempts: waiting for the retry to start
                continue
            if page.next_cursor is None:
                yield _Sleep(interval)  # not started yet: ask again from the top
                continue
            attempt, cursor = page.attempt, page.next_cursor
            if not page.text:
                yield _Sleep(interval)

    # nodes
    def list_nodes(self, environment: str | None = None) -> Operation[NodeList]:
        return (yield _Request("GET", "/nodes", _model(NodeList), params=_query(environment=environment)))

    def drain_node(self, node_id: str) -> Operation[NodeView]:
        """Ask a node to finish its runs and take no more (an admin key)."""
        return (yield _Request("POST", f"/nodes/{_q(node_id)}/drain", _model(NodeView)))

    # API keys
    def create_key(self, request: CreateKeyRequest) -> Operation[CreatedKey]:
        """A new API key (an admin key); its ``secret`` is in this answer only."""
        return (
            yield _Request("POST", "/keys", _model(CreatedKey), json=request.model_dump(mode="json", exclude_none=True))
        )

    def list_keys(self) -> Operation[list[KeyView]]:
        return (yield _Request("GET", "/keys", _model(KeyList))).items  # type: ignore[no-any-return]

    def revoke_key(self, key_id: str) -> Operation[None]:
        yield _Request("DELETE", f"/keys/{_q(key_id)}", _nothing)

    def me(self) -> Operation[KeyIdentity]:
        """The calling key: its id, scope and environment."""
        return (yield _Request("GET", "/me", _model(KeyIdentity)))

    def openapi(self) -> Operation[dict[str, Any]]:
        """The API's OpenAPI document."""
        return (yield _Request("GET", "/openapi.json", lambda response: response.json()))

    # version pins
    def list_pins(self, environment: str) -> Operation[list[Pin]]:
        return (yield _Request("GET", f"/environments/{_q(environment)}/pins", _model(PinList))).items  # type: ignore[no-any-return]

    def get_pin(self, environment: str, package: str) -> Operation[Pin]:
        return (yield _Request("GET", f"/environments/{_q(environment)}/pins/{_q(package)}", _model(Pin)))

    def set_pin(self, environment: str, package: str, specifier: str) -> Operation[Pin]:
        """Pin a package to a PEP 440 specifier (e.g. ``>=1.2,<2``) in an environment; needs an admin key."""
        body = PinRequest(specifier=specifier).model_dump()
        return (yield _Request("PUT", f"/environments/{_q(environment)}/pins/{_q(package)}", _model(Pin), json=body))

    def delete_pin(self, environment: str, package: str) -> Operation[None]:
        yield _Request("DELETE", f"/environments/{_q(environment)}/pins/{_q(package)}", _nothing)

    # variables and secrets of an environment
    def list_variables(self, environment: str) -> Operation[list[VariableView]]:
        path = f"/environments/{_q(environment)}/variables"
        return (yield _Request("GET", path, _model(VariableList))).items  # type: ignore[no-any-return]

    def get_variable(self, environment: str, name: str) -> Operation[VariableView]:
        return (yield _Request("GET", f"/environments/{_q(environment)}/variables/{_q(name)}", _model(VariableView)))

    def set_variable(self, environment: str, name: str, value: str) -> Operation[VariableView]:
        """Set a variable (a plain value, readable back) of an environment; needs an admin key."""
        body = ValueRequest(value=value).model_dump()
        path = f"/environments/{_q(environment)}/variables/{_q(name)}"
        return (yield _Request("PUT", path, _model(VariableView), json=body))

    def delete_variable(self, environment: str, name: str) -> Operation[None]:
        yield _Request("DELETE", f"/environments/{_q(environment)}/variables/{_q(name)}", _nothing)

    def list_secrets(self, environment: str) -> Operation[list[SecretView]]:
        """The environment's secrets: names, versions and update times (the API never returns a value)."""
        path = f"/environments/{_q(environment)}/secrets"
        return (yield _Request("GET", path, _model(SecretList))).items  # type: ignore[no-any-return]

    def get_secret(self, environment: str, name: str) -> Operation[SecretView]:
        return (yield _Request("GET", f"/environments/{_q(environment)}/secrets/{_q(name)}", _model(SecretView)))

    def set_secret(self, environment: str, name: str, value: str) -> Operation[SecretView]:
        """Set a secret (write-only: its value is never returned) of an environment; needs an admin key."""
        body = ValueRequest(value=value).model_dump()
        path = f"/environments/{_q(environment)}/secrets/{_q(name)}"
        return (yield _Request("PUT", path, _model(SecretView), json=body))

    def delete_secret(self, environment: str, name: str) -> Operation[None]:
        yield _Request("DELETE", f"/environments/{_q(environment)}/secrets/{_q(name)}", _nothing)

    # schedules
    def create_schedule(self, request: CreateScheduleRequest) -> Operation[ScheduleView]:
        body = request.model_dump(mode="json", exclude_none=True)
        return (yield _Request("POST", "/schedules", _model(ScheduleView), json=body))

    def list_schedules(self, environment: str | None = None) -> Operation[list[ScheduleView]]:
        page = yield _Request("GET", "/schedules", _model(ScheduleList), params=_query(environment=environment))
        return page.items  # type: ignore[no-any-return]

    def get_schedule(self, schedule_id: str) -> Operation[ScheduleView]:
        return (yield _Request("GET", f"/schedules/{_q(schedule_id)}", _model(ScheduleView)))

    def update_schedule(self, schedule_id: str, request: UpdateScheduleRequest) -> Operation[ScheduleView]:
        """Change the fields ``request`` sets (``model_fields_set``): the others stay."""
        body = request.model_dump(mode="json", exclude_unset=True)
        return (yield _Request("PATCH", f"/schedules/{_q(schedule_id)}", _model(ScheduleView), json=body))

    def delete_schedule(self, schedule_id: str) -> Operation[None]:
        yield _Request("DELETE", f"/schedules/{_q(schedule_id)}", _nothing)


# ---------------------------------------------------------------- the two clients


class _ClientBase:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        retry: RetryPolicy | None,
        generate_idempotency_keys: bool,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        # A connection that cannot be made in 10 s will not be made in 30: fail over to a retry sooner.
        self.timeout = (
            timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )
        self.retry = retry or RetryPolicy()
        self._operations = _Operations(timeout=self.timeout, generate_idempotency_keys=generate_idempotency_keys)

    def _pool_options(self, limits: httpx.Limits | None) -> dict[str, Any]:
        """What the sync and the async pool are built with, alike."""
        return {
            "timeout": self.timeout,
            "limits": limits or httpx.Limits(),
            "headers": {"User-Agent": USER_AGENT},
            "follow_redirects": False,
        }

    def _build(self, http: httpx.Client | httpx.AsyncClient, request: _Request[Any]) -> httpx.Request:
        headers = {"Accept": "application/json", **request.headers}
        if request.api and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url + request.path if request.api else request.path
        timeout = self.timeout if request.timeout is None else httpx.Timeout(request.timeout)
        return http.build_request(
            request.method, url, params=request.params or None, json=request.json, content=request.content,
            headers=headers, timeout=timeout,
        )  # fmt: skip


def _sync(operation: Callable[Concatenate[_Operations, P], Operation[T]]) -> Callable[Concatenate[RunlyClient, P], T]:
    @functools.wraps(operation)
    def method(self: RunlyClient, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(operation(self._operations, *args, **kwargs))

    return method


def _sync_iter(
    operation: Callable[Concatenate[_Operations, P], Operation[None]],
) -> Callable[Concatenate[RunlyClient, P], Iterator[Any]]:
    @functools.wraps(operation)
    def method(self: RunlyClient, *args: P.args, **kwargs: P.kwargs) -> Iterator[Any]:
        return self._iterate(operation(self._operations, *args, **kwargs))

    return method


class RunlyClient(_ClientBase):
    """The runly API, synchronously (one pool of keep-alive connections; close it or use ``with``).

    ``timeout``: seconds per request (connect: at most 10); ``retry``: see :class:`RetryPolicy`;
    ``limits``, ``transport``: passed to ``httpx.Client`` (``httpx.Limits(max_keepalive_connections=0)`` makes a
    new connection per request); ``generate_idempotency_keys``: see :meth:`enqueue`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        limits: httpx.Limits | None = None,
        transport: httpx.BaseTransport | None = None,
        generate_idempotency_keys: bool = True,
    ) -> None:
        super().__init__(
            base_url, api_key=api_key, timeout=timeout, retry=retry, generate_idempotency_keys=generate_idempotency_keys
        )
        self._http = httpx.Client(transport=transport, **self._pool_options(limits))

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> RunlyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _steps(self, operation: Operation[T]) -> Generator[Any, None, T]:
        """Carry out the steps of ``operation`` (retries included); yield what it emits; return its result."""
        steps = _with_retries(operation, self.retry)
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            reply = None
            if isinstance(step, _Exchange):
                try:
                    reply = self._http.send(self._build(self._http, step.request))
                except httpx.TransportError as exc:
                    reply = exc
            elif isinstance(step, _Sleep):
                time.sleep(step.seconds)
            else:
                yield step.value

    def _run(self, operation: Operation[T]) -> T:
        steps = self._steps(operation)
        try:
            emitted = next(steps)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        raise AssertionError(f"an operation run as a call emitted {emitted!r}")

    def _iterate(self, operation: Operation[None]) -> Iterator[Any]:
        yield from self._steps(operation)

    push = _sync(_Operations.push)
    list_packages = _sync(_Operations.list_packages)
    list_versions = _sync(_Operations.list_versions)
    get_version = _sync(_Operations.get_version)
    enqueue = _sync(_Operations.enqueue)
    enqueue_many = _sync(_Operations.enqueue_many)
    get_run = _sync(_Operations.get_run)
    wait = _sync(_Operations.wait)
    list_runs = _sync(_Operations.list_runs)
    iter_runs: Callable[..., Iterator[RunView]] = _sync_iter(_Operations.iter_runs)
    cancel_run = _sync(_Operations.cancel_run)
    requeue_run = _sync(_Operations.requeue_run)
    get_logs = _sync(_Operations.get_logs)
    download_logs = _sync(_Operations.download_logs)
    follow_logs: Callable[..., Iterator[str]] = _sync_iter(_Operations.follow_logs)
    list_nodes = _sync(_Operations.list_nodes)
    drain_node = _sync(_Operations.drain_node)
    create_key = _sync(_Operations.create_key)
    list_keys = _sync(_Operations.list_keys)
    revoke_key = _sync(_Operations.revoke_key)
    me = _sync(_Operations.me)
    openapi = _sync(_Operations.openapi)
    list_pins = _sync(_Operations.list_pins)
    get_pin = _sync(_Operations.get_pin)
    set_pin = _sync(_Operations.set_pin)
    delete_pin = _sync(_Operations.delete_pin)
    list_variables = _sync(_Operations.list_variables)
    get_variable = _sync(_Operations.get_variable)
    set_variable = _sync(_Operations.set_variable)
    delete_variable = _sync(_Operations.delete_variable)
    list_secrets = _sync(_Operations.list_secrets)
    get_secret = _sync(_Operations.get_secret)
    set_secret = _sync(_Operations.set_secret)
    delete_secret = _sync(_Operations.delete_secret)
    create_schedule = _sync(_Operations.create_schedule)
    list_schedules = _sync(_Operations.list_schedules)
    get_schedule = _sync(_Operations.get_schedule)
    update_schedule = _sync(_Operations.update_schedule)
    delete_schedule = _sync(_Operations.delete_schedule)


def _async(
    operation: Callable[Concatenate[_Operations, P], Operation[T]],
) -> Callable[Concatenate[AsyncRunlyClient, P], Coroutine[Any, Any, T]]:
    @functools.wraps(operation)
    async def method(self: AsyncRunlyClient, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(operation(self._operations, *args, **kwargs))

    return method


def _async_iter(
    operation: Callable[Concatenate[_Operations, P], Operation[None]],
) -> Callable[Concatenate[AsyncRunlyClient, P], AsyncIterator[Any]]:
    @functools.wraps(operation)
    def method(self: AsyncRunlyClient, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Any]:
        return self._iterate(operation(self._operations, *args, **kwargs))

    return method


class AsyncRunlyClient(_ClientBase):
    """The runly API for asyncio applications: :class:`RunlyClient`'s methods, as coroutines (``iter_runs`` and
    ``follow_logs`` as async iterators). Close it with ``await client.aclose()`` or use ``async with``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        limits: httpx.Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        generate_idempotency_keys: bool = True,
    ) -> None:
        super().__init__(
            base_url, api_key=api_key, timeout=timeout, retry=retry, generate_idempotency_keys=generate_idempotency_keys
        )
        self._http = httpx.AsyncClient(transport=transport, **self._pool_options(limits))

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRunlyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _carry_out(self, step: _Exchange | _Sleep) -> Any:
        if isinstance(step, _Sleep):
            await asyncio.sleep(step.seconds)
            return None
        try:
            return await self._http.send(self._build(self._http, step.request))
        except httpx.TransportError as exc:
            return exc

    async def _run(self, operation: Operation[T]) -> T:
        steps = _with_retries(operation, self.retry)
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if isinstance(step, _Emit):
                raise AssertionError(f"an operation run as a call emitted {step.value!r}")
            reply = await self._carry_out(step)

    async def _iterate(self, operation: Operation[None]) -> AsyncIterator[Any]:
        steps = _with_retries(operation, self.retry)
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration:
                return
            if isinstance(step, _Emit):
                reply = None
                yield step.value
            else:
                reply = await self._carry_out(step)

    push = _async(_Operations.push)
    list_packages = _async(_Operations.list_packages)
    list_versions = _async(_Operations.list_versions)
    get_version = _async(_Operations.get_version)
    enqueue = _async(_Operations.enqueue)
    enqueue_many = _async(_Operations.enqueue_many)
    get_run = _async(_Operations.get_run)
    wait = _async(_Operations.wait)
    list_runs = _async(_Operations.list_runs)
    iter_runs: Callable[..., AsyncIterator[RunView]] = _async_iter(_Operations.iter_runs)
    cancel_run = _async(_Operations.cancel_run)
    requeue_run = _async(_Operations.requeue_run)
    get_logs = _async(_Operations.get_logs)
    download_logs = _async(_Operations.download_logs)
    follow_logs: Callable[..., AsyncIterator[str]] = _async_iter(_Operations.follow_logs)
    list_nodes = _async(_Operations.list_nodes)
    drain_node = _async(_Operations.drain_node)
    create_key = _async(_Operations.create_key)
    list_keys = _async(_Operations.list_keys)
    revoke_key = _async(_Operations.revoke_key)
    me = _async(_Operations.me)
    openapi = _async(_Operations.openapi)
    list_pins = _async(_Operations.list_pins)
    get_pin = _async(_Operations.get_pin)
    set_pin = _async(_Operations.set_pin)
    delete_pin = _async(_Operations.delete_pin)
    list_variables = _async(_Operations.list_variables)
    get_variable = _async(_Operations.get_variable)
    set_variable = _async(_Operations.set_variable)
    delete_variable = _async(_Operations.delete_variable)
    list_secrets = _async(_Operations.list_secrets)
    get_secret = _async(_Operations.get_secret)
    set_secret = _async(_Operations.set_secret)
    delete_secret = _async(_Operations.delete_secret)
    create_schedule = _async(_Operations.create_schedule)
    list_schedules = _async(_Operations.list_schedules)
    get_schedule = _async(_Operations.get_schedule)
    update_schedule = _async(_Operations.update_schedule)
    delete_schedule = _async(_Operations.delete_schedule)
