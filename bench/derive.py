"""From measurements to figures: the bill of a run, the warm-host projection, each figure beside its target.

Pure functions of the results dictionary that ``python -m bench`` builds (no processes, no AWS).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import pricing
from bench.stats import median, percentile, ratio

REPO = Path(__file__).resolve().parent.parent
# Lambda writes START, END and REPORT lines for every invocation, about this many bytes together.
LAMBDA_PLATFORM_LOG_BYTES = 350
# A run that succeeds on its first attempt enters Queued, Running and Succeeded: one event each.
STATE_CHANGES_PER_SHORT_RUN = 3
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
    from runly.resources import FUNCTIONS_MEMORY_MB

    memory = {"api": FUNCTIONS_MEMORY_MB, "authorizer": FUNCTIONS_MEMORY_MB}
    try:
        source = (REPO / "infrastructure" / "control_plane_api.py").read_text()
        if found := re.search(r"^AUTHORIZER_MEMORY_MB\s*=\s*(\d+)", source, re.MULTILINE):
            memory["authorizer"] = int(found.group(1))
    except OSError:
        pass
    return memory


def bill(requests: dict[str, Any], *, gateway_log_bytes_per_request: float, prices: dict[str, Any]) -> dict[str, Any]:
    """Dollars per million short runs, line by line, from the requests counted per run."""
    calls: dict[tuple[str, str], float] = defaultdict(float)
    for row in requests["calls_per_run"]:
        calls[(row["service"], row["operation"])] += row["per_run"]
    memory = function_memory()
    lambdas = [
        pricing.LambdaUse("API function (POST /runs)", 1, memory["api"], requests["api_function_ms"]["median"]),
        pricing.LambdaUse("authorizer", 1, memory["authorizer"], requests["authorizer_ms"]["median"]),
    ]
    measured = pricing.run_cost(
        calls=calls,
        read_units=requests["read_units_per_run"],
        write_units=requests["write_units_per_run"],
        lambdas=lambdas,
        api_requests=1,
        prices=prices,
    )
    estimated = pricing.deployed_only_cost(
        state_changes_per_run=STATE_CHANGES_PER_SHORT_RUN,
        log_bytes_per_invocation=LAMBDA_PLATFORM_LOG_BYTES + gateway_log_bytes_per_request / 2,
        invocations_per_run=2,
        prices=prices,
    )
    lines = [*measured, *estimated]
    return {
        "lines": [line.__dict__ for line in lines],
        "measured_total": pricing.total(lines, measured_only=True),
        "all_in_total": pricing.total(lines),
        "prices_as_of": prices.get("as_of"),
        "function_memory_mb": memory,
    }


def warm_host_projection(dispatch: dict[str, Any], profile: dict[str, Any], probe: dict[str, Any]) -> float | None:
    """Dispatch p50 if a warm host forked the job instead of a new interpreter starting: the measured
    median less the phases a warm host removes (spawn, interpreter start and imports, job setup), plus
    what the probe measured for fork -> first line (which includes the job setup)."""
    removed = [
        "spawn: spool, spec file, fork + exec",
        "job process: interpreter start + imports",
        "job process: spec, job class, config, job object",
    ]
    if dispatch.get("median") is None or probe.get("median") is None:
        return None
    saved = sum((profile.get(name) or {}).get("median") or 0.0 for name in removed)
    return float(dispatch["median"] - saved + probe["median"])


def warm_host_projection_samples(dispatch: dict[str, Any], probe: dict[str, Any]) -> list[float]:
    """Each dispatch sample with its package-ready -> first line replaced by the probe's median fork -> first
    line: the distribution figure 1b projects (for the chart)."""
    if probe.get("median") is None:
        return []
    pairs = zip(dispatch.get("samples", []), dispatch.get("ready_to_first_line", []), strict=True)
    return [
        latency - ready_to_first + probe["median"] for latency, ready_to_first in pairs if ready_to_first is not None
    ]


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return median(values) if values else None


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure with its median, p95, runs, the Celery figure and ratio where there is one, its target
    and whether it holds (None: not measured)."""
    f = results["figures"]
    celery = results.get("celery") or {}
    rows: list[dict[str, Any]] = []

    def row(name: str, value: Any, unit: str, target: str, holds: bool | None, **extra: Any) -> None:
        rows.append({"figure": name, "value": value, "unit": unit, "target": target, "pass": holds, **extra})

    dispatch = f.get("dispatch") or {}
    celery_dispatch = celery.get("dispatch") or {}
    dispatch_ratio = ratio(dispatch.get("median"), celery_dispatch.get("median"))
    row("1. Dispatch latency p50 (new interpreter per run)", dispatch.get("median"), "s",
        f"≤ {DISPATCH_RATIO:g}x Celery p50", None if dispatch_ratio is None else dispatch_ratio <= DISPATCH_RATIO,
        p95=dispatch.get("p95"), runs=dispatch.get("runs"), celery=celery_dispatch.get("median"),
        celery_p95=celery_dispatch.get("p95"), ratio=dispatch_ratio)  # fmt: skip
    projected = f.get("warm_host_projection")
    projected_samples = f.get("warm_host_projection_samples") or []
    warm_ratio = ratio(projected, celery_dispatch.get("median"))
    row("1b. Dispatch latency p50 with warm job hosts (projected, not built)", projected, "s",
        f"≤ {DISPATCH_RATIO_WARM:g}x Celery p50", None if warm_ratio is None else warm_ratio <= DISPATCH_RATIO_WARM,
        p95=percentile(projected_samples, 95) if projected_samples else None,
        runs=(f.get("warm_host_probe") or {}).get("n"), celery=celery_dispatch.get("median"),
        ratio=warm_ratio)  # fmt: skip

    throughput = f.get("throughput") or {}
    celery_throughput = celery.get("throughput") or {}
    for nodes, target in (("1", "≥ Celery, 1 worker"), ("2", "(no target; shown beside Celery, 2 workers)")):
        ours_runs = throughput.get(nodes) or []
        theirs = celery_throughput.get(nodes) or []
        value = _median_of(ours_runs, "runs_per_second")
        peer = _median_of(theirs, "runs_per_second")
        share = ratio(value, peer)
        holds = (share >= 1) if (nodes == "1" and share is not None) else None
        row(f"2. Throughput, {nodes} node(s), {ours_runs[0]['runs'] if ours_runs else '?'} runs", value, "runs/s",
            target, holds, runs=len(ours_runs), celery=peer, ratio=share,
            steady=_median_of(ours_runs, "steady_runs_per_second"),
            celery_steady=_median_of(theirs, "steady_runs_per_second"))  # fmt: skip

    checkpoints = (f.get("checkpoints") or {}).get("modes") or {}
    for name, mode in checkpoints.items():
        if not name.startswith("default"):
            continue
        overhead = mode.get("overhead")
        taken = (mode.get("checkpoints") or {}).get("median")
        # The SDK's last checkpoint (when the items end) is outside the timed part: with no other, the run ended
        # before the first interval and the difference from "none" is the machine's noise, not checkpoints.
        note = " (none fell inside this short run: the difference is noise)" if taken is not None and taken <= 1 else ""
        row(f"3. Checkpoint overhead, default interval (2 s), {mode.get('items', 100_000):,} no-op items", overhead,
            "fraction", f"≤ {CHECKPOINT_OVERHEAD:.0%}{note}",
            None if overhead is None else overhead <= CHECKPOINT_OVERHEAD,
            runs=(mode.get("items_per_second") or {}).get("n"))  # fmt: skip

    cost = f.get("cost") or {}
    measured_total = cost.get("measured_total")
    row("4. AWS cost per million short runs (API Gateway, Lambda, SQS, DynamoDB, S3; counted)", measured_total,
        "$", f"≤ ${DOLLARS_PER_MILLION:g}", None if measured_total is None else measured_total <= DOLLARS_PER_MILLION,
        runs=(f.get("requests") or {}).get("runs"))  # fmt: skip
    all_in = cost.get("all_in_total")
    row("4b. … plus run events and logs of the deployed stack (estimated)", all_in, "$",
        f"≤ ${DOLLARS_PER_MILLION:g}", None if all_in is None else all_in <= DOLLARS_PER_MILLION)  # fmt: skip

    cold = f.get("cold_start") or {}
    cold_total = (cold.get("cold_total") or {}).get("median")
    row("5. Package cold start (download, verify, install, start)", cold_total, "s", f"≤ {COLD_START_SECONDS:g} s",
        None if cold_total is None else cold_total <= COLD_START_SECONDS,
        p95=(cold.get("cold_total") or {}).get("p95"), runs=(cold.get("cold_total") or {}).get("n"))  # fmt: skip
    warm_package = (cold.get("warm_package") or {}).get("median")
    row("5b. Warm package: cache lookup per run", warm_package, "s", "nothing measurable (≤ 5 ms)",
        None if warm_package is None else warm_package <= WARM_NOTHING_MEASURABLE_SECONDS,
        p95=(cold.get("warm_package") or {}).get("p95"), runs=(cold.get("warm_package") or {}).get("n"))  # fmt: skip

    idle = f.get("idle") or {}
    per_minute = idle.get("requests_per_minute")
    row("6. Idle node: AWS requests per minute", per_minute, "req/min", f"≤ {IDLE_REQUESTS_PER_MINUTE:g}",
        None if per_minute is None else per_minute <= IDLE_REQUESTS_PER_MINUTE,
        runs=f"{idle.get('seconds', 0):.0f} s")  # fmt: skip
    rss = (idle.get("rss_mb") or {}).get("median")
    row("6b. Idle node: RSS", rss, "MB", f"≤ {IDLE_RSS_MB:g} MB", None if rss is None else rss <= IDLE_RSS_MB,
        p95=(idle.get("rss_mb") or {}).get("p95"), runs=(idle.get("rss_mb") or {}).get("n"))  # fmt: skip
    row("6c. Idle node: CPU", idle.get("cpu_percent"), "% of a core", "(no target)", None)

    recovery = f.get("recovery") or {}
    seconds = recovery.get("seconds") or {}
    bound = (recovery.get("lease_seconds") or 0) + (recovery.get("poll_wait_seconds") or 0)
    worst = seconds.get("max")
    row("7. Recovery: node SIGKILLed -> run running again elsewhere", seconds.get("median"), "s",
        f"≤ lease + one poll = {recovery.get('lease_seconds')} + {recovery.get('poll_wait_seconds')} = {bound} s",
        None if worst is None else worst <= bound, p95=seconds.get("p95"), runs=seconds.get("n"),
        items_repeated=(recovery.get("items_repeated") or {}).get("median"))  # fmt: skip
    return rows
