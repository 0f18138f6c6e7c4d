"""examples/webapp, the FastAPI application, under uvicorn (a process of its own, over real HTTP) against the
embedded stack: a request enqueues a run, a retried request gets the same run, the progress streams to its end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from runly_cli.embedded.stack import EmbeddedStack
from runly_core.contracts import PackageVersionView
from tests.e2e.conftest import REPO

WEBAPP = REPO / "examples" / "webapp"


@pytest.fixture(scope="module")
def webapp(stack: EmbeddedStack, push_example: Callable[[str], PackageVersionView]) -> Iterator[str]:
    push_example("tally")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "RUNLY_API_URL": stack.api_url,
        "RUNLY_API_KEY": stack.admin_key,
        "PYTHONPATH": os.pathsep.join([str(WEBAPP / "src"), str(REPO)]),
    }
    command = [sys.executable, "-m", "uvicorn", "webapp.app:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else "uvicorn exited"
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the webapp did not start in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_request_enqueues_a_run_whose_progress_streams_to_its_end(webapp: str) -> None:
    key = f"order-{uuid.uuid4().hex[:12]}"
    body = {"limit": 3_000_000, "segment": 100_000}
    with httpx.Client(base_url=webapp, timeout=30) as http:
        # Given a user's POST, and the same POST again (a retry after a timeout, a double click)
        first = http.post("/primes", json=body, headers={"Idempotency-Key": key})
        again = http.post("/primes", json=body, headers={"Idempotency-Key": key})
        other = http.post("/primes", json={"limit": 10})  # no key: a run of its own

        # Then both got the one run; the keyless request another
        assert first.status_code == 202, first.text
        run_id = first.json()["run_id"]
        assert again.status_code == 202 and again.json()["run_id"] == run_id
        assert other.status_code == 202 and other.json()["run_id"] != run_id

        # When the user follows its progress
        with http.stream("GET", f"/runs/{run_id}/progress", timeout=120) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[len("data: ") :]) for line in stream.iter_lines() if line.startswith("data: ")]

        # Then the stream ended with the run's end: Succeeded, with the job's output
        assert events[-1]["state"] == "Succeeded", events[-1]
        assert events[-1]["output"] == {"limit": 3_000_000, "primes": 216_816, "segments": 30}
        # in order: states only move forward, the segments done only grow
        order = ["Queued", "Running", "Succeeded"]
        ranks = [order.index(e["state"]) for e in events]
        assert ranks == sorted(ranks)
        done = [e["done"] for e in events if e["done"] is not None]
        assert done == sorted(done) and done[-1] == 30
        assert http.get(f"/runs/{run_id}").json()["state"] == "Succeeded"


def test_the_apis_errors_reach_the_caller_with_their_status_and_field(webapp: str) -> None:
    with httpx.Client(base_url=webapp, timeout=30) as http:
        refused = http.post("/primes", json={"limit": 1})  # the job's schema wants limit >= 2
        missing = http.get("/runs/run_does_not_exist")
        missing_stream = http.get("/runs/run_does_not_exist/progress")

    assert refused.status_code == 422 and refused.json()["field"] == "config.limit", refused.text
    assert missing.status_code == 404 and missing.json()["code"]
    assert missing_stream.status_code == 404
