"""``python -m bench`` (``make bench``): every benchmark on the embedded stack, Celery beside it, the report.

    .venv/bin/python -m bench                 # the whole run: bench/results.json, REPORT.md, latency.png
    .venv/bin/python -m bench --quick         # every figure with few repetitions (developing the bench)
    .venv/bin/python -m bench --quick --only dispatch,checkpoints   # some sections (report in .state/<time>/)

The Celery side and the chart run in bench/.venv-celery (``make bench`` builds it); without it they are
skipped and the report says so.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import capacity, derive, function_cold_start, machine, pricing, report
from bench.ours import THROUGHPUT_NODES, THROUGHPUT_REPS, OurBench, Sizes, in_background

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CELERY_PYTHON = BENCH_DIR / ".venv-celery" / "bin" / "python"

log = logging.getLogger("bench")


class Budget:
    """The whole run's time budget: optional repetitions run only while they fit."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def allows(self, more: float, *, reserve: float = 60.0) -> bool:
        return self.elapsed + more + reserve <= self.seconds


def run_celery(
    endpoint: str, moto_pid: int, scratch: Path, sizes: Sizes, *, reps: int, tuned_only: bool = False
) -> dict[str, Any] | None:
    if not CELERY_PYTHON.exists():
        log.warning("no %s: the Celery baseline is skipped (make bench builds it)", CELERY_PYTHON)
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BENCH_COUNT_DIR")}
    command = [
        str(CELERY_PYTHON), "-m", "bench.peer_celery", "--endpoint", endpoint, "--scratch", str(scratch),
        "--dispatch", str(sizes.dispatch_runs), "--throughput", str(sizes.throughput_runs),
        "--throughput-more-workers", str(sizes.throughput_runs_two_nodes),
        "--workers", "1,2", "--reps", str(reps), "--moto-pid", str(moto_pid),
    ]  # fmt: skip
    if tuned_only:
        command.append("--tuned-only")
    result = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        log.error("the Celery baseline failed (exit %d); see %s", result.returncode, scratch)
        return None
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def draw_chart(results_path: Path, chart_path: Path) -> bool:
    if not CELERY_PYTHON.exists():
        return False
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BENCH_COUNT_DIR")}
    result = subprocess.run(
        [str(CELERY_PYTHON), "-m", "bench.chart", str(results_path), str(chart_path)], cwd=REPO, env=env, check=False
    )
    return result.returncode == 0


SECTIONS = (
    "dispatch", "dispatch_fresh", "batch", "cold_start", "checkpoints", "idle", "recovery", "celery", "throughput",
    "throughput_fresh", "client", "bill", "function_cold_start",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="few repetitions: for developing the bench, not quoting")
    parser.add_argument("--out", type=Path, help="where results.json, REPORT.md, latency.png go (default: bench/; "
                        "with --only, the run's scratch directory)")  # fmt: skip
    parser.add_argument("--state", type=Path, default=BENCH_DIR / ".state", help="scratch space (logs, counts)")
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument(
        "--only",
        metavar="SECTION[,SECTION...]",
        help=f"run these sections only (of {', '.join(SECTIONS)}); the report then shows what they measured",
    )
    parser.add_argument(
        "--merge-into",
        type=Path,
        metavar="RESULTS_JSON",
        help="with --only: also put what these sections measured into that results file (each figure stamped with "
        "this run's time, commit and load) and write REPORT.md beside it again",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only write REPORT.md and the chart again from a results file",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the bench's own
    if args.render:
        publish(json.loads(args.render.read_text()), args.out or BENCH_DIR)
        return 0
    selected = set(SECTIONS)
    if args.only:
        selected = {name.strip() for name in args.only.split(",") if name.strip()}
        if unknown := selected - set(SECTIONS):
            parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    if args.no_celery:
        selected.discard("celery")

    sizes = Sizes.quick() if args.quick else Sizes()
    budget = Budget(args.budget_minutes * 60)
    # Only the latest run's scratch space is kept (logs, counts, package environments: tens of MB each).
    if args.state.exists():
        for old in args.state.iterdir():
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    state = (args.state / time.strftime("%Y%m%d-%H%M%S")).resolve()
    state.mkdir(parents=True)
    out = args.out or (state if args.only else BENCH_DIR)
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine.describe(),
            "load_average_at_start": machine.load_average(),
            "quick": args.quick,
            "only": sorted(selected) if args.only else None,
            "sizes": sizes.__dict__,
            "state_dir": str(state),
            "commands": [
                "make bench",
                f"{sys.executable} -m bench"
                + (" --quick" if args.quick else "")
                + (f" --only {args.only}" if args.only else ""),
                f"{CELERY_PYTHON} -m bench.peer_celery --endpoint <moto> ...",
            ],
        },
        "figures": {},
    }
    figures = results["figures"]
    errors: dict[str, str] = {}
    results["errors"] = errors

    step_seconds: dict[str, float] = {}
    results["meta"]["step_seconds"] = step_seconds

    def step(name: str, measure: Callable[[], Any], *, figure: str | None = None, timed: str | None = None) -> Any:
        """One benchmark (its result kept as figures[figure] if given); a failure is recorded in the results
        and the others still run. Its time adds to step_seconds[timed or figure or name]."""
        began = time.monotonic()
        try:
            value = measure()
        except Exception as exc:
            log.exception("%s failed", name)
            errors[name] = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            key = timed or name
            step_seconds[key] = step_seconds.get(key, 0.0) + time.monotonic() - began
        if figure and value is not None:
            figures[figure] = value
        return value

    if "function_cold_start" in selected:
        # First, before the stack and its agents load the machine: fresh interpreters against a moto of its own.
        log.info("10. Lambda cold starts: each function's import and first invocation, fresh interpreters")
        reps = 3 if args.quick else function_cold_start.REPS
        step("Lambda cold starts", functools.partial(function_cold_start.measure, reps, state / "function_cold_start"),
             figure="function_cold_start")  # fmt: skip
    bench = OurBench(state, sizes)
    try:
        began = time.monotonic()
        bench.start()
        idle_started = in_background(bench.start_idle_sampling)
        results["meta"]["setup_seconds"] = bench.pack_and_push(cold="cold_start" in selected)
        idle_started()
        step_seconds["setup (stack, pack, push)"] = time.monotonic() - began
        # First, while the table is small: moto's DynamoDB transaction (a checkpoint's write) copies the whole table.
        if "checkpoints" in selected:
            log.info("3. checkpoint overhead")
            step("checkpoints", bench.checkpoints, figure="checkpoints")
        if "dispatch" in selected:
            log.info("1. dispatch latency, warm job hosts: %d sequential runs", sizes.dispatch_runs)
            if step("dispatch, warm job hosts", bench.dispatch, figure="dispatch"):
                log.info("dispatch p50 %.3f s, p95 %.3f s", figures["dispatch"]["median"], figures["dispatch"]["p95"])
                step("dispatch profile", bench.dispatch_profile, figure="dispatch_profile", timed="profiles")
        if "dispatch_fresh" in selected:
            log.info("1b. dispatch latency, a new interpreter per run: %d sequential runs", sizes.dispatch_fresh_runs)
            measured = step("dispatch, new interpreter per run", functools.partial(bench.dispatch, fresh=True),
                            figure="dispatch_fresh")  # fmt: skip
            if measured:
                log.info("dispatch (fresh) p50 %.3f s, p95 %.3f s", measured["median"], measured["p95"])
                step("dispatch profile (fresh)", functools.partial(bench.dispatch_profile, fresh=True),
                     figure="dispatch_profile_fresh", timed="profiles")  # fmt: skip
                step("imports", bench.import_profile, figure="imports", timed="profiles")
        if "batch" in selected:
            log.info("4b. the batch path: %d runs, POST /runs/batch", sizes.batch_runs)
            step("batch path", bench.batch_path, figure="batch")
        if "cold_start" in selected:
            log.info("5. package cold start")
            step("cold start", bench.cold_start, figure="cold_start")
        log.info("6. idle node (sampled since the start, on an agent of its own)")
        step("idle: the rest of its window", functools.partial(bench.finish_idle, wait="idle" in selected))
        if "recovery" in selected:
            log.info("7. recovery")
            step("recovery", bench.recovery, figure="recovery")
        moto = bench.moto_pid()
        if "celery" in selected:
            log.info("8. Celery on SQS (same moto server)")
            results["celery"] = step(
                "Celery: dispatch and throughput",
                functools.partial(run_celery, bench.stack.endpoint, moto, state / "celery", sizes, reps=1),
            )
        if "throughput" in selected:
            log.info("2. throughput, warm job hosts")
            throughput: dict[str, list[dict[str, Any]]] = {str(nodes): [] for nodes in THROUGHPUT_NODES}
            figures["throughput"] = throughput
            per_rep = 0.0
            # The fresh-interpreter measurement below must still fit: extra repetitions only before it.
            reserve = 60.0 + (sizes.fresh_throughput_runs / 3.0 if "throughput_fresh" in selected else 0.0)
            for rep in range(1, THROUGHPUT_REPS + 1):
                if rep > sizes.throughput_reps and (args.quick or not budget.allows(per_rep, reserve=reserve)):
                    break
                began = time.monotonic()
                for nodes in THROUGHPUT_NODES:
                    measured = step(f"throughput, {nodes} node(s)", functools.partial(bench.throughput, nodes, rep))
                    if measured:
                        throughput[str(nodes)].append(measured)
                        log.info("throughput, %d node(s): %.2f runs/s", nodes, measured["runs_per_second"] or 0)
                per_rep = time.monotonic() - began
        if "throughput_fresh" in selected:
            log.info("2b. throughput, a new interpreter per run: %d runs", sizes.fresh_throughput_runs)
            measured = step("throughput, 1 node, new interpreter per run",
                            functools.partial(bench.throughput, 1, 1, fresh=True))  # fmt: skip
            if measured:
                figures["throughput_fresh"] = {"1": [measured]}
                log.info("throughput (fresh), 1 node: %.2f runs/s", measured["runs_per_second"] or 0)
        if "client" in selected:
            log.info("9. the API client: %d sequential enqueues, keep-alive vs a new connection per request",
                     sizes.client_enqueues)  # fmt: skip
            step("client: keep-alive vs a new connection", bench.client_connections, figure="client")
        if results.get("celery") and budget.allows(150):
            log.info("8b. Celery with polling_interval 0 (a tuned setting, for reference)")
            tuned = step(
                "Celery: throughput with polling_interval 0",
                functools.partial(
                    run_celery, bench.stack.endpoint, moto, state / "celery-tuned", sizes, reps=1, tuned_only=True
                ),
            )
            if tuned and tuned.get("tuned_throughput"):
                results["celery"]["tuned_throughput"] = tuned["tuned_throughput"]
    finally:
        bench.stop()
    if "bill" in selected:
        # On a stack of its own behind the recording proxy (bench.recorder: index writes, item images), so that the
        # proxy's time is in no other figure: the short runs of both paths, counted as make capacity counts them.
        log.info("4c. the bill: short runs behind the recording proxy (the counting of make capacity)")
        mix = capacity.Mix.quick_bill() if args.quick else capacity.Mix.short_only()
        step("bill", functools.partial(capacity.measure, state / "bill", mix), figure="bill")
    results["meta"]["load_average_at_end"] = machine.load_average()
    results["meta"]["seconds"] = budget.elapsed
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    log.info("4. AWS requests per run; 6. idle node requests")
    step("idle", bench.idle, figure="idle", timed="counting")
    if "single" in bench.windows:
        step("requests", functools.partial(bench.requests_per_run, "single"), figure="requests", timed="counting")
    if "batch" in bench.windows:
        step("requests (batch path)", functools.partial(bench.requests_per_run, "batch"), figure="requests_batch",
             timed="counting")  # fmt: skip

    publish(results, out)
    if args.merge_into:
        merge_into(args.merge_into, results, selected)
    return 0


def merge_into(target: Path, results: dict[str, Any], sections: set[str]) -> None:
    """Put the figures of ``sections`` (the figure named after each) from ``results`` into the results file
    ``target``, each stamped with the run that measured it, and render that file's report again (its chart stays
    as it was). Figures every run takes (the idle window, say) are not merged: this run's would be partial."""
    merged = json.loads(target.read_text())
    meta = results["meta"]
    stamp = {
        "started": meta["started"],
        "commit": meta["machine"].get("commit"),
        "command": meta["commands"][1].replace(sys.executable, os.path.relpath(sys.executable, REPO)),
        "load_average": round((meta.get("load_average_at_start") or [0.0])[0], 1),
    }
    for name, value in results["figures"].items():
        if name in sections:
            merged["figures"][name] = {**value, "measured": stamp} if isinstance(value, dict) else value
    publish(merged, target.parent, chart=False)


def publish(results: dict[str, Any], out: Path, *, chart: bool = True) -> None:
    """The derived figures (the bill of each path, each figure vs its target), then results.json, the chart
    and REPORT.md in ``out``."""
    figures = results["figures"]
    run_events = derive.run_events_default()
    prices = pricing.load_prices()
    billed = (figures.get("bill") or {}).get("paths") or {}
    for requests, cost, path in (
        ("requests", "cost", "POST /runs"),
        ("requests_batch", "cost_batch", "POST /runs/batch"),
    ):
        counted = derive.billed_requests(figures.get(requests), billed.get(path), path)
        if counted is not None:
            figures[cost] = derive.bill(
                counted,
                gateway_log_bytes_per_request=counted.get("gateway_log_bytes_per_http_request", 0.0),
                prices=prices,
                run_events=run_events,
            )
    # The floor for the sizes the bill's runs had (the bench's own runs: a config and an output of a few bytes).
    measured = figures.get("bill") or {}
    figures["cost_floor"] = derive.protocol_floor(
        prices, config_bytes=measured.get("config_bytes", 0), output_bytes=measured.get("output_bytes", 0),
        heartbeat_seconds=capacity.WORKLOAD.heartbeat_seconds,
    )  # fmt: skip
    results["summary"] = derive.figures(results)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if chart:
        chart_path = out / "latency.png"
        results["meta"]["chart"] = chart_path.name if draw_chart(results_path, chart_path) else None
        results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "REPORT.md").write_text(report.render(results))
    log.info("wrote %s and %s", results_path, out / "REPORT.md")
    print(report.summary_table(results["summary"]))


if __name__ == "__main__":
    sys.exit(main())
