"""The chaos suite in its short form (the full one is `make chaos`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.chaos import LEASE_SECONDS, ORPHAN_GOAL_SECONDS, POLL_SECONDS, run_chaos


@pytest.mark.e2e
def test_chaos_loses_nothing_and_completes_nothing_twice(tmp_path: Path) -> None:
    # Given 3 agents and a stream of item runs, when agents and jobs are killed, an agent is frozen
    # past its lease and runs are cancelled...
    report = run_chaos(runs=16, items=30, faults=8, agents=3, seed=11, timeout=240, workdir=tmp_path)
    print(report.table())

    # ...then every run ends exactly once, none is stuck, and resumed runs start from their checkpoint.
    assert report.lost == 0
    assert report.completed_more_than_once == 0
    assert report.stuck == 0
    assert report.resume_violations == 0
    assert report.resumed_from_checkpoint == report.resumed_runs
    assert report.failed_unexpectedly == 0
    assert sum(report.faults.values()) > 0, "no fault was injected: the test proved nothing"
    # ...and no side effect of an attempt came after a newer attempt of its run started, nothing of a run outlived
    # it, and a killed agent's jobs died with it; measured on faults that hit running jobs, with items processed.
    assert report.faults_on_running_jobs > 0, "no fault hit a running job process: the fencing was not exercised"
    assert report.items_processed > 0
    assert report.lines_after_newer_attempt == 0, f"longest overlap {report.overlap_seconds:.2f} s"
    assert report.processes_after_run_ended == set()
    assert max(report.orphan_seconds, default=0.0) <= ORPHAN_GOAL_SECONDS
    # Recovery bound: lease + one poll (measured from the kill to the next attempt's start in the store),
    # with 2 s of slack for a loaded CI machine.
    assert all(seconds <= LEASE_SECONDS + POLL_SECONDS + 2 for seconds in report.takeover_seconds)
