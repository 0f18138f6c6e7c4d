"""A real job, end to end: packed, pushed over HTTP, run by a node agent in its own process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runly_cli.embedded.stack import EmbeddedStack
from runly_client.client import ApiError, RunlyClient
from runly_core.contracts import EnqueueRunRequest, FailureReason, PackageVersionView, RunState
from runly_core.records import run_log_prefix

REPO = Path(__file__).resolve().parents[2]


def _queue_is_empty(stack: EmbeddedStack, *, within: float = 5.0) -> bool:
    """The queue holds no message, visible or in flight, within ``within`` seconds (the agent deletes the
    messages of terminal runs in batches, at most half a second after the run ended)."""
    deadline = time.monotonic() + within
    while True:
        attributes = stack.client("sqs").get_queue_attributes(
            QueueUrl=stack.queue_urls["default"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def shipped_log(stack: EmbeddedStack, run_id: str, attempt: int) -> str:
    """The log chunks of one attempt, in order, as the agent shipped them to the feed."""
    s3 = stack.client("s3")
    listing = s3.list_objects_v2(Bucket=stack.names.feed_bucket, Prefix=run_log_prefix(run_id, attempt))
    keys = sorted(item["Key"] for item in listing.get("Contents", []))
    return "".join(s3.get_object(Bucket=stack.names.feed_bucket, Key=key)["Body"].read().decode() for key in keys)


def test_hello_runs_out_of_process_and_succeeds(
    stack: EmbeddedStack, client: RunlyClient, hello: PackageVersionView
) -> None:
    # Given the hello package in the feed
    assert [job.name for job in hello.jobs] == ["hello"]

    # When a run is enqueued over HTTP
    run = client.enqueue(EnqueueRunRequest(package="hello", job="hello", config={"name": "Ada", "times": 2}))
    assert run.state is RunState.QUEUED
    run = client.wait(run.id, timeout=120)

    # Then it succeeded once, on the node, in a process of its own, with the job's output recorded
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.output["greetings"] == ["Hello, Ada!", "Hello, Ada!"]
    agent_pids = {child.process.pid for child in stack.children}
    assert run.output["pid"] not in agent_pids | {os.getpid()}
    (attempt,) = run.attempts
    assert attempt.node_id == "local-node-1" and attempt.outcome is RunState.SUCCEEDED and attempt.ended_at
    assert run.started_at and run.finished_at and run.created_at <= run.started_at <= run.finished_at
    # And its stdout was shipped to the feed's log prefix
    assert "Hello, Ada!" in shipped_log(stack, run.id, 1)
    # And its message is gone only now that it is terminal
    assert _queue_is_empty(stack)


def test_a_failing_job_is_retried_then_failed_with_its_error(
    stack: EmbeddedStack, client: RunlyClient, e2ejobs: PackageVersionView
) -> None:
    run = client.enqueue(
        EnqueueRunRequest(package="e2ejobs", job="fail", config={"message": "no luck"}, max_attempts=2)
    )
    run = client.wait(run.id, timeout=120)

    assert run.state is RunState.FAILED
    assert [a.reason for a in run.attempts] == [FailureReason.USER_ERROR, FailureReason.USER_ERROR]
    assert run.error is not None and run.error.reason is FailureReason.USER_ERROR
    assert run.error.type == "ValueError" and run.error.message == "no luck"
    assert "Traceback" in (run.error.traceback or "")
    assert _queue_is_empty(stack)


def test_a_crashing_job_process_is_reported_as_a_crash(client: RunlyClient, e2ejobs: PackageVersionView) -> None:
    run = client.wait(client.enqueue(EnqueueRunRequest(package="e2ejobs", job="crash", max_attempts=1)).id, timeout=120)

    assert run.state is RunState.FAILED
    assert run.error is not None and run.error.reason is FailureReason.PROCESS_CRASH
    assert "SIGKILL" in run.error.message


def test_bad_input_is_refused_before_anything_is_queued(
    stack: EmbeddedStack, client: RunlyClient, hello: PackageVersionView
) -> None:
    with pytest.raises(ApiError) as refused:
        client.enqueue(EnqueueRunRequest(package="hello", job="hello", config={"times": "many"}))
    assert refused.value.status == 422 and refused.value.error.field == "config.times"
    assert _queue_is_empty(stack)


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_make_run_demo_ends_with_a_succeeded_run(tmp_path: Path) -> None:
    # What `make run` runs, as a user would, from the repository root.
    result = subprocess.run(
        [sys.executable, "-m", "runly_cli.main", "local", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Succeeded" in result.stdout and "Hello, world!" in result.stdout
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ ", result.stdout), result.stdout


def test_ctrl_c_stops_every_process_the_stack_started(tmp_path: Path) -> None:
    up = subprocess.Popen(
        [sys.executable, "-m", "runly_cli.main", "local", "up"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert up.stdout is not None
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(urls) < 2 and time.monotonic() < deadline:
        line = up.stdout.readline()
        for label in ("API:", "AWS (moto):"):
            if line.startswith(label):
                urls[label] = line.split(label, 1)[1].strip()
    assert len(urls) == 2, "the stack did not print its URLs"
    assert all(_port_open(url) for url in urls.values())
    assert _processes_started_in(tmp_path), "the node agent should be running"

    up.send_signal(signal.SIGINT)

    assert up.wait(timeout=30) == 0
    assert not any(_port_open(url) for url in urls.values())
    assert _processes_started_in(tmp_path) == []


def _processes_started_in(directory: Path) -> list[int]:
    """Live processes whose working directory or environment points into ``directory`` (the stack's children)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if cwd.startswith(str(directory)) or str(directory).encode() in environ:
            found.append(int(proc.name))
    return found
