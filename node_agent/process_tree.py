"""A run's process tree and its limits: every process a job starts ends with its run.

Two mechanisms, chosen once per agent (:func:`detect`):

- **cgroup v2 per run** where the agent's own cgroup is on a cgroup2 hierarchy it may write and the
  ``memory`` and ``pids`` controllers can be enabled below it (systemd's ``Delegate=yes``): each run gets
  ``<agent cgroup>/runly-runs/<run>-<attempt>``, the agent moves the job process into it as soon as it exists,
  every descendant is born in it (no ``setsid`` or double fork leaves a cgroup), ``memory.max`` and
  ``pids.max`` bound the whole tree, and ``cgroup.kill`` ends it at once.
- **Subreaper and sweep** elsewhere: the agent (and each warm host) is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``), so an orphan is re-parented to it instead of init; the job process itself
  is made a subreaper too before it runs job code, so while it lives its orphans stay below it. The agent
  notes the run's descendants on every tick of its watch (``/proc/<pid>/task/*/children``, recorded in the
  work directory with their start times) and at the run's end SIGKILLs each of them and any process below
  them until none is left, then reaps those that were its own children. The limits are ``RLIMIT_AS``
  (per process) and ``RLIMIT_NPROC`` (per *user*: the job user's processes on the whole node).

Either way the job process gets ``PR_SET_PDEATHSIG`` = SIGKILL, so it dies with the agent thread that started
it (the supervisor's, which lives as long as the run), and an agent that starts sweeps what a previous agent
of the same work directory recorded and could not end (:func:`sweep_leftovers`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
MIB = 1024 * 1024
SWEEP_ROUNDS = 50  # kill, look again: a tree that forks while it is being killed is chased this many times
CGROUP_PARENT = "runly-runs"


@dataclass(frozen=True)
class RunLimits:
    """A run's bounds: bytes of memory (the whole tree under cgroup v2, each process under RLIMIT_AS) and
    processes (the tree under cgroup v2, the job user's processes under RLIMIT_NPROC)."""

    memory_bytes: int
    max_processes: int

    @classmethod
    def for_job(
        cls, *, node_memory_bytes: int, node_max_processes: int, memory_limit_mb: int | None, max_processes: int | None
    ) -> RunLimits:
        """The job's own limits where it declares them, never above the node's: a package may ask for less."""
        memory = node_memory_bytes if memory_limit_mb is None else min(node_memory_bytes, memory_limit_mb * MIB)
        processes = node_max_processes if max_processes is None else min(node_max_processes, max_processes)
        return cls(memory_bytes=memory, max_processes=processes)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded before any fork: a forked child of a threaded agent must not load libraries


def prctl(option: int, value: int) -> bool:
    if _LIBC is None:
        return False
    return bool(_LIBC.prctl(option, value, 0, 0, 0) == 0)


def stop_being_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 0)


def become_subreaper() -> bool:
    """Orphans below this process are re-parented to it (Linux 3.4+), not to init."""
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


def child_setup(limits: RunLimits | None, *, rlimits: bool, die_with_parent: bool = True) -> Callable[[], None]:
    """What a job process does between fork and exec (after Popen dropped it to the job user): die with the
    thread that started it, keep its orphans below it, and take the run's rlimits (the fallback's limits).

    ``die_with_parent`` is for job processes alone: the kernel sends PR_SET_PDEATHSIG when the *thread* that
    forked ends, and a warm host, started by one run's supervisor thread, outlives it (it ends when its stdin,
    a pipe from the agent, closes).

    Only async-signal-safe work: the agent has threads, and the child of a fork has only the one that forked.
    """
    as_limit = limits.memory_bytes if limits is not None and rlimits else None
    nproc = limits.max_processes if limits is not None and rlimits else None

    def setup() -> None:
        # An agent that is not root switches users with ambient capabilities (CAP_SETUID...), which a change
        # between two other users keeps: drop them before exec, and let no setuid binary give any back.
        if _LIBC is not None:
            _LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if die_with_parent:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        if as_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return setup


def apply_rlimits(pid: int, limits: RunLimits) -> None:
    """Lower a running process's rlimits (a warm host's child, whose fork the agent does not run)."""
    for which, value in ((resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_NPROC, limits.max_processes)):
        try:
            _, hard = resource.prlimit(pid, which)
            if hard == resource.RLIM_INFINITY or hard > value:
                resource.prlimit(pid, which, (value, value))
        except (ProcessLookupError, PermissionError, ValueError):
            pass  # already ended, or the host set them itself


# ---------------------------------------------------------------- /proc


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat): with the pid, it names
    one process, never a later one that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses: split after the last one.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def state_of(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def alive(pid: int, started: int) -> bool:
    """The very process (pid and start time) exists and is not a zombie."""
    return start_time(pid) == started and state_of(pid) not in (None, "Z", "X")


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def descendants_of(roots: Iterable[int]) -> dict[int, int]:
    """pid -> start time of every process below ``roots`` (not the roots themselves)."""
    found: dict[int, int] = {}
    pending = list(roots)
    seen = set(pending)
    while pending:
        for child in children_of(pending.pop()):
            if child in seen:
                continue
            seen.add(child)
            started = start_time(child)
            if started is not None:
                found[child] = started
                pending.append(child)
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    """Reap a process of ours that was not started through subprocess (an orphan re-parented to us)."""
    if parent_of(pid) != os.getpid():
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def below_self() -> dict[int, int]:
    """pid -> start time of every process now below this one."""
    return descendants_of([os.getpid()])


def end_leftovers(before: dict[int, int]) -> int:
    """SIGKILL every process below this one that ``before`` (a :func:`below_self` taken earlier) does not hold,
    chasing what forks meanwhile, and reap those that were ours; return how many were killed. For a caller that is
    a subreaper (:func:`become_subreaper`) while a job ran: what the job left behind was re-parented to it."""
    killed: dict[int, int] = {}
    for _ in range(SWEEP_ROUNDS):
        live = {
            pid: started for pid, started in below_self().items() if before.get(pid) != started and alive(pid, started)
        }
        if not live:
            break
        for pid in live:
            _kill(pid)
        killed.update(live)
        time.sleep(0.01)
    for pid in killed:
        _reap_soon(pid)
    return len(killed)


# ---------------------------------------------------------------- cgroup v2


def own_cgroup_v2() -> Path | None:
    """This process's cgroup directory on a mounted cgroup2 hierarchy, or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    if relative is None:
        return None
    for mount in mounts:
        parts = mount.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            candidate = Path(parts[1]) / relative.lstrip("/")
            if (candidate / "cgroup.procs").exists():
                return candidate
    return None


def delegated_cgroup(own: Path | None) -> Path | None:
    """Where per-run cgroups may go: a child of ``own`` with ``memory`` and ``pids`` enabled for its children,
    when the agent may create it; None (the fallback) otherwise.

    cgroup v2 lets no cgroup with enabled controllers hold processes of its own, so the agent first moves itself
    into a leaf (``<own>/agent``) unless it is at the hierarchy's root.
    """
    if own is None:
        return None
    try:
        if not {"memory", "pids"} <= set((own / "cgroup.controllers").read_text().split()):
            return None
        parent = own / CGROUP_PARENT
        parent.mkdir(exist_ok=True)
        if own.parent != own and (own / "cgroup.procs").read_text().split():
            leaf = own / "agent"
            leaf.mkdir(exist_ok=True)
            for pid in (own / "cgroup.procs").read_text().split():
                try:
                    (leaf / "cgroup.procs").write_text(pid)
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
        (own / "cgroup.subtree_control").write_text("+memory +pids")
        (parent / "cgroup.subtree_control").write_text("+memory +pids")
        return parent
    except OSError as exc:
        log.info("cgroup v2 at %s not delegated to this agent (%s): using subreaper and sweep", own, exc)
        return None


@dataclass
class Mechanism:
    """How this agent owns its runs' processes (one per agent, chosen at start)."""

    cgroups: Path | None  # the parent of per-run cgroups; None: subreaper and sweep, rlimits
    subreaper: bool

    @property
    def name(self) -> str:
        return "cgroup v2" if self.cgroups is not None else "subreaper + sweep (rlimits)"

    def tree(self, name: str, limits: RunLimits, record_dir: Path) -> RunTree:
        cgroup = None
        if self.cgroups is not None:
            cgroup = self.cgroups / name
            cgroup.mkdir(exist_ok=True)
            (cgroup / "memory.max").write_text(str(limits.memory_bytes))
            (cgroup / "memory.swap.max").write_text("0") if (cgroup / "memory.swap.max").exists() else None
            (cgroup / "pids.max").write_text(str(limits.max_processes))
        return RunTree(name=name, limits=limits, record=record_dir / f"{name}.json", cgroup=cgroup)


def detect() -> Mechanism:
    subreaper = become_subreaper()
    mechanism = Mechanism(cgroups=delegated_cgroup(own_cgroup_v2()), subreaper=subreaper)
    if not subreaper and mechanism.cgroups is None:
        log.warning("neither a delegated cgroup v2 nor PR_SET_CHILD_SUBREAPER: a job's orphans may outlive its run")
    return mechanism


# ---------------------------------------------------------------- one run's tree


@dataclass
class RunTree:
    """The processes of one run: its root (the job process) and everything below it, noted as they appear."""

    name: str
    limits: RunLimits
    record: Path  # pid -> start time of what was seen, for the next agent should this one die
    cgroup: Path | None = None
    root: int | None = None
    known: dict[int, int] = field(default_factory=dict)
    _written: int = -1

    @property
    def uses_rlimits(self) -> bool:
        return self.cgroup is None

    def adopt(self, pid: int) -> None:
        """The run's root process exists: move it into the run's cgroup (before it has run job code: a new
        interpreter is still starting; see also the warm host's child) and note it."""
        self.root = pid
        started = start_time(pid)
        if started is not None:
            self.known[pid] = started
        if self.cgroup is not None:
            try:
                (self.cgroup / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                log.warning("could not move process %d into %s: %s", pid, self.cgroup, exc)
        self._save()
        self.note()

    def note(self) -> None:
        """Note every process now below the run's processes (called on each tick of the run's watch). In a
        cgroup, move in any that was forked before its parent was moved (a warm host's child starts at once)."""
        if self.cgroup is not None:
            if self.root is not None and start_time(self.root) == self.known.get(self.root):
                try:
                    inside = set((self.cgroup / "cgroup.procs").read_text().split())
                    for pid in descendants_of([self.root]):
                        if str(pid) not in inside:
                            (self.cgroup / "cgroup.procs").write_text(str(pid))
                except OSError:
                    pass  # ended meanwhile
            return
        if not self.known:
            return
        live = [pid for pid, started in self.known.items() if start_time(pid) == started]
        for pid, started in descendants_of(live).items():
            self.known.setdefault(pid, started)
        if len(self.known) != self._written:
            self._save()

    def oom_killed(self) -> bool:
        """The kernel killed a process of this run for its memory limit (cgroup v2 only)."""
        if self.cgroup is None:
            return False
        try:
            events = dict(line.split() for line in (self.cgroup / "memory.events").read_text().splitlines())
        except (OSError, ValueError):
            return False
        return int(events.get("oom_kill", "0")) > 0

    def end(self) -> int:
        """SIGKILL everything of the run that is still there (the root too, if it is), reap what was ours;
        return how many processes were killed."""
        killed = self._end_cgroup() if self.cgroup is not None else self._sweep()
        self.record.unlink(missing_ok=True)
        return killed

    def _sweep(self) -> int:
        killed: set[int] = set()
        for _ in range(SWEEP_ROUNDS):
            live = {pid: started for pid, started in self.known.items() if alive(pid, started)}
            below = descendants_of(pid for pid, started in self.known.items() if start_time(pid) == started)
            live.update((pid, started) for pid, started in below.items() if alive(pid, started))
            self.known.update(below)
            if not live:
                break
            for pid in live:
                _kill(pid)
            killed.update(live)
            time.sleep(0.01)
        for pid, started in self.known.items():
            if pid != self.root and start_time(pid) == started:
                _reap(pid)
        return len(killed - {self.root} if self.root is not None else killed)

    def _end_cgroup(self) -> int:
        assert self.cgroup is not None
        procs = self.cgroup / "cgroup.procs"
        seen: set[int] = set()
        for _ in range(SWEEP_ROUNDS):
            try:
                pids = [int(pid) for pid in procs.read_text().split()]
            except OSError:
                break
            if not pids:
                break
            seen.update(pids)
            if (self.cgroup / "cgroup.kill").exists():
                (self.cgroup / "cgroup.kill").write_text("1")
            else:
                for pid in pids:
                    _kill(pid)
            time.sleep(0.01)
        for pid in seen - {self.root}:
            _reap_soon(pid)
        try:
            self.cgroup.rmdir()
        except OSError:
            pass  # a process is still exiting; the next agent start removes it
        return len(seen - {self.root})

    def _save(self) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.record.with_suffix(".tmp")
        payload = {"cgroup": str(self.cgroup) if self.cgroup else None, "processes": self.known}
        temporary.write_text(json.dumps(payload))
        temporary.replace(self.record)
        self._written = len(self.known)


def sweep_leftovers(record_dir: Path, cgroups: Path | None) -> int:
    """At agent start: end what a previous agent of this work directory recorded for its runs (its jobs lost
    their leases with it), and remove empty run cgroups; return how many processes were killed."""
    killed = 0
    if record_dir.is_dir():
        for record in sorted(record_dir.glob("*.json")):
            try:
                payload = json.loads(record.read_text())
                known = {int(pid): int(started) for pid, started in payload.get("processes", {}).items()}
                cgroup = Path(payload["cgroup"]) if payload.get("cgroup") else None
            except (OSError, ValueError, TypeError, AttributeError):
                record.unlink(missing_ok=True)
                continue
            tree = RunTree(name=record.stem, limits=RunLimits(0, 0), record=record, cgroup=cgroup, known=known)
            count = tree.end()
            if count:
                log.warning("killed %d process(es) a previous agent left of run %s", count, record.stem)
            killed += count
    if cgroups is not None and cgroups.is_dir():
        for leftover in cgroups.iterdir():
            if leftover.is_dir():
                RunTree(name=leftover.name, limits=RunLimits(0, 0), record=record_dir / "none", cgroup=leftover).end()
    return killed


# ---------------------------------------------------------------- strays

# Job processes (roots) of every run of this agent, and the lock a spawn holds until its root is noted: a stray
# sweep that ran between the fork and the note would take a new job process for an orphan.
_roots: set[int] = set()
_roots_lock = threading.Lock()


def spawning() -> threading.Lock:
    """Hold while starting a job process, until :func:`add_root` named it."""
    return _roots_lock


def add_root(pid: int) -> None:
    _roots.add(pid)  # called with the lock of spawning() held


def remove_root(pid: int) -> None:
    with _roots_lock:
        _roots.discard(pid)


def sweep_strays(uid: int, parents: Iterable[int], keep: Iterable[int] = ()) -> int:
    """SIGKILL and reap the job user's processes that were re-parented to the agent (or a warm host) and are no
    run's job process: orphans of some run that left before their run's watch could note them."""
    if uid == os.getuid():
        return 0  # no job user of its own: the agent's own children (package installs) look the same
    killed = 0
    with _roots_lock:
        spared = _roots | set(keep)
        for parent in parents:
            for pid in children_of(parent):
                try:
                    owner = os.stat(f"/proc/{pid}").st_uid
                except OSError:
                    continue
                if owner != uid or pid in spared:
                    continue
                if state_of(pid) not in (None, "Z", "X"):
                    _kill(pid)
                    killed += 1
                # Only the job user's orphans are reaped here: the agent's own subprocesses (package installs)
                # and its job processes are waited for by whoever started them.
                _reap_soon(pid)
    return killed


def _reap_soon(pid: int) -> None:
    for _ in range(20):
        if state_of(pid) in ("Z", None):
            break
        time.sleep(0.005)
    _reap(pid)


# ---------------------------------------------------------------- the keeper: the sweep, when the agent dies


def start_keeper(record_dir: Path, cgroups: Path | None) -> subprocess.Popen[bytes]:
    """A small process of the agent's user that waits for the agent to go (its stdin, a pipe from the agent,
    closes: a SIGKILL, a crash, or a normal exit) and then ends every run process the agent recorded, at once:
    without a cgroup, the orphans of a new-interpreter job whose agent died would otherwise run on under init
    until the next agent start."""
    command = [sys.executable, "-I", "-m", "node_agent.process_tree", str(record_dir), str(cgroups or "")]
    return subprocess.Popen(command, stdin=subprocess.PIPE, start_new_session=True)


def _keep(record_dir: Path, cgroups: Path | None) -> None:
    while sys.stdin.buffer.read(4096):
        pass
    sweep_leftovers(record_dir, cgroups)


if __name__ == "__main__":
    _keep(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None)
