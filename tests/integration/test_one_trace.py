"""One trace from an application's request to the job's own work (issue 17, item 4): the API's enqueue span, the
agent's spans of the run and the job process's spans all share the trace id of the traceparent the application sent,
each the child of the one before.

The API handler and a real agent run in this process, on in-process moto, recording into an in-memory exporter; the
job runs in a real job process of a real package (tracedjobs, which installs runly[otel]) and exports its spans with
OpenTelemetry's console exporter (OTEL_TRACES_EXPORTER=console, which it inherits from the agent), one JSON line each,
into its output: the run's log, read back through the API. So the job's spans are the job process's own, parented
by what that process was given.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from node_agent.agent import Agent
from node_agent.aws import AgentAws
from node_agent.package_cache import PackageCache
from node_agent.settings import AgentSettings
from runly_cli.pack import pack_project
from runly_core import resources
from runly_core.bundle import sha256_file
from runly_core.contracts import Scope
from tests.support.run_api import NAMES, Api, api_fixtures

REPO = Path(__file__).resolve().parents[2]
TRACED_PROJECT = REPO / "tests" / "e2e" / "projects" / "tracedjobs"
CALLER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
CALLER = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"


@pytest.fixture
def names() -> resources.ResourceNames:
    return NAMES


stack, aws, api = api_fixtures()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans (the API's, the agent's), in memory. A process has one tracer provider for good: this
    module sets it when none is set yet, else adds its exporter to the one there."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    assert isinstance(trace.get_tracer_provider(), TracerProvider), "another tracer provider is set"
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_project(TRACED_PROJECT, tmp_path_factory.mktemp("dist"))


def _register(api: Api, bundle: Path) -> None:
    stated = {"name": "tracedjobs", "version": "1.0.0", "sha256": sha256_file(bundle), "size": bundle.stat().st_size}
    ticket = api("POST", "/packages/uploads", stated)
    assert ticket.status == 201, ticket.body
    boto3.client("s3").put_object(Bucket=NAMES.feed_bucket, Key=ticket.body["key"], Body=bundle.read_bytes())
    registered = api("POST", "/packages", stated)
    assert registered.status == 201, registered.body


def _job_spans(log: str) -> list[dict[str, Any]]:
    """The spans the job process printed (the console exporter's JSON lines) among the rest of its output."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            candidate = json.loads(line)
            if isinstance(candidate, dict) and "context" in candidate and "parent_id" in candidate:
                found.append(candidate)
    return found


def _ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    context = span.get_span_context()
    assert context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", parent


def test_one_trace_from_the_request_through_the_agent_into_the_job_process(
    api: Api, aws: dict[str, str], spans: InMemorySpanExporter, bundle: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _register(api, bundle)
    spans.clear()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # for the job process, which inherits it

    # Given an application request in trace 0af7...319c
    # When it enqueues a run with its traceparent
    created = api("POST", "/runs", {"package": "tracedjobs", "job": "traced"}, headers={"traceparent": CALLER})
    assert created.status == 201, created.body
    run_id = created.body["id"]
    assert created.body["trace_id"] == CALLER_TRACE_ID

    # And a node runs it
    settings = AgentSettings(
        queue_url=aws["default"], table_name=NAMES.table, feed_bucket=NAMES.feed_bucket, node_id="node-trace",
        capacity=1, poll_wait_seconds=0, work_dir=tmp_path / "agent", heartbeat_seconds=1, lease_seconds=30,
    )  # fmt: skip
    agent_aws = AgentAws(queue_url=aws["default"], table_name=NAMES.table, bucket=NAMES.feed_bucket)
    agent = Agent(settings, agent_aws, PackageCache(tmp_path / "packages", budget_bytes=10**10))
    node = threading.Thread(target=agent.run, daemon=True)
    node.start()
    try:
        deadline = time.monotonic() + 120
        while (run := api("GET", f"/runs/{run_id}", scope=Scope.READ).body)["state"] not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, f"the run did not finish: {run}"
            time.sleep(0.1)
    finally:
        agent.request_stop()
        node.join(60)
    assert run["state"] == "Succeeded", run

    # Then the API's and the agent's spans are in the caller's trace, each child of the enqueue span
    recorded = {span.name: _ids(span) for span in spans.get_finished_spans()}
    assert {"enqueue run", "queued", "claim", "package ready", "job run"} <= set(recorded), recorded
    enqueue_trace, enqueue_span, enqueue_parent = recorded["enqueue run"]
    assert (enqueue_trace, enqueue_parent) == (CALLER_TRACE_ID, CALLER_SPAN_ID)
    for name in ("queued", "claim", "package ready", "job run"):
        assert recorded[name][0] == CALLER_TRACE_ID and recorded[name][2] == enqueue_span, (name, recorded[name])
    job_run_span = recorded["job run"][1]

    # And the job process's own span continues from the agent's job-run span, and its steps from the job's span
    log = api("GET", f"/runs/{run_id}/logs", query={"download": True}, scope=Scope.READ).body
    printed = _job_spans(log or "")
    by_name = {span["name"]: span for span in printed}
    assert "job traced" in by_name, f"the job process exported no span of its own; its output:\n{log}"
    job_span = by_name["job traced"]
    assert job_span["context"]["trace_id"] == f"0x{CALLER_TRACE_ID}"
    assert job_span["parent_id"] == f"0x{job_run_span}"
    assert job_span["resource"]["attributes"]["service.name"] == "tracedjobs"
    steps = [span for span in printed if span["name"] == "step"]
    assert len(steps) == 2
    assert all(step["parent_id"] == job_span["context"]["span_id"] for step in steps)
    assert all(step["context"]["trace_id"] == f"0x{CALLER_TRACE_ID}" for step in steps)

    # And the job saw its own span's context, to hand on to what it calls
    assert run["output"]["traceparent"] == f"00-{CALLER_TRACE_ID}-{job_span['context']['span_id'][2:]}-01"
