"""bench/latency.png from results.json (run in bench/.venv-celery, which has matplotlib).

bench/.venv-celery/bin/python -m bench.chart bench/results.json bench/latency.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def cdf(axis: Any, samples: list[float], label: str) -> None:
    if not samples:
        return
    ordered = sorted(value * 1000 for value in samples)
    fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
    axis.step(ordered, fractions, where="post", label=f"{label} (n={len(ordered)})")


def main(results_path: Path, chart_path: Path) -> None:
    results = json.loads(results_path.read_text())
    figures = results["figures"]
    celery = results.get("celery") or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1.1, 1]})

    cdf(left, (figures.get("dispatch") or {}).get("samples", []), "runly: enqueue -> job's first line")
    cdf(left, (celery.get("dispatch") or {}).get("samples", []), "Celery/SQS: apply_async -> task's first line")
    cdf(left, figures.get("warm_host_projection_samples") or [], "runly with warm job hosts (projected)")
    cdf(left, (figures.get("warm_host_probe") or {}).get("samples", []), "warm job host probe: fork -> first line")
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("fraction of runs")
    left.set_title("Dispatch latency distributions")
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="lower right", fontsize=8)

    profile = figures.get("dispatch_profile") or {}
    names = [name for name in profile if not name.startswith("after")]
    medians = [(profile[name].get("median") or 0) * 1000 for name in names]
    p95s = [(profile[name].get("p95") or 0) * 1000 for name in names]
    positions = range(len(names))
    right.barh(list(positions), medians, color="tab:blue", label="median")
    right.scatter(p95s, list(positions), color="tab:red", marker="|", s=200, label="p95")
    right.set_yticks(list(positions))
    right.set_yticklabels([name.replace(": ", ":\n", 1) for name in names], fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("ms")
    right.set_title("Where runly's dispatch time goes (per phase)")
    right.grid(True, axis="x", alpha=0.3)
    right.legend(fontsize=8)

    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    load = meta.get("load_average_at_start") or [0]
    fig.suptitle(
        f"runly benchmarks, {meta.get('started', '')}: {machine.get('cpu', '')}, {machine.get('cores')} cores, "
        f"load {load[0]:.1f} at start" + (" (quick mode)" if meta.get("quick") else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(chart_path, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
