"""The chaos suite in its short form (the full one is `make chaos`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.chaos import LEASE_SECONDS, ORPHAN_GOAL_SECONDS, POLL_SECONDS, run_chaos


@pytest.mark.e2e
def test_chaos_loses_nothing_and_completes_nothing_twice(tmp_path: Path) -> None:
    # Given 3 agents and a stream of item runs, when agents and jobs are killed, an agent is frozen
    # past its lease and runs are cancelled (each kind of fault at least once)...
    report = run_chaos(runs=16, items=30, faults=8, agents=3, seed=11, timeout=240, workdir=tmp_path)
    print(report.table())
    kinds = {"agent SIGKILL", "job SIGKILL", "agent SIGSTOP past lease", "cancel"}
    assert kinds <= {kind for kind, count in report.faults.items() if count > 0}, report.faults
    assert report.faults_on_running_jobs > 0, "no fault hit a running job process: the fencing was not exercised"

    # ...then every run ends exactly once (some by succeeding), and none is stuck or failed for no reason
    assert report.enqueued == 16
    assert report.lost == 0 and report.stuck == 0
    assert report.succeeded > 0 and report.completed_more_than_once == 0
    assert report.failed_unexpectedly == 0
    # ...and runs were resumed on other attempts, each from its checkpoint (some owed one above 0), and no item
    # before a watermark ran again
    assert report.resumed_runs > 0 and report.attempts_resumed_past_a_checkpoint > 0
    assert report.resumed_from_checkpoint == report.resumed_runs
    assert report.items_processed > 0 and report.resume_violations == 0
    # ...and no side effect of an attempt came after a newer attempt of its run started (superseded attempts wrote
    # lines, and none after), nothing of a run outlived it (the scans saw processes of runs), and a killed agent's
    # jobs died with it (measured: agents were killed with jobs running)
    assert report.lines_of_superseded_attempts > 0
    assert report.lines_after_newer_attempt == 0, f"longest overlap {report.overlap_seconds:.2f} s"
    assert report.run_processes_seen > 0 and report.scans_of_ended_runs > 0
    assert report.processes_after_run_ended == set()
    assert report.orphan_seconds and max(report.orphan_seconds) <= ORPHAN_GOAL_SECONDS
    # Recovery bound: lease + one poll (measured from the kill to the next attempt's start in the store),
    # with 2 s of slack for a loaded CI machine; measured on at least one takeover.
    assert report.takeover_seconds
    assert max(report.takeover_seconds) <= LEASE_SECONDS + POLL_SECONDS + 2, report.takeover_seconds
    # And the verdict `make chaos` prints agrees
    assert report.ok, report.problems()
