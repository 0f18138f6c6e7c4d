"""A small HTTP client of the runly API, used by the CLI, the embedded stack and the tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

from runly.bundle import read_manifest, sha256_file
from runly.contracts import (
    CreateScheduleRequest,
    EnqueueBatchItem,
    EnqueueBatchResponse,
    EnqueueRunRequest,
    ErrorBody,
    LogPage,
    NodeList,
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
    UpdateScheduleRequest,
    UploadRequest,
    UploadTicket,
)


class ApiError(Exception):
    def __init__(self, status: int, error: ErrorBody) -> None:
        where = f" (field {error.field})" if error.field else ""
        super().__init__(f"HTTP {status} {error.code}: {error.message}{where}")
        self.status = status
        self.error = error


class RunlyClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        payload = self._send(method, path, body, headers)
        return json.loads(payload) if payload else None

    def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        accept: str = "application/json",
    ) -> bytes:
        """The response body of a request; an error response raises ApiError."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", accept)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = ErrorBody.model_validate_json(raw)
            except ValueError:
                error = ErrorBody(code="http_error", message=raw.decode(errors="replace")[:500] or exc.reason)
            raise ApiError(exc.code, error) from None
        return bytes(payload)

    # packages
    def push(self, bundle: Path) -> PackageVersionView:
        """Upload a bundle to the feed (presigned PUT with its SHA-256) and register it."""
        manifest = read_manifest(bundle)
        digest = sha256_file(bundle)
        size = bundle.stat().st_size
        ticket = UploadTicket.model_validate(
            self._call(
                "POST",
                "/packages/uploads",
                UploadRequest(name=manifest.name, version=manifest.version, sha256=digest, size=size).model_dump(),
            )
        )
        put = urllib.request.Request(ticket.url, data=bundle.read_bytes(), method=ticket.method)
        for name, value in ticket.headers.items():
            put.add_header(name, value)
        try:
            with urllib.request.urlopen(put, timeout=max(self.timeout, 120)) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            # 412: an earlier push uploaded these very bytes (the key is their SHA-256 and the PUT creates only,
            # so whatever is there is this bundle); registering is what is left to do.
            if exc.code != HTTPStatus.PRECONDITION_FAILED:
                raise
        registered = self._call(
            "POST",
            "/packages",
            RegisterPackageRequest(name=manifest.name, version=manifest.version, sha256=digest, size=size).model_dump(),
        )
        return PackageVersionView.model_validate(registered)

    # runs
    def enqueue(self, request: EnqueueRunRequest, *, idempotency_key: str | None = None) -> RunView:
        """Enqueue a run. With ``idempotency_key``, retrying after a timeout or a dropped connection is safe:
        the same key and request give back the run the first call created."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return RunView.model_validate(
            self._call("POST", "/runs", request.model_dump(exclude_none=True), headers=headers)
        )

    def enqueue_many(
        self, requests: Sequence[EnqueueRunRequest], *, idempotency_keys: Sequence[str | None] | None = None
    ) -> list[RunView]:
        """Enqueue up to 100 runs in one request (POST /runs/batch); returns them in the order given.

        Every request is checked before any run is recorded: one bad request raises ApiError naming it
        (``runs[<index>]...``) and nothing is enqueued. ``idempotency_keys`` (one per request, None for none) make
        retrying the whole batch safe, as ``idempotency_key`` does for ``enqueue``.
        """
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(requests)
        if len(keys) != len(requests):
            raise ValueError(f"{len(keys)} idempotency keys for {len(requests)} requests")
        items = [
            EnqueueBatchItem(**request.model_dump(), idempotency_key=key).model_dump(exclude_none=True)
            for request, key in zip(requests, keys, strict=True)
        ]
        answer = EnqueueBatchResponse.model_validate(self._call("POST", "/runs/batch", {"runs": items}))
        return answer.runs

    def get_run(self, run_id: str) -> RunView:
        return RunView.model_validate(self._call("GET", f"/runs/{run_id}"))

    def wait(self, run_id: str, *, timeout: float = 300.0, interval: float = 0.25) -> RunView:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run.state.terminal:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run.state} after {timeout:.0f} s")
            time.sleep(interval)

    def list_runs(self, *, limit: int | None = None, cursor: str | None = None, **filters: str | None) -> RunPage:
        """GET /runs; filters: state, package, job, environment, created_after, created_before."""
        query = {k: v for k, v in {**filters, "limit": limit, "cursor": cursor}.items() if v is not None}
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return RunPage.model_validate(self._call("GET", f"/runs{suffix}"))

    def cancel_run(self, run_id: str) -> RunView:
        return RunView.model_validate(self._call("POST", f"/runs/{urllib.parse.quote(run_id)}/cancel"))

    def requeue_run(self, run_id: str, *, resume: bool = False) -> RunView:
        body = RequeueRunRequest(resume=resume).model_dump()
        return RunView.model_validate(self._call("POST", f"/runs/{urllib.parse.quote(run_id)}/requeue", body))

    def get_logs(self, run_id: str, *, attempt: int | None = None, cursor: str | None = None) -> LogPage:
        query = {k: v for k, v in {"attempt": attempt, "cursor": cursor}.items() if v is not None}
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return LogPage.model_validate(self._call("GET", f"/runs/{urllib.parse.quote(run_id)}/logs{suffix}"))

    # nodes
    def list_nodes(self, environment: str | None = None) -> NodeList:
        suffix = f"?{urllib.parse.urlencode({'environment': environment})}" if environment else ""
        return NodeList.model_validate(self._call("GET", f"/nodes{suffix}"))

    def iter_runs(self, *, page_size: int = 100, **filters: str | None) -> Iterator[RunView]:
        """Every run matching the filters (see list_runs), newest first, following the cursor page by page."""
        cursor: str | None = None
        while True:
            page = self.list_runs(limit=page_size, cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def download_logs(self, run_id: str, *, attempt: int | None = None) -> str:
        """An attempt's whole output (the latest attempt by default); up to 4 MB, else page with get_logs."""
        query = {"download": "true", **({"attempt": str(attempt)} if attempt is not None else {})}
        path = f"/runs/{urllib.parse.quote(run_id, safe='')}/logs?{urllib.parse.urlencode(query)}"
        return self._send("GET", path, accept="text/plain").decode("utf-8", errors="replace")

    def follow_logs(self, run_id: str, *, attempt: int | None = None, interval: float = 1.0) -> Iterator[str]:
        """The output as it is shipped: of ``attempt`` (the latest by default) and of every attempt after it,
        until the run is finished and all of it has been read."""
        cursor: str | None = None
        while True:
            page = self.get_logs(run_id, attempt=attempt, cursor=cursor)
            if page.text:
                yield page.text
            if page.complete:
                run = self.get_run(run_id)
                later = run.attempts[-1].number > page.attempt if run.attempts else False
                if later:
                    attempt, cursor = page.attempt + 1, None
                    continue
                if run.state.terminal:
                    return
                time.sleep(interval)  # between attempts: waiting for the retry to start
                continue
            if page.next_cursor is None:
                time.sleep(interval)  # not started yet: ask again from the top
                continue
            attempt, cursor = page.attempt, page.next_cursor
            if not page.text:
                time.sleep(interval)

    # the feed, read
    def list_packages(self) -> list[PackageSummary]:
        return PackageSummaryList.model_validate(self._call("GET", "/packages")).items

    def list_versions(self, name: str) -> list[PackageVersionView]:
        """A package's versions, newest first."""
        path = f"/packages/{urllib.parse.quote(name, safe='')}/versions"
        return PackageVersionList.model_validate(self._call("GET", path)).items

    def get_version(self, name: str, version: str) -> PackageVersionView:
        path = f"/packages/{urllib.parse.quote(name, safe='')}/versions/{urllib.parse.quote(version, safe='')}"
        return PackageVersionView.model_validate(self._call("GET", path))

    # version pins
    def _pin_path(self, environment: str, package: str | None = None) -> str:
        path = f"/environments/{urllib.parse.quote(environment, safe='')}/pins"
        return path if package is None else f"{path}/{urllib.parse.quote(package, safe='')}"

    def list_pins(self, environment: str) -> list[Pin]:
        return PinList.model_validate(self._call("GET", self._pin_path(environment))).items

    def get_pin(self, environment: str, package: str) -> Pin:
        return Pin.model_validate(self._call("GET", self._pin_path(environment, package)))

    def set_pin(self, environment: str, package: str, specifier: str) -> Pin:
        """Pin a package to a PEP 440 specifier (e.g. ``>=1.2,<2``) in an environment; needs an admin key."""
        body = PinRequest(specifier=specifier).model_dump()
        return Pin.model_validate(self._call("PUT", self._pin_path(environment, package), body))

    def delete_pin(self, environment: str, package: str) -> None:
        self._call("DELETE", self._pin_path(environment, package))

    # schedules
    def create_schedule(self, request: CreateScheduleRequest) -> ScheduleView:
        return ScheduleView.model_validate(self._call("POST", "/schedules", request.model_dump(exclude_none=True)))

    def list_schedules(self, environment: str | None = None) -> list[ScheduleView]:
        query = f"?{urllib.parse.urlencode({'environment': environment})}" if environment else ""
        return ScheduleList.model_validate(self._call("GET", f"/schedules{query}")).items

    def get_schedule(self, schedule_id: str) -> ScheduleView:
        return ScheduleView.model_validate(self._call("GET", f"/schedules/{urllib.parse.quote(schedule_id, safe='')}"))

    def update_schedule(self, schedule_id: str, request: UpdateScheduleRequest) -> ScheduleView:
        """Change the fields ``request`` sets (``model_fields_set``): the others stay."""
        path = f"/schedules/{urllib.parse.quote(schedule_id, safe='')}"
        return ScheduleView.model_validate(self._call("PATCH", path, request.model_dump(exclude_unset=True)))

    def delete_schedule(self, schedule_id: str) -> None:
        self._call("DELETE", f"/schedules/{urllib.parse.quote(schedule_id, safe='')}")
