"""Delayed runs on the embedded stack, with a real agent: a run never starts before its ``not_before`` and, a node
being free, starts within 2 s after it (measured from the run's own ``started_at``); a delay beyond the SQS limit
goes through a one-time timer in moto's EventBridge Scheduler, fired by the embedded scheduler, even across a
restart of that scheduler; a delayed run cancelled before its time never runs.

The stack here sends delays up to 6 s as SQS delays (``EmbeddedStack.delay_sqs_seconds``, 15 minutes on AWS), so
the timer path is seen in seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from runly_cli.embedded.stack import EmbeddedStack
from runly_cli.pack import pack_project
from runly_client.client import RunlyClient
from runly_core.contracts import EnqueueRunRequest, RunState, RunView
from tests.e2e.conftest import FAST_AGENT, REPO, stop_printing_failures

# Timers fire this long before not_before: room for the embedded scheduler's 2 s checks and the fire handler's first
# (cold) import in its process, as the 15 minutes on AWS are room for EventBridge's own lateness.
SQS_SECONDS = 6
ON_TIME = timedelta(seconds=2)  # the bound: started within 2 s after not_before


@pytest.fixture(scope="module")
def delayed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedStack, RunlyClient]]:
    embedded = EmbeddedStack(
        state_dir=tmp_path_factory.mktemp("stack"), agent_env=FAST_AGENT, delay_sqs_seconds=SQS_SECONDS
    )
    embedded.start(agents=1)
    client = RunlyClient(embedded.api_url, api_key=embedded.admin_key)
    client.push(pack_project(REPO / "examples" / "hello", tmp_path_factory.mktemp("dist")))
    # A first run installs the package on the node: the delayed runs below then measure dispatch, not installs.
    warm = client.wait(client.enqueue(hello("warm")).id, timeout=120)
    assert warm.state is RunState.SUCCEEDED, warm.error
    try:
        yield embedded, client
    finally:
        stop_printing_failures(embedded)


def hello(name: str, *, delay_seconds: int | None = None) -> EnqueueRunRequest:
    return EnqueueRunRequest(package="hello", job="hello", config={"name": name}, delay_seconds=delay_seconds)


def timers(stack: EmbeddedStack) -> set[str]:
    listed = stack.client("scheduler").list_schedules(GroupName=stack.names.scheduler_group)["Schedules"]
    return {schedule["Name"] for schedule in listed}


def assert_started_on_time(run: RunView) -> None:
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.not_before is not None and run.started_at is not None
    late = run.started_at - run.not_before
    print(f"run {run.id}: started {late.total_seconds():.3f} s after not_before")  # pytest -s shows it
    assert timedelta(0) <= late <= ON_TIME, f"started {late.total_seconds():.3f} s after not_before"


def test_a_run_delayed_by_3_s_starts_no_earlier_and_within_2_s_after(
    delayed_stack: tuple[EmbeddedStack, RunlyClient],
) -> None:
    stack, client = delayed_stack
    # When a run is enqueued with a 3 s delay (an SQS delay)
    run = client.enqueue(hello("soon", delay_seconds=3))
    assert run.state is RunState.QUEUED and run.queued_reason is not None
    assert run.queued_reason.startswith("delayed until ")
    assert run.id not in timers(stack)

    # Then it starts no earlier than not_before, and within 2 s after it, on the node
    assert_started_on_time(client.wait(run.id, timeout=60))


def test_a_long_delay_goes_through_a_timer_that_deletes_itself(
    delayed_stack: tuple[EmbeddedStack, RunlyClient],
) -> None:
    stack, client = delayed_stack
    # When a run is delayed beyond what the stack sends as an SQS delay
    run = client.enqueue(hello("later", delay_seconds=SQS_SECONDS + 5))

    # Then it waits on a one-time schedule in EventBridge Scheduler (moto), and no node sees it meanwhile
    assert run.id in timers(stack)
    time.sleep(2)
    waiting = client.get_run(run.id)
    assert waiting.state is RunState.QUEUED and waiting.queued_reason and "delayed until" in waiting.queued_reason

    # And the timer fires (the embedded scheduler), sends the message, and the run starts on time
    assert_started_on_time(client.wait(run.id, timeout=60))
    # And the timer deleted itself once it fired (ActionAfterCompletion DELETE)
    assert run.id not in timers(stack)


def test_a_timer_due_while_the_scheduler_is_down_fires_when_it_is_back(
    delayed_stack: tuple[EmbeddedStack, RunlyClient],
) -> None:
    stack, client = delayed_stack
    # Given the scheduler stopped (a restart of the stack), and a run whose timer comes due meanwhile
    stack.stop_scheduler()
    try:
        run = client.enqueue(hello("restart", delay_seconds=SQS_SECONDS + 2))
        assert run.id in timers(stack)
        time.sleep(4)  # the timer's time (2 s from now) passes while nothing fires
        assert client.get_run(run.id).state is RunState.QUEUED
    finally:
        # When the scheduler is started again
        stack.start_scheduler()

    # Then the timer still fires (it is kept in moto until it fired): the run is late, never lost
    done = client.wait(run.id, timeout=60)
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.started_at is not None and done.not_before is not None and done.started_at >= done.not_before
    assert run.id not in timers(stack)


@pytest.mark.parametrize("delay", [3, SQS_SECONDS + 3], ids=["sqs-delay", "timer"])
def test_a_delayed_run_cancelled_before_its_time_never_runs(
    delayed_stack: tuple[EmbeddedStack, RunlyClient], delay: int
) -> None:
    stack, client = delayed_stack
    # Given a delayed run
    run = client.enqueue(hello("never", delay_seconds=delay))

    # When it is cancelled before its time
    cancelled = client.cancel_run(run.id)
    assert cancelled.state is RunState.CANCELLED
    assert run.id not in timers(stack)

    # Then well after its time it is still Cancelled, with no attempt: no node ever started it
    assert run.not_before is not None
    time.sleep(delay + 3)
    after = client.get_run(run.id)
    assert after.state is RunState.CANCELLED and after.attempts == [] and after.started_at is None
