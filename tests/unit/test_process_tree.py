"""A run's process tree: every process below the job process, even one that left its session, ends with the run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node_agent import process_tree
from node_agent.process_tree import MIB, Mechanism, RunLimits, descendants_of, start_time, state_of, sweep_leftovers

# A job process that starts a grandchild which leaves the session and is double-forked (its parent is gone),
# prints that grandchild's pid, and sleeps.
ESCAPING_JOB = """
import os, sys, time
read, write = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    os.write(write, f"{os.getpid()}\\n".encode())
    time.sleep(600)
    os._exit(0)
print(os.read(read, 64).decode().strip(), flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    return state_of(pid) in (None, "Z", "X")


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], int, process_tree.RunTree]:
    tree = Mechanism(cgroups=None, subreaper=True).tree("run-1-0001", RunLimits(1 << 30, 64), tmp_path / "trees")
    job = subprocess.Popen(
        [sys.executable, "-c", ESCAPING_JOB],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=process_tree.child_setup(tree.limits, rlimits=True),
    )
    tree.adopt(job.pid)
    assert job.stdout is not None
    grandchild = int(job.stdout.readline())
    return job, grandchild, tree


def test_the_sweep_ends_a_grandchild_that_left_the_session_and_lost_its_parent(tmp_path: Path) -> None:
    # Given a job process whose grandchild left its session and was orphaned (re-parented to the job: a subreaper)
    job, grandchild, tree = _start(tmp_path)
    tree.note()
    assert grandchild in descendants_of([job.pid])
    assert json.loads(tree.record.read_text())["processes"][str(grandchild)] == start_time(grandchild)

    # When the job process ends and the run's tree is ended
    job.kill()
    job.wait()
    killed = tree.end()

    # Then the grandchild is gone too, and nothing is left on record
    assert killed == 1
    deadline = time.monotonic() + 2
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(grandchild)
    assert not tree.record.exists()


def test_an_agent_that_starts_ends_what_a_dead_agent_recorded(tmp_path: Path) -> None:
    # Given the record a previous agent left of a run whose processes still run
    job, grandchild, tree = _start(tmp_path)
    tree.note()

    # When a new agent starts on the same work directory
    killed = sweep_leftovers(tmp_path / "trees", None)

    # Then it ended both, and removed the record
    assert killed == 2
    deadline = time.monotonic() + 2
    while not (_gone(grandchild) and _gone(job.pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(grandchild) and _gone(job.pid)
    assert not list((tmp_path / "trees").glob("*.json"))


def test_a_record_naming_a_reused_pid_kills_nothing(tmp_path: Path) -> None:
    # A pid from a record, now another process (its start time differs): never killed
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "trees").mkdir()
        stale = {"cgroup": None, "processes": {str(bystander.pid): 1}}
        (tmp_path / "trees" / "run-x-0001.json").write_text(json.dumps(stale))
        assert sweep_leftovers(tmp_path / "trees", None) == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_rlimits_are_set_in_the_job_process_before_it_runs() -> None:
    limits = RunLimits(memory_bytes=256 * MIB, max_processes=32)
    code = "import resource as r; print(r.getrlimit(r.RLIMIT_AS)[0], r.getrlimit(r.RLIMIT_NPROC)[0])"
    output = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=process_tree.child_setup(limits, rlimits=True),
    ).stdout.split()
    assert output == [str(256 * MIB), "32"]


@pytest.mark.parametrize(
    ("declared_mb", "declared_processes", "expected"),
    [
        (None, None, RunLimits(4096 * MIB, 4096)),
        (512, 64, RunLimits(512 * MIB, 64)),
        (10**6, 10**6, RunLimits(4096 * MIB, 4096)),  # a package may ask for less than the node's, never more
    ],
)
def test_a_jobs_own_limits_lower_the_nodes_never_raise_them(
    declared_mb: int | None, declared_processes: int | None, expected: RunLimits
) -> None:
    assert (
        RunLimits.for_job(
            node_memory_bytes=4096 * MIB,
            node_max_processes=4096,
            memory_limit_mb=declared_mb,
            max_processes=declared_processes,
        )
        == expected
    )


def _writable_cgroup2() -> Path | None:
    own = process_tree.own_cgroup_v2()
    if own is None:
        return None
    probe = own / "runly-test-probe"
    try:
        probe.mkdir()
    except OSError:
        return None
    return probe


def test_a_run_cgroup_holds_every_descendant_and_cgroup_kill_ends_them(tmp_path: Path) -> None:
    # The cgroup v2 mechanism, on whatever cgroup2 hierarchy this machine lets us write (its memory and pids
    # controllers are not needed to hold and kill a tree; the agent uses this path only where they are there).
    cgroup = _writable_cgroup2()
    if cgroup is None:
        pytest.skip("no writable cgroup2 hierarchy here (not root, or no cgroup2 mount): the fallback is tested above")
    try:
        tree = process_tree.RunTree(
            name="run-cg-0001", limits=RunLimits(1 << 30, 64), record=tmp_path / "run-cg-0001.json", cgroup=cgroup
        )
        job = subprocess.Popen([sys.executable, "-c", ESCAPING_JOB], stdout=subprocess.PIPE, text=True)
        tree.adopt(job.pid)
        assert job.stdout is not None
        grandchild = int(job.stdout.readline())
        # Born in the run's cgroup, though it left the session and its parent
        assert str(grandchild) in (cgroup / "cgroup.procs").read_text().split()

        killed = tree.end()

        assert killed == 1  # the grandchild (its job process, the root, is not counted)
        assert job.wait(timeout=5) == -9
        deadline = time.monotonic() + 2
        while not _gone(grandchild) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _gone(grandchild)
        assert not cgroup.exists()
    finally:
        if cgroup.exists():
            (cgroup / "cgroup.kill").write_text("1")
            time.sleep(0.2)
            cgroup.rmdir()
