"""runly's side of the benchmarks, on the embedded stack (moto server, local gateway, real agents).

Every figure uses real processes over real HTTP; times are wall-clock (``time.time()``) on one machine,
so the bench's, the agents' (their log lines) and the jobs' (what they note) compare directly.
Environments keep the benchmarks apart: ``default`` (dispatch with warm job hosts, the batch path, cold
start, checkpoints), ``fresh`` (dispatch with a new interpreter per run), ``idle`` (an agent that never
gets work), ``recovery`` (two agents with a short lease), ``tput-*`` (throughput, one environment per
measurement).
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import counting
from bench.counting import Call
from bench.observe import (
    AgentLog,
    ProcSampler,
    StampFile,
    ancestor_in,
    cpu_seconds,
    descendants,
    memory_mb,
    node_cpu_seconds,
    warm_hosts,
)
from bench.stats import median, percentile, rate, ratio_of_medians, summarize
from runly_cli.embedded.stack import Child, EmbeddedStack
from runly_cli.pack import pack_project
from runly_client.client import RunlyClient
from runly_core.bundle import sha256_file
from runly_core.contracts import EnqueueRunRequest, RunView

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PROJECT = BENCH_DIR / "project"
HOOKS = BENCH_DIR / "hooks"
PACKAGE = "benchjobs"
WARM_VERSION = "1.0.0"
THROUGHPUT_REPS = 3
THROUGHPUT_NODES = (1, 2)
FRESH = {"warm_hosts": "false"}  # the agent setting (RUNLY_WARM_HOSTS) for a new interpreter per run
BATCH_SIZE = 100  # runs per POST /runs/batch (the endpoint takes at most 100)


def cold_version(rep: int) -> str:
    """A version pushed but never run before cold-start repetition ``rep`` (0-based): each repetition
    meets a package this node never ran, so no environment and no warm host of it exists."""
    return f"1.0.{rep + 1}"


def throughput_environment(nodes: int, rep: int, *, fresh: bool = False) -> str:
    # A fresh queue per measurement: an agent stopped in the middle of a long poll leaves the poll open on the
    # server, which would take (and hide, for a while) messages enqueued for the next measurement.
    return f"tput-{'fresh-' if fresh else ''}{nodes}n-{rep}"


CLIENT_ENVIRONMENT = "client"  # the client benchmark's runs: enqueued only, no agent serves it

ENVIRONMENTS = (
    "default",
    "fresh",
    "idle",
    "recovery",
    CLIENT_ENVIRONMENT,
    *(throughput_environment(n, r) for r in range(1, THROUGHPUT_REPS + 1) for n in THROUGHPUT_NODES),
    throughput_environment(1, 1, fresh=True),
)
# The recovery benchmark's agents: a lease short enough to repeat the benchmark within the time budget.
RECOVERY_SETTINGS = {"lease_seconds": "10", "heartbeat_seconds": "3"}
RECOVERY_KILL_AFTER_ITEMS = 40  # past a few checkpoints (one a second): the next attempt has a watermark
NO_CHECKPOINT = 1e9  # a checkpoint interval no run reaches: only the one the SDK takes when the items end


@dataclass
class Sizes:
    dispatch_runs: int = 200  # warm job hosts (the default mode, the figure the issue asks for)
    dispatch_fresh_runs: int = 100  # a new interpreter per run: the comparison; fewer keep the bench within 15 min
    warmup_runs: int = 3
    batch_runs: int = 200  # the batch path's AWS calls: POST /runs/batch of BATCH_SIZE runs each
    throughput_runs: int = 1000
    throughput_runs_two_nodes: int = 1000  # two nodes and Celery's two workers
    throughput_reps: int = 1  # more only as the time budget allows (up to THROUGHPUT_REPS)
    fresh_throughput_runs: int = 200  # a new interpreter per run runs ~3/s: 1,000 would not fit in 15 minutes
    checkpoint_items: int = 100_000
    checkpoint_reps: int = 15
    checkpoint_long_items: int = 2_000_000  # seconds long: checkpoints at the default interval fall inside
    checkpoint_long_reps: int = 2
    cold_reps: int = 3
    idle_seconds: float = 120.0
    recovery_reps: int = 3
    recovery_items: int = 120
    client_enqueues: int = 1000  # sequential POST /runs per connection mode of the client

    @classmethod
    def quick(cls) -> Sizes:
        """For developing the bench itself: every figure, few repetitions; not for quoting."""
        return cls(
            dispatch_runs=15, dispatch_fresh_runs=10, warmup_runs=2, batch_runs=20, throughput_runs=60,
            throughput_runs_two_nodes=60, fresh_throughput_runs=30,
            checkpoint_items=20_000, checkpoint_reps=2, checkpoint_long_items=500_000, checkpoint_long_reps=1,
            cold_reps=1, idle_seconds=30.0, recovery_reps=1, recovery_items=80, client_enqueues=100,
        )  # fmt: skip


@dataclass
class DispatchSample:
    run_id: str
    enqueue_started: float
    enqueue_answered: float
    first_line: float
    imported: float
    agent: dict[str, float] = field(default_factory=dict)  # claimed, ready, spawned, terminal
    warm: bool = False  # forked by a warm job host (its module was imported before the run was claimed)

    @property
    def latency(self) -> float:
        return self.first_line - self.enqueue_started


@dataclass
class Enqueue:
    """One HTTP request that enqueued runs: when it started and was answered, and how many runs it carried."""

    started: float
    answered: float
    runs: int


@dataclass
class CallWindow:
    """What the AWS-call counting of one path needs: the runs, the HTTP requests that enqueued them, the
    agent that ran them, and the time window that holds all their calls."""

    path: str  # "POST /runs" | "POST /runs/batch"
    runs: int
    enqueues: list[Enqueue]
    agent_pid: int
    start: float
    end: float
    gateway_log_bytes: int  # what the gateway's log grew by in the window (the functions' own lines)


class _CountingTransport(httpx.HTTPTransport):
    """httpx's transport, noting the connection (its network stream) each response came over."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        # The streams themselves, not their ids or ports: a closed connection's id or local port can come back.
        self.streams: list[Any] = []
        self._seen: set[int] = set()

    @property
    def connections(self) -> int:
        return len(self.streams)

    def clear(self) -> None:
        self.streams.clear()
        self._seen.clear()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        stream = response.extensions.get("network_stream")
        if stream is not None and id(stream) not in self._seen:
            self._seen.add(id(stream))
            self.streams.append(stream)
        return response


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
        self.idle_ended: float | None = None  # the end of the idle agent's whole-run window
        self.dispatch_samples: dict[str, list[DispatchSample]] = {}  # "warm" | "fresh" -> samples
        self.dispatch_agents: dict[str, int] = {}  # "warm" | "fresh" -> the agent's pid
        self.windows: dict[str, CallWindow] = {}  # "single" | "batch"
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
        if self.idle_sampler is not None and self.idle_ended is None:
            self.idle_ended = time.time()
        self.stack.stop()

    @property
    def api(self) -> RunlyClient:
        assert self.client is not None, "stack not started"
        return self.client

    def package_cache(self) -> Path:
        return (self.stack.state_dir / "package-cache").resolve()

    def env_python(self, version: str = WARM_VERSION) -> Path:
        return self.package_cache() / "envs" / sha256_file(self.bundles[version]) / "bin" / "python"

    def pack_and_push(self, *, cold: bool = True) -> dict[str, float]:
        """Pack the bench's job project as WARM_VERSION and (``cold``) one version per cold-start repetition;
        push all."""
        timings: dict[str, float] = {}
        dist = self.state_dir / "dist"
        cold_versions = [cold_version(rep) for rep in range(self.sizes.cold_reps)] if cold else []
        for version in (WARM_VERSION, *cold_versions):
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
        self.idle_sampler = ProcSampler(self.idle_agent.process.pid, duration=self.sizes.idle_seconds).start()

    def calls(self, *pids: int) -> list[Call]:
        return counting.read_calls(self.counts_dir, pids=pids)

    @property
    def gateway(self) -> Child:
        assert self._gateway is not None, "stack not started"
        return self._gateway

    def gateway_pid(self) -> int:
        return self.gateway.process.pid

    def moto_pid(self) -> int:
        return next(c for c in self.stack.children if c.name == "moto").process.pid

    def _request(self, job: str, config: dict[str, Any], *, environment: str = "default",
                 version: str | None = WARM_VERSION) -> EnqueueRunRequest:  # fmt: skip
        return EnqueueRunRequest(package=PACKAGE, job=job, config=config, environment=environment, version=version)

    def _enqueue(self, job: str, config: dict[str, Any], *, environment: str = "default",
                 version: str | None = WARM_VERSION) -> RunView:  # fmt: skip
        return self.api.enqueue(self._request(job, config, environment=environment, version=version))

    def _enqueue_batches(self, requests: list[EnqueueRunRequest]) -> tuple[list[RunView], list[Enqueue]]:
        """POST /runs/batch, BATCH_SIZE runs per request, one request after the other."""
        views: list[RunView] = []
        enqueues: list[Enqueue] = []
        for index in range(0, len(requests), BATCH_SIZE):
            chunk = requests[index : index + BATCH_SIZE]
            started = time.time()
            views += self.api.enqueue_many(chunk)
            enqueues.append(Enqueue(started, time.time(), len(chunk)))
        return views, enqueues

    def main(self) -> Child:
        """The agent of the ``default`` environment, default settings (warm job hosts), started on first use."""
        if self.main_agent is None:
            self.main_agent = self.stack.start_agent("default")
        return self.main_agent

    # ------------------------------------------------------------ 1. dispatch latency
    def dispatch(self, *, fresh: bool = False) -> dict[str, Any]:
        """Enqueue -> first line of job code, one run at a time, warm package, one agent with default settings:
        with warm job hosts (the default) or with a new interpreter per run (``fresh``: RUNLY_WARM_HOSTS=false,
        an agent and environment of its own)."""
        mode = "fresh" if fresh else "warm"
        environment = "fresh" if fresh else "default"
        agent = self.stack.start_agent("fresh", **FRESH) if fresh else self.main()
        agent_log = AgentLog([agent.log_path], from_end=False)
        stamps = StampFile(self.marks / f"dispatch-{mode}.txt")
        wanted = self.sizes.dispatch_fresh_runs if fresh else self.sizes.dispatch_runs
        total = self.sizes.warmup_runs + wanted
        samples: list[DispatchSample] = []
        gateway_log = self.gateway.log_path
        gateway_log_bytes = 0
        try:
            for index in range(total):
                if index == self.sizes.warmup_runs:
                    gateway_log_bytes = gateway_log.stat().st_size
                started = time.time()
                run = self._enqueue("stamp", {"stamps": str(stamps.path)}, environment=environment)
                answered = time.time()
                stamp = stamps.wait_for(run.id, timeout=120)
                if stamp is None:
                    raise RuntimeError(f"dispatch ({mode}): run {run.id} never started:\n{agent.tail()}")
                if not agent_log.wait_terminal(run.id, timeout=60):
                    raise RuntimeError(f"dispatch ({mode}): run {run.id} never ended:\n{agent.tail()}")
                if index < self.sizes.warmup_runs:
                    continue  # the first runs install the package, start the warm host and warm every cache
                events = agent_log.by_run.get(run.id, {})
                marks = {kind: event.t for kind, event in events.items()}
                spawned = events.get("spawned")
                # Forked by a warm host: the agent says so, or the job's module was imported before the claim.
                imported_before = "claimed" in marks and stamp.imported < marks["claimed"]
                warm = bool(spawned and spawned.data.get("warm")) or imported_before
                samples.append(DispatchSample(run.id, started, answered, stamp.first_line, stamp.imported, marks, warm))
                if len(samples) % 50 == 0:
                    log.info("dispatch (%s): %d of %d runs", mode, len(samples), wanted)
            host = self._warm_host_memory(agent) if not fresh else None
        finally:
            if fresh:
                stop_child(agent)
        self.dispatch_samples[mode] = samples
        self.dispatch_agents[mode] = agent.process.pid
        if not fresh:
            end = max(s.agent.get("terminal", s.first_line) for s in samples) + 0.5
            self.windows["single"] = CallWindow(
                "POST /runs", len(samples), [Enqueue(s.enqueue_started, s.enqueue_answered, 1) for s in samples],
                agent.process.pid, samples[0].enqueue_started, end, gateway_log.stat().st_size - gateway_log_bytes,
            )  # fmt: skip
        latencies = [s.latency for s in samples]
        return {
            "mode": "warm job hosts" if not fresh else "new interpreter per run",
            "samples": latencies,
            **summarize(latencies),
            "runs": len(samples),
            "forked_by_warm_host": sum(1 for s in samples if s.warm),
            "enqueue_http": summarize([s.enqueue_answered - s.enqueue_started for s in samples]),
            "ready_to_first_line": summarize([s.first_line - s.agent["ready"] for s in samples if "ready" in s.agent]),
            # What the API function and the authorizer print per request (their logs and metrics).
            "gateway_log_bytes_per_request": (gateway_log.stat().st_size - gateway_log_bytes) / len(samples),
            **({"warm_host": host} if host else {}),
        }

    def _warm_host_memory(self, agent: Child) -> dict[str, Any] | None:
        """RSS and PSS of the agent's warm job host(s), after the dispatch runs (informational)."""
        hosts = warm_hosts(agent.process.pid)
        if not hosts:
            return None
        memory = [memory_mb(pid) for pid in hosts]
        return {"hosts": len(hosts), "rss_mb": memory[0]["rss"], "pss_mb": memory[0].get("pss"),
                "agent_rss_mb": memory_mb(agent.process.pid)["rss"]}  # fmt: skip

    def dispatch_profile(self, *, fresh: bool = False) -> dict[str, Any]:
        """Where a dispatch's time goes, phase by phase, from the bench's, the hook's, the agent's and the
        job's timestamps (all wall-clock on this machine), and which AWS calls each phase made."""
        mode = "fresh" if fresh else "warm"
        samples = self.dispatch_samples[mode]
        gateway = self.calls(self.gateway_pid())
        agent = self.calls(self.dispatch_agents[mode])
        sends = [c for c in gateway if c.service == "sqs" and c.operation == "SendMessage"]
        # By end time: a long poll that started before the message was sent is the one that gets it.
        receives = sorted(
            (c for c in agent if c.operation == "ReceiveMessage" and c.detail.get("messages")), key=lambda c: c.t1
        )
        per_phase: dict[str, list[float]] = defaultdict(list)
        calls_per_phase: dict[str, Counter[str]] = defaultdict(Counter)
        after = "after the first line: job exits, outcome recorded, message deleted"
        for index, sample in enumerate(samples):
            # From the start of the send: the waiting poll may get the message before SendMessage has returned.
            sent = next((c.t0 for c in sends if sample.enqueue_started <= c.t0 <= sample.enqueue_answered), None)
            received = next((c.t1 for c in receives if sent is not None and c.t1 >= sent), None)
            marks = sample.agent
            points: list[tuple[str, float | None, float | None, list[Call]]] = [
                ("API: authorize, record the run (until SendMessage)", sample.enqueue_started, sent, gateway),
                ("SQS: SendMessage -> received by the agent's long poll", sent, received, []),
                ("claim: the agent's calls from receive to claimed", received, marks.get("claimed"), agent),
                ("package: cached environment looked up", marks.get("claimed"), marks.get("ready"), agent),
            ]
            if sample.warm:
                points += [
                    ("spawn: request to the warm host -> fork (pid back at the agent)", marks.get("ready"),
                     marks.get("spawned"), agent),
                    ("job process: forked child -> first line (spec, job class, config, job object)",
                     marks.get("spawned"), sample.first_line, []),
                ]  # fmt: skip
            else:
                points += [
                    ("spawn: spool, spec file, fork + exec", marks.get("ready"), marks.get("spawned"), agent),
                    ("job process: interpreter start + imports", marks.get("spawned"), sample.imported, []),
                    ("job process: spec, job class, config, job object", sample.imported, sample.first_line, []),
                ]
            following = samples[index + 1].enqueue_started if index + 1 < len(samples) else None
            points.append((after, sample.first_line, following or marks.get("terminal"), agent))
            for name, begin, end, source in points:
                if begin is None or end is None:
                    continue
                per_phase[name].append((marks["terminal"] if name == after and "terminal" in marks else end) - begin)
                if source:
                    # Not the agent's long polls: the next one starts while a run is being started or ended.
                    made = [c for c in counting.between(source, begin, end) if c.operation != "ReceiveMessage"]
                    calls_per_phase[name][call_signature(made)] += 1
        profile: dict[str, Any] = {}
        for name, values in per_phase.items():
            profile[name] = summarize(values)
            if calls_per_phase.get(name):
                signature, seen = calls_per_phase[name].most_common(1)[0]
                profile[name]["calls"] = signature
                profile[name]["calls_share"] = seen / sum(calls_per_phase[name].values())
        return profile

    def import_profile(self) -> dict[str, Any]:
        """How long a job process's interpreter takes to start, and which imports cost the most (what a new
        interpreter per run pays every run, and a warm job host once)."""
        python = str(self.env_python())

        def timed(code: str, runs: int = 10) -> dict[str, Any]:
            values = []
            for _ in range(runs):
                started = time.perf_counter()
                subprocess.run([python, "-I", "-c", code], check=True, cwd=self.state_dir)
                values.append(time.perf_counter() - started)
            return summarize(values)

        result = subprocess.run(
            [python, "-I", "-X", "importtime", "-c", "import runly.runner, benchjobs.jobs"],
            capture_output=True, text=True, check=True, cwd=self.state_dir,
        )  # fmt: skip
        return {
            "bare interpreter (python -I -c pass)": timed("pass"),
            "interpreter + runly.runner + job module": timed("import runly.runner, benchjobs.jobs"),
            "top imports (cumulative ms)": top_imports(result.stderr),
        }

    # ------------------------------------------------------------ 4. AWS requests per run
    def batch_path(self) -> dict[str, Any]:
        """The batch path: ``batch_runs`` trivial runs enqueued with POST /runs/batch (BATCH_SIZE a request),
        then run by the main agent (warm job hosts, capacity 2). Its AWS calls are counted at the end."""
        agent = self.main()
        agent_log = AgentLog([agent.log_path], from_end=True)
        stamps = StampFile(self.marks / "batch.txt")
        gateway_log = self.gateway.log_path
        gateway_log_bytes = gateway_log.stat().st_size
        requests = [self._request("stamp", {"stamps": str(stamps.path)}) for _ in range(self.sizes.batch_runs)]
        started = time.time()
        views, enqueues = self._enqueue_batches(requests)
        run_ids = {view.id for view in views}

        def terminal() -> list[float]:
            return [e.t for e in agent_log.events if e.kind == "terminal" and e.run_id in run_ids]

        if not agent_log.wait(lambda: len(terminal()) >= len(run_ids), timeout=600, interval=0.05):
            raise RuntimeError(f"batch path: {len(terminal())} of {len(run_ids)} runs ended:\n{agent.tail()}")
        end = max(terminal()) + 0.5
        time.sleep(max(0.0, end - time.time()))  # the last outcome's calls (delete, heartbeat) are in
        self.windows["batch"] = CallWindow(
            "POST /runs/batch", len(run_ids), enqueues, agent.process.pid, started, end,
            gateway_log.stat().st_size - gateway_log_bytes,
        )  # fmt: skip
        return {
            "runs": len(run_ids),
            "batch_size": BATCH_SIZE,
            "http_requests": len(enqueues),
            "enqueue_seconds": summarize([e.answered - e.started for e in enqueues]),
            "seconds_to_all_terminal": max(terminal()) - started,
        }

    # ------------------------------------------------------------ 9. the API client: keep-alive or not
    def client_connections(self) -> dict[str, Any]:
        """``client_enqueues`` sequential enqueues (POST /runs) through RunlyClient, over its pooled keep-alive
        connection and with a new connection per request, in alternating blocks so that a change in the machine's
        load falls on both alike. Latency is the enqueue call's, in the bench; connections are counted by the
        client's own ports; CPU is this process's.

        Without Idempotency-Keys: a keyed enqueue is a TransactWriteItems, and moto copies the whole table for
        each transaction, so over thousands of enqueues its latency would grow run by run with the table, burying
        what the connection costs (DynamoDB has no such cost)."""
        blocks = 10
        per_block = max(1, self.sizes.client_enqueues // blocks)
        modes = {"keep-alive": httpx.Limits(), "new connection per request": httpx.Limits(max_keepalive_connections=0)}
        transports = {mode: _CountingTransport(limits=limits) for mode, limits in modes.items()}
        clients = {
            mode: RunlyClient(
                self.stack.api_url,
                api_key=self.stack.admin_key,
                timeout=120,
                transport=transport,
                generate_idempotency_keys=False,
            )
            for mode, transport in transports.items()
        }
        request = self._request("stamp", {"stamps": str(self.marks / "client.txt")}, environment=CLIENT_ENVIRONMENT)
        latencies: dict[str, list[float]] = {mode: [] for mode in modes}
        cpu: dict[str, float] = dict.fromkeys(modes, 0.0)
        try:
            for mode, client in clients.items():  # warm-up: the authorizer's and the function's caches, the pool
                for _ in range(5):
                    client.enqueue(request)
                transports[mode].clear()
            for _ in range(blocks):
                for mode, client in clients.items():
                    cpu_started = time.process_time()
                    for _ in range(per_block):
                        started = time.perf_counter()
                        client.enqueue(request)
                        latencies[mode].append(time.perf_counter() - started)
                    cpu[mode] += time.process_time() - cpu_started
        finally:
            for client in clients.values():
                client.close()
        result: dict[str, Any] = {
            "enqueues_per_mode": blocks * per_block,
            "blocks": blocks,
            "idempotency_keys": False,
            "modes": {},
        }
        for mode, values in latencies.items():
            result["modes"][mode] = {
                "latency": summarize(values),
                "seconds": sum(values),
                "enqueues_per_second": rate(len(values), sum(values)),
                "connections": transports[mode].connections,
                "client_cpu_ms_per_enqueue": cpu[mode] / len(values) * 1000,
            }
        result["ratio_of_medians"] = ratio_of_medians(latencies["new connection per request"], latencies["keep-alive"])
        return result

    def requests_per_run(self, path: str) -> dict[str, Any]:
        """Every AWS call the gateway (API function + authorizer) and the agent made for one path's runs
        (``single``: the dispatch runs, one POST /runs each; ``batch``: the batch path's), less what an agent
        makes anyway when idle (polls, node writes: the idle agent's rate over its whole-run window)."""
        window = self.windows[path]
        assert self.idle_sampler is not None and self.idle_agent is not None
        # The gateway's calls while one of this path's requests was open (other benchmarks use the gateway too);
        # the agent's over the whole window.
        gateway = [
            c for c in self.calls(self.gateway_pid()) if any(e.started <= c.t0 <= e.answered for e in window.enqueues)
        ]
        calls = [*gateway, *counting.between(self.calls(window.agent_pid), window.start, window.end)]
        idle, idle_seconds = self.idle_calls(whole_run=True)
        runs = window.runs
        seconds = window.end - window.start

        def keyed(selected: list[Call]) -> Counter[tuple[str, str, str, str]]:
            return Counter((c.role, c.service, c.operation, c.kind or "") for c in selected)

        idle_rate = {key: value / idle_seconds for key, value in keyed(idle).items()}
        per_run = counting.marginal_per_run(keyed(calls), idle_rate, seconds, runs)
        typical = counting.typical_sizes([*calls, *idle])
        units = sum((counting.capacity_units(c, typical) for c in calls), counting.Units())
        idle_units = sum((counting.capacity_units(c, typical) for c in idle), counting.Units())
        read_units = max(0.0, (units.read - idle_units.read / idle_seconds * seconds) / runs)
        write_units = max(0.0, (units.write - idle_units.write / idle_seconds * seconds) / runs)
        authorizer_ms, api_ms = handler_durations(calls, window.enqueues)
        http_requests = len(window.enqueues)
        return {
            "path": window.path,
            "runs": runs,
            "runs_per_http_request": runs / http_requests,
            "http_requests_per_run": http_requests / runs,
            "window_seconds": seconds,
            "calls_per_run": [
                {"role": role, "service": service, "operation": operation, "item": kind, "per_run": value}
                for (role, service, operation, kind), value in sorted(per_run.items())
                if value > 0
            ],
            "raw_window_calls": len(calls),
            "read_units_per_run": read_units,
            "write_units_per_run": write_units,
            "item_sizes": typical,
            "retries": sum(c.attempts - 1 for c in calls),
            "authorizer_ms": authorizer_ms,
            "api_function_ms": api_ms,
            "gateway_log_bytes_per_http_request": window.gateway_log_bytes / http_requests,
        }

    # ------------------------------------------------------------ 5. package cold start
    def cold_start(self) -> dict[str, Any]:
        """The first run of a version this node never ran (download, verify, install, and with warm job hosts
        the host's start, then the fork), once per repetition, each with a version of its own."""
        agent = self.main()
        agent_log = AgentLog([agent.log_path], from_end=True)
        stamps = StampFile(self.marks / "cold.txt")
        reps = []
        for rep in range(self.sizes.cold_reps):
            version = cold_version(rep)
            started = time.time()
            run = self._enqueue("stamp", {"stamps": str(stamps.path)}, version=version)
            stamp = stamps.wait_for(run.id, timeout=300)
            agent_log.wait_terminal(run.id, timeout=120)
            events = agent_log.by_run.get(run.id, {})
            installed = next((e for e in agent_log.events if e.kind == "installed"), None)
            if stamp is None or "ready" not in events or "spawned" not in events:
                raise RuntimeError(f"cold start: run {run.id} did not start:\n{agent.tail()}")
            phases = dict(installed.data["phases"]) if installed else dict(events["ready"].data["phases"])
            phases.pop("total", None)
            host = next((e for e in agent_log.events if e.kind == "host_started"), None)
            if host is not None:  # the warm host of this version started for this run (imports included)
                phases["warm host start"] = host.data["seconds"]
            phases["start (spawn -> first line)"] = stamp.first_line - events["ready"].t
            reps.append(
                {
                    "run_id": run.id,
                    "version": version,
                    "warm_host": bool(events["spawned"].data.get("warm")),
                    "phases": phases,
                    "package_ready_s": events["ready"].data["seconds"],
                    "cold_total_s": events["ready"].data["seconds"] + phases["start (spawn -> first line)"],
                    "enqueue_to_first_line_s": stamp.first_line - started,
                }
            )
            agent_log.events.clear()
        warm = self.dispatch_samples.get("warm", [])
        warm_package = [s.agent["ready"] - s.agent["claimed"] for s in warm if {"ready", "claimed"} <= s.agent.keys()]
        warm_start = [s.first_line - s.agent["ready"] for s in warm if "ready" in s.agent]
        return {
            "reps": reps,
            "cold_total": summarize([r["cold_total_s"] for r in reps]),
            "warm_package": summarize(warm_package),
            "warm_start": summarize(warm_start),
            "bundle_bytes": self.bundles[cold_version(0)].stat().st_size,
        }

    # ------------------------------------------------------------ 3. checkpoint overhead
    def checkpoints(self) -> dict[str, Any]:
        """A no-op item job, timed by itself (wall time and the process's CPU time from its first item to its
        last): ``checkpoint_items`` items with no checkpoint, with the SDK's default interval (2 s) and with
        forced short intervals (0.1 s, 0.01 s); then ``checkpoint_long_items`` items, long enough for
        checkpoints at the default interval to fall inside, with none and with the default. Modes alternate
        within each repetition, in an order that rotates from one repetition to the next, so drift in the
        machine's load hits every mode alike."""
        agent = self.main()
        agent_log = AgentLog([agent.log_path], from_end=True)
        items, many = self.sizes.checkpoint_items, self.sizes.checkpoint_long_items
        short = [("none", items, NO_CHECKPOINT), ("default (every 2 s)", items, 2.0), ("every 0.1 s", items, 0.1),
                 ("every 0.01 s", items, 0.01)]  # fmt: skip
        long = [(f"none, {many:,} items", many, NO_CHECKPOINT), (f"default (every 2 s), {many:,} items", many, 2.0)]
        outputs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in short + long}

        def one(name: str, count: int, every: float) -> None:
            run = self._enqueue("noop-items", {"items": count, "checkpoint_every": every})
            if not agent_log.wait_terminal(run.id, timeout=300):
                raise RuntimeError(f"checkpoints: run {run.id} did not end:\n{agent.tail()}")
            view = self.api.get_run(run.id)
            if view.state.value != "Succeeded":
                raise RuntimeError(f"checkpoints: run {run.id} ended {view.state}: {view.error}")
            outputs[name].append(view.output)

        for plan, reps in ((short, self.sizes.checkpoint_reps), (long, self.sizes.checkpoint_long_reps)):
            for rep in range(reps):
                shift = rep % len(plan)
                for name, count, every in plan[shift:] + plan[:shift]:
                    one(name, count, every)
        modes: dict[str, dict[str, Any]] = {}
        for name, count, every in short + long:
            runs = outputs[name]
            modes[name] = {
                "items": count,
                "interval_seconds": None if every == NO_CHECKPOINT else every,
                "items_per_second": summarize([o["items_per_second"] for o in runs]),
                "items_per_cpu_second": summarize([count / o["cpu_seconds"] for o in runs if o.get("cpu_seconds")]),
                "samples": [o["items_per_second"] for o in runs],
                "cpu_samples": [o["cpu_seconds"] for o in runs if o.get("cpu_seconds") is not None],
                "checkpoints_inside": summarize([float(o.get("checkpoints_inside") or 0) for o in runs]),
                "checkpoints": summarize([float(o["checkpoints"] or 0) for o in runs]),
                "seconds": summarize([o["seconds"] for o in runs]),
                # Every checkpoint of these runs (the final one included), timed in the job's reporter thread.
                "checkpoint_round_trip": summarize([t for o in runs for t in o.get("checkpoint_round_trips", [])]),
                "checkpoint_cpu": summarize([t for o in runs for t in o.get("checkpoint_cpu_seconds", [])]),
            }
        for name, count, _ in short + long:
            baseline = modes["none" if count == items else f"none, {many:,} items"]
            modes[name].update(overheads(baseline, modes[name]))
        everything = [output for runs in outputs.values() for output in runs]
        reporter_cpu = [t for output in everything for t in output.get("checkpoint_cpu_seconds", [])]
        trips = [t for output in everything for t in output.get("checkpoint_round_trips", [])]
        transactions = [(c.t1 - c.t0) for c in self.calls(agent.process.pid) if c.operation == "TransactWriteItems"]
        return {
            "items": items,
            "long_items": many,
            "modes": modes,
            # Per checkpoint, over every run above: the reporter thread's CPU, the round trip it waited for, and
            # the agent's DynamoDB transaction (the hook's timing) within it.
            "per_checkpoint": {
                "reporter_cpu": summarize(reporter_cpu),
                "round_trip": summarize(trips),
                "transaction": summarize(transactions),
            },
        }

    # ------------------------------------------------------------ 6. idle node
    def idle_calls(self, *, whole_run: bool = False) -> tuple[list[Call], float]:
        """The idle agent's calls and the seconds they span: the sampling window (``idle_seconds``), or its
        whole run (from the start of sampling until the bench stopped the stack)."""
        assert self.idle_agent is not None and self.idle_sampler is not None
        start = self.idle_sampler.started
        end = (self.idle_ended if whole_run else self.idle_sampler.stopped) or time.time()
        return list(counting.between(self.calls(self.idle_agent.process.pid), start, end)), end - start

    def finish_idle(self, *, wait: bool = True) -> None:
        """The end of the idle agent's sampling window (``idle_seconds`` from its start): wait for it, or end it
        now. (Its requests are counted at the end, once every long poll started in the window has returned.)"""
        sampler = self.idle_sampler
        assert sampler is not None
        if wait:
            sampler.wait()
        sampler.stop()

    def idle(self) -> dict[str, Any]:
        sampler = self.idle_sampler
        assert sampler is not None and sampler.stopped, "finish_idle first"
        windows = {}
        for name, whole in (("window", False), ("whole run", True)):
            calls, seconds = self.idle_calls(whole_run=whole)
            by_operation = Counter(f"{c.service} {c.operation}" + (f" ({c.kind})" if c.kind else "") for c in calls)
            minutes = seconds / 60
            windows[name] = {
                "seconds": seconds,
                "requests": len(calls),
                "requests_per_minute": len(calls) / minutes,
                "by_operation_per_minute": {k: value / minutes for k, value in sorted(by_operation.items())},
            }
        return {
            "seconds": sampler.seconds,
            "requests_per_minute": windows["window"]["requests_per_minute"],
            "by_operation_per_minute": windows["window"]["by_operation_per_minute"],
            "whole_run": windows["whole run"],
            "schedule": agent_schedule(),
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
            # The job's agent: its parent, or with warm job hosts its grandparent (the host forked it).
            agent_pid = ancestor_in(job_pid, {a.process.pid for a in agents})
            victim = next(a for a in agents if a.process.pid == agent_pid)
            doomed = descendants(victim.process.pid)  # its warm hosts and job processes: the whole machine
            killed_at = time.time()
            os.kill(victim.process.pid, signal.SIGKILL)
            for pid in doomed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
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
            "receive_visibility_seconds": receive_visibility_seconds(RECOVERY_SETTINGS),
            "checkpoint_interval_seconds": 1.0,
            "items": self.sizes.recovery_items,
            "item_seconds": 0.05,
            "kill_after_items": RECOVERY_KILL_AFTER_ITEMS,
        }

    # ------------------------------------------------------------ 2. throughput
    def throughput(self, nodes: int, rep: int, *, fresh: bool = False, timeout: float = 900.0) -> dict[str, Any]:
        """N trivial runs enqueued at once (POST /runs/batch) while no node serves the environment; then
        ``nodes`` agents at their default capacity start, with warm job hosts (the default) or with a new
        interpreter per run (``fresh``); runs/s until every run is terminal."""
        runs = self.sizes.throughput_runs if nodes == 1 else self.sizes.throughput_runs_two_nodes
        if fresh:
            runs = self.sizes.fresh_throughput_runs
        environment = throughput_environment(nodes, rep, fresh=fresh)
        stamps = StampFile(self.marks / f"{environment}.txt")
        enqueue_started = time.time()
        views, _ = self._enqueue_batches(
            [self._request("stamp", {"stamps": str(stamps.path)}, environment=environment) for _ in range(runs)]
        )
        run_ids = {view.id for view in views}
        enqueue_seconds = time.time() - enqueue_started
        moto = self.moto_pid()
        moto_cpu = cpu_seconds(moto)
        started = time.time()
        agents = [self.stack.start_agent(environment, **(FRESH if fresh else {})) for _ in range(nodes)]
        agent_log = AgentLog([a.log_path for a in agents], from_end=False)

        def terminal() -> list[float]:
            return [e.t for e in agent_log.events if e.kind == "terminal" and e.run_id in run_ids]

        finished = agent_log.wait(lambda: len(terminal()) >= runs, timeout=timeout, interval=0.25)
        ended = time.time()
        states = Counter(e.data["state"] for e in agent_log.events if e.kind == "terminal" and e.run_id in run_ids)
        # Where the CPU went, per run: the job processes, the warm hosts that forked them, the agents, moto.
        cpu: dict[str, float] = defaultdict(float)
        for agent in agents:
            for name, seconds in node_cpu_seconds(agent.process.pid).items():
                cpu[name] += seconds
        cpu["moto server (plays SQS, DynamoDB, S3)"] = cpu_seconds(moto) - moto_cpu
        forked = sum(1 for e in agent_log.events if e.kind == "spawned" and e.run_id in run_ids and e.data.get("warm"))
        # What the node(s) asked of AWS (moto here) per run, and how long moto took to answer.
        made = list(counting.between(self.calls(*(a.process.pid for a in agents)), started, ended))
        by_operation: dict[str, list[float]] = defaultdict(list)
        for call in made:
            by_operation[f"{call.service} {call.operation}" + (f" {call.kind}" if call.kind else "")].append(
                call.t1 - call.t0
            )
        calls = {
            name: {"per_run": len(values) / max(1, len(run_ids)), "median_ms": percentile(values, 50) * 1000}
            for name, values in sorted(by_operation.items(), key=lambda item: -len(item[1]))
        }
        for agent in agents:
            stop_child(agent)
        times = sorted(terminal())
        stamps.poll()
        first_start = min((s.first_line for s in stamps.stamps.values()), default=None)
        return {
            "nodes": nodes,
            "mode": "new interpreter per run" if fresh else "warm job hosts",
            "runs": runs,
            "completed": len(times),
            "forked_by_warm_host": forked,
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
            "calls": calls,
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


def call_signature(calls: Iterable[Call]) -> str:
    """The AWS calls of one phase of one run, in order: 'dynamodb UpdateItem RUN/RUN, sqs DeleteMessage'."""
    return ", ".join(f"{c.service} {c.operation}" + (f" {c.kind}" if c.kind else "") for c in calls) or "none"


def handler_durations(calls: list[Call], enqueues: list[Enqueue]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per HTTP request that enqueued runs: the authorizer = request start -> end of its key read; the API
    function = the rest of the round trip (an upper bound: the local gateway's own overhead is counted in)."""
    keys = [c for c in calls if c.role == "gateway" and c.kind == "KEY/KEY"]
    authorizer, api = [], []
    for enqueue in enqueues:
        read = next((c for c in keys if enqueue.started <= c.t0 <= enqueue.answered), None)
        if read is None:
            continue
        authorizer.append((read.t1 - enqueue.started) * 1000)
        api.append((enqueue.answered - read.t1) * 1000)
    return summarize(authorizer), summarize(api)


def overheads(baseline: dict[str, Any], mode: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint mode against no checkpoints: the loss of items/s (wall) and the extra CPU time per run
    (the job process, all its threads), each as a ratio of medians with a bootstrap 90% interval; and the
    extra CPU per checkpoint that fell inside the timed part."""
    wall = ratio_of_medians(mode["samples"], baseline["samples"])
    cpu = ratio_of_medians(mode["cpu_samples"], baseline["cpu_samples"])
    inside = (mode.get("checkpoints_inside") or {}).get("median") or 0
    extra_cpu = (median(mode["cpu_samples"]) - median(baseline["cpu_samples"])) if cpu["ratio"] is not None else None
    return {
        "overhead": None if wall["ratio"] is None else 1 - wall["ratio"],
        "overhead_interval": [None if v is None else 1 - v for v in reversed(wall["interval"])],
        "cpu_overhead": None if cpu["ratio"] is None else cpu["ratio"] - 1,
        "cpu_overhead_interval": [None if v is None else v - 1 for v in cpu["interval"]],
        "cpu_ms_per_checkpoint": (extra_cpu * 1000 / inside) if extra_cpu is not None and inside >= 1 else None,
    }


def receive_visibility_seconds(settings: dict[str, str]) -> int:
    """How long the agent hides a message it receives, until its first heartbeat (node_agent.agent)."""
    from node_agent.agent import receive_visibility
    from node_agent.settings import AgentSettings

    return receive_visibility(
        AgentSettings.model_construct(
            lease_seconds=int(settings["lease_seconds"]), heartbeat_seconds=float(settings["heartbeat_seconds"])
        )
    )


def agent_schedule() -> dict[str, Any]:
    """What an idle agent's defaults make it call, per minute: one long poll per ``poll_wait_seconds`` and
    one node write per idle refresh (node_agent's settings)."""
    from node_agent.settings import AgentSettings

    fields = AgentSettings.model_fields
    poll = float(fields["poll_wait_seconds"].default)
    refresh_field = next((name for name in fields if "idle" in name and ("refresh" in name or "node" in name)), None)
    refresh = float(fields[refresh_field].default) if refresh_field else float(fields["heartbeat_seconds"].default)
    polls, writes = 60 / poll, 60 / refresh
    return {
        "poll_wait_seconds": poll,
        "node_write_seconds": refresh,
        "node_write_setting": refresh_field or "heartbeat_seconds",
        "polls_per_minute": polls,
        "node_writes_per_minute": writes,
        "requests_per_minute": polls + writes,
    }


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
