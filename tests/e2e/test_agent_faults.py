"""The agent under faults, with real processes and real signals: kills, pauses, cancels, drains, timeouts.

Two agents share one environment, so a run one of them loses is resumed by the other.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runly_cli.embedded.stack import Child, EmbeddedStack
from runly_client.client import RunlyClient
from runly_core.contracts import EnqueueRunRequest, FailureReason, RunState, RunView
from tests.e2e.conftest import FAST_AGENT, pushed_stack

LEASE = int(FAST_AGENT["RUNLY_LEASE_SECONDS"])
POLL = int(FAST_AGENT["RUNLY_POLL_WAIT_SECONDS"])


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, e2ejobs_bundle: Path
) -> Iterator[tuple[EmbeddedStack, RunlyClient]]:
    with pushed_stack(tmp_path_factory.mktemp("faults"), e2ejobs_bundle, agents=2, agent_env=FAST_AGENT) as pushed:
        yield pushed


def _enqueue(client: RunlyClient, job: str, config: dict[str, object] | None = None, **options: object) -> RunView:
    return client.enqueue(EnqueueRunRequest(package="e2ejobs", job=job, config=config or {}, **options))  # type: ignore[arg-type]


def _wait_for(predicate: Callable[[], RunView | None], timeout: float, what: str) -> RunView:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _running_on(client: RunlyClient, run_id: str, timeout: float = 60) -> RunView:
    def running() -> RunView | None:
        run = client.get_run(run_id)
        return run if run.state is RunState.RUNNING and run.attempts else None

    return _wait_for(running, timeout, f"{run_id} to run")


def _agent(stack: EmbeddedStack, node_id: str) -> Child:
    return next(child for child in stack.children if child.name == node_id)


def test_a_killed_node_loses_its_run_to_another_within_lease_and_a_poll(
    faulty: tuple[EmbeddedStack, RunlyClient],
) -> None:
    stack, client = faulty
    # Given a run in progress on one node
    run = _running_on(client, _enqueue(client, "sleep", {"seconds": 4}).id)
    victim = _agent(stack, run.attempts[-1].node_id)

    # When that node is killed outright (no drain, no goodbye)
    victim.process.kill()
    victim.process.wait()
    killed_at = time.monotonic()

    # Then another node takes the run over as attempt 2 within the lease plus one poll (and some slack for CI)
    resumed = _wait_for(
        lambda: r if len((r := client.get_run(run.id)).attempts) >= 2 else None, LEASE + POLL + 10, "the takeover"
    )
    assert time.monotonic() - killed_at <= LEASE + POLL + 10
    assert resumed.attempts[0].reason is FailureReason.NODE_LOST
    assert resumed.attempts[1].node_id != victim.name
    final = client.wait(run.id, timeout=60)
    assert final.state is RunState.SUCCEEDED and len(final.attempts) == 2
    stack.start_agent()  # keep two nodes for the next tests


def test_a_paused_node_that_lost_its_lease_is_fenced_off(faulty: tuple[EmbeddedStack, RunlyClient]) -> None:
    stack, client = faulty
    # Given a run in progress on a node
    run = _running_on(client, _enqueue(client, "sleep", {"seconds": 5}).id)
    paused = _agent(stack, run.attempts[-1].node_id)

    # When that node freezes past its lease (as under a long GC pause or a VM stall) and then wakes up
    os.kill(paused.process.pid, signal.SIGSTOP)
    try:
        _wait_for(
            lambda: r if len((r := client.get_run(run.id)).attempts) >= 2 else None, LEASE + POLL + 15, "takeover"
        )
    finally:
        os.kill(paused.process.pid, signal.SIGCONT)

    # Then the run completes exactly once, by the node that took it over
    final = client.wait(run.id, timeout=60)
    assert final.state is RunState.SUCCEEDED
    assert [a.outcome for a in final.attempts] == [None, RunState.SUCCEEDED]
    assert final.attempts[0].reason is FailureReason.NODE_LOST
    assert final.attempts[1].node_id != paused.name
    # And the woken node is still serving
    assert paused.process.poll() is None


def test_cancel_reaches_a_running_job_within_a_heartbeat(faulty: tuple[EmbeddedStack, RunlyClient]) -> None:
    _, client = faulty
    run = _running_on(client, _enqueue(client, "sleep", {"seconds": 60}).id)

    # The API's cancel sets Cancelling; the owner sees it on its next heartbeat and stops the job.
    assert client.cancel_run(run.id).state is RunState.CANCELLING
    asked = time.monotonic()
    final = client.wait(run.id, timeout=30)

    assert final.state is RunState.CANCELLED
    assert time.monotonic() - asked < 1 + float(FAST_AGENT["RUNLY_KILL_GRACE_SECONDS"]) + 5
    assert final.error is not None and final.error.reason is FailureReason.CANCELLED


def test_a_run_over_its_timeout_is_timed_out(faulty: tuple[EmbeddedStack, RunlyClient]) -> None:
    _, client = faulty
    run = client.wait(_enqueue(client, "sleep", {"seconds": 60}, timeout_seconds=2).id, timeout=40)
    assert run.state is RunState.TIMED_OUT
    assert run.error is not None and run.error.reason is FailureReason.TIMEOUT
    assert len(run.attempts) == 1  # a timeout is not retried


def test_sigterm_drains_then_a_second_signal_hands_runs_back(faulty: tuple[EmbeddedStack, RunlyClient]) -> None:
    stack, client = faulty
    # Given a short run and a long run in progress on the same node
    long_run = _running_on(client, _enqueue(client, "sleep", {"seconds": 60}).id)
    node = _agent(stack, long_run.attempts[-1].node_id)

    # When the node gets SIGTERM, it keeps its running job (still heartbeating past the lease)
    node.process.send_signal(signal.SIGTERM)
    time.sleep(LEASE + 2)
    still = client.get_run(long_run.id)
    assert still.state is RunState.RUNNING and len(still.attempts) == 1
    assert node.process.poll() is None

    # And a second signal stops the job and hands the run back at once: another node takes it
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=30) == 0
    taken = _wait_for(
        lambda: r if len((r := client.get_run(long_run.id)).attempts) >= 2 else None, POLL + 10, "the hand-back"
    )
    assert taken.attempts[0].reason is FailureReason.NODE_LOST
    assert taken.attempts[1].node_id != node.name
    client.cancel_run(long_run.id)
    stack.start_agent()


def test_a_run_allowed_one_attempt_whose_node_dies_fails_node_lost_and_never_runs_again(
    faulty: tuple[EmbeddedStack, RunlyClient],
) -> None:
    stack, client = faulty
    # Given a run allowed a single attempt, in progress on one node
    run = _running_on(client, _enqueue(client, "sleep", {"seconds": 4}, max_attempts=1).id)
    victim = _agent(stack, run.attempts[-1].node_id)

    # When that node is killed outright, and the other node receives the message once the lease expired
    victim.process.kill()
    victim.process.wait()

    # Then the run ends Failed as node_lost with its one attempt: no node runs attempt 2
    final = client.wait(run.id, timeout=LEASE + POLL + 30)
    assert final.state is RunState.FAILED
    assert final.error is not None and final.error.reason is FailureReason.NODE_LOST
    assert [(a.number, a.node_id, a.reason) for a in final.attempts] == [(1, victim.name, FailureReason.NODE_LOST)]
    stack.start_agent()  # keep two nodes for the next tests
