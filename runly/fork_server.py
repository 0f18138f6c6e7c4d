"""The warm job host: ``python -I -u -m runly.runner serve SOCKET``, one per package version on a node.

It imports the SDK and every job the package declares once, then forks a fresh child per
run, so a run starts in milliseconds instead of paying for an interpreter and its imports.
Isolation is as with a new interpreter: one process per run, in a process group of its own
(in the host's session, which has no terminal), with its own stdout/stderr, working directory,
environment and channel pipes; the agent stays outside it.

The protocol, over a Unix SOCK_SEQPACKET socket (one connection per run, message boundaries kept):

- agent -> host: one JSON message ``{"cwd": ..., "env": {...}}`` carrying three file
  descriptors (SCM_RIGHTS): the log file (the child's stdout and stderr), the channel's write
  end and the ack pipe's read end; and a fourth when the run gets variables and secrets (a memfd holding them as a
  JSON object, node_agent.job_values), which only the run's child reads: the host never holds a run's values, so a
  later run it forks cannot find them in the memory it inherits;
- host -> agent: ``{"pid": N}`` once the child has its own process group (so the group can be
  signalled at once), then ``{"exit": code}`` when the child is reaped (negative: killed by
  that signal, as in ``subprocess``).

The host is single-threaded (forking a process with threads is unsafe); it exits when its
stdin (a pipe from the agent) closes, so it never outlives its agent. Children it has forked
keep running if it exits: their agent watches them through a pidfd.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import selectors
import signal
import socket
import sys
import traceback
from importlib.metadata import entry_points
from typing import Any

from runly.runner import ENTRY_POINT_GROUP, EXIT_HOST_ERROR, load_job_class, run_main
from runly.wire import ACK_ENV, CHANNEL_ENV

READY = b"ready\n"
MAX_REQUEST_BYTES = 1 << 20
REQUEST_FDS = 3  # log, channel (write end), acks (read end)
MAX_REQUEST_FDS = REQUEST_FDS + 1  # and the run's values (a memfd), if it has any
LISTEN_FD_ENV = "RUNLY_HOST_LISTEN_FD"  # a listening socket bound by the agent (else the host binds SOCKET itself)
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the agent's own sweep still ends the run's processes


def _descendants() -> list[int]:
    """Every process below this one (Linux: /proc/<pid>/task/<tid>/children)."""
    found: list[int] = []
    pending = [os.getpid()]
    while pending:
        pid = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    below = [int(child) for child in children.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(below)
            pending.extend(below)
    return found


def _kill_descendants() -> None:
    """The host is going (its agent stopped it or died): its runs' processes go with it, not on under init."""
    for _ in range(20):
        below = _descendants()
        if not below:
            return
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


def preload() -> list[str]:
    """Import every declared job (and so the SDK and the job's own imports) before any fork.
    A job that fails to import is left to fail in its run's child, with its traceback in the run's log."""
    failed = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            load_job_class(ep.value)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported by the run that uses it (as package_error)
            failed.append(ep.name)
            print(f"warm host: job {ep.name} ({ep.value}) did not import: {exc!r}", file=sys.stderr)
    return failed


class HostServer:
    def __init__(self, socket_path: str) -> None:
        if LISTEN_FD_ENV in os.environ:
            self.listener = socket.socket(fileno=int(os.environ.pop(LISTEN_FD_ENV)))
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.listener.bind(socket_path)
            self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket] = {}
        self._wakeup_read, self._wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_read, False)
        os.set_blocking(self._wakeup_write, False)

    def serve(self, status_fd: int) -> int:
        """Say READY on ``status_fd`` (then close it) and serve until the agent goes."""
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore)  # a handler, so the wakeup fd hears of exits
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "agent")
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, "signal")
        # Objects made so far are never freed: keeping the collector off them keeps their pages
        # shared with every child instead of copied when a collection touches them.
        gc.freeze()
        os.write(status_fd, READY)
        os.close(status_fd)
        while True:
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "signal":
                    self._drain_wakeup()
                    self._reap()
                elif key.data == "agent":
                    if not os.read(sys.stdin.fileno(), 4096):
                        _kill_descendants()
                        return 0  # the agent is gone or asked us to stop

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST_BYTES, MAX_REQUEST_FDS)
            except OSError as exc:
                print(f"warm host: reading a request failed: {exc}", file=sys.stderr)
                return
            try:
                if len(fds) not in (REQUEST_FDS, MAX_REQUEST_FDS):
                    raise ValueError(f"expected {REQUEST_FDS} or {MAX_REQUEST_FDS} file descriptors, got {len(fds)}")
                request = json.loads(data)
                pid = self._fork(request, fds, conn)
            except Exception as exc:  # noqa: BLE001 - the agent falls back to a new interpreter
                _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
                return
            finally:
                for fd in fds:
                    os.close(fd)
            if _send(conn, {"pid": pid}):
                self.children[pid] = conn.dup()
            # Reap at once if it already ended: its SIGCHLD may have come before it was in self.children.
            self._reap()

    def _fork(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the run's child: never returns into the server loop
            code = EXIT_HOST_ERROR
            try:
                os.setpgid(0, 0)
                self._become_run(request, fds, conn)
                code = run_main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else EXIT_HOST_ERROR
            except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        # The child's own process group, made from both sides (whichever runs first): the agent may
        # signal the group the moment it has the pid, without waiting for the child to be scheduled.
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child made it already, or has already ended
        return pid

    def _become_run(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> None:
        """In the child: drop the server's state, take the run's descriptors, environment and directory."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.selector.close()
        self.listener.close()
        conn.close()
        for other in self.children.values():
            other.close()
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)
        # The run's own: it keeps its orphans below it and takes its run's limits (the agent sets them from outside
        # too, and owns the whole tree whichever way). It outlives a host that dies (its agent watches it), and
        # dies with a host that stops or whose agent died (_kill_descendants).
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        limits = request.get("limits") or {}
        for which, key in ((resource.RLIMIT_AS, "memory_bytes"), (resource.RLIMIT_NPROC, "max_processes")):
            if isinstance(limits.get(key), int):
                _, hard = resource.getrlimit(which)
                value = limits[key] if hard == resource.RLIM_INFINITY else min(limits[key], hard)
                resource.setrlimit(which, (value, value))
        log_fd, channel_fd, ack_fd, *values_fd = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if values_fd:  # the run's variables and secrets, read here in the child only
            with os.fdopen(values_fd[0], "rb") as values:
                os.environ.update({str(k): str(v) for k, v in json.loads(values.read()).items()})
        # The descriptors arrive under numbers of the host's choosing: tell the run which.
        os.environ[CHANNEL_ENV] = str(channel_fd)
        os.environ[ACK_ENV] = str(ack_fd)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_read, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                with conn:
                    _send(conn, {"exit": os.waitstatus_to_exitcode(status)})


def _send(conn: socket.socket, message: dict[str, Any]) -> bool:
    try:
        conn.sendall(json.dumps(message).encode())
        return True
    except OSError:
        return False  # the agent went away; the child runs on, reaped by us


def _ignore(signum: int, frame: Any) -> None:
    pass


def serve(socket_path: str) -> int:
    # stdout is the agent's pipe, read for READY alone: whatever the jobs print at import goes to the host's log.
    # Orphans of its runs come back to it (not to init), and other jobs of the same user cannot ptrace it or read
    # its memory and environment (the flag is kept across fork, by every run's child).
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_DUMPABLE, 0)
    status = os.dup(sys.stdout.fileno())
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    preload()
    server = HostServer(socket_path)
    return server.serve(status)
