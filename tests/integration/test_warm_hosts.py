"""Warm job hosts (node_agent.fork_servers, runly.fork_server): real host processes in a real package
environment, forking real runs that talk to the agent's side (JobProcess) over real pipes."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.fork_servers import EXIT_STATUS_UNKNOWN, WarmHost, WarmHosts
from node_agent.job_process import JobProcess, Outcome, job_environment
from node_agent.package_cache import InstalledPackage, PackageCache
from node_agent.supervisor import describe_exit
from runly.wire import RunSpec
from runly_cli.pack import pack_project
from runly_core.bundle import sha256_file

REPO = Path(__file__).resolve().parents[2]
E2E_PROJECT = REPO / "tests" / "e2e" / "projects" / "e2ejobs"


def _copied_from(bundle: Path) -> Callable[[Path], None]:
    """A fetch for PackageCache.ensure: the bundle, copied from where it was packed."""

    def fetch(path: Path) -> None:
        shutil.copyfile(bundle, path)

    return fetch


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_project(E2E_PROJECT, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledPackage]:
    cache = PackageCache(tmp_path_factory.mktemp("cache"), budget_bytes=10**10)
    with cache.ensure(sha256_file(bundle), _copied_from(bundle)) as package:
        yield package


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[WarmHosts]:
    pool = WarmHosts(tmp_path / "hosts", env=job_environment(), max_hosts=2, idle_seconds=600)
    yield pool
    pool.stop_all()


def _run(
    installed: InstalledPackage, hosts: WarmHosts | None, work: Path, job: str, config: dict[str, Any] | None = None,
    *, then: Any = None, host: WarmHost | None = None, values: dict[str, str] | None = None,
) -> tuple[JobProcess, Outcome, str]:  # fmt: skip
    if host is None and hosts is not None:
        host = hosts.acquire(installed.sha256, installed.python)
    run_id = f"run-{job}-{time.monotonic_ns()}"
    spec = RunSpec(
        run_id=run_id, attempt=1, package="e2ejobs", version="1.0.0", job=job,
        entry_point=f"e2ejobs.jobs:{job.capitalize()}", config=config or {},
    )  # fmt: skip
    log_path = work / f"{run_id}.log"
    process = JobProcess(
        spec=spec, python=installed.python, work_dir=work / run_id, log_path=log_path, warm_host=host,
        on_warm_host_failure=hosts.broken if hosts is not None else None, values=values or {},
    )  # fmt: skip
    try:
        process.start()
        if then is not None:
            then(process, host)
        outcome = process.outcome()
    finally:
        if host is not None and hosts is not None:
            hosts.release(host)
    return process, outcome, log_path.read_text()


def test_each_run_is_a_fresh_child_of_the_host_in_a_process_group_of_its_own(
    installed: InstalledPackage, hosts: WarmHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the node's, not the job's")
    pool = WarmHosts(tmp_path / "pool", env=job_environment(), max_hosts=1, idle_seconds=600)
    try:
        first_process, first, first_log = _run(installed, pool, tmp_path, "probe", {"tag": "one"})
        second_process, second, second_log = _run(installed, pool, tmp_path, "probe", {"tag": "two"})
        host = pool.acquire(installed.sha256, installed.python)
        assert host is not None
        pool.release(host)
    finally:
        pool.stop_all()
    assert first.exit_code == second.exit_code == 0
    assert first.result is not None and second.result is not None
    a, b = first.result.output, second.result.output
    assert a["pid"] != b["pid"], "a new process per run"
    assert a["ppid"] == b["ppid"] == host.process.pid, "both forked by the one host"
    for output, process in ((a, first_process), (b, second_process)):
        assert output["pid"] == output["pgid"] == process.pid, "a process group of its own"
        assert output["sid"] == host.process.pid != os.getsid(0), "not in the agent's session"
        assert output["runs_in_this_process"] == [process.spec.run_id], "no module state from another run"
        assert output["cwd"] == str(tmp_path / process.spec.run_id)
        assert output["aws_variables"] == []
    assert "probe one in process" in first_log and "probe two" not in first_log
    assert "probe two in process" in second_log
    # What the jobs print at import goes to the host's log, once: not to a run's, nor into its READY pipe.
    assert "e2ejobs imported" not in first_log + second_log
    assert host.log_path.read_text().count("e2ejobs imported") == 1


def test_failures_crashes_and_kills_are_reported_as_with_a_new_interpreter(
    installed: InstalledPackage, hosts: WarmHosts, tmp_path: Path
) -> None:
    _, failed, failed_log = _run(installed, hosts, tmp_path, "fail", {"message": "boom"})
    assert failed.exit_code == 1
    assert failed.error is not None and failed.error.type == "ValueError" and failed.error.message == "boom"
    assert "ValueError: boom" in failed_log

    _, crashed, crashed_log = _run(installed, hosts, tmp_path, "crash")
    assert crashed.exit_code == -signal.SIGKILL and crashed.result is None and crashed.error is None
    assert "about to die" in crashed_log
    assert describe_exit(crashed.exit_code) == "job process was killed by SIGKILL"

    began = time.monotonic()
    _, stopped, _ = _run(installed, hosts, tmp_path, "sleep", {"seconds": 30}, then=lambda p, h: p.stop(0.5))
    # SIGTERM ends it before the SDK handles signals, else the SDK cancels (4) or SIGKILL follows the grace.
    assert stopped.killed and stopped.exit_code in (-signal.SIGTERM, 4, -signal.SIGKILL)
    assert time.monotonic() - began < 15


def test_a_run_outlives_its_host_and_the_next_run_gets_a_new_one(
    installed: InstalledPackage, hosts: WarmHosts, tmp_path: Path
) -> None:
    killed: list[int] = []

    def kill_host(process: JobProcess, host: Any) -> None:
        killed.append(host.process.pid)
        os.kill(host.process.pid, signal.SIGKILL)

    _, outcome, _ = _run(installed, hosts, tmp_path, "sleep", {"seconds": 1}, then=kill_host)
    # The child ran to its end and sent its result; only its exit status went with the host.
    assert outcome.exit_code == EXIT_STATUS_UNKNOWN
    assert outcome.result is not None and outcome.result.output == {"slept": 1.0}

    _, after, _ = _run(installed, hosts, tmp_path, "probe")
    assert after.result is not None and after.result.output["ppid"] not in killed


def test_a_host_that_cannot_start_means_a_new_interpreter_for_a_while(
    installed: InstalledPackage, hosts: WarmHosts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken_python = tmp_path / "python"
    broken_python.write_text("#!/bin/sh\necho 'no runly here' >&2\nexit 3\n")
    broken_python.chmod(0o755)
    assert hosts.acquire("f" * 64, broken_python) is None
    assert hosts.acquire("f" * 64, broken_python) is None  # not retried at once
    assert "no runly here" in (tmp_path / "hosts" / f"{'f' * 16}.log").read_text()

    # A host that dies between being handed out and the run's request: the run starts anyway.
    host = hosts.acquire(installed.sha256, installed.python)
    assert host is not None
    host.process.kill()
    host.process.wait()
    caplog.set_level(logging.INFO, logger="node_agent.job_process")
    process, outcome, _ = _run(installed, hosts, tmp_path, "probe", host=host)
    assert outcome.exit_code == 0 and outcome.result is not None
    assert outcome.result.output["ppid"] == os.getpid(), "a new interpreter, the agent's own child"
    # And its log line says so (the bench and an operator tell the modes apart by it)
    assert f"job process {process.pid} started (new interpreter)" in caplog.text
    assert len(hosts) == 0, "the broken host was dropped"


def test_hosts_are_bounded_stop_when_idle_and_exit_with_their_agent(
    installed: InstalledPackage, tmp_path: Path
) -> None:
    pool = WarmHosts(tmp_path / "hosts", env=job_environment(), max_hosts=1, idle_seconds=0.2)
    try:
        first = pool.acquire("a" * 64, installed.python)
        assert first is not None
        pool.release(first)
        second = pool.acquire("b" * 64, installed.python)  # a second package version: the idle first one goes
        assert second is not None
        assert first.process.poll() == 0, "stopped by closing its stdin, not killed"
        assert len(pool) == 1
        time.sleep(0.3)
        pool.stop_idle()
        assert len(pool) == 1, "a host in use is never stopped"
        pool.release(second)
        time.sleep(0.3)
        pool.stop_idle()
        assert len(pool) == 0 and second.process.poll() == 0
        assert not second.socket_path.exists()
    finally:
        pool.stop_all()


def test_a_work_directory_too_long_for_a_socket_path_still_gets_warm_hosts(
    installed: InstalledPackage, tmp_path: Path
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    pool = WarmHosts(deep / "hosts", env=job_environment(), max_hosts=1, idle_seconds=600)
    try:
        _, outcome, _ = _run(installed, pool, tmp_path, "probe")
        host = pool.acquire(installed.sha256, installed.python)
        assert host is not None
        pool.release(host)
    finally:
        pool.stop_all()
    assert outcome.result is not None and outcome.result.output["ppid"] == host.process.pid
    assert len(os.fsencode(host.socket_path)) < 100 and (host.socket_path.parent.stat().st_mode & 0o777) == 0o700
    assert (deep / "hosts" / "sockets").resolve() == host.socket_path.parent


def test_a_warm_host_keeps_its_environment_from_eviction(bundle: Path, tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**10)
    sha = sha256_file(bundle)
    with cache.ensure(sha, _copied_from(bundle)) as package:
        python = package.python
    pool = WarmHosts(tmp_path / "hosts", env=job_environment(), max_hosts=1, idle_seconds=600, hold=cache.hold)
    try:
        host = pool.acquire(sha, python)
        assert host is not None
        pool.release(host)
        assert not cache._try_remove(sha), "the live host holds its environment"
    finally:
        pool.stop_all()
    assert cache._try_remove(sha), "a stopped host holds nothing"
    assert cache.installed() == []


def test_a_runs_values_reach_its_child_alone_never_the_host_nor_the_next_run(
    installed: InstalledPackage, tmp_path: Path
) -> None:
    # Given one warm host, and a run that gets a variable and a secret (node_agent.job_values)
    token = "tok-warm-host-5d1c9e7a3b"
    pool = WarmHosts(tmp_path / "pool", env=job_environment(), max_hosts=1, idle_seconds=600)
    try:
        values = {"E2E_REGION": "eu-west-1", "E2E_TOKEN": token}
        _, got, log = _run(installed, pool, tmp_path, "credentials", values=values)
        # When the next run of the same host gets none
        _, next_run, _ = _run(installed, pool, tmp_path, "credentials")
        host = pool.acquire(installed.sha256, installed.python)
        assert host is not None
        pool.release(host)
        host_environ = Path(f"/proc/{host.process.pid}/environ").read_bytes()
    finally:
        pool.stop_all()
    # Then the first run's child had both, forked by the host (not a new interpreter)
    assert got.exit_code == 0 and got.result is not None, log
    assert got.result.output["region"] == "eu-west-1"
    assert got.result.output["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert got.result.output["ppid"] == host.process.pid
    # And neither the host's environment nor the next run's child has them
    assert token.encode() not in host_environ
    assert next_run.error is not None and next_run.error.type == "KeyError", next_run
    assert "E2E_TOKEN" in next_run.error.message or "E2E_REGION" in next_run.error.message
