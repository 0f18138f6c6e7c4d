"""Warm job hosts: one process per package version that forks each run (runly.fork_server).

A new interpreter per run pays for Python's start and the SDK's and the job's imports on every
run (~200 ms and most of a short run's CPU); a child forked from a host that has done it once
starts in a few milliseconds. The agent keeps what it has with a new interpreter: the run is a
process of its own, in its own process group, with the same environment, pipes and log file.

- A host belongs to one bundle SHA-256 (the package cache's key): a new version is a new host,
  so a host never serves code other than what it imported.
- It holds its environment in the package cache (a shared lock), so the cache never evicts it
  under a live host; hosts are bounded (``max_warm_hosts``, least recently used stopped first)
  and stop after ``warm_host_idle_seconds`` without a run.
- Any failure to start or reach a host makes that run fall back to a new interpreter, and the
  package is not tried warm again for a while: a host is an optimisation, never a new way to fail.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from node_agent import process_tree
from node_agent.job_user import JobUser
from node_agent.process_tree import RunLimits

log = logging.getLogger(__name__)

READY = b"ready\n"
LISTEN_FD_ENV = "RUNLY_HOST_LISTEN_FD"  # the listening socket, bound by the agent where the job user cannot reach
START_TIMEOUT_SECONDS = 60.0  # imports of a large package on a busy node
REQUEST_TIMEOUT_SECONDS = 10.0
RETRY_AFTER_FAILURE_SECONDS = 300.0
MAX_SOCKET_DIR_BYTES = 80  # + "/" + 16 hex + ".sock" stays well inside sun_path
# The host died before reporting the child's exit: the child was watched to its end, but its status is lost.
EXIT_STATUS_UNKNOWN = 1000


def socket_directory(directory: Path) -> Path:
    """Where the hosts' sockets go: ``directory`` itself, private to the agent's user (whoever can
    connect can have runs forked), or a private directory under /tmp when ``directory`` is too long for
    a Unix socket's path (108 bytes on Linux)."""
    if len(os.fsencode(directory)) <= MAX_SOCKET_DIR_BYTES:
        directory.chmod(0o700)
        return directory
    link = directory / "sockets"  # names the short directory, for whoever looks for the sockets
    try:
        short = Path(os.readlink(link))
        if short.is_dir() and short.stat().st_uid == os.getuid():
            return short
    except OSError:
        pass
    short = Path(tempfile.mkdtemp(prefix="runly-hosts-"))  # mode 0700
    link.unlink(missing_ok=True)
    link.symlink_to(short)
    return short


class WarmHostError(Exception):
    """The host could not start, or could not start this run: use a new interpreter."""


class HostedProcess:
    """A run's child of a warm host, with the part of ``subprocess.Popen``'s interface the agent uses.

    The agent is not the child's parent, so it cannot wait() for it: the host reports the exit
    status on the run's connection. Should the host die first, a pidfd (taken as soon as the pid is
    known, so a reused pid cannot fool it) tells when the child ends.
    """

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn
        self._done = threading.Event()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # already reaped (its exit is on the connection) or no pidfd support
            self._pidfd = None
        threading.Thread(target=self._watch, name=f"hosted-{pid}", daemon=True).start()

    def _watch(self) -> None:
        code: int | None = None
        try:
            with self._conn:
                self._conn.settimeout(None)
                while code is None:
                    data = self._conn.recv(4096)
                    if not data:
                        break
                    code = json.loads(data).get("exit")
        except (OSError, ValueError):
            pass
        if code is None:
            log.warning("the warm host of process %d went away; watching the process itself", self.pid)
            self._wait_pidfd()
            code = EXIT_STATUS_UNKNOWN
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.returncode = code
        self._done.set()

    def _wait_pidfd(self) -> None:
        if self._pidfd is not None:
            select.select([self._pidfd], [], [])
            return
        while True:  # no pidfd: probe the pid (it could be reused after a long time; this is a fallback)
            try:
                os.kill(self.pid, 0)
            except (ProcessLookupError, PermissionError):
                return  # gone (PermissionError: the pid now names another user's process, so ours ended)
            time.sleep(0.1)

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"warm host child {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode


@dataclass
class WarmHost:
    sha256: str
    socket_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    hold: IO[bytes] | None
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0

    retired: bool = False  # broken while runs were using it: stopped when the last one ends

    @classmethod
    def start(
        cls,
        sha256: str,
        python: Path,
        *,
        directory: Path,
        env: Mapping[str, str],
        hold: IO[bytes] | None,
        user: JobUser | None = None,
        limits: RunLimits | None = None,
    ) -> WarmHost:
        directory.mkdir(parents=True, exist_ok=True)
        socket_path = socket_directory(directory) / f"{sha256[:16]}.sock"
        socket_path.unlink(missing_ok=True)
        log_path = directory / f"{sha256[:16]}.log"
        # The agent binds the socket (in its private directory) and hands the host the listening end: the host,
        # as the job user, could not bind there, and its jobs cannot connect to it by name.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            listener.bind(str(socket_path))
            listener.listen(64)
            setup = None
            if user is not None:
                # The host's limits are the node's (its children lower them to their run's); it keeps its orphans.
                setup = process_tree.child_setup(limits, rlimits=True, die_with_parent=False)
            with open(log_path, "ab") as host_log, process_tree.spawning():
                process = subprocess.Popen(
                    [str(python), "-I", "-u", "-m", "runly.runner", "serve", str(socket_path)],
                    cwd=directory,
                    env={**env, LISTEN_FD_ENV: str(listener.fileno())},
                    stdin=subprocess.PIPE,  # its end of life: the host exits when this closes
                    stdout=subprocess.PIPE,
                    stderr=host_log,
                    start_new_session=True,  # the agent's terminal's Ctrl-C is the agent's to handle
                    pass_fds=(listener.fileno(),),
                    preexec_fn=setup,
                    user=user.popen_uid if user else None,
                    group=user.popen_gid if user else None,
                    extra_groups=user.popen_groups if user else None,
                )
                process_tree.add_root(process.pid)
        finally:
            listener.close()
        host = cls(sha256=sha256, socket_path=socket_path, log_path=log_path, process=process, hold=hold)
        try:
            host._wait_ready()
        except BaseException:
            host.stop()
            raise
        return host

    def _wait_ready(self) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT_SECONDS)
        line = self.process.stdout.readline() if ready else b""
        if line != READY:
            self.process.poll()
            raise WarmHostError(
                f"warm host for {self.sha256[:12]} did not start (exit {self.process.returncode}); see {self.log_path}"
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def spawn(
        self,
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_fd: int,
        channel_fd: int,
        ack_fd: int,
        limits: RunLimits | None = None,
        values: Mapping[str, str] | None = None,
    ) -> HostedProcess:
        """Fork a run's child with this environment; ``values`` (the run's variables and secrets) reach the child
        alone, in a memfd only it reads (runly.fork_server), never the host's memory."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        values_fd = _memfd(values) if values else None
        try:
            conn.settimeout(REQUEST_TIMEOUT_SECONDS)
            conn.connect(str(self.socket_path))
            body: dict[str, object] = {"cwd": str(cwd), "env": dict(env)}
            if limits is not None:
                body["limits"] = {"memory_bytes": limits.memory_bytes, "max_processes": limits.max_processes}
            request = json.dumps(body).encode()
            fds = [log_fd, channel_fd, ack_fd] + ([values_fd] if values_fd is not None else [])
            socket.send_fds(conn, [request], fds)
            reply = json.loads(conn.recv(4096) or b"{}")
        except (OSError, ValueError) as exc:
            conn.close()
            raise WarmHostError(f"warm host for {self.sha256[:12]} did not answer: {exc}") from exc
        finally:
            if values_fd is not None:
                os.close(values_fd)
        if "pid" not in reply:
            conn.close()
            raise WarmHostError(f"warm host for {self.sha256[:12]} refused the run: {reply.get('error', reply)}")
        self.last_used = time.monotonic()
        return HostedProcess(int(reply["pid"]), conn)

    def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin (it exits at once), SIGKILL it if it lingers. It ends its children's processes as it
        goes (runly.fork_server), as when its agent dies: hosts are stopped when no run uses them."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        except OSError:
            pass
        finally:
            process_tree.remove_root(self.process.pid)
            if self.process.stdout is not None:
                self.process.stdout.close()
            if self.hold is not None:
                self.hold.close()  # the cache may evict the environment again
                self.hold = None
            self.socket_path.unlink(missing_ok=True)


# A run's values reach a warm host's child in a memfd (Linux); where there is none, such a run gets a new interpreter.
CAN_PASS_VALUES = hasattr(os, "memfd_create")


def _memfd(values: Mapping[str, str]) -> int:
    """A memory-only file holding ``values`` as JSON, positioned at its start (it is never on a disk)."""
    fd = os.memfd_create("runly-values", os.MFD_CLOEXEC)
    try:
        os.write(fd, json.dumps(dict(values)).encode())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class WarmHosts:
    """The node's warm hosts, at most ``max_hosts``, keyed by bundle SHA-256."""

    def __init__(
        self,
        directory: Path,
        *,
        env: Mapping[str, str],
        max_hosts: int,
        idle_seconds: float,
        hold: Callable[[str], IO[bytes]] | None = None,
        user: JobUser | None = None,
        limits: RunLimits | None = None,
    ) -> None:
        self.directory = directory
        self.user = user  # who hosts run as (None: the agent's user)
        self.limits = limits  # a host's own limits: the node's
        self.env = dict(env)
        self.max_hosts = max_hosts
        self.idle_seconds = idle_seconds
        self._hold = hold  # PackageCache.hold: keeps a host's environment from eviction
        self._hosts: dict[str, WarmHost] = {}
        self._failed_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._starting: dict[str, threading.Lock] = {}

    def acquire(self, sha256: str, python: Path) -> WarmHost | None:
        """The live host for this package (started if need be), counted as in use; None: use a new interpreter."""
        with self._lock:
            if self._failed_until.get(sha256, 0.0) > time.monotonic():
                return None
            starting = self._starting.setdefault(sha256, threading.Lock())
        with starting:  # one start per package, however many runs of it arrive together
            with self._lock:
                host = self._hosts.get(sha256)
                if host is not None and host.alive():
                    host.active += 1
                    host.last_used = time.monotonic()
                    return host
                stale = self._hosts.pop(sha256, None)
            if stale is not None:
                code = stale.process.poll()
                log.warning("warm host for %s had exited (code %s); starting another", sha256[:12], code)
                stale.stop()
            return self._start(sha256, python)

    def _start(self, sha256: str, python: Path) -> WarmHost | None:
        began = time.monotonic()
        hold = self._hold(sha256) if self._hold is not None else None
        try:
            host = WarmHost.start(
                sha256, python, directory=self.directory, env=self.env, hold=hold, user=self.user, limits=self.limits
            )
        except (OSError, WarmHostError) as exc:
            if hold is not None:
                hold.close()
            log.warning("no warm host for %s (%s); its runs use a new interpreter for now", sha256[:12], exc)
            with self._lock:
                self._failed_until[sha256] = time.monotonic() + RETRY_AFTER_FAILURE_SECONDS
            return None
        log.info("warm host for %s started in %.2f s (pid %d)", sha256[:12], time.monotonic() - began, host.process.pid)
        host.active = 1
        with self._lock:
            self._hosts[sha256] = host
            surplus = self._surplus()
        for old in surplus:
            log.info("stopping the warm host for %s (more than %d hosts)", old.sha256[:12], self.max_hosts)
            old.stop()
        return host

    def _surplus(self) -> list[WarmHost]:
        """Least recently used hosts beyond the bound, idle ones only (called with the lock held)."""
        idle = sorted((h for h in self._hosts.values() if h.active == 0), key=lambda h: h.last_used)
        excess = len(self._hosts) - self.max_hosts
        chosen = idle[: max(0, excess)]
        for host in chosen:
            del self._hosts[host.sha256]
        return chosen

    def live(self, sha256: str) -> bool:
        """A host of this package is running (its environment was checked when it started)."""
        with self._lock:
            host = self._hosts.get(sha256)
            return host is not None and host.alive()

    def release(self, host: WarmHost) -> None:
        with self._lock:
            host.active -= 1
            host.last_used = time.monotonic()
            stop = host.retired and host.active <= 0
        if stop:
            host.stop()

    def broken(self, host: WarmHost) -> None:
        """A host that failed a request: stop it once no run uses it (a host that stops takes its runs' processes
        with it); the next run of its package starts a new one."""
        with self._lock:
            if self._hosts.get(host.sha256) is host:
                del self._hosts[host.sha256]
            host.retired = True
            stop = host.active <= 0
        if stop:
            host.stop()

    def stop_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [h for h in self._hosts.values() if h.active == 0 and now - h.last_used > self.idle_seconds]
            for host in idle:
                del self._hosts[host.sha256]
        for host in idle:
            log.info("stopping the warm host for %s (idle %.0f s)", host.sha256[:12], now - host.last_used)
            host.stop()

    def stop_all(self) -> None:
        with self._lock:
            hosts = list(self._hosts.values())
            self._hosts.clear()
        for host in hosts:
            host.stop()

    def __len__(self) -> int:
        with self._lock:
            return len(self._hosts)
