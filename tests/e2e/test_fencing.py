"""Ownership ends, work ends: real agents, real signals, and a job's side effects as a user sees them.

The job (e2ejobs' ``ticker``) never checkpoints and notes every tick in a ledger file on this machine, with the
wall time, the way a job sends an email. Two agents share one environment (test_agent_faults' stack), so a run
one of them loses is taken over by the other.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from runly_cli.embedded.stack import EmbeddedStack
from runly_client.client import RunlyClient
from runly_core.contracts import FailureReason, RunState
from tests.chaos.chaos import _alive, run_processes
from tests.e2e.test_agent_faults import LEASE, POLL, _agent, _enqueue, _running_on, faulty

__all__ = ["faulty"]  # the stack fixture, shared with test_agent_faults (a stack of this module's own)


def _ledger(path: Path) -> list[tuple[int, float]]:
    """(attempt, wall time) of each line."""
    if not path.exists():
        return []
    return [
        (int(attempt), float(wall))
        for _, _, attempt, _, wall in (line.split() for line in path.read_text().splitlines())
    ]


def _lines_of(path: Path, attempt: int, at_least: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for a, _ in _ledger(path) if a == attempt) < at_least:
        assert time.monotonic() < deadline, f"timed out waiting for attempt {attempt} to write to the ledger"
        time.sleep(0.02)


def _job_pids(stack: EmbeddedStack, run_id: str, attempt: int) -> list[int]:
    return [
        pid for pid, owner in run_processes(stack.run_dir).items() if (owner.run_id, owner.attempt) == (run_id, attempt)
    ]


def _gone_within(pids: list[int], seconds: float) -> float:
    started = time.monotonic()
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() - started < seconds, f"{[p for p in pids if _alive(p)]} alive after {seconds} s"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_killed_agents_job_dies_with_it_and_the_run_completes_once_elsewhere(
    faulty: tuple[EmbeddedStack, RunlyClient], tmp_path: Path
) -> None:
    stack, client = faulty
    ledger = tmp_path / "ledger.txt"
    # Given a job that never checkpoints, busy writing its ledger on one node
    run = _running_on(client, _enqueue(client, "ticker", {"ticks": 80, "tick_seconds": 0.05, "ledger": str(ledger)}).id)
    _lines_of(ledger, 1, at_least=3)
    victim = _agent(stack, run.attempts[-1].node_id)
    jobs = _job_pids(stack, run.id, 1)
    assert jobs, "no process of the run found"

    # When its agent is SIGKILLed
    victim.process.kill()
    killed_at = time.time()
    victim.process.wait()

    # Then the job process dies within about a second (at once: it sees its pipe from the agent end)
    assert _gone_within(jobs, 1.0) <= 1.0
    # And its ledger has no line written after the agent's death (plus the 100 ms the job has to notice)
    assert [wall for attempt, wall in _ledger(ledger) if attempt == 1 and wall > killed_at + 0.1] == []

    # And the run is taken over by the other node, and completes once, all its ticks by that attempt
    final = client.wait(run.id, timeout=LEASE + POLL + 60)
    assert final.state is RunState.SUCCEEDED
    assert [(a.outcome, a.reason) for a in final.attempts] == [
        (None, FailureReason.NODE_LOST),
        (RunState.SUCCEEDED, None),
    ]
    assert final.attempts[1].node_id != victim.name
    assert sum(1 for attempt, _ in _ledger(ledger) if attempt == 2) == 1 + 80  # its start, then every tick
    stack.start_agent()  # keep two nodes for the next tests


def test_a_frozen_agents_job_stops_itself_before_the_takeover_starts(
    faulty: tuple[EmbeddedStack, RunlyClient], tmp_path: Path
) -> None:
    stack, client = faulty
    ledger = tmp_path / "ledger.txt"
    # Given a job that never checkpoints, busy writing its ledger on one node
    run = _running_on(
        client, _enqueue(client, "ticker", {"ticks": 160, "tick_seconds": 0.05, "ledger": str(ledger)}).id
    )
    _lines_of(ledger, 1, at_least=3)
    paused = _agent(stack, run.attempts[-1].node_id)
    jobs = _job_pids(stack, run.id, 1)
    assert jobs, "no process of the run found"

    # When its agent freezes past its lease (the job process is not frozen with it), another node takes the run
    os.kill(paused.process.pid, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        # Then the job stops itself (no renewal comes), within the lease, while its agent is still frozen
        assert _gone_within(jobs, LEASE) < LEASE
        _lines_of(ledger, 2, timeout=LEASE + POLL + 30)
    finally:
        os.kill(paused.process.pid, signal.SIGCONT)
    thawed_at = time.time()

    # And no line of the old attempt comes after the new attempt's job started: no overlap at all
    lines = _ledger(ledger)
    new_started = min(wall for attempt, wall in lines if attempt == 2)
    old_last = max(wall for attempt, wall in lines if attempt == 1)
    assert old_last < new_started, f"the old attempt wrote {old_last - new_started:.2f} s into the new one"
    assert old_last < frozen_at + LEASE

    # And once thawed, the old agent writes nothing: the run completes once, by the new attempt, and the old
    # attempt stays as the takeover recorded it (node_lost), not as its own agent would have (lease_expired)
    final = client.wait(run.id, timeout=60)
    assert final.state is RunState.SUCCEEDED
    assert [(a.outcome, a.reason) for a in final.attempts] == [
        (None, FailureReason.NODE_LOST),
        (RunState.SUCCEEDED, None),
    ]
    assert final.attempts[1].node_id != paused.name
    assert [wall for attempt, wall in _ledger(ledger) if attempt == 1 and wall > thawed_at] == []
    assert paused.process.poll() is None  # and it still serves
