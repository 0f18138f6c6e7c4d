"""Self-fencing: a job process ends itself before another node may start its run, and at once when its agent goes.

The agent tells the job its lease deadline (``runly.wire.LeaseMessage``): in the run spec as of the claim, then on
the ack pipe after every renewal it wrote durably, once the job said it hears them (``HelloMessage``). The
deadline is on this node's CLOCK_MONOTONIC, which every process of the machine shares, so neither a wall-clock
step nor a frozen agent (a message sent late still names the same instant) can stretch it.

:class:`AgentLink` reads the ack pipe on a thread of its own: acknowledgements go to the checkpoint waiting for
them; a lease moves the deadline; end of file, a read error or a line that is not a message means the agent is
gone, and the process ends at once (``EXIT_AGENT_GONE``). A watchdog thread ends it when no renewal came by
``deadline - margin`` (``EXIT_LEASE_EXPIRED``), and a kernel timer (``timer_create`` delivering SIGKILL) ends it
at that instant if the interpreter could not run the watchdog (a C call holding the GIL). Ending is
``os._exit``: no ``finalize``, no result, no checkpoint, nothing published; the processes the job started that
it can still find (its descendants and its process group) are SIGKILLed first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import IO, NoReturn

from pydantic import TypeAdapter, ValidationError

from runly.wire import AckMessage, AgentMessage, LeaseMessage

__all__ = ["EXIT_AGENT_GONE", "EXIT_LEASE_EXPIRED", "AgentLink", "end_process"]

# Exit codes of a job process that fenced itself (runly.runner lists them all).
EXIT_LEASE_EXPIRED = 7  # no lease renewal came before the deadline less the margin: another node may take the run
EXIT_AGENT_GONE = 8  # the ack pipe from the agent ended or broke: nobody holds this run's lease for us

# The watchdog ends the process this long before the kernel timer would, so that it is the one that usually does
# (with its exit code and a log line) and the timer only catches an interpreter that cannot run it.
WATCHDOG_LEAD_SECONDS = 0.05
MAX_AGENT_LINE_BYTES = 64 * 1024  # an ack or a lease is under 1 KiB

_agent_messages: TypeAdapter[AgentMessage] = TypeAdapter(AgentMessage)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` that is still its descendant (Linux's /proc/PID/task/TID/children)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                if child not in found:
                    found.append(child)
                    pending.append(child)
    return found


def _group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` (from /proc/PID/stat: the group is the fifth field)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid).encode():
            members.append(int(entry.name))
    return members


def kill_what_the_job_started() -> None:
    """SIGKILL the processes this one started that it can still reach: its descendants, then its process group.
    (A grandchild that double-forked away is out of its reach: the agent's sweep ends it.)"""
    me = os.getpid()
    others = set(_descendants(me))
    with contextlib.suppress(OSError):
        if os.getpgid(0) == me:  # our own group (a job process leads one); never the agent's or a warm host's
            others.update(_group_members(me))
    others.discard(me)
    for pid in others:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def end_process(code: int, why: str) -> NoReturn:
    """End this process now, from any thread: no cleanup, no finalize, no message to the agent."""
    with contextlib.suppress(OSError):
        os.write(2, f"runly: {why}; the job process ends now (exit {code})\n".encode())
    try:
        kill_what_the_job_started()
    finally:
        os._exit(code)


class _SigEvent(ctypes.Structure):  # struct sigevent (64 bytes on Linux)
    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_pad", ctypes.c_int * 12),
    ]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


class _KernelDeadline:
    """A POSIX timer on CLOCK_MONOTONIC that delivers SIGKILL to this process at an absolute instant: the backstop
    that needs no Python code to run. Where it cannot be made (no timer_create), ``available`` is False."""

    _CLOCK_MONOTONIC = 1
    _TIMER_ABSTIME = 1
    _SIGEV_SIGNAL = 0

    def __init__(self) -> None:
        self.available = False
        self._timer = ctypes.c_void_p()
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            event = _SigEvent(sigev_signo=signal.SIGKILL, sigev_notify=self._SIGEV_SIGNAL)
            self.available = (
                self._libc.timer_create(self._CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(self._timer)) == 0
            )
        except (OSError, AttributeError):
            pass
        if not self.available:
            with contextlib.suppress(OSError):
                os.write(2, b"runly: no kernel timer for the lease deadline; the watchdog thread alone enforces it\n")

    def arm(self, at_monotonic: float) -> None:
        if not self.available:
            return
        at = max(at_monotonic, 1e-6)  # zero would disarm it
        spec = _ITimerSpec(it_value=_TimeSpec(int(at), int((at % 1) * 1_000_000_000)))
        self._libc.timer_settime(self._timer, self._TIMER_ABSTIME, ctypes.byref(spec), None)


class AgentLink:
    """The job's end of the agent -> job pipe: acks for the channel, leases for the watchdog, EOF as the agent's
    death. ``readline`` is what :class:`runly.runner.Channel` reads acknowledgements with."""

    def __init__(self, acks: IO[bytes], lease: LeaseMessage | None) -> None:
        self._acks = acks
        self._lines: queue.Queue[str] = queue.Queue()
        self._deadline_changed = threading.Condition()
        self._lease = lease
        self._kernel: _KernelDeadline | None = None
        self._reader = threading.Thread(target=self._read, name="runly-agent-link", daemon=True)
        if lease is not None:
            self._kernel = _KernelDeadline()
            self._arm(lease)
            threading.Thread(target=self._watch, name="runly-lease-watchdog", daemon=True).start()
        self._reader.start()

    def readline(self) -> str:
        """The next acknowledgement line (blocks). The process ends before this could see the pipe's end."""
        return self._lines.get()

    def _read(self) -> None:
        try:
            while True:
                line = self._acks.readline(MAX_AGENT_LINE_BYTES)
                if not line:
                    end_process(EXIT_AGENT_GONE, "the agent closed its pipe (it is gone)")
                if not line.endswith(b"\n"):
                    end_process(EXIT_AGENT_GONE, "the agent sent a line over its limit")
                message = _agent_messages.validate_json(line)
                if isinstance(message, LeaseMessage):
                    self._renew(message)
                elif isinstance(message, AckMessage):
                    self._lines.put(line.decode())
        except (OSError, ValueError, ValidationError) as exc:
            end_process(EXIT_AGENT_GONE, f"the pipe from the agent failed: {type(exc).__name__}: {exc}")

    def _renew(self, lease: LeaseMessage) -> None:
        if self._kernel is None:
            return  # no lease was promised in the spec: nothing to watch
        with self._deadline_changed:
            self._lease = lease
            self._arm(lease)
            self._deadline_changed.notify_all()

    def _arm(self, lease: LeaseMessage) -> None:
        assert self._kernel is not None
        self._kernel.arm(lease.stop_at)

    def _watch(self) -> None:
        with self._deadline_changed:
            while True:
                lease = self._lease
                assert lease is not None
                left = lease.stop_at - WATCHDOG_LEAD_SECONDS - time.monotonic()
                if left <= 0:
                    end_process(
                        EXIT_LEASE_EXPIRED,
                        f"no lease renewal came before the deadline less {lease.margin_seconds:g} s:"
                        " another node may take this run over",
                    )
                self._deadline_changed.wait(left)
