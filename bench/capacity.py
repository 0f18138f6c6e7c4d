"""``make capacity``: the run store's capacity and bill, from every AWS request the real code makes.

    .venv/bin/python -m bench.capacity                    # this checkout as "today": capacity.json, CAPACITY.md
    .venv/bin/python -m bench.capacity --design new       # measure this checkout as "new", beside "today" if present
    .venv/bin/python -m bench.capacity --beside ../main/bench/capacity.json --design new   # another checkout's too
    .venv/bin/python -m bench.capacity --render           # CAPACITY.md again from capacity.json

It starts the embedded stack (moto server, the local gateway with the real API function and authorizer, real node
agents) with bench.recorder in front of moto, so every DynamoDB, SQS and S3 request of every process is recorded
with what DynamoDB and SQS bill for it (bench.billing: each index's writes from the table's own definition, item
sizes from the images before and after each write). It then runs a mix:

1. an idle window (agents polling, nothing to do): what a node costs per second, taken off every other window;
2. short runs, one ``POST /runs`` each; 3. short runs, ``POST /runs/batch`` of 100 (1 KB config, 1 KB output);
4. one long run heartbeating (a short heartbeat, to see many beats; counted per beat, scaled to the workload's).

From those it has units per short run (per path) and per heartbeat, by partition (table or index, partition key
value with its ids replaced by patterns such as ``ENV#{env}#RUN#{run}``), and scales them to the target workload
(WORKLOAD) against DynamoDB's per-partition limits, SQS's in-flight limit, and the bill (bench.pricing, bench.derive).

Several designs side by side: each run writes its figures under ``designs[<--design>]`` of capacity.json and keeps
the other designs there (or takes them from ``--beside`` another checkout's capacity.json); the top-level figures
are the design just measured. CAPACITY.md shows every design as a column.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import billing, derive, pricing
from bench.observe import AgentLog
from bench.stats import summarize

log = logging.getLogger("bench.capacity")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PROJECT = BENCH_DIR / "project"
PACKAGE = "benchjobs"
BATCH_SIZE = 100
MILLION = 1_000_000
PARTITION_WRITE_LIMIT = 1000.0  # write units per second per partition key (DynamoDB)
PARTITION_READ_LIMIT = 3000.0  # read units per second per partition key
SQS_IN_FLIGHT_LIMIT = 120_000  # in-flight messages per standard queue
SHORT_ENVIRONMENT = "default"
GATEWAY_PRINCIPAL = "local"  # the access key the embedded stack gives the gateway (agents get their own here)
LONG_ENVIRONMENT = "long"


@dataclass(frozen=True)
class Workload:
    """The target the figures are scaled to (issue 14)."""

    new_short_runs_per_second: float = 5000.0
    environments: int = 10
    running_runs: int = 100_000
    heartbeat_seconds: float = 15.0
    config_bytes: int = 1024
    output_bytes: int = 1024
    # Not in the issue: how many runs a node holds at once, which sets how many nodes poll and heartbeat their own
    # items (100,000 running runs / 50 = 2,000 nodes). Nodes' own requests are small beside the runs'.
    runs_per_node: int = 50
    short_run_path: str = "POST /runs/batch"  # the path the 5,000 runs/s arrive by, 100 to a request

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.running_runs / self.runs_per_node))


@dataclass(frozen=True)
class Mix:
    """What the embedded stack runs (sized for under 5 minutes on 2 cores)."""

    idle_seconds: float = 40.0
    single_runs: int = 30
    batch_runs: int = 100  # one POST /runs/batch: a run's units vary little from run to run
    long_seconds: float = 30.0  # the heartbeat window counted
    long_heartbeat_seconds: float = 2.0
    long_lease_seconds: int = 10
    short_capacity: int = 10
    config_bytes: int = 1024  # the short runs' config (JSON); their output is about as large

    @classmethod
    def short_only(cls) -> Mix:
        """make bench's bill: the short runs of both paths, no long run, with a config and an output as small as
        the bench's own runs' (a run's units vary little from run to run: fewer runs keep make bench's time)."""
        return cls(single_runs=20, long_seconds=0.0, config_bytes=0)

    @classmethod
    def quick_bill(cls) -> Mix:
        """make bench --quick's bill: fewer runs, a shorter idle window (not for quoting)."""
        return cls(idle_seconds=25.0, single_runs=15, batch_runs=100, long_seconds=0.0, config_bytes=0)


# ---------------------------------------------------------------- partition key patterns

_RUN_ID = re.compile(r"run_[a-z][a-z0-9-]{0,30}_[0-9A-Za-z_-]{1,64}")
_SHARD = re.compile(r"\d{1,3}")
_ID = re.compile(r"(?=.*\d)[0-9A-Za-z_.:-]{8,}|[0-9a-f]{16,}")


def key_pattern(value: str, *, environments: Iterable[str], nodes: Iterable[str]) -> str:
    """A partition key value with what varies replaced by its kind: ``ENV#default#RUN#run_default_2026..._ab`` ->
    ``ENV#{env}#RUN#{run}``; node ids -> ``{node}``; short numbers (shard suffixes) -> ``{shard}``; other ids ->
    ``{id}``. One pattern is one family of partitions, counted together."""
    envs, node_ids = set(environments), set(nodes)
    parts = []
    for segment in value.split("#"):
        if segment in envs:
            parts.append("{env}")
        elif segment in node_ids:
            parts.append("{node}")
        elif _RUN_ID.fullmatch(segment):
            parts.append("{run}")
        elif _SHARD.fullmatch(segment):
            parts.append("{shard}")
        elif _ID.fullmatch(segment):
            parts.append("{id}")
        else:
            parts.append(segment)
    return "#".join(parts)


def fan_out(pattern: str) -> str:
    """How many partitions a pattern stands for at the target workload: one per run or item, per node, per shard
    (of each environment), per environment, or a single one."""
    if "{run}" in pattern or "{id}" in pattern:
        return "item"
    if "{node}" in pattern:
        return "node"
    if "{shard}" in pattern:
        return "shard"
    if "{env}" in pattern:
        return "environment"
    return "single"


# ---------------------------------------------------------------- what one window cost


Key = tuple[str, str, str]  # (service, target: table, table/index or queue, pattern)


@dataclass
class Tally:
    """Units and requests of some records, by partition family, and by operation."""

    units: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))  # [write, read]
    requests: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))  # billed, by op
    calls: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))  # requests made, by op
    shards: dict[Key, set[str]] = field(default_factory=lambda: defaultdict(set))
    peak: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))  # one key, 1 s
    # Families whose items are nodes' own (their table key is a node's): they scale with nodes, not runs.
    node_owned: set[Key] = field(default_factory=set)

    @property
    def write(self) -> float:
        return sum(v[0] for v in self.units.values())

    @property
    def read(self) -> float:
        return sum(v[1] for v in self.units.values())


def tally(records: Iterable[Mapping[str, Any]], *, environments: Iterable[str], nodes: Iterable[str]) -> Tally:
    envs, node_ids = tuple(environments), tuple(nodes)
    result = Tally()
    per_second: dict[tuple[Key, str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for record in records:
        service, operation = record["service"], record["operation"]
        result.calls[(service, operation)] += 1
        if service == "dynamodb":
            for data in record.get("charges") or []:
                charge = billing.Charge.from_dict(data)
                pattern = key_pattern(charge.partition_key, environments=envs, nodes=node_ids)
                key = ("dynamodb", charge.target, pattern)
                result.units[key][0] += charge.write
                result.units[key][1] += charge.read
                if "{shard}" in pattern:
                    result.shards[key].add(charge.partition_key)
                if charge.item and fan_out(key_pattern(charge.item, environments=envs, nodes=node_ids)) == "node":
                    result.node_owned.add(key)
                slot = per_second[(key, charge.partition_key, int(record["t0"]))]
                slot[0] += charge.write
                slot[1] += charge.read
            result.requests[(service, operation)] += 1
        elif service == "sqs":
            queue = key_pattern(str(record.get("queue") or ""), environments=envs, nodes=node_ids)
            queue = re.sub(r"-(\{env\}|[a-z0-9]+)(-dlq)?$", lambda m: "-{env}" + (m.group(2) or ""), queue)
            billed = float(record.get("requests") or 1)
            result.requests[(service, operation)] += billed
            result.units[("sqs", queue, operation)][0] += billed
        else:
            result.requests[(service, operation)] += 1
    for (key, _, _), (write, read) in per_second.items():
        peak = result.peak[key]
        peak[0], peak[1] = max(peak[0], write), max(peak[1], read)
    return result


def marginal(window: Tally, idle: Tally, *, window_seconds: float, idle_seconds: float, count: float) -> Tally:
    """What ``count`` runs (or beats) added to a window: (window - idle rate x its length) / count, never below 0."""
    scale = window_seconds / idle_seconds if idle_seconds > 0 else 0.0
    result = Tally()
    for key, (write, read) in window.units.items():
        idle_write, idle_read = idle.units.get(key, [0.0, 0.0])
        result.units[key] = [
            max(0.0, (write - idle_write * scale) / count),
            max(0.0, (read - idle_read * scale) / count),
        ]
    for attribute in ("requests", "calls"):
        mine, theirs = getattr(window, attribute), getattr(idle, attribute)
        for op, value in mine.items():
            getattr(result, attribute)[op] = max(0.0, (value - theirs.get(op, 0.0) * scale) / count)
    result.shards = window.shards
    result.peak = window.peak
    result.node_owned = window.node_owned | idle.node_owned
    return result


def per_second(idle: Tally, seconds: float, per: float) -> Tally:
    """An idle window's tally as units per second per node (``per`` nodes were idle in it)."""
    result = Tally()
    for key, (write, read) in idle.units.items():
        result.units[key] = [write / seconds / per, read / seconds / per]
    for op, value in idle.requests.items():
        result.requests[op] = value / seconds / per
    for op, value in idle.calls.items():
        result.calls[op] = value / seconds / per
    result.shards = idle.shards
    result.node_owned = idle.node_owned
    return result


# ---------------------------------------------------------------- the measurement


@dataclass
class PathWindow:
    path: str
    runs: int
    http: list[tuple[float, float]]  # (started, answered) of each enqueue request
    start: float
    end: float
    gateway_log_bytes: int
    lifetimes: list[float]  # claimed -> terminal
    enqueue_to_terminal: list[float]


def measure(state_dir: Path, mix: Mix) -> dict[str, Any]:
    """Run the mix on the embedded stack behind the recorder; the raw figures (units per run, per beat, per node
    second, by partition family), ready for :func:`scale`."""
    from bench.recorder import Recorder
    from runly_cli.embedded.stack import EmbeddedStack
    from runly_cli.pack import pack_project
    from runly_client.client import RunlyClient
    from runly_core.contracts import EnqueueRunRequest

    recorder: Recorder | None = None

    def front(moto: str) -> str:
        nonlocal recorder
        recorder = Recorder(moto)
        return recorder.start()

    environments = (SHORT_ENVIRONMENT, LONG_ENVIRONMENT) if mix.long_seconds else (SHORT_ENVIRONMENT,)
    stack = EmbeddedStack(state_dir=state_dir / "stack", environments=environments, aws_front=front)
    # The config ({"payload": ..., "seconds": 0}) and the output ({"payload": ...}) of the size asked for.
    payload = "x" * max(0, mix.config_bytes - len(json.dumps({"payload": "", "seconds": 0.0})))
    began = time.monotonic()
    try:
        stack.start(agents=0)
        assert recorder is not None
        client = RunlyClient(stack.api_url, api_key=stack.admin_key, timeout=120)
        bundle = pack_project(PROJECT, state_dir / "dist")
        client.push(bundle)
        # Each agent signs with an access key of its own (moto takes any), so the recorder tells their requests
        # from the gateway's ("local"). Capacity 10: a node with room receives 10 messages a call, as one holding
        # WORKLOAD.runs_per_node runs would (a node never receives more than it has room for).
        stack.agent_env = {"AWS_ACCESS_KEY_ID": f"agent-{SHORT_ENVIRONMENT}"}
        short_agent = stack.start_agent(SHORT_ENVIRONMENT, capacity=str(mix.short_capacity))
        agents = [short_agent]
        long_agent = None
        if mix.long_seconds:
            stack.agent_env = {"AWS_ACCESS_KEY_ID": f"agent-{LONG_ENVIRONMENT}"}
            long_agent = stack.start_agent(
                LONG_ENVIRONMENT,
                heartbeat_seconds=str(mix.long_heartbeat_seconds),
                lease_seconds=str(mix.long_lease_seconds),
            )
            agents.append(long_agent)
        node_ids = [f"local-node-{n}" for n in range(1, len(agents) + 1)]
        agent_log = AgentLog([a.log_path for a in agents], from_end=False)
        gateway = next(c for c in stack.children if c.name == "gateway")

        def request(environment: str, seconds: float = 0.0) -> EnqueueRunRequest:
            return EnqueueRunRequest(
                package=PACKAGE, job="echo", config={"payload": payload, "seconds": seconds}, environment=environment
            )

        def wait_terminal(run_ids: set[str], timeout: float = 400.0) -> float:
            ok = agent_log.wait(lambda: all(agent_log.terminal(r) for r in run_ids), timeout=timeout, interval=0.05)
            if not ok:
                missing = sorted(r for r in run_ids if not agent_log.terminal(r))
                raise RuntimeError(
                    f"{len(run_ids) - len(missing)} of {len(run_ids)} runs ended; not: {', '.join(missing[:5])}; "
                    f"logs in {stack.run_dir / 'logs'}"
                )
            return max(e.t for r in run_ids if (e := agent_log.terminal(r)) is not None)

        # Warm up: the package installed and a warm job host up on each agent, before anything is counted.
        warm = {client.enqueue(request(env)).id for env in environments}
        wait_terminal(warm, timeout=180.0)
        time.sleep(2.0)

        log.info("idle window: %.0f s", mix.idle_seconds)
        idle_start = time.time()
        time.sleep(mix.idle_seconds)
        idle_end = time.time()

        windows: list[PathWindow] = []
        for path, count in (("POST /runs", mix.single_runs), ("POST /runs/batch", mix.batch_runs)):
            log.info("%s: %d runs", path, count)
            log_bytes = gateway.log_path.stat().st_size
            start = time.time()
            http: list[tuple[float, float]] = []
            ids: list[str] = []
            requests = [request(SHORT_ENVIRONMENT) for _ in range(count)]
            if path == "POST /runs":
                for one in requests:
                    sent = time.time()
                    ids.append(client.enqueue(one).id)
                    http.append((sent, time.time()))
            else:
                for index in range(0, count, BATCH_SIZE):
                    sent = time.time()
                    ids += [view.id for view in client.enqueue_many(requests[index : index + BATCH_SIZE])]
                    http.append((sent, time.time()))
            last = wait_terminal(set(ids))
            end = last + 1.0  # the last run's deletes and final writes are in
            time.sleep(max(0.0, end - time.time()))
            created = {run_id: sent for (sent, _), run_id in zip(_each_run(http, ids), ids, strict=True)}
            # In flight (SQS) from the receive to the delete: claimed -> terminal, not the wait in the queue,
            # which depends on how many nodes serve the environment.
            lifetimes = [
                e.t - c.t
                for r in ids
                if (e := agent_log.terminal(r)) is not None and (c := agent_log.by_run[r].get("claimed")) is not None
            ]
            waits = [e.t - created[r] for r in ids if (e := agent_log.terminal(r)) is not None]
            windows.append(
                PathWindow(
                    path, len(ids), http, start, end, gateway.log_path.stat().st_size - log_bytes, lifetimes, waits
                )
            )

        long_window: tuple[float, float] | None = None
        if mix.long_seconds and long_agent is not None:
            log.info("a long run: %.0f s of heartbeats every %g s", mix.long_seconds, mix.long_heartbeat_seconds)
            run_id = client.enqueue(request(LONG_ENVIRONMENT, seconds=mix.long_seconds + 8)).id
            if not agent_log.wait(
                lambda: run_id in agent_log.by_run and "spawned" in agent_log.by_run[run_id], timeout=60, interval=0.05
            ):
                raise RuntimeError(f"the long run did not start:\n{long_agent.tail()}")
            start = time.time() + 1.5
            end = start + mix.long_seconds
            time.sleep(max(0.0, end - time.time()))
            long_window = (start, end)
            wait_terminal({run_id}, timeout=60)
        time.sleep(1.0)
        records = list(recorder.records)
        with open(state_dir / "records.jsonl", "w") as stream:  # every request, for a reader who wants the detail
            stream.writelines(json.dumps(record, default=str) + "\n" for record in records)
        tables = {name: asdict(definition) for name, definition in recorder.tables().items()}
    finally:
        stack.stop()
        if recorder is not None:
            recorder.stop()

    idle_tally = tally(_between(records, idle_start, idle_end), environments=environments, nodes=node_ids)
    idle_seconds = idle_end - idle_start
    paths: dict[str, dict[str, Any]] = {}
    for window in windows:
        # The window's own records, and the gateway's while one of its requests was open: that is every record in
        # the window (nothing else runs), so the window is taken whole.
        counted = tally(_between(records, window.start, window.end), environments=environments, nodes=node_ids)
        per_run = marginal(
            counted, idle_tally, window_seconds=window.end - window.start, idle_seconds=idle_seconds, count=window.runs
        )
        authorizer_ms, api_ms = _handler_ms(records, window.http)
        paths[window.path] = {
            "runs": window.runs,
            "http_requests": len(window.http),
            "window_seconds": window.end - window.start,
            "run_lifetime_seconds": summarize(window.lifetimes),
            "enqueue_to_terminal_seconds": summarize(window.enqueue_to_terminal),
            "authorizer_ms": authorizer_ms,
            "api_function_ms": api_ms,
            "gateway_log_bytes_per_http_request": window.gateway_log_bytes / max(1, len(window.http)),
            **_tally_json(per_run),
        }
    # A path whose requests all found the authorizer's answer cached (one batch request soon after another path's)
    # bills the authorizer at the duration measured where it ran.
    ran = [
        path_figures["authorizer_ms"]
        for path_figures in paths.values()
        if path_figures["authorizer_ms"]["median"] is not None
    ]
    for path_figures in paths.values():
        if path_figures["authorizer_ms"]["median"] is None and ran:
            path_figures["authorizer_ms"] = {**ran[0], "note": "cached at the gateway: the duration of another path's"}
    heartbeat = None
    if long_window is not None:
        seconds = long_window[1] - long_window[0]
        beats = seconds / mix.long_heartbeat_seconds
        counted = tally(_between(records, *long_window), environments=environments, nodes=node_ids)
        per_beat = marginal(counted, idle_tally, window_seconds=seconds, idle_seconds=idle_seconds, count=beats)
        heartbeat = {
            "seconds": seconds,
            "heartbeat_seconds": mix.long_heartbeat_seconds,
            "beats": beats,
            **_tally_json(per_beat),
        }
    return {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": time.monotonic() - began,
        "mix": asdict(mix),
        "config_bytes": len(json.dumps({"payload": payload, "seconds": 0.0})),
        "output_bytes": len(json.dumps({"payload": payload})),
        "tables": tables,
        "requests_recorded": len(records),
        "idle": {
            "seconds": idle_seconds,
            "nodes": len(node_ids),
            **_tally_json(per_second(idle_tally, idle_seconds, len(node_ids))),
        },
        "paths": paths,
        "heartbeat": heartbeat,
    }


def _each_run(http: list[tuple[float, float]], ids: list[str]) -> list[tuple[float, float]]:
    """The enqueue request of each run, in order (a batch request carries up to BATCH_SIZE)."""
    if len(http) == len(ids):
        return http
    return [http[min(index // BATCH_SIZE, len(http) - 1)] for index in range(len(ids))]


def _between(records: Iterable[Mapping[str, Any]], start: float, end: float) -> list[Mapping[str, Any]]:
    return [r for r in records if start <= r["t0"] < end]


def _handler_ms(
    records: Sequence[Mapping[str, Any]], http: list[tuple[float, float]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per enqueue request: the authorizer = request start -> end of its API key read (the GetItem of a KEY#
    partition); the API function = the rest of the round trip (an upper bound: the local gateway's own time is in)."""
    gateway = [r for r in records if r.get("principal") == GATEWAY_PRINCIPAL]
    keys = [
        r
        for r in gateway
        if r["operation"] == "GetItem"
        and any(str(c["partition_key"]).startswith("KEY#") for c in r.get("charges") or [])
    ]
    authorizer, api = [], []
    for sent, answered in http:
        read = next((r for r in keys if sent <= r["t0"] <= answered), None)
        if read is None:
            # The gateway answered from its cached authorizer result (AUTHORIZER_RESULT_TTL_SECONDS): no key read,
            # the whole round trip is the API function's. The authorizer's time comes from the requests that ran it.
            held = sum(r.get("held", 0.0) for r in gateway if sent <= r["t0"] <= answered)
            api.append(max(0.0, answered - sent - held) * 1000)
            continue
        # Less what the recorder added (its write lock, its image reads): Lambda would not have waited for it.
        held = sum(r.get("held", 0.0) for r in gateway if read["t1"] <= r["t0"] <= answered)
        authorizer.append((read["t1"] - sent - read.get("held", 0.0)) * 1000)
        api.append(max(0.0, answered - read["t1"] - held) * 1000)
    return summarize(authorizer), summarize(api)


def _tally_json(t: Tally) -> dict[str, Any]:
    partitions: list[dict[str, Any]] = [
        {
            "service": service,
            "target": target,
            "pattern": pattern,
            "write_units": w,
            "read_units": r,
            "shards_seen": len(t.shards.get((service, target, pattern), ())),
            "node_owned": (service, target, pattern) in t.node_owned,
            "peak_write_units_one_key_one_second": t.peak.get((service, target, pattern), [0.0, 0.0])[0],
            "peak_read_units_one_key_one_second": t.peak.get((service, target, pattern), [0.0, 0.0])[1],
        }
        for (service, target, pattern), (w, r) in sorted(t.units.items())
        if w or r
    ]
    dynamo = [p for p in partitions if p["service"] == "dynamodb"]
    runs = [p for p in dynamo if not p["node_owned"]]
    return {
        # A run's own units; a node's own record (node-owned families) apart: a busy node writes it once per beat
        # whatever its number of runs, so it is shared by them (running_hours_cost), not a cost of each run.
        "write_units": sum(p["write_units"] for p in runs),
        "read_units": sum(p["read_units"] for p in runs),
        "index_write_units": sum(p["write_units"] for p in runs if "/" in p["target"]),
        "node_write_units": sum(p["write_units"] for p in dynamo if p["node_owned"]),
        "node_read_units": sum(p["read_units"] for p in dynamo if p["node_owned"]),
        "billed_requests": {f"{s} {op}": v for (s, op), v in sorted(t.requests.items()) if v},
        "calls": {f"{s} {op}": v for (s, op), v in sorted(t.calls.items()) if v},
        "partitions": partitions,
    }


# ---------------------------------------------------------------- scaling to the workload

WORKLOAD = Workload()


def _target_label(target: str) -> str:
    _, _, index = target.partition("/")
    return f"index {index}" if index else "table"


def scale(measured: Mapping[str, Any], workload: Workload = WORKLOAD) -> list[dict[str, Any]]:
    """Each partition family's units per second per partition at the workload, hottest first.

    A family's whole load = units per short run x runs/s (by the workload's path) + units per beat x beats/s of the
    running runs + a node's units per second x nodes; each partition of it takes that divided by how many there
    are (one; one per environment; per shard of each environment, as many shards as the run used; one per node).
    A family with one partition per run or item (``{run}``, ``{id}``) takes, per partition, the most one key took in
    one second of the short runs, or one run's units per beat at the workload's heartbeat, whichever is more."""
    path = measured["paths"].get(workload.short_run_path) or next(iter(measured["paths"].values()))
    heartbeat = measured.get("heartbeat") or {}
    beats_per_second = workload.running_runs / workload.heartbeat_seconds
    families: dict[tuple[str, str, str], dict[str, Any]] = {}

    def family(row: Mapping[str, Any]) -> dict[str, Any]:
        key = (row["service"], row["target"], row["pattern"])
        return families.setdefault(
            key,
            {
                "service": key[0],
                "target": key[1],
                "pattern": key[2],
                "write": 0.0,
                "read": 0.0,
                "shards": 1,
                "peak_write": 0.0,
                "peak_read": 0.0,
                "item_write": 0.0,
                "item_read": 0.0,
                "node": False,
                "node_beat": [0.0, 0.0],
                "node_idle": [0.0, 0.0],
            },
        )

    for rows, rate, kind in (
        (path["partitions"], workload.new_short_runs_per_second, "run"),
        (heartbeat.get("partitions") or [], beats_per_second, "beat"),
        (measured["idle"]["partitions"], float(workload.nodes), "node"),
    ):
        for row in rows:
            entry = family(row)
            if row.get("node_owned"):
                # A node writes its own record once per heartbeat while it runs anything (idle: less often),
                # whatever its number of runs: so nodes x the larger of a busy beat's and an idle second's units.
                entry["node"] = True
                if kind == "beat":
                    entry["node_beat"] = [
                        row["write_units"] / workload.heartbeat_seconds,
                        row["read_units"] / workload.heartbeat_seconds,
                    ]
                elif kind == "node":
                    entry["node_idle"] = [row["write_units"], row["read_units"]]
                continue
            entry["write"] += row["write_units"] * rate
            entry["read"] += row["read_units"] * rate
            entry["shards"] = max(entry["shards"], row.get("shards_seen") or 1)
            if kind == "run":
                entry["peak_write"] = max(entry["peak_write"], row["peak_write_units_one_key_one_second"])
                entry["peak_read"] = max(entry["peak_read"], row["peak_read_units_one_key_one_second"])
            if kind == "beat":
                entry["item_write"] += row["write_units"] / workload.heartbeat_seconds
                entry["item_read"] += row["read_units"] / workload.heartbeat_seconds
    out = []
    for entry in families.values():
        if entry["service"] != "dynamodb":
            continue
        if entry["node"]:
            entry["write"] += workload.nodes * max(entry["node_beat"][0], entry["node_idle"][0])
            entry["read"] += workload.nodes * max(entry["node_beat"][1], entry["node_idle"][1])
        spread = fan_out(entry["pattern"])
        if spread == "item":
            wcu = max(entry["peak_write"], entry["item_write"])
            rcu = max(entry["peak_read"], entry["item_read"])
            partitions: float | str = "one per run/item"
        else:
            partitions = {
                "single": 1,
                "environment": workload.environments,
                "node": workload.nodes,
                "shard": entry["shards"] * (workload.environments if "{env}" in entry["pattern"] else 1),
            }[spread]
            wcu, rcu = entry["write"] / partitions, entry["read"] / partitions
        out.append(
            {
                "table_or_index": _target_label(entry["target"]),
                "target": entry["target"],
                "partition_key": entry["pattern"],
                "partitions": partitions,
                "wcu_per_second": round(wcu, 3),
                "rcu_per_second": round(rcu, 3),
                "share_of_write_limit": round(wcu / PARTITION_WRITE_LIMIT, 4),
                "share_of_read_limit": round(rcu / PARTITION_READ_LIMIT, 4),
            }
        )
    out.sort(key=lambda p: -max(p["share_of_write_limit"], p["share_of_read_limit"]))
    return out


def sqs_at_workload(measured: Mapping[str, Any], workload: Workload = WORKLOAD) -> dict[str, Any]:
    """Requests per second per environment queue, and the messages in flight in one (SQS's 120,000 limit)."""
    path = measured["paths"].get(workload.short_run_path) or next(iter(measured["paths"].values()))
    heartbeat = measured.get("heartbeat") or {}
    per_env_runs = workload.new_short_runs_per_second / workload.environments
    per_env_beats = workload.running_runs / workload.heartbeat_seconds / workload.environments
    per_env_nodes = workload.nodes / workload.environments

    def requests(block: Mapping[str, Any]) -> float:
        return sum(v for k, v in (block.get("billed_requests") or {}).items() if k.startswith("sqs "))

    lifetime = (path.get("run_lifetime_seconds") or {}).get("median") or 0.0
    in_flight = workload.running_runs / workload.environments + per_env_runs * lifetime
    return {
        "requests_per_second_per_queue": round(
            requests(path) * per_env_runs
            + requests(heartbeat) * per_env_beats
            + requests(measured["idle"]) * per_env_nodes,
            1,
        ),
        "in_flight_messages_per_queue": round(in_flight),
        "in_flight_limit": SQS_IN_FLIGHT_LIMIT,
        "share_of_in_flight_limit": round(in_flight / SQS_IN_FLIGHT_LIMIT, 4),
        "note": "standard queues have no documented request-rate limit; the limit that applies is in-flight "
        "messages (running runs hold theirs; short runs from their receipt to their delete, claimed to terminal as "
        "measured; the wait in the queue depends on how many nodes serve it and is not counted).",
    }


def bills(measured: Mapping[str, Any], prices: Mapping[str, Any]) -> dict[str, Any]:
    """Dollars per million short runs of each path, all-in (bench.derive.bill: the same lines as make bench)."""
    run_events = derive.run_events_default()
    out = {}
    for name, path in measured["paths"].items():
        requests = derive.requests_for_bill(path, name)
        out[name] = derive.bill(
            requests,
            gateway_log_bytes_per_request=requests["gateway_log_bytes_per_http_request"],
            prices=dict(prices),
            run_events=run_events,
        )
    return out


SQS_BATCH_ENTRIES = 10  # entries a ChangeMessageVisibilityBatch request carries at most


def running_hours_cost(
    measured: Mapping[str, Any], prices: Mapping[str, Any], workload: Workload = WORKLOAD
) -> dict[str, Any] | None:
    """Dollars per thousand run-hours of running (heartbeats at the workload's interval)."""
    heartbeat = measured.get("heartbeat")
    if not heartbeat:
        return None
    beats = 1000 * 3600 / workload.heartbeat_seconds
    # The measured beat is of one run alone on its node, so its ChangeMessageVisibilityBatch carried one entry; a
    # node with runs_per_node runs sends one per 10 of them (node_agent: one batch per 10 runs per beat).
    batch_share = math.ceil(workload.runs_per_node / SQS_BATCH_ENTRIES) / workload.runs_per_node
    sqs = sum(
        v * (batch_share if k == "sqs ChangeMessageVisibilityBatch" else 1.0)
        for k, v in heartbeat["billed_requests"].items()
        if k.startswith("sqs ")
    )
    # Per run and beat: the run's own writes, and its share of its node's record (one write per node per beat).
    write = heartbeat["write_units"] + heartbeat.get("node_write_units", 0.0) / workload.runs_per_node
    read = heartbeat["read_units"] + heartbeat.get("node_read_units", 0.0) / workload.runs_per_node
    lines = {
        "DynamoDB write request units": write * beats * prices["dynamodb_on_demand_per_million_wru"] / MILLION,
        "DynamoDB read request units": read * beats * prices["dynamodb_on_demand_per_million_rru"] / MILLION,
        "SQS requests": sqs * beats * prices["sqs_standard_per_million_requests"] / MILLION,
    }
    return {
        "beats_per_thousand_hours": beats,
        "per_beat": {
            "write_units": write,
            "read_units": read,
            "index_write_units": heartbeat["index_write_units"],
            "node_write_units_per_node": heartbeat.get("node_write_units", 0.0),
            "sqs_requests": sqs,
        },
        "lines": lines,
        "total": sum(lines.values()),
    }


def figures(measured: Mapping[str, Any], prices: Mapping[str, Any], workload: Workload = WORKLOAD) -> dict[str, Any]:
    """capacity.json's figures of one design."""
    partitions = scale(measured, workload)
    bill = bills(measured, prices)
    main = bill.get(workload.short_run_path) or next(iter(bill.values()))
    path = measured["paths"].get(workload.short_run_path) or next(iter(measured["paths"].values()))
    running = running_hours_cost(measured, prices, workload)
    return {
        "workload": {**asdict(workload), "nodes": workload.nodes},
        "partitions": partitions,
        "hottest_write_wcu_per_second": max((p["wcu_per_second"] for p in partitions), default=0.0),
        "hottest_read_rcu_per_second": max((p["rcu_per_second"] for p in partitions), default=0.0),
        "write_units_per_short_run": round(path["write_units"], 3),
        "write_units_per_short_run_by_path": {
            name: round(p["write_units"], 3) for name, p in measured["paths"].items()
        },
        "index_write_units_per_short_run": round(path["index_write_units"], 3),
        "read_units_per_short_run": round(path["read_units"], 3),
        "cost_per_million_short_runs": round(main["all_in_total"], 4),
        "cost_per_million_short_runs_by_path": {name: round(b["all_in_total"], 4) for name, b in bill.items()},
        "cost_per_thousand_running_hours": round(running["total"], 4) if running else None,
        "floor": derive.protocol_floor(
            dict(prices),
            config_bytes=workload.config_bytes,
            output_bytes=workload.output_bytes,
            heartbeat_seconds=workload.heartbeat_seconds,
        ),
        "sqs": sqs_at_workload(measured, workload),
        "bills": bill,
        "running_hours": running,
        "prices": {k: prices[k] for k in ("as_of", "source") if k in prices},
        "limits": {
            "partition_write_units_per_second": PARTITION_WRITE_LIMIT,
            "partition_read_units_per_second": PARTITION_READ_LIMIT,
        },
    }


# ---------------------------------------------------------------- capacity.json and CAPACITY.md


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write(out: Path, design: str, result: Mapping[str, Any], beside: Iterable[Path] = ()) -> dict[str, Any]:
    """capacity.json: this design's figures at the top level and under designs[design], every other design kept
    (from the file already there and from ``beside``); then CAPACITY.md."""
    path = out / "capacity.json"
    designs: dict[str, Any] = {}
    for source in [path, *beside]:
        if source.exists():
            designs.update(json.loads(source.read_text()).get("designs") or {})
    designs[design] = dict(result)
    document = {"design": design, **result, "designs": designs}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    (out / "CAPACITY.md").write_text(render(document))
    return document


def render(document: Mapping[str, Any]) -> str:
    from bench.capacity_report import render as render_markdown

    return render_markdown(document)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--design", default="today", help="the name of this checkout's table design (a column)")
    parser.add_argument(
        "--beside",
        type=Path,
        action="append",
        default=[],
        help="another checkout's capacity.json whose designs to show beside this one",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR)
    parser.add_argument("--state", type=Path, default=BENCH_DIR / ".state")
    parser.add_argument("--render", action="store_true", help="only write CAPACITY.md again from capacity.json")
    parser.add_argument("--measured", type=Path, help="scale a raw measurement saved before instead of measuring")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s capacity: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.render:
        document = json.loads((args.out / "capacity.json").read_text())
        (args.out / "CAPACITY.md").write_text(render(document))
        return 0
    prices = pricing.load_prices()
    if args.measured:
        measured = json.loads(args.measured.read_text())
    else:
        args.state.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="capacity-", dir=args.state))
        measured = measure(scratch, Mix())  # on failure the scratch (logs of every process) stays for a look
        shutil.rmtree(scratch / "stack", ignore_errors=True)
        (scratch / "measured.json").write_text(json.dumps(measured, indent=1, default=str))
        log.info("raw measurement in %s", scratch / "measured.json")
    result = {"commit": _commit(), **figures(measured, prices), "measurement": measured}
    document = write(args.out, args.design, result, args.beside)
    log.info(
        "wrote %s and %s (%.0f s measuring)",
        args.out / "capacity.json",
        args.out / "CAPACITY.md",
        measured.get("seconds", 0),
    )
    print(
        f"hottest partition: {document['hottest_write_wcu_per_second']:,.0f} WCU/s, "
        f"{document['hottest_read_rcu_per_second']:,.0f} RCU/s; {document['write_units_per_short_run']:.2f} WRU per "
        f"short run; ${document['cost_per_million_short_runs']:.2f} per million short runs; "
        f"${document['cost_per_thousand_running_hours'] or 0:.3f} per thousand running hours"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
