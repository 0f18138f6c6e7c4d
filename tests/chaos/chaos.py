"""The chaos suite: many item runs on three real agents while agents are killed and restarted,
job processes are killed, an agent is frozen past its lease, and runs are cancelled.

    python -m tests.chaos.chaos --runs 100        # `make chaos`
    (a shorter form runs in `make test`: tests/chaos/test_chaos.py)

It prints a table and exits non-zero unless no run was lost, none completed twice, none is stuck,
every resumed run restarted from its checkpoint (no item before its watermark processed again), no attempt wrote
a ledger line after a newer attempt of its run started job code, and no process of a run outlived it.

The ledger is the side effect a user sees: every item appends ``RUN KIND ATTEMPT VALUE WALL_TIME`` to one file
(O_APPEND, one write each). A run's processes are found by their environment: every job process (and whatever it
starts, unless that clears its environment) carries RUNLY_RUN_SPEC, a path naming its node, run and attempt.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runly_cli.embedded.stack import Child, EmbeddedStack
from runly_cli.pack import pack_project
from runly_client.client import ApiError, RunlyClient
from runly_core import resources
from runly_core.contracts import EnqueueRunRequest, FailureReason, RunState, RunView
from tests.support.job_user import share_with_jobs

PROJECT = Path(__file__).resolve().parents[1] / "e2e" / "projects" / "e2ejobs"
# Each lease renewal gives a job the lease less 2 s (the claim's margin before its message reappears and the fence
# margin): at 5 s, it outlives 2 s of a late heartbeat on a loaded machine (at 4 s, 1 s: jobs stopped themselves).
LEASE_SECONDS = 5
ORPHAN_GOAL_SECONDS = 1.0
POLL_SECONDS = 1
AGENT_SETTINGS = {
    "RUNLY_LEASE_SECONDS": str(LEASE_SECONDS),
    "RUNLY_HEARTBEAT_SECONDS": "1",
    "RUNLY_POLL_WAIT_SECONDS": str(POLL_SECONDS),
    "RUNLY_RETRY_BASE_SECONDS": "1",
    "RUNLY_RETRY_MAX_SECONDS": "4",
    "RUNLY_KILL_GRACE_SECONDS": "2",
    "RUNLY_CAPACITY": "2",
}


@dataclass
class Planned:
    run_id: str
    intent: str  # "succeed" | "fail" | "cancel"


@dataclass
class Report:
    enqueued: int = 0
    succeeded: int = 0
    failed_as_intended: int = 0
    failed_unexpectedly: int = 0
    unexpected_failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by reason
    cancelled: int = 0
    lost: int = 0
    completed_more_than_once: int = 0
    stuck: int = 0
    items_processed: int = 0
    items_repeated: int = 0
    resumed_runs: int = 0
    resumed_from_checkpoint: int = 0
    resume_violations: int = 0
    faults: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    self_fenced_attempts: int = 0  # attempts whose job stopped itself, no renewal having reached it (lease_expired)
    faults_on_running_jobs: int = 0  # faults whose victim had a job process running at that instant
    takeover_seconds: list[float] = field(default_factory=list)
    # Ledger lines an attempt wrote after a newer attempt of the same run started job code, and the longest overlap.
    lines_after_newer_attempt: int = 0
    overlap_seconds: float = 0.0
    orphan_seconds: list[float] = field(default_factory=list)  # per killed agent: how long its jobs outlived it
    processes_after_run_ended: set[int] = field(default_factory=set)  # pids seen alive with their run terminal
    # What shows that the checks above looked at something: a check of nothing proves nothing.
    attempts_resumed_past_a_checkpoint: int = 0  # later attempts owed a watermark above 0 by an acknowledged ckpt
    lines_of_superseded_attempts: int = 0  # ledger lines of an attempt that a newer attempt of its run followed
    run_processes_seen: int = 0  # the most processes of runs one scan of /proc found (the scan sees jobs at all)
    scans_of_ended_runs: int = 0  # scans of /proc made while some planned run had ended a refresh before

    def problems(self) -> list[str]:
        """Each goal missed, or met only vacuously (the thing it checks never happened): none means OK."""
        checks = [
            (self.enqueued > 0, "no run enqueued"),
            (self.lost == 0, "runs lost"),
            (self.stuck == 0, "runs stuck non-terminal"),
            (self.succeeded > 0, "no run succeeded: nothing could complete twice"),
            (self.completed_more_than_once == 0, "runs completed more than once"),
            (self.items_processed > 0, "no item processed: the ledger is empty"),
            (sum(self.faults.values()) > 0, "no fault injected"),
            (self.faults_on_running_jobs > 0, "no fault hit a running job process"),
            (self.resumed_runs > 0, "no run resumed on another attempt: nothing to resume from a checkpoint"),
            (self.attempts_resumed_past_a_checkpoint > 0, "no attempt was owed a checkpoint above 0"),
            (self.resumed_from_checkpoint == self.resumed_runs, "resumed runs that ignored their checkpoint"),
            (self.resume_violations == 0, "items before a watermark processed again"),
            (self.lines_of_superseded_attempts > 0, "no ledger line of an attempt that a newer one followed"),
            (self.lines_after_newer_attempt == 0, "ledger lines written after a newer attempt started"),
            (self.run_processes_seen > 0, "the scan of /proc never found a process of a run"),
            (self.scans_of_ended_runs > 0, "/proc was never scanned for processes of ended runs"),
            (not self.processes_after_run_ended, "processes of a run alive after it ended"),
            (bool(self.orphan_seconds), "no agent was killed with a job running: orphans unmeasured"),
            (max(self.orphan_seconds, default=0.0) <= ORPHAN_GOAL_SECONDS, "a job outlived its killed agent"),
            (bool(self.takeover_seconds), "no killed node's run was taken over: takeover unmeasured"),
        ]
        return [problem for holds, problem in checks if not holds]

    @property
    def ok(self) -> bool:
        return not self.problems()

    def table(self) -> str:
        rows = [
            ("runs enqueued", self.enqueued),
            ("succeeded", self.succeeded),
            ("failed as intended", self.failed_as_intended),
            (
                "failed unexpectedly",
                f"{self.failed_unexpectedly} {dict(self.unexpected_failures)}" if self.failed_unexpectedly else 0,
            ),
            ("cancelled", self.cancelled),
            ("lost", self.lost),
            ("completed more than once", self.completed_more_than_once),
            ("stuck non-terminal", self.stuck),
            ("items processed", self.items_processed),
            ("items processed more than once", self.items_repeated),
            ("runs resumed on another attempt", self.resumed_runs),
            ("  of which from their checkpoint", self.resumed_from_checkpoint),
            ("items before a watermark processed again", self.resume_violations),
            ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"),
            ("  of which hit a running job process", self.faults_on_running_jobs),
            ("attempts whose job stopped itself unrenewed (lease_expired)", self.self_fenced_attempts),
            (
                "ledger lines after a newer attempt started (goal 0)",
                f"{self.lines_after_newer_attempt} (longest overlap {self.overlap_seconds:.2f} s)",
            ),
            (
                f"orphan lifetime after its agent's SIGKILL (goal <= {ORPHAN_GOAL_SECONDS:g} s)",
                f"max {max(self.orphan_seconds):.2f} s, n={len(self.orphan_seconds)}"
                if self.orphan_seconds
                else "no agent killed with a job",
            ),
            (
                "processes of a run alive after it ended (goal 0)",
                f"{len(self.processes_after_run_ended)} ({self.scans_of_ended_runs} scans of ended runs, "
                f"up to {self.run_processes_seen} processes of runs seen in one)",
            ),
        ]
        if self.takeover_seconds:
            rows.append(
                (
                    "node death -> run resumed elsewhere (s)",
                    f"median {statistics.median(self.takeover_seconds):.1f}, max {max(self.takeover_seconds):.1f}"
                    f" (lease {LEASE_SECONDS} + poll {POLL_SECONDS}), n={len(self.takeover_seconds)}",
                )
            )
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


class Chaos:
    def __init__(self, stack: EmbeddedStack, client: RunlyClient, ledger: Path, rng: random.Random) -> None:
        self.stack = stack
        self.client = client
        self.ledger = ledger
        self.rng = rng
        self.report = Report()
        self.planned: list[Planned] = []
        self.views: dict[str, RunView] = {}
        self._watch: list[tuple[float, dict[str, int]]] = []  # (killed at, run_id -> attempts then)
        self._watchers: list[threading.Thread] = []
        self._terminal_before: set[str] = set()  # runs terminal as of the previous full refresh

    # ------------------------------------------------------------ runs
    def enqueue(self, runs: int, items: int) -> None:
        for index in range(runs):
            roll = self.rng.random()
            if roll < 0.1:
                request = EnqueueRunRequest(package="e2ejobs", job="fail", max_attempts=1)
                intent = "fail"
            else:
                config = {"items": items + self.rng.randrange(items), "item_seconds": 0.08, "ledger": str(self.ledger)}
                request = EnqueueRunRequest(package="e2ejobs", job="ledger", config=config, max_attempts=6)
                intent = "succeed"
            run = self.client.enqueue(request)
            self.planned.append(Planned(run.id, intent))
            self.report.enqueued += 1
            if index % 10 == 9:
                time.sleep(0.2)  # arrive in waves, as real traffic does

    def refresh(self) -> None:
        self.scan_ended_runs()
        self._terminal_before = {run_id for run_id, view in self.views.items() if view.state.terminal}
        for plan in self.planned:
            known = self.views.get(plan.run_id)
            if known is not None and known.state.terminal:
                continue  # a terminal run never changes again
            try:
                self.views[plan.run_id] = self.client.get_run(plan.run_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        for killed_at, held in list(self._watch):
            for run_id, attempts in list(held.items()):
                view = self.views.get(run_id)
                if view and (len(view.attempts) > attempts or view.state.terminal):
                    if len(view.attempts) > attempts:
                        # When the next attempt started, by the store's clock, not when this loop noticed.
                        started = view.attempts[attempts].started_at.timestamp()
                        self.report.takeover_seconds.append(started - killed_at)
                    del held[run_id]
            if not held:
                self._watch.remove((killed_at, held))

    def scan_ended_runs(self) -> None:
        """Processes of runs that were terminal already at the previous full refresh (so for a while): none may be.
        Made every round (a scan of /proc is cheap), so that short runs are seen too."""
        ended = self._terminal_before
        found = run_processes(self.stack.run_dir)
        self.report.run_processes_seen = max(self.report.run_processes_seen, len(found))
        self.report.scans_of_ended_runs += 1 if ended else 0
        for pid, owner in found.items():
            if owner.run_id in ended:
                self.report.processes_after_run_ended.add(pid)

    def refresh_running(self) -> None:
        self.scan_ended_runs()
        running = {view.id: view for view in self.client.iter_runs(state=RunState.RUNNING.value)}
        for run_id, known in self.views.items():
            if known.state is RunState.RUNNING and run_id not in running:
                # Ended (or handed back) since: not a victim any more; the next full refresh says how.
                self.views[run_id] = known.model_copy(update={"state": RunState.QUEUED})
        self.views.update((run_id, view) for run_id, view in running.items() if run_id in self._planned_ids)

    @property
    def _planned_ids(self) -> set[str]:
        return {plan.run_id for plan in self.planned}

    def running(self) -> list[RunView]:
        return [v for v in self.views.values() if v.state is RunState.RUNNING and v.attempts]

    def all_terminal(self) -> bool:
        return len(self.views) == len(self.planned) and all(v.state.terminal for v in self.views.values())

    # ------------------------------------------------------------ faults
    def agents(self) -> list[Child]:
        return [c for c in self.stack.children if c.name.startswith("local-node-") and c.process.poll() is None]

    def kill_agent(self) -> None:
        by_node: dict[str, list[RunView]] = defaultdict(list)
        for view in self.running():
            by_node[view.attempts[-1].node_id].append(view)
        # An agent with job processes running (not only runs claimed, their package still installing): what its
        # death does to them is measured (orphan lifetime), and their runs resume from where their jobs were.
        processes = run_processes(self.stack.run_dir)
        candidates = [a for a in self.agents() if by_node.get(a.name) and _on_node(processes, a.name)]
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        jobs = _on_node(processes, victim.name)
        victim.process.kill()
        killed_at = time.monotonic()
        victim.process.wait()
        self._watch.append((time.time(), {v.id: len(v.attempts) for v in by_node[victim.name]}))
        self.report.faults["agent SIGKILL"] += 1
        if jobs:
            self.report.faults_on_running_jobs += 1
            watcher = threading.Thread(target=self._time_orphans, args=(jobs, killed_at), daemon=True)
            watcher.start()
            self._watchers.append(watcher)
        self.stack.start_agent()

    def _time_orphans(self, pids: list[int], since: float) -> None:
        """How long the job processes of a killed agent lived on (sampled every 10 ms, up to a minute)."""
        alive = set(pids)
        while alive and time.monotonic() - since < 60:
            alive = {pid for pid in alive if _alive(pid)}
            time.sleep(0.01)
        self.report.orphan_seconds.append(time.monotonic() - since)

    def kill_job(self) -> None:
        jobs = _job_processes(self.stack.run_dir)
        if jobs:
            os.kill(self.rng.choice(jobs), signal.SIGKILL)
            self.report.faults["job SIGKILL"] += 1
            self.report.faults_on_running_jobs += 1

    def kill_warm_host(self) -> None:
        """The process runs are forked from: its running children must run on, the next run gets a new one."""
        hosts = _job_processes(self.stack.run_dir, hosts=True)
        if hosts:
            os.kill(self.rng.choice(hosts), signal.SIGKILL)
            self.report.faults["warm host SIGKILL"] += 1

    def freeze_agent(self) -> None:
        busy = {v.attempts[-1].node_id for v in self.running()}
        processes = run_processes(self.stack.run_dir)
        candidates = [a for a in self.agents() if a.name in busy]
        # Preferably one whose jobs are running: they must stop themselves before the takeover starts.
        candidates = [a for a in candidates if _on_node(processes, a.name)] or candidates
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        if _on_node(processes, victim.name):
            self.report.faults_on_running_jobs += 1
        os.kill(victim.process.pid, signal.SIGSTOP)
        # Past its lease: another node takes its runs; when it wakes it must be fenced off.
        timer = threading.Timer(LEASE_SECONDS + 2.5, lambda: _resume(victim))
        timer.daemon = True
        timer.start()
        self.report.faults["agent SIGSTOP past lease"] += 1

    def cancel(self) -> None:
        candidates = [v for v in self.running() if self._intent(v.id) == "succeed"]
        if not candidates:
            return
        target = self.rng.choice(candidates)
        try:
            self.client.cancel_run(target.id)
        except ApiError as exc:
            if exc.status != 409:  # 409: it ended meanwhile
                raise
            return
        next(p for p in self.planned if p.run_id == target.id).intent = "cancel"
        self.report.faults["cancel"] += 1

    def _intent(self, run_id: str) -> str:
        return next(p.intent for p in self.planned if p.run_id == run_id)

    # ------------------------------------------------------------ the story
    def play(self, *, faults: int, timeout: float) -> Report:
        actions = [
            self.kill_agent, self.kill_job, self.kill_agent, self.freeze_agent, self.cancel, self.kill_job,
            self.kill_warm_host,
        ]  # fmt: skip
        # Every kind of fault first, in an order the seed picks (a kind that finds no victim yet goes to the back),
        # so that a short run exercises each; then at random.
        untried = list(dict.fromkeys(actions))
        self.rng.shuffle(untried)
        deferred: dict[Callable[[], None], int] = defaultdict(int)
        deadline = time.monotonic() + timeout
        injected = 0
        rounds = 0
        while time.monotonic() < deadline:
            # A full refresh reads every run (slow with many); in between, one listing of the running ones
            # is enough to pick a victim, so faults keep coming while runs are short.
            if rounds % 5 == 0:
                self.refresh()
                if self.all_terminal():
                    break
            else:
                self.refresh_running()
            rounds += 1
            if injected < faults and self.running():
                first_of_its_kind = bool(untried)
                action = untried.pop(0) if first_of_its_kind else self.rng.choice(actions)
                before = sum(self.report.faults.values())
                action()
                landed = sum(self.report.faults.values()) - before
                if first_of_its_kind and not landed and deferred[action] < 3:
                    deferred[action] += 1
                    untried.append(action)  # no victim yet (no warm host, no busy agent): after the others
                injected += landed
            time.sleep(self.rng.uniform(0.2, 0.8))
        self.refresh()
        time.sleep(1.0)  # past the last run's end: whatever of it is alive now outlived it
        self.refresh()
        for watcher in self._watchers:
            watcher.join(timeout=65)
        self.tally()
        return self.report

    def tally(self) -> None:
        report = self.report
        for plan in self.planned:
            view = self.views.get(plan.run_id)
            if view is None:
                report.lost += 1
                continue
            if not view.state.terminal:
                report.stuck += 1
                continue
            report.self_fenced_attempts += sum(1 for a in view.attempts if a.reason is FailureReason.LEASE_EXPIRED)
            ended = [a for a in view.attempts if a.outcome is not None and a.outcome.terminal]
            if len(ended) > 1:
                report.completed_more_than_once += 1
            if view.state is RunState.SUCCEEDED:
                report.succeeded += 1
            elif view.state is RunState.CANCELLED:
                report.cancelled += 1
            elif view.state is RunState.FAILED and plan.intent == "fail":
                report.failed_as_intended += 1
            else:
                report.failed_unexpectedly += 1
                reason = view.error.reason.value if view.error and view.error.reason else view.state.value
                report.unexpected_failures[f"{reason} after {len(view.attempts)} attempts"] += 1
        self._tally_ledger()

    def _tally_ledger(self) -> None:
        starts: dict[str, dict[int, int]] = defaultdict(dict)  # run -> attempt -> watermark it started from
        acked: dict[str, list[tuple[int, int]]] = defaultdict(list)  # run -> (attempt, watermark), in order
        items: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))  # run -> attempt -> items
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        started_at: dict[str, dict[int, float]] = defaultdict(dict)  # run -> attempt -> when its job code started
        written: list[tuple[str, int, float]] = []  # (run, attempt, wall time) of every line
        for line in lines:
            run_id, kind, attempt_field, value_field, wall_field = line.split()
            number, value, wall = int(attempt_field), int(value_field), float(wall_field)
            written.append((run_id, number, wall))
            if kind == "start":
                started_at[run_id][number] = min(wall, started_at[run_id].get(number, wall))
                starts[run_id][number] = value
            elif kind == "ckpt":
                acked[run_id].append((number, value))
            else:
                items[run_id][number].append(value)
        report = self.report
        for run_id, number, wall in written:
            newer = [at for later, at in started_at[run_id].items() if later > number]
            if newer:
                report.lines_of_superseded_attempts += 1
            if newer and wall > min(newer):
                report.lines_after_newer_attempt += 1
                report.overlap_seconds = max(report.overlap_seconds, wall - min(newer))
        for by_attempt in items.values():
            seen: set[int] = set()
            for attempt in sorted(by_attempt):
                for item in by_attempt[attempt]:
                    report.items_processed += 1
                    if item in seen:
                        report.items_repeated += 1
                    seen.add(item)
        for run_id, attempts in starts.items():
            later = sorted(a for a in attempts if a > min(attempts))
            if not later:
                continue
            report.resumed_runs += 1
            # Each later attempt must start no earlier than the last checkpoint acknowledged to the attempts
            # before it (it may start later: a checkpoint can be durable while its node dies before the ack).
            from_checkpoint = True
            for attempt in later:
                earlier = [watermark for (a, watermark) in acked[run_id] if a < attempt]
                expected = earlier[-1] if earlier else 0
                report.attempts_resumed_past_a_checkpoint += 1 if expected > 0 else 0
                from_checkpoint &= attempts[attempt] >= expected
                watermark = attempts[attempt]
                report.resume_violations += sum(1 for item in items[run_id].get(attempt, []) if item < watermark)
            report.resumed_from_checkpoint += 1 if from_checkpoint else 0


def _on_node(processes: dict[int, RunProcess], node: str) -> list[int]:
    return [pid for pid, owner in processes.items() if owner.node == node]


def _resume(child: Child) -> None:
    try:
        os.kill(child.process.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class RunProcess:
    node: str
    run_id: str
    attempt: int


def run_processes(stack_dir: Path) -> dict[int, RunProcess]:
    """Every live process that belongs to a run of this stack: by the RUNLY_RUN_SPEC in its environment
    (``<stack>/<node>/jobs/<run>-<attempt>/spec.json``), which a job process and what it executes carry, or by its
    working directory (that directory): a warm host's child is forked, so /proc shows the host's environment."""
    found: dict[int, RunProcess] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        specs = [
            entry.split(b"=", 1)[1].decode(errors="replace")
            for entry in environ
            if entry.startswith(b"RUNLY_RUN_SPEC=")
        ]
        owner = _run_of(stack_dir, Path(specs[0]).parent) if specs else None
        owner = owner or _run_of(stack_dir, Path(cwd))
        if owner is not None and _alive(int(proc.name)):
            found[int(proc.name)] = owner
    return found


def _run_of(stack_dir: Path, run_dir: Path) -> RunProcess | None:
    try:
        parts = run_dir.relative_to(stack_dir).parts
    except ValueError:
        return None
    if len(parts) != 3 or parts[1] not in ("runs", "jobs"):  # the agent's run directory, or the job's own
        return None
    run_id, _, attempt = parts[2].rpartition("-")
    return RunProcess(parts[0], run_id, int(attempt)) if attempt.isdigit() else None


def _alive(pid: int) -> bool:
    """Running, stopped or sleeping, not a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _job_processes(stack_dir: Path, *, hosts: bool = False) -> list[int]:
    """Job processes started by this stack's agents: ``runly.runner run`` or a warm host's children (their
    command line is the host's, their directory the run's), or with ``hosts`` the warm hosts themselves."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if b"runly.runner" not in cmdline or not cwd.startswith(str(stack_dir)):
            continue
        is_host = b"serve" in cmdline and "/runs/" not in cwd and "/jobs/" not in cwd
        if is_host == hosts:
            found.append(int(proc.name))
    return found


def run_chaos(
    *,
    runs: int,
    items: int,
    faults: int,
    agents: int,
    seed: int,
    timeout: float,
    workdir: Path,
    sqs_in_flight_cap: int | None = None,
) -> Report:
    """``sqs_in_flight_cap``: SQS's 12-hour cap lowered to that many seconds (agents replace messages 3 s before
    it), so that every run outlives several of its messages while the faults play."""
    settings, cap = dict(AGENT_SETTINGS), resources.SQS_MAX_IN_FLIGHT_SECONDS
    if sqs_in_flight_cap is not None:
        settings["RUNLY_MAX_IN_FLIGHT_SECONDS"], cap = str(sqs_in_flight_cap - 3), sqs_in_flight_cap
    stack = EmbeddedStack(state_dir=workdir / "state", agent_env=settings, sqs_max_in_flight_seconds=cap)
    stack.start(agents=agents)
    try:
        client = RunlyClient(stack.api_url, api_key=getattr(stack, "admin_key", None))
        client.push(pack_project(PROJECT, workdir / "dist"))
        # The ledger is written by the jobs, which run as the node's job user (RUNLY_JOB_USER), not as us.
        share_with_jobs(workdir)
        chaos = Chaos(stack, client, workdir / "ledger.txt", random.Random(seed))
        chaos.enqueue(runs, items)
        return chaos.play(faults=faults, timeout=timeout)
    finally:
        for child in stack.children:  # a frozen agent must be thawed to stop
            _resume(child)
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--items", type=int, default=40, help="items per run (up to twice this)")
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--sqs-in-flight-cap", type=int, default=None, help="SQS's in-flight cap in seconds (default 12 h)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="runly-chaos-") as scratch:
        report = run_chaos(
            runs=args.runs, items=args.items, faults=args.faults, agents=args.agents, seed=args.seed,
            timeout=args.timeout, workdir=Path(scratch), sqs_in_flight_cap=args.sqs_in_flight_cap,
        )  # fmt: skip
    print(report.table())
    print("OK" if report.ok else "FAILED: " + "; ".join(report.problems()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
