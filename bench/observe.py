"""Watching the processes of a benchmark from outside: agent log lines, the files jobs note times in,
/proc samples. Reading only; nothing here changes what it watches."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# "2026-11-27 23:03:46,977 INFO node_agent.agent run run_x: claimed as attempt 1" (node_agent/__main__.py's format)
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) (\S+) (.*)$")
_CLAIMED = re.compile(r"^run (\S+): claimed as attempt (\d+)")
_READY = re.compile(r"^run (\S+): package (\S+) (\S+) ready in ([\d.]+) s \((.*)\)")
_INSTALLED = re.compile(r"^package (\w+) \((\S+) (\S+)\) installed in ([\d.]+)s: (.*)$")
# With warm job hosts the agent adds a suffix: "... job process 26086 started (warm host)".
_SPAWNED = re.compile(r"^run (\S+) attempt (\d+): job process (\d+) started(.*)$")
_HOST_STARTED = re.compile(r"^warm host for (\w+) started in ([\d.]+) s \(pid (\d+)\)")
_TERMINAL = re.compile(r"^run (\S+) (Succeeded|Failed|Cancelled|TimedOut)$")
_PHASE = re.compile(r"(\w+) ([\d.]+)s")


def log_time(date_time: str, millis: str) -> float:
    """Epoch seconds of a ``logging`` asctime (local time, millisecond precision)."""
    return time.mktime(time.strptime(date_time, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def phases(text: str) -> dict[str, float]:
    """Phase timings of a log line: ``download 0.07s, verify 0.03s`` -> {"download": 0.07, "verify": 0.03}."""
    return {name: float(seconds) for name, seconds in _PHASE.findall(text)}


@dataclass
class AgentEvent:
    t: float
    kind: str  # claimed | installed | ready | host_started | spawned | terminal
    run_id: str | None
    data: dict[str, Any] = field(default_factory=dict)


def parse_agent_line(line: str) -> AgentEvent | None:
    match = _LOG_LINE.match(line)
    if match is None:
        return None
    t = log_time(match.group(1), match.group(2))
    message = match.group(5)
    if found := _CLAIMED.match(message):
        return AgentEvent(t, "claimed", found.group(1), {"attempt": int(found.group(2))})
    if found := _READY.match(message):
        detail = found.group(5)
        return AgentEvent(
            t, "ready", found.group(1), {"seconds": float(found.group(4)), "cached": detail == "cached",
                                         "phases": phases(detail)}
        )  # fmt: skip
    if found := _INSTALLED.match(message):
        return AgentEvent(
            t, "installed", None, {"version": found.group(3), "seconds": float(found.group(4)),
                                   "phases": phases(found.group(5))}
        )  # fmt: skip
    if found := _SPAWNED.match(message):
        data: dict[str, Any] = {"attempt": int(found.group(2)), "pid": int(found.group(3))}
        if "warm" in found.group(4):
            data["warm"] = True
        return AgentEvent(t, "spawned", found.group(1), data)
    if found := _HOST_STARTED.match(message):
        return AgentEvent(t, "host_started", None, {"sha256": found.group(1), "seconds": float(found.group(2)),
                                                    "pid": int(found.group(3))})  # fmt: skip
    if found := _TERMINAL.match(message):
        return AgentEvent(t, "terminal", found.group(1), {"state": found.group(2)})
    return None


class Tail:
    """New complete lines of a growing file, from where the last read stopped."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self._offset = path.stat().st_size if from_end and path.exists() else 0
        self._partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        return [line.decode(errors="replace") for line in complete]


class AgentLog:
    """The events of one or more agents' logs, by run."""

    def __init__(self, paths: list[Path], *, from_end: bool = True) -> None:
        self._tails = [Tail(path, from_end=from_end) for path in paths]
        self.events: list[AgentEvent] = []
        self.by_run: dict[str, dict[str, AgentEvent]] = {}

    def add(self, path: Path, *, from_end: bool = False) -> None:
        self._tails.append(Tail(path, from_end=from_end))

    def poll(self) -> list[AgentEvent]:
        new = []
        for tail in self._tails:
            for line in tail.lines():
                event = parse_agent_line(line)
                if event is None:
                    continue
                new.append(event)
                self.events.append(event)
                if event.run_id:
                    # The first of each kind per run: a later attempt's events are looked up in `events`.
                    self.by_run.setdefault(event.run_id, {}).setdefault(event.kind, event)
        return new

    def terminal(self, run_id: str) -> AgentEvent | None:
        return self.by_run.get(run_id, {}).get("terminal")

    def wait_terminal(self, run_id: str, *, timeout: float) -> bool:
        return self.wait(lambda: self.terminal(run_id) is not None, timeout=timeout)

    def wait(self, predicate: Callable[[], bool], *, timeout: float, interval: float = 0.005) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if predicate():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)


@dataclass(frozen=True)
class Stamp:
    first_line: float
    imported: float
    pid: int


class StampFile:
    """What the bench's stamp job (or Celery task) noted: '<tag> <first line> <module imported> <pid>'."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tail = Tail(path)
        self.stamps: dict[str, Stamp] = {}

    def poll(self) -> int:
        for line in self._tail.lines():
            parts = line.split()
            if len(parts) >= 4:
                self.stamps.setdefault(parts[0], Stamp(float(parts[1]), float(parts[2]), int(parts[3])))
        return len(self.stamps)

    def wait_for(self, tag: str, *, timeout: float, interval: float = 0.002) -> Stamp | None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if tag in self.stamps:
                return self.stamps[tag]
            if time.monotonic() > deadline:
                return None
            time.sleep(interval)


# ---------------------------------------------------------------- /proc


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its own, not its children's)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clock_ticks()  # utime, stime (fields 14 and 15)


def children_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process's children that it has waited for (its job processes)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / clock_ticks()  # cutime, cstime (fields 16 and 17)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        below = [child for p in frontier for child in children(p)]
        found += below
        frontier = below
    return found


def ancestor_in(pid: int, candidates: set[int]) -> int | None:
    """The nearest ancestor of ``pid`` (or ``pid`` itself) that is one of ``candidates``: which agent a job
    process belongs to, whether the agent started it or a warm job host forked it."""
    current: int | None = pid
    while current and current > 1:
        if current in candidates:
            return current
        current = parent(current)
    return None


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def warm_hosts(agent_pid: int) -> list[int]:
    """An agent's warm job hosts: its processes running ``python ... -m runly.runner serve``."""
    return [pid for pid in descendants(agent_pid) if {"runly.runner", "serve"} <= set(command_line(pid))]


def own_and_children_cpu(pid: int) -> tuple[float, float]:
    """(its own CPU seconds, its waited-for children's) of a live process."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = clock_ticks()
    return (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks


def node_cpu_seconds(agent_pid: int) -> dict[str, float]:
    """Where a node's CPU went so far: the agent itself; its warm job hosts (start, imports, forking); and
    the job processes, whether the agent waited for them (a new interpreter per run) or a warm host did
    (forked runs). Read while the agent runs: a host the agent stopped and waited for counts as a job
    process here, a negligible error."""
    agent_own, agent_children = own_and_children_cpu(agent_pid)
    hosts_own = hosts_children = 0.0
    for host in warm_hosts(agent_pid):
        try:
            own, reaped = own_and_children_cpu(host)
        except OSError:
            continue
        hosts_own += own
        hosts_children += reaped
    return {"agent": agent_own, "warm hosts": hosts_own, "job processes": agent_children + hosts_children}


def memory_mb(pid: int) -> dict[str, float]:
    """RSS, and PSS (shared pages split among the processes sharing them), in MB."""
    values = {"rss": rss_bytes(pid) / 1024**2}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                values["pss"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return values


class ProcSampler:
    """Samples a process's RSS every ``interval`` seconds on a thread, and its CPU time at start and stop;
    it stops by itself after ``duration`` seconds, if given."""

    def __init__(self, pid: int, interval: float = 1.0, duration: float | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.duration = duration
        self.rss: list[int] = []
        self.started = self.stopped = 0.0
        self.cpu_start = self.cpu_stop = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sample-{pid}", daemon=True)

    def start(self) -> ProcSampler:
        self.started = time.time()
        self.cpu_start = cpu_seconds(self.pid)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.rss.append(rss_bytes(self.pid))
            except OSError:
                return
            if self.duration is not None and time.time() - self.started >= self.duration:
                self._finish()
                return

    def _finish(self) -> None:
        if not self.stopped:
            self.stopped = time.time()
            self.cpu_stop = cpu_seconds(self.pid)

    def wait(self) -> None:
        """Until it has stopped by itself (after ``duration``)."""
        self._thread.join()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._finish()

    @property
    def seconds(self) -> float:
        return self.stopped - self.started

    @property
    def cpu_percent(self) -> float:
        return 100.0 * (self.cpu_stop - self.cpu_start) / self.seconds if self.seconds > 0 else 0.0
