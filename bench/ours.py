"""runly's side of the benchmarks, on the embedded stack (moto server, local gateway, real agents).

Every figure uses real processes over real HTTP; times are wall-clock (``time.time()``) on one machine,
so the bench's, the agents' (their log lines) and the jobs' (what they note) compare directly.
Environments keep the benchmarks apart: ``default`` (dispatch, cold start, checkpoints), ``idle``
(an agent that never gets work), ``recovery`` (two agents with a short lease), ``tput-*`` (throughput,
one environment per measurement).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import counting
from bench.counting import Call
from bench.observe import AgentLog, ProcSampler, StampFile, children_cpu_seconds, cpu_seconds, parent
from bench.stats import percentile, rate, summarize
from runly.bundle import sha256_file
from runly.client import RunlyClient
from runly.contracts import EnqueueRunRequest, RunView
from runly.local.stack import Child, EmbeddedStack
from runly.pack import pack_project

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PROJECT = BENCH_DIR / "project"
HOOKS = BENCH_DIR / "hooks"
PACKAGE = "benchjobs"
WARM_VERSION = "1.0.0"
COLD_VERSION = "1.0.1"  # pushed but never run before the cold-start benchmark
THROUGHPUT_REPS = 3
THROUGHPUT_NODES = (1, 2)


def throughput_environment(nodes: int, rep: int) -> str:
    # A fresh queue per measurement: an agent stopped in the middle of a long poll leaves the poll open on the
    # server, which would take (and hide, for a lease) messages enqueued for the next measurement.
    return f"tput-{nodes}n-{rep}"


ENVIRONMENTS = (
    "default",
    "idle",
    "recovery",
    *(throughput_environment(n, r) for r in range(1, THROUGHPUT_REPS + 1) for n in THROUGHPUT_NODES),
)
# The recovery benchmark's agents: a lease short enough to repeat the benchmark within the time budget.
RECOVERY_SETTINGS = {"lease_seconds": "10", "heartbeat_seconds": "3"}
RECOVERY_KILL_AFTER_ITEMS = 40  # past a few checkpoints (one a second): the next attempt has a watermark
ENQUEUE_THREADS = 8


@dataclass
class Sizes:
    dispatch_runs: int = 200
    warmup_runs: int = 3
    throughput_runs: int = 1000
    throughput_reps: int = THROUGHPUT_REPS  # as many as fit in the time budget
    checkpoint_items: int = 100_000
    checkpoint_reps: int = 5
    cold_reps: int = 3
    idle_seconds: float = 120.0
    recovery_reps: int = 3
    recovery_items: int = 120
    probe_runs: int = 30

    @classmethod
    def quick(cls) -> Sizes:
        """For developing the bench itself: every figure, few repetitions; not for quoting."""
        return cls(
            dispatch_runs=15, warmup_runs=2, throughput_runs=60, throughput_reps=1, checkpoint_items=20_000,
            checkpoint_reps=1,
            cold_reps=1, idle_seconds=30.0, recovery_reps=1, recovery_items=80, probe_runs=5,
        )  # fmt: skip


@dataclass
class DispatchSample:
    run_id: str
    enqueue_started: float
    enqueue_answered: float
    first_line: float
    imported: float
    agent: dict[str, float] = field(default_factory=dict)  # claimed, ready, spawned, terminal

    @property
    def latency(self) -> float:
        return self.first_line - self.enqueue_started


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class OurBench:
    def __init__(self, state_dir: Path, sizes: Sizes) -> None:
        self.state_dir = state_dir
        self.sizes = sizes
        self.counts_dir = state_dir / "counts"
        self.marks = state_dir / "marks"
        self.marks.mkdir(parents=True, exist_ok=True)
        self.stack = EmbeddedStack(state_dir=state_dir / "stack", environments=ENVIRONMENTS)
        self.client: RunlyClient | None = None
        self.bundles: dict[str, Path] = {}
        self.main_agent: Child | None = None
        self.idle_agent: Child | None = None
        self.idle_sampler: ProcSampler | None = None
        self.dispatch_samples: list[DispatchSample] = []
        self._gateway: Child | None = None

    # ------------------------------------------------------------ the stack
    def start(self) -> None:
        # The counting hook (bench/hooks/sitecustomize.py) loads in every process the stack starts that
        # runs the gateway or an agent; the stack passes PYTHONPATH and BENCH_COUNT_DIR on to them.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")]))
        os.environ[counting.COUNT_DIR_ENV] = str(self.counts_dir)
        started = time.monotonic()
        self.stack.start(agents=0)
        self.client = RunlyClient(self.stack.api_url, api_key=self.stack.admin_key, timeout=120)
        self._gateway = next(c for c in self.stack.children if c.name == "gateway")
        self.idle_agent = self.stack.start_agent("idle")
        log.info("embedded stack up in %.1f s at %s", time.monotonic() - started, self.stack.api_url)

    def stop(self) -> None:
        self.stack.stop()

    @property
    def api(self) -> RunlyClient:
        assert self.client is not None, "stack not started"
        return self.client

    def package_cache(self) -> Path:
        return (self.stack.state_dir / "package-cache").resolve()

    def env_python(self, version: str = WARM_VERSION) -> Path:
        return self.package_cache() / "envs" / sha256_file(self.bundles[version]) / "bin" / "python"

    def pack_and_push(self) -> dict[str, float]:
        """Pack the bench's job project as WARM_VERSION and COLD_VERSION and push both."""
        timings: dict[str, float] = {}
        dist = self.state_dir / "dist"
        for version in (WARM_VERSION, COLD_VERSION):
            project = PROJECT
            if version != WARM_VERSION:
                project = self.state_dir / f"project-{version}"
                shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                pyproject = project / "pyproject.toml"
                text = pyproject.read_text().replace(f'version = "{WARM_VERSION}"', f'version = "{version}"')
                pyproject.write_text(text)
            started = time.monotonic()
            self.bundles[version] = pack_project(project, dist)
            timings[f"pack {version}"] = time.monotonic() - started
            started = time.monotonic()
            self.api.push(self.bundles[version])
            timings[f"push {version}"] = time.monotonic() - started
        log.info("packed and pushed %s", ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        return timings

    def start_idle_sampling(self) -> None:
        assert self.idle_agent is not None
        # Past its start (imports, registration): from here on it only polls and heartbeats.
        time.sleep(5.0)
        self.idle_sampler = ProcSampler(self.idle_agent.process.pid).start()

    def calls(self, *pids: int) -> list[Call]:
        return counting.read_calls(self.counts_dir, pids=pids)

    @property
    def gateway(self) -> Child:
        assert self._gateway is not None, "stack not started"
        return self._gateway

    def gateway_pid(self) -> int:
        return self.gateway.process.pid

    def _enqueue(self, job: str, config: dict[str, Any], *, environment: str = "default",
                 version: str | None = WARM_VERSION) -> RunView:  # fmt: skip
        return self.api.enqueue(
            EnqueueRunRequest(package=PACKAGE, job=job, config=config, environment=environment, version=version)
        )

    # ------------------------------------------------------------ 1. dispatch latency
    def dispatch(self) -> dict[str, Any]:
        """Enqueue -> first line of job code, one run at a time, warm package, one agent (default settings)."""
        self.main_agent = self.main_agent or self.stack.start_agent("default")
        agent_log = AgentLog([self.main_agent.log_path], from_end=False)
        stamps = StampFile(self.marks / "dispatch.txt")
        total = self.sizes.warmup_runs + self.sizes.dispatch_runs
        samples: list[DispatchSample] = []
        gateway_log = self.gateway.log_path
        gateway_log_bytes = 0
        for index in range(total):
            if index == self.sizes.warmup_runs:
                gateway_log_bytes = gateway_log.stat().st_size
            started = time.time()
            run = self._enqueue("stamp", {"stamps": str(stamps.path)})
            answered = time.time()
            stamp = stamps.wait_for(run.id, timeout=120)
            if stamp is None:
                raise RuntimeError(f"dispatch: run {run.id} never started:\n{self.main_agent.tail()}")
            if not agent_log.wait_terminal(run.id, timeout=60):
                raise RuntimeError(f"dispatch: run {run.id} never ended:\n{self.main_agent.tail()}")
            if index < self.sizes.warmup_runs:
                continue  # the first runs install the package and warm every cache
            events = agent_log.by_run.get(run.id, {})
            samples.append(
                DispatchSample(
                    run.id, started, answered, stamp.first_line, stamp.imported,
                    {kind: event.t for kind, event in events.items()},
                )
            )  # fmt: skip
            if len(samples) % 50 == 0:
                log.info("dispatch: %d of %d runs", len(samples), self.sizes.dispatch_runs)
        self.dispatch_samples = samples
        latencies = [s.latency for s in samples]
        return {
            "samples": latencies,
            # What a warm job host would replace, per sample (derive.warm_host_projection_samples).
            "ready_to_first_line": [(s.first_line - s.agent["ready"]) if "ready" in s.agent else None for s in samples],
            **summarize(latencies),
            "runs": len(samples),
            "enqueue_http": summarize([s.enqueue_answered - s.enqueue_started for s in samples]),
            # What the API function and the authorizer print per request (their logs and metrics).
            "gateway_log_bytes_per_request": (gateway_log.stat().st_size - gateway_log_bytes) / len(samples),
        }

    def dispatch_profile(self) -> dict[str, Any]:
        """Where a dispatch's time goes, phase by phase, from the bench's, the hook's, the agent's and the
        job's timestamps (all wall-clock on this machine)."""
        assert self.main_agent is not None
        gateway = self.calls(self.gateway_pid())
        agent = self.calls(self.main_agent.process.pid)
        sends = [c for c in gateway if c.service == "sqs" and c.operation == "SendMessage"]
        # By end time: a long poll that started before the message was sent is the one that gets it.
        receives = sorted(
            (c for c in agent if c.operation == "ReceiveMessage" and c.detail.get("messages")), key=lambda c: c.t1
        )
        per_phase: dict[str, list[float]] = defaultdict(list)
        for sample in self.dispatch_samples:
            # From the start of the send: the waiting poll may get the message before SendMessage has returned.
            sent = next((c.t0 for c in sends if sample.enqueue_started <= c.t0 <= sample.enqueue_answered), None)
            received = next((c.t1 for c in receives if sent is not None and c.t1 >= sent), None)
            marks = sample.agent
            points = [
                ("API: authorize, record the run (until SendMessage)", sample.enqueue_started, sent),
                ("SQS: SendMessage -> received by the agent's long poll", sent, received),
                ("claim: read run, conditional write, read checkpoint", received, marks.get("claimed")),
                ("package: cached environment looked up", marks.get("claimed"), marks.get("ready")),
                ("spawn: spool, spec file, fork + exec", marks.get("ready"), marks.get("spawned")),
                ("job process: interpreter start + imports", marks.get("spawned"), sample.imported),
                ("job process: spec, job class, config, job object", sample.imported, sample.first_line),
            ]
            for name, begin, end in points:
                if begin is not None and end is not None:
                    per_phase[name].append(end - begin)
            if "terminal" in marks:
                per_phase["after the first line: job exits, outcome recorded, message deleted"].append(
                    marks["terminal"] - sample.first_line
                )
        return {name: summarize(values) for name, values in per_phase.items()}

    def import_profile(self) -> dict[str, Any]:
        """How long a job process's interpreter takes to start, and which imports cost the most."""
        python = str(self.env_python())

        def timed(code: str, runs: int = 10) -> dict[str, Any]:
            values = []
            for _ in range(runs):
                started = time.perf_counter()
                subprocess.run([python, "-I", "-c", code], check=True, cwd=self.state_dir)
                values.append(time.perf_counter() - started)
            return summarize(values)

        result = subprocess.run(
            [python, "-I", "-X", "importtime", "-c", "import runly.host, benchjobs.jobs"],
            capture_output=True, text=True, check=True, cwd=self.state_dir,
        )  # fmt: skip
        return {
            "bare interpreter (python -I -c pass)": timed("pass"),
            "interpreter + runly.host + job module": timed("import runly.host, benchjobs.jobs"),
            "top imports (cumulative ms)": top_imports(result.stderr),
        }

    def warm_host_probe(self) -> dict[str, Any]:
        """Fork a child from a process that already imported the job host and the job: the warm job host."""
        stamps = self.marks / "warm-probe.txt"
        result = subprocess.run(
            [str(self.env_python()), "-I", str(BENCH_DIR / "warm_host_probe.py"), str(stamps),
             str(self.sizes.probe_runs)],
            capture_output=True, text=True, check=True, cwd=self.state_dir,
        )  # fmt: skip
        latencies = json.loads(result.stdout.strip().splitlines()[-1])["fork_to_first_line"]
        return {"samples": latencies, **summarize(latencies)}

    # ------------------------------------------------------------ 4. AWS requests per run
    def requests_per_run(self) -> dict[str, Any]:
        """Every AWS call the gateway (API function + authorizer) and the agent made for the dispatch
        benchmark's runs, less what an agent makes anyway when idle (polls, node heartbeats)."""
        assert self.main_agent is not None and self.idle_sampler is not None and self.idle_agent is not None
        samples = self.dispatch_samples
        start = samples[0].enqueue_started
        end = max(s.agent.get("terminal", s.first_line) for s in samples) + 0.5
        window = list(counting.between(self.calls(self.gateway_pid(), self.main_agent.process.pid), start, end))
        idle = self.idle_calls()
        idle_seconds = self.idle_sampler.seconds
        runs = len(samples)
        seconds = end - start

        def keyed(calls: list[Call]) -> Counter[tuple[str, str, str, str]]:
            return Counter((c.role, c.service, c.operation, c.kind or "") for c in calls)

        idle_rate = {key: value / idle_seconds for key, value in keyed(idle).items()}
        per_run = counting.marginal_per_run(keyed(window), idle_rate, seconds, runs)
        typical = counting.typical_sizes([*window, *idle])
        units = sum((counting.capacity_units(c, typical) for c in window), counting.Units())
        idle_units = sum((counting.capacity_units(c, typical) for c in idle), counting.Units())
        read_units = max(0.0, (units.read - idle_units.read / idle_seconds * seconds) / runs)
        write_units = max(0.0, (units.write - idle_units.write / idle_seconds * seconds) / runs)
        authorizer_ms, api_ms = self._handler_durations(window)
        return {
            "runs": runs,
            "window_seconds": seconds,
            "calls_per_run": [
                {"role": role, "service": service, "operation": operation, "item": kind, "per_run": value}
                for (role, service, operation, kind), value in sorted(per_run.items())
                if value > 0
            ],
            "raw_window_calls": len(window),
            "read_units_per_run": read_units,
            "write_units_per_run": write_units,
            "item_sizes": typical,
            "retries": sum(c.attempts - 1 for c in window),
            "authorizer_ms": authorizer_ms,
            "api_function_ms": api_ms,
        }

    def _handler_durations(self, window: list[Call]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per enqueue: the authorizer = request start -> end of its key read; the API function = the rest
        of the round trip (an upper bound: the local gateway's own overhead is counted in)."""
        keys = [c for c in window if c.role == "gateway" and c.kind == "KEY/KEY"]
        authorizer, api = [], []
        for sample in self.dispatch_samples:
            read = next((c for c in keys if sample.enqueue_started <= c.t0 <= sample.enqueue_answered), None)
            if read is None:
                continue
            authorizer.append((read.t1 - sample.enqueue_started) * 1000)
            api.append((sample.enqueue_answered - read.t1) * 1000)
        return summarize(authorizer), summarize(api)

    # ------------------------------------------------------------ 5. package cold start
    def cold_start(self) -> dict[str, Any]:
        """The first run of a version never run on this node (download, verify, install, start); then the
        same after evicting its environment, for repetitions."""
        assert self.main_agent is not None
        agent_log = AgentLog([self.main_agent.log_path], from_end=True)
        stamps = StampFile(self.marks / "cold.txt")
        sha = sha256_file(self.bundles[COLD_VERSION])
        reps = []
        for rep in range(self.sizes.cold_reps):
            if rep:
                evict(self.package_cache() / "envs" / sha, self.state_dir / "evicted")
            started = time.time()
            run = self._enqueue("stamp", {"stamps": str(stamps.path)}, version=COLD_VERSION)
            stamp = stamps.wait_for(run.id, timeout=300)
            agent_log.wait_terminal(run.id, timeout=120)
            events = agent_log.by_run.get(run.id, {})
            installed = next((e for e in agent_log.events if e.kind == "installed"), None)
            if stamp is None or "ready" not in events or "spawned" not in events:
                raise RuntimeError(f"cold start: run {run.id} did not start:\n{self.main_agent.tail()}")
            phases = dict(installed.data["phases"]) if installed else dict(events["ready"].data["phases"])
            phases.pop("total", None)
            phases["start (spawn -> first line)"] = stamp.first_line - events["ready"].t
            reps.append(
                {
                    "run_id": run.id,
                    "new_version": rep == 0,
                    "phases": phases,
                    "package_ready_s": events["ready"].data["seconds"],
                    "cold_total_s": events["ready"].data["seconds"] + phases["start (spawn -> first line)"],
                    "enqueue_to_first_line_s": stamp.first_line - started,
                }
            )
            agent_log.events.clear()
        warm = self.dispatch_samples
        warm_package = [s.agent["ready"] - s.agent["claimed"] for s in warm if {"ready", "claimed"} <= s.agent.keys()]
        warm_start = [s.first_line - s.agent["ready"] for s in warm if "ready" in s.agent]
        return {
            "reps": reps,
            "cold_total": summarize([r["cold_total_s"] for r in reps]),
            "warm_package": summarize(warm_package),
            "warm_start": summarize(warm_start),
            "bundle_bytes": self.bundles[COLD_VERSION].stat().st_size,
        }

    # ------------------------------------------------------------ 3. checkpoint overhead
    def checkpoints(self) -> dict[str, Any]:
        """A no-op item job: items/s with the SDK's default checkpointing (every 2 s), with none (1e9 s: only
        the one the SDK takes when the items end, outside the timed part), and with checkpoints every 0.1 s
        and 0.01 s (their cost made visible). 100,000 no-op items take a fraction of a second, less than the
        default interval, so the same comparison runs on 20 times as many items too. Modes alternate within
        each repetition, so drift in the machine's load hits them alike."""
        assert self.main_agent is not None
        agent_log = AgentLog([self.main_agent.log_path], from_end=True)
        items, many = self.sizes.checkpoint_items, self.sizes.checkpoint_items * 20
        plan = [
            ("none", items, 1e9), ("default (every 2 s)", items, 2.0), ("every 0.1 s", items, 0.1),
            ("every 0.01 s", items, 0.01),
            (f"none, {many:,} items", many, 1e9), (f"default (every 2 s), {many:,} items", many, 2.0),
        ]  # fmt: skip
        outputs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in plan}
        for rep in range(self.sizes.checkpoint_reps):
            for name, count, every in plan:
                if count == many and rep >= max(1, self.sizes.checkpoint_reps // 2):
                    continue  # the long runs: fewer repetitions
                run = self._enqueue("noop-items", {"items": count, "checkpoint_every": every})
                if not agent_log.wait_terminal(run.id, timeout=300):
                    raise RuntimeError(f"checkpoints: run {run.id} did not end:\n{self.main_agent.tail()}")
                view = self.api.get_run(run.id)
                if view.state.value != "Succeeded":
                    raise RuntimeError(f"checkpoints: run {run.id} ended {view.state}: {view.error}")
                outputs[name].append(view.output)
        modes: dict[str, dict[str, Any]] = {}
        for name, count, every in plan:
            runs = outputs[name]
            modes[name] = {
                "items": count,
                "interval_seconds": every,
                "items_per_second": summarize([o["items_per_second"] for o in runs]),
                "checkpoints": summarize([o["checkpoints"] or 0 for o in runs]),
                "seconds": summarize([o["seconds"] for o in runs]),
            }
        for name, count, _ in plan:
            baseline = modes["none" if count == items else f"none, {many:,} items"]["items_per_second"]["median"]
            speed = modes[name]["items_per_second"]["median"]
            modes[name]["overhead"] = 1 - speed / baseline if speed and baseline else None
        return {"items": items, "modes": modes}

    # ------------------------------------------------------------ 6. idle node
    def idle_calls(self) -> list[Call]:
        assert self.idle_agent is not None and self.idle_sampler is not None
        end = self.idle_sampler.stopped or time.time()
        return list(counting.between(self.calls(self.idle_agent.process.pid), self.idle_sampler.started, end))

    def finish_idle(self) -> None:
        """Stop sampling the idle agent's memory and CPU once it has been idle long enough. (Its requests are
        counted at the end, once every long poll started in the window has returned and been recorded.)"""
        sampler = self.idle_sampler
        assert sampler is not None
        remaining = self.sizes.idle_seconds - (time.time() - sampler.started)
        if remaining > 0:
            time.sleep(remaining)
        sampler.stop()

    def idle(self) -> dict[str, Any]:
        sampler = self.idle_sampler
        assert sampler is not None and sampler.stopped, "finish_idle first"
        calls = self.idle_calls()
        by_operation = Counter(f"{c.service} {c.operation}" + (f" ({c.kind})" if c.kind else "") for c in calls)
        minutes = sampler.seconds / 60
        return {
            "seconds": sampler.seconds,
            "requests_per_minute": len(calls) / minutes,
            "by_operation_per_minute": {name: value / minutes for name, value in sorted(by_operation.items())},
            "rss_mb": summarize([value / 1024**2 for value in sampler.rss]),
            "cpu_percent": sampler.cpu_percent,
            "settings": "defaults: poll wait 20 s, heartbeat 15 s, capacity 2",
            "memory_by_import": self.memory_profile(),
        }

    def memory_profile(self) -> dict[str, float]:
        """RSS after each thing an agent loads (bench/memory_probe.py, in a process of its own)."""
        result = subprocess.run(
            [sys.executable, "-m", "bench.memory_probe"], capture_output=True, text=True, check=True, cwd=REPO
        )
        profile: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
        return profile

    # ------------------------------------------------------------ 7. recovery
    def recovery(self) -> dict[str, Any]:
        """SIGKILL the node running an item run (its agent and its job, as a lost machine) and time until
        the run runs again on the other node; count the items done twice."""
        agents = [self.stack.start_agent("recovery", **RECOVERY_SETTINGS) for _ in range(2)]
        agent_log = AgentLog([a.log_path for a in agents], from_end=False)
        ledger = self.marks / "ledger.txt"
        reps: list[dict[str, Any]] = []
        for _ in range(self.sizes.recovery_reps):
            config = {"items": self.sizes.recovery_items, "item_seconds": 0.05, "ledger": str(ledger)}
            run = self._enqueue("ledger", config, environment="recovery")
            if not wait_until(functools.partial(ledger_has_items, ledger, run.id, 1, RECOVERY_KILL_AFTER_ITEMS), 120):
                raise RuntimeError(f"recovery: run {run.id} did not get going:\n{agents[0].tail()}\n{agents[1].tail()}")
            agent_log.poll()
            job_pid = agent_log.by_run[run.id]["spawned"].data["pid"]
            agent_pid = parent(job_pid)
            victim = next(a for a in agents if a.process.pid == agent_pid)
            killed_at = time.time()
            os.kill(victim.process.pid, signal.SIGKILL)
            try:
                os.killpg(job_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            victim.process.wait()
            # When the message becomes visible again: a lease after the victim last set its visibility (the
            # receive that took it, then each heartbeat). The lease in the store ends at about the same time.
            hidden_at = max(
                (c.t1 for c in self.calls(victim.process.pid)
                 if c.t1 < killed_at and (c.operation == "ChangeMessageVisibility"
                                          or (c.operation == "ReceiveMessage" and c.detail.get("messages")))),
                default=None,
            )  # fmt: skip
            if not wait_until(functools.partial(ledger_has_start, ledger, run.id, 2), 180):
                raise RuntimeError(f"recovery: run {run.id} was not taken over")
            survivors = [a for a in agents if a is not victim]
            agent_log.wait_terminal(run.id, timeout=120)
            entry = read_ledger(ledger, run.id)
            first = set(entry.items.get(1, []))
            later = [item for attempt, items in entry.items.items() if attempt > 1 for item in items]
            watermark = entry.starts[2][0]
            lease = int(RECOVERY_SETTINGS["lease_seconds"])
            reps.append(
                {
                    "run_id": run.id,
                    "seconds_to_running_again": entry.starts[2][1] - killed_at,
                    "lease_left_at_kill": (hidden_at + lease - killed_at) if hidden_at else None,
                    # About a lease more: the killed agent's long poll, still open on the server, took the message
                    # when it came back and hid it for another lease (SQS does that too).
                    "beyond_lease": (entry.starts[2][1] - hidden_at - lease) if hidden_at else None,
                    "items_done_before_kill": len(first),
                    "resumed_at_watermark": watermark,
                    "items_repeated": len(first & set(later)),
                    "items_before_watermark_repeated": sum(1 for item in later if item < watermark),
                    "items_missing": len(set(range(self.sizes.recovery_items)) - first - set(later)),
                    "state": ended.data["state"] if (ended := agent_log.terminal(run.id)) else None,
                }
            )
            replacement = self.stack.start_agent("recovery", **RECOVERY_SETTINGS)
            agent_log.add(replacement.log_path)
            agents = [*survivors, replacement]
        for agent in agents:
            stop_child(agent)
        seconds = [float(r["seconds_to_running_again"]) for r in reps]
        return {
            "reps": reps,
            "seconds": summarize(seconds),
            "items_repeated": summarize([float(r["items_repeated"]) for r in reps]),
            "lease_seconds": int(RECOVERY_SETTINGS["lease_seconds"]),
            "heartbeat_seconds": int(RECOVERY_SETTINGS["heartbeat_seconds"]),
            "poll_wait_seconds": 20,
            "checkpoint_interval_seconds": 1.0,
            "items": self.sizes.recovery_items,
            "item_seconds": 0.05,
            "kill_after_items": RECOVERY_KILL_AFTER_ITEMS,
        }

    # ------------------------------------------------------------ 2. throughput
    def throughput(self, nodes: int, rep: int, *, timeout: float = 900.0) -> dict[str, Any]:
        """``throughput_runs`` trivial runs enqueued at once over HTTP (a thread pool) while no node serves
        the environment; then ``nodes`` agents at their default capacity start; runs/s to all terminal."""
        runs = self.sizes.throughput_runs
        environment = throughput_environment(nodes, rep)
        stamps = StampFile(self.marks / f"{environment}.txt")
        enqueue_started = time.time()
        with ThreadPoolExecutor(ENQUEUE_THREADS) as pool:
            run_ids = set(
                pool.map(lambda _: self._enqueue("stamp", {"stamps": str(stamps.path)}, environment=environment).id,
                         range(runs))
            )  # fmt: skip
        enqueue_seconds = time.time() - enqueue_started
        moto = next(c for c in self.stack.children if c.name == "moto").process.pid
        moto_cpu = cpu_seconds(moto)
        started = time.time()
        agents = [self.stack.start_agent(environment) for _ in range(nodes)]
        agent_log = AgentLog([a.log_path for a in agents], from_end=False)

        def terminal() -> list[float]:
            return [e.t for e in agent_log.events if e.kind == "terminal" and e.run_id in run_ids]

        finished = agent_log.wait(lambda: len(terminal()) >= runs, timeout=timeout, interval=0.25)
        ended = time.time()
        states = Counter(e.data["state"] for e in agent_log.events if e.kind == "terminal" and e.run_id in run_ids)
        # Where the CPU went, per run: the job processes (children the agents waited for), the agents, moto.
        cpu = {
            "job processes": sum(children_cpu_seconds(a.process.pid) for a in agents),
            "agents": sum(cpu_seconds(a.process.pid) for a in agents),
            "moto server (plays SQS, DynamoDB, S3)": cpu_seconds(moto) - moto_cpu,
        }
        for agent in agents:
            stop_child(agent)
        times = sorted(terminal())
        stamps.poll()
        first_start = min((s.first_line for s in stamps.stamps.values()), default=None)
        return {
            "nodes": nodes,
            "runs": runs,
            "completed": len(times),
            "states": dict(states),
            "finished": finished,
            "enqueue_seconds": enqueue_seconds,
            "enqueue_per_second": rate(runs, enqueue_seconds),
            "seconds_to_all_terminal": (times[-1] - started) if finished else ended - started,
            "runs_per_second": rate(len(times), (times[-1] - started) if times else None),
            "steady_runs_per_second": rate(len(times) - 1, times[-1] - times[0]) if len(times) > 1 else None,
            "first_job_started_after": (first_start - started) if first_start else None,
            "window_rates": window_rates(times, 100),
            "cpu_ms_per_run": {name: seconds * 1000 / max(1, len(times)) for name, seconds in cpu.items()},
        }


# ---------------------------------------------------------------- helpers


def window_rates(times: list[float], size: int) -> dict[str, Any]:
    """Completion rate over each consecutive ``size`` completions: how steady the throughput was."""
    rates = [
        (size / (times[i + size] - times[i])) for i in range(0, len(times) - size, size) if times[i + size] > times[i]
    ]
    return summarize(rates)


def top_imports(importtime: str, limit: int = 12, depth: int = 3) -> list[dict[str, Any]]:
    """The slowest imports of a ``-X importtime`` report down to ``depth`` levels of nesting (0: what the
    command imported itself), with their own and their cumulative time."""
    rows: list[dict[str, Any]] = []
    for line in importtime.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match and (len(match.group(3)) - 1) // 2 <= depth:
            rows.append(
                {
                    "module": match.group(4),
                    "depth": (len(match.group(3)) - 1) // 2,
                    "self_ms": int(match.group(1)) / 1000,
                    "cumulative_ms": int(match.group(2)) / 1000,
                }
            )
    return sorted(rows, key=lambda row: -float(row["cumulative_ms"]))[:limit]


def evict(env_dir: Path, trash: Path) -> None:
    """Remove a package environment from the node's cache, as eviction would (renamed away first)."""
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{env_dir.name}-{time.time_ns()}"
    os.rename(env_dir, target)
    shutil.rmtree(target, ignore_errors=True)


@dataclass
class LedgerEntry:
    starts: dict[int, tuple[int, float]] = field(default_factory=dict)  # attempt -> (watermark, time)
    items: dict[int, list[int]] = field(default_factory=dict)  # attempt -> items processed


def read_ledger(path: Path, run_id: str) -> LedgerEntry:
    entry = LedgerEntry()
    if not path.exists():
        return entry
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != run_id:
            continue
        if parts[1] == "start":
            entry.starts.setdefault(int(parts[2]), (int(parts[3]), float(parts[4])))
        elif parts[1] == "item":
            entry.items.setdefault(int(parts[2]), []).append(int(parts[3]))
    return entry


def ledger_has_items(path: Path, run_id: str, attempt: int, count: int) -> bool:
    return len(read_ledger(path, run_id).items.get(attempt, [])) >= count


def ledger_has_start(path: Path, run_id: str, attempt: int) -> bool:
    return attempt in read_ledger(path, run_id).starts


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def stop_child(child: Child, timeout: float = 30.0) -> None:
    """Stop one agent as an operator would (SIGTERM: it drains; idle, it leaves at once)."""
    if child.process.poll() is None:
        child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def percentile_or_none(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def in_background(target: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``target`` on a thread now; the returned function waits for it and returns its result."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of the returned function
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box.get("result")

    return join


def python_version() -> str:
    return sys.version.split()[0]
