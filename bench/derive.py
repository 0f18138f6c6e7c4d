"""From measurements to figures: the bill of a run, each figure beside its target.

Pure functions of the results dictionary that ``python -m bench`` builds (no processes, no AWS), apart from
reading the stack's own settings (memory of the functions, the default of run events) from the source tree.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import pricing
from bench.function_cold_start import summary_rows
from bench.stats import median, ratio

REPO = Path(__file__).resolve().parent.parent
# Lambda writes START, END and REPORT lines for every invocation, about this many bytes together.
LAMBDA_PLATFORM_LOG_BYTES = 350
# EventBridge events a short run (Queued -> Running -> Succeeded, first attempt) causes, per run_events setting.
EVENTS_PER_SHORT_RUN = {"all": 3, "terminal": 1, "off": 0}
IDLE_REQUESTS_PER_MINUTE = 3.0
IDLE_RSS_MB = 60.0
COLD_START_SECONDS = 2.0
WARM_NOTHING_MEASURABLE_SECONDS = 0.005
CHECKPOINT_OVERHEAD = 0.05
DOLLARS_PER_MILLION = 3.0
DISPATCH_RATIO = 3.0
DISPATCH_RATIO_WARM = 1.5


def function_memory() -> dict[str, int]:
    """Memory of the API function and the authorizer, as the CDK stack configures them."""
    from runly_core.resources import FUNCTIONS_MEMORY_MB

    memory = {"api": FUNCTIONS_MEMORY_MB, "authorizer": FUNCTIONS_MEMORY_MB}
    try:
        source = (REPO / "infrastructure" / "control_plane_api.py").read_text()
        if found := re.search(r"^AUTHORIZER_MEMORY_MB\s*=\s*(\d+)", source, re.MULTILINE):
            memory["authorizer"] = int(found.group(1))
    except OSError:
        pass
    return memory


def run_events_default() -> str:
    """The stack's default ``run_events`` stage setting (StageSettings in infrastructure/settings.py): which
    run state changes reach EventBridge. Read from the source, not imported (that would load the CDK); a stack
    without the setting publishes every state a run enters ("all")."""
    tree = ast.parse((REPO / "infrastructure" / "settings.py").read_text())
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and node.name == "StageSettings"):
            continue
        for statement in node.body:
            target = getattr(statement, "target", None)
            if isinstance(statement, ast.AnnAssign) and isinstance(target, ast.Name) and target.id == "run_events":
                value = statement.value
                if isinstance(value, ast.Call):  # Field(default=...) or Field("...")
                    given = [k.value for k in value.keywords if k.arg == "default"] + list(value.args[:1])
                    value = given[0] if given else None
                if isinstance(value, ast.Constant) and value.value in EVENTS_PER_SHORT_RUN:
                    return str(value.value)
                if isinstance(value, ast.Attribute) and value.attr.lower() in EVENTS_PER_SHORT_RUN:  # an enum member
                    return value.attr.lower()
                raise ValueError(f"cannot read the default of run_events: {ast.unparse(statement)}")
    return "all"


def bill(
    requests: dict[str, Any],
    *,
    gateway_log_bytes_per_request: float,
    prices: dict[str, Any],
    run_events: str = "all",
) -> dict[str, Any]:
    """Dollars per million short runs, line by line, from the requests counted per run. ``requests`` may
    come from runs enqueued several to an HTTP request (POST /runs/batch): API Gateway requests and Lambda
    invocations per run are then ``http_requests_per_run`` (1 for POST /runs)."""
    calls: dict[tuple[str, str], float] = defaultdict(float)
    for row in requests["calls_per_run"]:
        calls[(row["service"], row["operation"])] += row["per_run"]
    memory = function_memory()
    per_run = float(requests.get("http_requests_per_run", 1.0))
    endpoint = requests.get("path", "POST /runs")
    lambdas = [
        pricing.LambdaUse(f"API function ({endpoint})", per_run, memory["api"], requests["api_function_ms"]["median"]),
        pricing.LambdaUse("authorizer", per_run, memory["authorizer"], requests["authorizer_ms"]["median"]),
    ]
    measured = pricing.run_cost(
        calls=calls,
        read_units=requests["read_units_per_run"],
        write_units=requests["write_units_per_run"],
        lambdas=lambdas,
        api_requests=per_run,
        prices=prices,
    )
    estimated = pricing.deployed_only_cost(
        state_changes_per_run=EVENTS_PER_SHORT_RUN[run_events],
        log_bytes_per_invocation=LAMBDA_PLATFORM_LOG_BYTES + gateway_log_bytes_per_request / 2,
        invocations_per_run=2 * per_run,
        prices=prices,
    )
    lines = [*measured, *estimated]
    return {
        "path": endpoint,
        "runs_per_http_request": 1 / per_run,
        "run_events": run_events,
        "events_per_run": EVENTS_PER_SHORT_RUN[run_events],
        "lines": [line.__dict__ for line in lines],
        "measured_total": pricing.total(lines, measured_only=True),
        "all_in_total": pricing.total(lines),
        "prices_as_of": prices.get("as_of"),
        "function_memory_mb": memory,
        "counting": requests.get("counting", "hook, base table only"),
        "write_units_per_run": requests["write_units_per_run"],
        "read_units_per_run": requests["read_units_per_run"],
        "index_write_units_per_run": requests.get("index_write_units_per_run"),
        "hook_write_units_per_run": requests.get("hook_write_units_per_run"),
    }


def requests_for_bill(path: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A path's measurement by the recorder (bench.capacity.measure) in the shape :func:`bill` reads."""
    rows = []
    for key, per_run in (path.get("billed_requests") or {}).items():
        service, operation = key.split(" ", 1)
        if service != "dynamodb":  # DynamoDB is billed by its units, given apart
            rows.append({"role": "all", "service": service, "operation": operation, "item": "", "per_run": per_run})
    return {
        "path": name,
        "runs": path["runs"],
        "http_requests_per_run": path["http_requests"] / path["runs"],
        "calls_per_run": rows,
        "read_units_per_run": path["read_units"],
        "write_units_per_run": path["write_units"],
        "index_write_units_per_run": path["index_write_units"],
        "authorizer_ms": path["authorizer_ms"],
        "api_function_ms": path["api_function_ms"],
        "gateway_log_bytes_per_http_request": path["gateway_log_bytes_per_http_request"],
    }


def billed_requests(hooked: dict[str, Any] | None, recorded: dict[str, Any] | None, path: str) -> dict[str, Any] | None:
    """What a path's bill is computed from: the recorder's measurement (bench.recorder: every DynamoDB index write,
    the item images before and after each write, SQS per 64 KB chunk; the counting of make capacity) where the run
    has one, with the Lambda durations and log bytes of the hook's own window (no proxy in its path); else the
    hook's counts alone, base-table units only (which undercount: no index writes, sizes as the calls carried them).
    """
    if recorded:
        counted = requests_for_bill(recorded, path)
        counted["counting"] = "recorder"
        if hooked:
            for key in ("authorizer_ms", "api_function_ms"):
                if (hooked.get(key) or {}).get("median") is not None:
                    counted[key] = hooked[key]
            if hooked.get("gateway_log_bytes_per_http_request") is not None:
                counted["gateway_log_bytes_per_http_request"] = hooked["gateway_log_bytes_per_http_request"]
            counted["hook_write_units_per_run"] = hooked.get("write_units_per_run")
            counted["hook_read_units_per_run"] = hooked.get("read_units_per_run")
        return counted
    if hooked:
        return {**hooked, "counting": "hook, base table only"}
    return None


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return median(values) if values else None


def _holds(value: float | None, check: Any) -> bool | None:
    return None if value is None else bool(check(value))


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+.1%}"


def _span(interval: list[float | None] | None) -> str:
    if not interval or interval[0] is None or interval[1] is None:
        return "?"
    return f"{interval[0]:+.1%} to {interval[1]:+.1%}"


def steadier_overhead(mode: dict[str, Any]) -> tuple[str, float | None, list[float | None] | None]:
    """The overhead figure 3 judges, chosen before any run: the extra CPU time of the job process (what
    checkpointing costs the node, and less moved by other work on a shared machine than wall time), or the
    loss of items/s when no CPU time was measured. Both are shown."""
    if mode.get("cpu_overhead") is not None:
        return "extra CPU time", mode["cpu_overhead"], mode.get("cpu_overhead_interval")
    return "loss of items/s", mode.get("overhead"), mode.get("overhead_interval")


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure with its median, p95, runs, the Celery figure and ratio where there is one, its target
    and whether it holds (None: not measured)."""
    f = results["figures"]
    celery = results.get("celery") or {}
    rows: list[dict[str, Any]] = []

    def row(name: str, value: Any, unit: str, target: str, holds: bool | None, **extra: Any) -> None:
        rows.append({"figure": name, "value": value, "unit": unit, "target": target, "pass": holds, **extra})

    celery_dispatch = celery.get("dispatch") or {}
    for key, name, bound in (
        ("dispatch", "1. Dispatch latency p50, warm job hosts (the default)", DISPATCH_RATIO_WARM),
        ("dispatch_fresh", "1b. Dispatch latency p50, new interpreter per run (RUNLY_WARM_HOSTS=false)",
         DISPATCH_RATIO),
    ):  # fmt: skip
        dispatch = f.get(key) or {}
        share = ratio(dispatch.get("median"), celery_dispatch.get("median"))
        row(name, dispatch.get("median"), "s", f"≤ {bound:g}x Celery p50", _holds(share, lambda v, b=bound: v <= b),
            p95=dispatch.get("p95"), runs=dispatch.get("runs"), celery=celery_dispatch.get("median"),
            celery_p95=celery_dispatch.get("p95"), ratio=share)  # fmt: skip

    celery_throughput = celery.get("throughput") or {}
    for key, nodes, mode, target in (
        ("throughput", "1", "warm job hosts", "≥ Celery, 1 worker"),
        ("throughput", "2", "warm job hosts", "(no target; shown beside Celery, 2 workers)"),
        ("throughput_fresh", "1", "new interpreter per run", "≥ Celery, 1 worker"),
    ):
        ours_runs = (f.get(key) or {}).get(nodes) or []
        peer = _median_of(celery_throughput.get(nodes) or [], "runs_per_second")
        value = _median_of(ours_runs, "runs_per_second")
        share = ratio(value, peer)
        runs = ours_runs[0]["runs"] if ours_runs else None
        number = "2b" if key == "throughput_fresh" else "2"
        row(f"{number}. Throughput, {nodes} node{'s' if nodes != '1' else ''}, {mode}, {runs or '?'} runs", value,
            "runs/s", target, _holds(share, lambda v: v >= 1) if target.startswith("≥") else None,
            runs=len(ours_runs), celery=peer, ratio=share,
            steady=_median_of(ours_runs, "steady_runs_per_second"))  # fmt: skip

    checkpoints = f.get("checkpoints") or {}
    modes = checkpoints.get("modes") or {}
    items = checkpoints.get("items", 100_000)
    default = modes.get("default (every 2 s)")
    if default:
        base = modes["none"]
        inside = (default.get("checkpoints_inside") or {}).get("median") or 0
        without, with_ = base["items_per_second"]["median"], default["items_per_second"]["median"]
        measure, value, interval = steadier_overhead(default)
        note = f"{inside:g} checkpoints fell inside" if inside else "no checkpoint fell inside: the difference is noise"
        row(f"3. Checkpoint overhead: {items:,} no-op items, default checkpointing (2 s) vs none (items/s "
            f"{with_:,.0f} with, {without:,.0f} without: {_signed(default.get('overhead'))} "
            f"[{_span(default.get('overhead_interval'))}]; CPU {_signed(default.get('cpu_overhead'))} "
            f"[{_span(default.get('cpu_overhead_interval'))}]; {note}; judged on the {measure})",
            value, "fraction", f"≤ {CHECKPOINT_OVERHEAD:.0%}", _holds(value, lambda v: v <= CHECKPOINT_OVERHEAD),
            runs=(default.get("items_per_second") or {}).get("n"), interval=interval, measure=measure)  # fmt: skip
    long_items = checkpoints.get("long_items", 0)
    long_default = modes.get(f"default (every 2 s), {long_items:,} items")
    if long_default:
        inside = (long_default.get("checkpoints_inside") or {}).get("median") or 0
        row(f"3b. Checkpoint overhead: {long_items:,} no-op items, default checkpointing vs none, {inside:g} "
            f"checkpoint(s) inside (measured directly; for reference: few runs, noisy)", long_default.get("overhead"),
            "fraction", f"(≤ {CHECKPOINT_OVERHEAD:.0%}; see 3c)", None,
            runs=(long_default.get("items_per_second") or {}).get("n"))  # fmt: skip
    reporter_cpu = (checkpoints.get("per_checkpoint") or {}).get("reporter_cpu") or {}
    if reporter_cpu.get("median") is not None:
        from runly.job import Job

        every = Job.checkpoint_interval
        share = reporter_cpu["median"] / every
        row(f"3c. Checkpoint overhead when checkpoints fall inside, default interval: CPU per checkpoint "
            f"{reporter_cpu['median'] * 1000:.2f} ms ÷ {every:g} s", share, "fraction",
            f"≤ {CHECKPOINT_OVERHEAD:.0%}", _holds(share, lambda v: v <= CHECKPOINT_OVERHEAD),
            runs=reporter_cpu.get("n"))  # fmt: skip

    for key, label in (("cost", "one POST /runs per run"), ("cost_batch", "POST /runs/batch")):
        cost = f.get(key) or {}
        if not cost:
            continue
        all_in = cost.get("all_in_total")
        per_request = cost.get("runs_per_http_request") or 1
        path = label if key == "cost" else f"{label}, {per_request:.0f} runs a request"
        floor = (((f.get("cost_floor") or {}).get("short_run") or {}).get("dynamodb_and_sqs_per_million") or {}).get(
            cost.get("path")
        )
        floor_text = f"; the protocol's floor ${floor:.2f} in DynamoDB + SQS" if floor is not None else ""
        counting = "" if cost.get("counting") == "recorder" else "; base-table units only: undercounts"
        row(f"4{'' if key == 'cost' else 'b'}. AWS cost per million short runs, {path}, all-in (counted "
            f"${cost.get('measured_total', 0):.2f} + estimated ${all_in - cost.get('measured_total', 0):.2f}"
            f"{floor_text}{counting})",
            all_in, "$", f"≤ ${DOLLARS_PER_MILLION:g}", _holds(all_in, lambda v: v <= DOLLARS_PER_MILLION),
            runs=(f.get("requests" if key == "cost" else "requests_batch") or {}).get("runs"))  # fmt: skip

    cold = f.get("cold_start") or {}
    cold_total = (cold.get("cold_total") or {}).get("median")
    row("5. Package cold start (download, verify, install, start)", cold_total, "s", f"≤ {COLD_START_SECONDS:g} s",
        _holds(cold_total, lambda v: v <= COLD_START_SECONDS),
        p95=(cold.get("cold_total") or {}).get("p95"), runs=(cold.get("cold_total") or {}).get("n"))  # fmt: skip
    warm_package = (cold.get("warm_package") or {}).get("median")
    row("5b. Warm package: cache lookup per run", warm_package, "s", "nothing measurable (≤ 5 ms)",
        _holds(warm_package, lambda v: v <= WARM_NOTHING_MEASURABLE_SECONDS),
        p95=(cold.get("warm_package") or {}).get("p95"), runs=(cold.get("warm_package") or {}).get("n"))  # fmt: skip

    idle = f.get("idle") or {}
    per_minute = idle.get("requests_per_minute")
    target = f"≤ {IDLE_REQUESTS_PER_MINUTE:g}"
    within = lambda v: v <= IDLE_REQUESTS_PER_MINUTE  # noqa: E731 - one check, three rows
    row(f"6. Idle node: AWS requests per minute, {idle.get('seconds', 0):.0f} s window", per_minute,
        "req/min", target, _holds(per_minute, within), runs=f"{idle.get('seconds', 0):.0f} s")  # fmt: skip
    whole = idle.get("whole_run") or {}
    if whole:
        row(f"6a. Idle node: AWS requests per minute over the whole run ({whole['seconds'] / 60:.1f} min)",
            whole["requests_per_minute"], "req/min", target, _holds(whole["requests_per_minute"], within),
            runs=f"{whole['seconds']:.0f} s")  # fmt: skip
    schedule = idle.get("schedule") or {}
    if schedule:
        row(f"6b. Idle node: steady state from the agent's schedule ({schedule['polls_per_minute']:g} long polls + "
            f"{schedule['node_writes_per_minute']:.2g} node writes a minute)", schedule["requests_per_minute"],
            "req/min", target, _holds(schedule["requests_per_minute"], within))  # fmt: skip
    rss = (idle.get("rss_mb") or {}).get("median")
    row("6c. Idle node: RSS of the agent", rss, "MB", f"≤ {IDLE_RSS_MB:g} MB", _holds(rss, lambda v: v <= IDLE_RSS_MB),
        p95=(idle.get("rss_mb") or {}).get("p95"), runs=(idle.get("rss_mb") or {}).get("n"))  # fmt: skip
    row("6d. Idle node: CPU", idle.get("cpu_percent"), "% of a core", "(no target)", None)
    host = (f.get("dispatch") or {}).get("warm_host") or {}
    if host:
        row("6e. One warm job host, after the dispatch runs: RSS (informational)", host.get("rss_mb"), "MB",
            f"(no target; PSS {host.get('pss_mb') or 0:.1f} MB)", None)  # fmt: skip

    recovery = f.get("recovery") or {}
    seconds = recovery.get("seconds") or {}
    lease, poll = recovery.get("lease_seconds"), recovery.get("poll_wait_seconds")
    bound = (lease or 0) + (poll or 0)
    worst = seconds.get("max")
    row("7. Recovery: node SIGKILLed -> run running again elsewhere", seconds.get("median"), "s",
        f"≤ lease + one poll = {lease} + {poll} = {bound} s" if recovery else "≤ lease + one poll",
        _holds(worst, lambda v: v <= bound), p95=seconds.get("p95"), runs=seconds.get("n"),
        items_repeated=(recovery.get("items_repeated") or {}).get("median"))  # fmt: skip

    client = (f.get("client") or {}).get("modes") or {}
    for mode in ("keep-alive", "new connection per request"):
        latency = (client.get(mode) or {}).get("latency") or {}
        if latency:
            row(f"9. Enqueue through RunlyClient, {mode} (sequential, the client's latency)", latency.get("median"),
                "s", "(no target; the two side by side)", None, p95=latency.get("p95"),
                runs=latency.get("n"))  # fmt: skip
    rows += summary_rows(f)
    return rows


# The fewest bytes a run's item holds beside its config or output: keys, job, state, times, attempt, lease owner.
FLOOR_RUN_ITEM_BYTES = 200
FLOOR_RECEIVE_BATCH = 10  # messages per ReceiveMessage, DeleteMessageBatch and ChangeMessageVisibilityBatch
FLOOR_ENQUEUE_BATCH = 100  # runs per POST /runs/batch; SQS sends them 10 to a SendMessageBatch


def protocol_floor(prices: dict[str, Any], *, config_bytes: int, output_bytes: int, heartbeat_seconds: float
                   ) -> dict[str, Any]:  # fmt: skip
    """What a durable, fenced run cannot do without, and what that costs (the floor beside the measured bill).

    A short run: three writes of its own item (created with its config before the API answers; claimed with a
    conditional lease write; completed with its output, conditional on the lease), one write of one small index
    entry (KEYS_ONLY) so the environment's runs can be listed, and its message sent, received and deleted, each in
    batches of 10 (SQS's most). Reads: none (the claim's write returns the run). A running run: per beat one
    conditional lease write of an item of at most 1 KB (no index key moves) and a tenth of a
    ChangeMessageVisibilityBatch. Not counted: API Gateway and Lambda (per HTTP request, 1/100 of a run on the batch
    path), the authorizer's key read, run events, logs; those are in the measured bill."""
    from bench.billing import write_units

    writes = {
        "create (run item with its config)": write_units(config_bytes + FLOOR_RUN_ITEM_BYTES),
        "claim (conditional lease write)": write_units(FLOOR_RUN_ITEM_BYTES),
        "complete (conditional, with its output)": write_units(output_bytes + FLOOR_RUN_ITEM_BYTES),
        "one listing index entry (KEYS_ONLY)": write_units(FLOOR_RUN_ITEM_BYTES),
    }
    sqs = {
        "POST /runs/batch": 3 / FLOOR_RECEIVE_BATCH,  # send, receive, delete: a tenth of a batch each
        "POST /runs": 1 + 2 / FLOOR_RECEIVE_BATCH,  # one SendMessage per request
    }
    wru = prices["dynamodb_on_demand_per_million_wru"]
    sqs_price = prices["sqs_standard_per_million_requests"]
    total_writes = sum(writes.values())
    beat_writes = write_units(FLOOR_RUN_ITEM_BYTES)
    beat_sqs = 1 / FLOOR_RECEIVE_BATCH
    beats = 1000 * 3600 / heartbeat_seconds
    return {
        "short_run": {
            "write_units": total_writes,
            "writes": writes,
            "read_units": 0.0,
            "sqs_requests": sqs,
            "dynamodb_and_sqs_per_million": {
                path: round(total_writes * wru + requests * sqs_price, 4) for path, requests in sqs.items()
            },
        },
        "running": {
            "write_units_per_beat": beat_writes,
            "sqs_requests_per_beat": beat_sqs,
            "per_thousand_running_hours": round(beats * (beat_writes * wru + beat_sqs * sqs_price) / 1_000_000, 4),
        },
        "counted": "DynamoDB write units and SQS requests only (API Gateway, Lambda, run events and logs are not)",
        "config_bytes": config_bytes,
        "output_bytes": output_bytes,
    }
