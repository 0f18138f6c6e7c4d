"""Nothing of a job outlives its run, a run has limits, and a job cannot touch the node: real processes, real signals.

A run's processes are checked where a user would see them: in /proc, after the run ended (its end, its cancel,
its timeout, its agent's death). The isolation tests need root (the agent switches jobs to the job user); they
skip elsewhere, with the reason.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.process_tree import descendants_of, state_of
from runly_cli.embedded.stack import EmbeddedStack
from runly_client.client import RunlyClient
from runly_core.contracts import EnqueueRunRequest, FailureReason, PackageVersionView, RunState
from tests.e2e.conftest import FAST_AGENT, pushed_stack
from tests.e2e.test_agent_faults import _agent, _enqueue, _running_on

JOB_USER = "runly-job"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the agent switches jobs to the job user only as root (CI runs as root)"
)


def _gone(pid: int) -> bool:
    """Not running: no such process, or one that has exited (a zombie no longer runs code)."""
    return state_of(pid) in (None, "Z", "X")


def _wait_gone(pids: list[int], within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if all(_gone(pid) for pid in pids):
            return time.monotonic() - started
        time.sleep(0.02)
    alive = [pid for pid in pids if not _gone(pid)]
    raise AssertionError(f"processes {alive} still alive {within} s after their run ended")


@pytest.fixture
def pid_file() -> Iterator[Path]:
    # In a directory the job user may write to: jobs do not run as the test's user.
    directory = Path(tempfile.mkdtemp(prefix="runly-ownership-"))
    directory.chmod(0o777)
    path = directory / "pids"
    path.touch()
    path.chmod(0o666)
    yield path
    path.unlink(missing_ok=True)
    directory.rmdir()


def _noted_pids(path: Path, count: int = 1, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(line) for line in path.read_text().split()]
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"the job's grandchild never noted its pid in {path}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _agent_pid(stack: EmbeddedStack) -> int:
    live = [child for child in stack.children if child.name.startswith("local-node") and child.process.poll() is None]
    return live[-1].process.pid


# ---------------------------------------------------------------- escapes, on the session's stack


@pytest.mark.parametrize("how", ["setsid", "double_fork"])
def test_a_grandchild_that_left_the_session_ends_with_its_run(
    client: RunlyClient, e2ejobs: PackageVersionView, pid_file: Path, how: str
) -> None:
    # Given a job whose grandchild calls setsid() (and, double-forked, has no parent left) and would sleep 10 min
    run = client.wait(_enqueue(client, "spawn", {"how": how, "pid_file": str(pid_file)}).id, timeout=60)

    # When the run has ended
    assert run.state is RunState.SUCCEEDED, run.error
    (grandchild,) = _noted_pids(pid_file)

    # Then the grandchild is gone as well (it was no child of the job process's group or session)
    _wait_gone([grandchild], within=2)


def test_a_grandchild_that_left_the_session_ends_when_its_run_is_cancelled(
    client: RunlyClient, e2ejobs: PackageVersionView, pid_file: Path
) -> None:
    run = _enqueue(client, "spawn", {"pid_file": str(pid_file), "then_sleep": 120})
    (grandchild,) = _noted_pids(pid_file)
    _running_on(client, run.id)

    client.cancel_run(run.id)
    final = client.wait(run.id, timeout=30)

    assert final.state is RunState.CANCELLED
    _wait_gone([grandchild], within=2)


def test_a_grandchild_that_left_the_session_ends_when_its_run_times_out(
    client: RunlyClient, e2ejobs: PackageVersionView, pid_file: Path
) -> None:
    run = _enqueue(client, "spawn", {"pid_file": str(pid_file), "then_sleep": 120}, timeout_seconds=3)
    (grandchild,) = _noted_pids(pid_file)

    final = client.wait(run.id, timeout=40)

    assert final.state is RunState.TIMED_OUT
    _wait_gone([grandchild], within=2)


# ---------------------------------------------------------------- limits


def test_a_memory_hog_ends_memory_limit_beside_a_healthy_run_and_the_node_goes_on(
    stack: EmbeddedStack, client: RunlyClient, e2ejobs: PackageVersionView
) -> None:
    # Given a job declaring memory_limit_mb = 512 that allocates 4 GiB, beside a run that minds its own business
    healthy = _enqueue(client, "sleep", {"seconds": 3})
    hog = _enqueue(client, "hog", {"mb": 4096})

    # When both have ended
    hog_final = client.wait(hog.id, timeout=90)
    healthy_final = client.wait(healthy.id, timeout=90)

    # Then the hog failed for its limit, not retried; the other run succeeded; the agent lives on
    assert hog_final.state is RunState.FAILED
    assert hog_final.error is not None and hog_final.error.reason is FailureReason.MEMORY_LIMIT
    assert "512 MiB" in hog_final.error.message
    assert len(hog_final.attempts) == 1
    assert healthy_final.state is RunState.SUCCEEDED
    assert all(child.process.poll() is None for child in stack.children)
    assert client.wait(_enqueue(client, "echo").id, timeout=60).state is RunState.SUCCEEDED


# ---------------------------------------------------------------- the node's secrets and caches


@needs_root
def test_a_job_cannot_read_the_agents_environment_nor_write_another_packages_environment(
    stack: EmbeddedStack, client: RunlyClient, e2ejobs: PackageVersionView, hello: PackageVersionView
) -> None:
    # Given another package's environment in the node's cache (hello, run once)
    hello_run = client.enqueue(EnqueueRunRequest(package="hello", job="hello", config={"name": "Ada"}))
    hello_final = client.wait(hello_run.id, timeout=90)
    assert hello_final.state is RunState.SUCCEEDED, (hello_final.error, hello_final.attempts)
    other_env = stack.state_dir / "package-cache" / "envs" / hello.sha256
    assert other_env.is_dir()

    # When a job tries to read the agent's /proc/<pid>/environ and to plant a .pth in that environment
    run = client.wait(
        _enqueue(client, "snoop", {"agent_pid": _agent_pid(stack), "other_env": str(other_env)}).id, timeout=60
    )

    # Then it ran as the job user, and both were refused
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.output == {
        "uid": str(pwd.getpwnam(JOB_USER).pw_uid),
        "environ": "refused: PermissionError",
        "plant": "refused: PermissionError",
    }
    assert not list(other_env.glob("lib/python*/site-packages/planted.pth"))


# ---------------------------------------------------------------- a stack of this module's: agent kills, tampering


@pytest.fixture(scope="module")
def own_stack(
    tmp_path_factory: pytest.TempPathFactory, e2ejobs_bundle: Path
) -> Iterator[tuple[EmbeddedStack, RunlyClient]]:
    # Warm hosts stop after a second idle: a test can make the next run start one afresh.
    env = {**FAST_AGENT, "RUNLY_WARM_HOST_IDLE_SECONDS": "1"}
    with pushed_stack(tmp_path_factory.mktemp("ownership"), e2ejobs_bundle, agents=1, agent_env=env) as pushed:
        yield pushed


def test_a_killed_agent_leaves_no_job_process_alive(
    own_stack: tuple[EmbeddedStack, RunlyClient], pid_file: Path
) -> None:
    stack, client = own_stack
    # Given a plain job that never checkpoints and a job with a setsid grandchild, both running on one agent
    sleeper = _running_on(client, _enqueue(client, "sleep", {"seconds": 120}).id)
    spawner = _enqueue(client, "spawn", {"pid_file": str(pid_file), "then_sleep": 120})
    (grandchild,) = _noted_pids(pid_file)
    _running_on(client, spawner.id)
    agent = _agent(stack, sleeper.attempts[-1].node_id)
    processes = [pid for pid in descendants_of([agent.process.pid]) if "node_agent.process_tree" not in _cmdline(pid)]
    assert grandchild in processes and len(processes) >= 3  # the job processes (and their warm host) too

    # When the agent is SIGKILLed
    agent.process.send_signal(signal.SIGKILL)
    agent.process.wait()

    # Then within about a second none of its jobs' processes is alive
    took = _wait_gone(processes, within=1.5)
    print(f"the last process of the killed agent's runs ended {took:.2f} s after it")
    stack.start_agent()
    for run_id in (sleeper.id, spawner.id):
        client.cancel_run(run_id)


def test_a_tampered_environment_is_refused_before_a_warm_host_starts_from_it(
    own_stack: tuple[EmbeddedStack, RunlyClient],
) -> None:
    stack, client = own_stack
    # Given the package's environment on the node, its warm host stopped (idle)
    first = client.wait(_enqueue(client, "echo").id, timeout=90)
    assert first.state is RunState.SUCCEEDED
    envs = stack.state_dir / "package-cache" / "envs"
    (env_dir,) = [path for path in envs.iterdir() if path.is_dir()]
    time.sleep(3)

    # When someone plants a .pth file in it (as the agent's own user could: mode and owner look right)
    marker = Path(tempfile.mkdtemp(prefix="runly-planted-")) / "ran"
    (site,) = env_dir.glob("lib/python*/site-packages")
    planted = site / "zz_planted.pth"
    planted.write_text(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('planted code ran')\n")
    planted.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)

    # Then the next run finds it out before any process starts from it: it is installed again, the run succeeds,
    # and the planted code never ran
    second = client.wait(_enqueue(client, "echo").id, timeout=120)
    assert second.state is RunState.SUCCEEDED, second.error
    assert not marker.exists()
    assert not (site / "zz_planted.pth").exists()
    marker.parent.rmdir()


# ---------------------------------------------------------------- the same with a new interpreter per run


@pytest.fixture(scope="module")
def cold_stack(
    tmp_path_factory: pytest.TempPathFactory, e2ejobs_bundle: Path
) -> Iterator[tuple[EmbeddedStack, RunlyClient]]:
    env = {**FAST_AGENT, "RUNLY_WARM_HOSTS": "false"}
    with pushed_stack(tmp_path_factory.mktemp("ownership-cold"), e2ejobs_bundle, agents=1, agent_env=env) as pushed:
        yield pushed


def test_without_warm_hosts_the_tree_limits_and_user_hold_as_well(
    cold_stack: tuple[EmbeddedStack, RunlyClient], pid_file: Path
) -> None:
    stack, client = cold_stack
    # A setsid grandchild of a new interpreter ends with its run
    spawned = client.wait(_enqueue(client, "spawn", {"pid_file": str(pid_file)}).id, timeout=90)
    assert spawned.state is RunState.SUCCEEDED, spawned.error
    _wait_gone(_noted_pids(pid_file), within=2)

    # A hog ends memory_limit (RLIMIT_AS, set between fork and exec), and the node goes on
    hog = client.wait(_enqueue(client, "hog", {"mb": 4096}).id, timeout=90)
    assert hog.state is RunState.FAILED
    assert hog.error is not None and hog.error.reason is FailureReason.MEMORY_LIMIT
    assert all(child.process.poll() is None for child in stack.children)

    # A killed agent's new-interpreter job and its setsid grandchild end within about a second (its keeper)
    pid_file.write_text("")
    running = _enqueue(client, "spawn", {"pid_file": str(pid_file), "then_sleep": 120})
    (grandchild,) = _noted_pids(pid_file)
    agent = _agent(stack, _running_on(client, running.id).attempts[-1].node_id)
    time.sleep(0.2)  # a few ticks of the run's watch: the grandchild is on record
    processes = [pid for pid in descendants_of([agent.process.pid]) if "node_agent.process_tree" not in _cmdline(pid)]
    assert grandchild in processes
    agent.process.send_signal(signal.SIGKILL)
    agent.process.wait()
    took = _wait_gone(processes, within=1.5)
    print(f"the last process of the killed agent's new-interpreter run ended {took:.2f} s after it")
    stack.start_agent()
    client.cancel_run(running.id)

    # And the job process is the job user's, which cannot read the agent's environment
    if os.geteuid() == 0:
        snoop = {"agent_pid": _agent_pid(stack), "other_env": str(stack.state_dir / "package-cache" / "envs")}
        run = client.wait(_enqueue(client, "snoop", snoop).id, timeout=60)
        assert run.state is RunState.SUCCEEDED, run.error
        assert run.output is not None and run.output["uid"] == str(pwd.getpwnam(JOB_USER).pw_uid)
        assert run.output["environ"] == "refused: PermissionError"
        assert run.output["plant"] == "refused: PermissionError"
