"""A small HTTP client of the runly API, used by the CLI, the embedded stack and the tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from runly.bundle import read_manifest, sha256_file
from runly.contracts import (
    EnqueueRunRequest,
    ErrorBody,
    PackageVersionView,
    RegisterPackageRequest,
    RunView,
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
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
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
        return json.loads(payload) if payload else None

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
        with urllib.request.urlopen(put, timeout=max(self.timeout, 120)) as response:
            response.read()
        registered = self._call(
            "POST",
            "/packages",
            RegisterPackageRequest(name=manifest.name, version=manifest.version, sha256=digest, size=size).model_dump(),
        )
        return PackageVersionView.model_validate(registered)

    # runs
    def enqueue(self, request: EnqueueRunRequest) -> RunView:
        return RunView.model_validate(self._call("POST", "/runs", request.model_dump(exclude_none=True)))

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
