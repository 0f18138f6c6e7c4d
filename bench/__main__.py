"""``python -m bench`` (``make bench``): every benchmark on the embedded stack, Celery beside it, the report.

    .venv/bin/python -m bench                 # the whole run: bench/results.json, REPORT.md, latency.png
    .venv/bin/python -m bench --quick         # every figure with few repetitions (developing the bench)

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

from bench import derive, machine, pricing, report
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="few repetitions: for developing the bench, not quoting")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where results.json, REPORT.md, latency.png go")
    parser.add_argument("--state", type=Path, default=BENCH_DIR / ".state", help="scratch space (logs, counts)")
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only write REPORT.md and the chart again from a results file",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", stream=sys.stderr)
    if args.render:
        publish(json.loads(args.render.read_text()), args.out)
        return 0

    sizes = Sizes.quick() if args.quick else Sizes()
    budget = Budget(args.budget_minutes * 60)
    # Only the latest run's scratch space is kept (logs, counts, package environments: tens of MB each).
    if args.state.exists():
        for old in args.state.iterdir():
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    state = (args.state / time.strftime("%Y%m%d-%H%M%S")).resolve()
    state.mkdir(parents=True)
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine.describe(),
            "load_average_at_start": machine.load_average(),
            "quick": args.quick,
            "sizes": sizes.__dict__,
            "state_dir": str(state),
            "commands": [
                "make bench",
                f"{sys.executable} -m bench" + (" --quick" if args.quick else ""),
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

    def step(name: str, measure: Callable[[], Any], *, figure: bool = True) -> Any:
        """One benchmark (its result kept as figures[name] if ``figure``); a failure is recorded in the
        results and the others still run."""
        began = time.monotonic()
        try:
            value = measure()
        except Exception as exc:
            log.exception("%s failed", name)
            errors[name] = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            step_seconds[name] = step_seconds.get(name, 0.0) + time.monotonic() - began
        if figure and value is not None:
            figures[name] = value
        return value

    bench = OurBench(state, sizes)
    try:
        began = time.monotonic()
        bench.start()
        idle_started = in_background(bench.start_idle_sampling)
        results["meta"]["setup_seconds"] = bench.pack_and_push()
        idle_started()
        step_seconds["setup (stack, pack, push)"] = time.monotonic() - began
        log.info("1. dispatch latency: %d sequential runs", sizes.dispatch_runs)
        if step("dispatch", bench.dispatch):
            log.info("dispatch p50 %.3f s, p95 %.3f s", figures["dispatch"]["median"], figures["dispatch"]["p95"])
            step("dispatch_profile", bench.dispatch_profile)
            step("imports", bench.import_profile)
            step("warm_host_probe", bench.warm_host_probe)
            log.info("5. package cold start")
            step("cold_start", bench.cold_start)
        log.info("3. checkpoint overhead")
        step("checkpoints", bench.checkpoints)
        log.info("6. idle node (sampled since the start, on an agent of its own)")
        step("idle: waiting for the end of its window", bench.finish_idle, figure=False)
        log.info("7. recovery")
        step("recovery", bench.recovery)
        if not args.no_celery:
            log.info("8. Celery on SQS (same moto server)")
            moto = next(c for c in bench.stack.children if c.name == "moto").process.pid
            results["celery"] = step(
                "Celery: dispatch and throughput",
                functools.partial(run_celery, bench.stack.endpoint, moto, state / "celery", sizes, reps=1),
                figure=False,
            )
        log.info("2. throughput")
        throughput: dict[str, list[dict[str, Any]]] = {str(nodes): [] for nodes in THROUGHPUT_NODES}
        per_rep = 0.0
        for rep in range(1, min(THROUGHPUT_REPS, sizes.throughput_reps) + 1):
            if rep > 1 and not budget.allows(per_rep):
                log.info("throughput: no time for repetition %d within the budget", rep)
                break
            began = time.monotonic()
            for nodes in THROUGHPUT_NODES:
                name = f"throughput, {nodes} node(s)"
                measured = step(name, functools.partial(bench.throughput, nodes, rep), figure=False)
                if measured:
                    throughput[str(nodes)].append(measured)
                    log.info("throughput, %d node(s): %.2f runs/s", nodes, measured["runs_per_second"] or 0)
            per_rep = time.monotonic() - began
        figures["throughput"] = throughput
        if results.get("celery") and budget.allows(120):
            log.info("8b. Celery with polling_interval 0 (a tuned setting, for reference)")
            tuned = step(
                "Celery: throughput with polling_interval 0",
                functools.partial(
                    run_celery, bench.stack.endpoint, moto, state / "celery-tuned", sizes, reps=1, tuned_only=True
                ),
                figure=False,
            )
            if tuned and tuned.get("tuned_throughput"):
                results["celery"]["tuned_throughput"] = tuned["tuned_throughput"]
    finally:
        bench.stop()
    results["meta"]["load_average_at_end"] = machine.load_average()
    results["meta"]["seconds"] = budget.elapsed
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    log.info("4. AWS requests per run; 6. idle node requests")
    step("idle", bench.idle)
    if "dispatch" in figures:
        step("requests", bench.requests_per_run)

    publish(results, args.out)
    return 0


def publish(results: dict[str, Any], out: Path) -> None:
    """The derived figures (bill, warm-host projection, each figure vs its target), then results.json,
    the chart and REPORT.md in ``out``."""
    figures = results["figures"]
    if "requests" in figures and "dispatch" in figures:
        figures["cost"] = derive.bill(
            figures["requests"],
            gateway_log_bytes_per_request=figures["dispatch"].get("gateway_log_bytes_per_request", 0.0),
            prices=pricing.load_prices(),
        )
    figures["warm_host_projection_samples"] = derive.warm_host_projection_samples(
        figures.get("dispatch") or {}, figures.get("warm_host_probe") or {}
    )
    figures["warm_host_projection"] = derive.warm_host_projection(
        figures.get("dispatch") or {}, figures.get("dispatch_profile") or {}, figures.get("warm_host_probe") or {}
    )
    results["summary"] = derive.figures(results)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    chart = out / "latency.png"
    results["meta"]["chart"] = chart.name if draw_chart(results_path, chart) else None
    results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "REPORT.md").write_text(report.render(results))
    log.info("wrote %s, %s and %s", results_path, out / "REPORT.md", chart)
    print(report.summary_table(results["summary"]))


if __name__ == "__main__":
    sys.exit(main())
