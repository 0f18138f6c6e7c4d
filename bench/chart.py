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

    cdf(left, (figures.get("dispatch") or {}).get("samples", []), "runly, warm job hosts: enqueue -> first line")
    cdf(left, (figures.get("dispatch_fresh") or {}).get("samples", []), "runly, new interpreter per run")
    cdf(left, (celery.get("dispatch") or {}).get("samples", []), "Celery/SQS: apply_async -> task's first line")
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("fraction of runs")
    left.set_title("Dispatch latency distributions")
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="lower right", fontsize=8)

    # Both modes' phases on one axis: the warm mode's names, then the fresh mode's own (interpreter, imports).
    profiles = [("warm job hosts", figures.get("dispatch_profile") or {}, "tab:blue"),
                ("new interpreter per run", figures.get("dispatch_profile_fresh") or {}, "tab:orange")]  # fmt: skip
    names: list[str] = []
    for _, profile, _ in profiles:
        names += [name for name in profile if not name.startswith("after") and name not in names]
    height = 0.4
    for offset, (label, profile, color) in enumerate(profiles):
        if not profile:
            continue
        positions = [index + offset * height for index, name in enumerate(names) if name in profile]
        present = [name for name in names if name in profile]
        right.barh(positions, [(profile[n].get("median") or 0) * 1000 for n in present], height=height,
                   color=color, label=f"{label}: median")  # fmt: skip
        right.scatter([(profile[n].get("p95") or 0) * 1000 for n in present], positions, color=color, marker="|",
                      s=150, label=f"{label}: p95")  # fmt: skip
    right.set_yticks([index + height / 2 for index in range(len(names))])
    right.set_yticklabels([name.replace(": ", ":\n", 1) for name in names], fontsize=6)
    right.invert_yaxis()
    right.set_xscale("symlog", linthresh=10)
    right.set_xlabel("ms (linear to 10, then log)")
    right.set_title("Where runly's dispatch time goes (per phase)")
    right.grid(True, axis="x", alpha=0.3)
    right.legend(fontsize=7)

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
