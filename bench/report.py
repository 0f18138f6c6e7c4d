"""bench/REPORT.md from results.json: the machine, the commands, each figure beside its target and Celery,
the profile of a dispatch, the bill of a run, and what would close each gap (with the numbers behind it)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench import derive
from bench.derive import DISPATCH_RATIO_WARM
from bench.stats import median, percentile, ratio

SQS_GHOST_POLL_REFERENCES = (
    "aws/aws-sdk-js#2350 (SQS long poll stays active after the process exits), aws/aws-sdk-java#2083, "
    "celery/celery#8875 (messages taken by a poll just before a warm shutdown come back only after their "
    "visibility timeout)"
)


def fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit == "fraction":
        return f"{value:+.3%}" if 0 < abs(value) < 0.001 else f"{value:+.1%}"
    if unit == "$":
        return f"${value:.2f}"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "":
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    if isinstance(value, float):
        return f"{value:.2f} {unit}"
    return f"{value} {unit}"


def verdict(holds: bool | None) -> str:
    return "-" if holds is None else ("PASS" if holds else "**FAIL**")


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | median | p95 | runs | Celery | ours / Celery | target | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        unit = row["unit"]
        share = row.get("ratio")
        lines.append(
            f"| {row['figure']} | {fmt(row['value'], unit)} | {fmt(row.get('p95'), unit)} | {row.get('runs') or '-'} "
            f"| {fmt(row.get('celery'), unit)} | {'-' if share is None else f'{share:.2f}x'} | {row['target']} "
            f"| {verdict(row['pass'])} |"
        )
    return "\n".join(lines)


def _median(summary: dict[str, Any] | None) -> float | None:
    return (summary or {}).get("median")


def _phase_table(profile: dict[str, Any], total: float | None) -> str:
    lines = [
        "| phase | median | p95 | share of the median dispatch | AWS calls (most runs) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, summary in profile.items():
        share = ratio(summary.get("median"), total)
        calls = summary.get("calls")
        calls_text = "-" if calls is None else f"{calls} ({summary.get('calls_share', 0):.0%} of runs)"
        lines.append(
            f"| {name} | {fmt(summary.get('median'), 's')} | {fmt(summary.get('p95'), 's')} "
            f"| {'-' if share is None or name.startswith('after') else f'{share:.0%}'} | {calls_text} |"
        )
    return "\n".join(lines)


def _requests_table(requests: dict[str, Any]) -> str:
    lines = ["| process | service | operation | item or index | calls per run |", "| --- | --- | --- | --- | --- |"]
    for row in requests.get("calls_per_run", []):
        lines.append(
            f"| {row['role']} | {row['service']} | {row['operation']} | {row['item'] or ''} | {row['per_run']:.2f} |"
        )
    return "\n".join(lines)


def _cost_table(cost: dict[str, Any]) -> str:
    lines = ["| component | per run | $ per 1M runs | arithmetic |", "| --- | --- | --- | --- |"]
    for line in cost.get("lines", []):
        name = line["component"] + ("" if line["measured"] else " *(estimated)*")
        lines.append(
            f"| {name} | {line['quantity']:.4g} {line['unit']} | ${line['dollars_per_million_runs']:.3f} "
            f"| {line['arithmetic']} |"
        )
    lines.append(f"| **counted total** | | **${cost.get('measured_total', 0):.2f}** | |")
    lines.append(f"| **all-in (with the estimated lines)** | | **${cost.get('all_in_total', 0):.2f}** | |")
    return "\n".join(lines)


def _throughput_table(results: dict[str, Any]) -> str:
    lines = [
        "| system | mode | consumers | rep. | runs done | first job after | to all terminal | runs/s "
        "| steady runs/s | 100-run windows, runs/s: median (min-max) | CPU per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    celery = results.get("celery") or {}
    figures = results["figures"]
    sides = [
        ("runly", "warm job hosts", "node", figures.get("throughput") or {}),
        ("runly", "new interpreter per run", "node", figures.get("throughput_fresh") or {}),
        ("Celery", "prefork, defaults", "worker", celery.get("throughput") or {}),
    ]
    tuned = celery.get("tuned_throughput")
    if tuned:
        sides.append(("Celery", tuned["setting"], "worker", {"1": [tuned]}))
    for system, mode, consumer, by_count in sides:
        for count, reps in by_count.items():
            for index, rep in enumerate(reps, 1):
                windows = rep.get("window_rates") or {}
                window_text = (
                    f"{windows['median']:.2f} ({windows['min']:.2f}-{windows['max']:.2f})" if windows.get("n") else "-"
                )
                cpu = "; ".join(f"{name} {value:.0f} ms" for name, value in (rep.get("cpu_ms_per_run") or {}).items())
                lines.append(
                    f"| {system} | {mode} | {count} {consumer}{'s' if count != '1' else ''} | {index} | "
                    f"{rep['completed']}/{rep['runs']} | {fmt(rep.get('first_job_started_after'), 's')} | "
                    f"{fmt(rep.get('seconds_to_all_terminal'), 's')} | "
                    f"{fmt(rep.get('runs_per_second'), '')} | {fmt(rep.get('steady_runs_per_second'), '')} | "
                    f"{window_text} | {cpu or '-'} |"
                )
    return "\n".join(lines)


def _interval(values: list[float | None] | None, unit: str = "fraction") -> str:
    if not values or values[0] is None or values[1] is None:
        return "-"
    return f"{fmt(values[0], unit)} to {fmt(values[1], unit)}"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    celery = results.get("celery") or {}
    load_start, load_end = meta.get("load_average_at_start"), meta.get("load_average_at_end")
    highest = max(load_start[0], (load_end or [0])[0]) if load_start else 0.0
    loaded = bool(machine.get("cores") and highest > 0.5 * machine["cores"])
    versions = ", ".join(f"{name} {version}" for name, version in machine.get("versions", {}).items())
    celery_versions = ", ".join(f"{k} {str(v).split()[0]}" for k, v in (celery.get("versions") or {}).items())
    sizes = meta.get("sizes", {})
    out = [
        "# runly benchmarks",
        "",
        f"Generated by `make bench` on {meta['started']} in {meta.get('seconds', 0) / 60:.1f} minutes"
        + (" — **quick mode: few repetitions, not for quoting**" if meta.get("quick") else "")
        + (f" — **only these sections: {', '.join(meta['only'])}**" if meta.get("only") else "")
        + ". Every number below is from `bench/results.json` of the same run; `bench/latency.png` charts the "
        "latency distributions and the dispatch profiles.",
        "",
    ]
    if loaded:
        out += [
            f"> **The machine was loaded** (1-minute load average {load_start[0]:.1f} at the start and "
            f"{(load_end or [0])[0]:.1f} at the end, on {machine['cores']} cores): other work competed for the CPU, "
            "so latencies and rates are pessimistic and noisier than on a quiet machine, for runly and Celery "
            "alike. Request counts, dollars and memory do not depend on it.",
            "",
        ]
    out += [
        "## Machine and versions",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {machine['cpu']}, {machine['cores']} cores |",
        f"| memory | {machine.get('memory_gib') or 0:.1f} GiB |",
        f"| kernel | {machine['kernel']} |",
        f"| Python | {machine['python']} |",
        f"| runly | commit {machine['commit']} |",
        f"| load average (1 min) at start / end | {load_start[0]:.2f} / {(load_end or [0])[0]:.2f} |"
        if load_start
        else "| load | ? |",
        f"| embedded stack | {versions} |",
        f"| peer | {celery_versions or 'not run'} |",
        "",
        "Commands: "
        + "; ".join(f"`{command}`" for command in meta.get("commands", []))
        + ". Sizes: "
        + ", ".join(f"{k} {v}" for k, v in sizes.items())
        + ".",
        "",
    ]
    steps = meta.get("step_seconds") or {}
    if steps:
        out += [
            f"Where the run's {meta.get('seconds', 0) / 60:.1f} minutes went (the goal is 15 minutes on 2 cores): "
            + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in steps.items())
            + ". Sizes are chosen to fit the 15 minutes: 1,000 runs for one node with warm job hosts and for "
            f"Celery's one worker; {sizes.get('throughput_runs_two_nodes', '?')} for two nodes and two workers; "
            f"{sizes.get('dispatch_fresh_runs', '?')} sequential runs for the dispatch with a new interpreter per run "
            f"and {sizes.get('fresh_throughput_runs', '?')} for its throughput (at its rate, "
            "1,000 runs would take a good part of the budget by themselves). Celery's side takes a fixed part: its "
            "one worker runs 1,000 tasks at its own pace. Further throughput repetitions run only "
            "while the budget allows.",
            "",
        ]
    errors = results.get("errors") or {}
    if errors:
        out += ["## Benchmarks that failed in this run", ""]
        out += [f"- {name}: `{error}`" for name, error in errors.items()] + [""]
    out += [
        "## Every figure beside its target",
        "",
        summary_table(results.get("summary", [])),
        "",
        "Ratios are runly ÷ Celery, measured in this same run against the same moto server (latency: lower is "
        "better; throughput: higher is better). Warm job hosts are the agent's default (`RUNLY_WARM_HOSTS`, "
        "default true); 1b and 2b are the same agent with `RUNLY_WARM_HOSTS=false`.",
        "",
    ]
    out += _details(results)
    if (results["figures"] or {}).get("function_cold_start"):
        from bench.function_cold_start import section

        out += section(results["figures"]["function_cold_start"])
    out += _recommendations(results)
    out += _method()
    return "\n".join(out) + "\n"


def _dispatch_bullet(label: str, dispatch: dict[str, Any]) -> str:
    forked = dispatch.get("forked_by_warm_host")
    return (
        f"- {label}: median {fmt(dispatch.get('median'), 's')}, p95 {fmt(dispatch.get('p95'), 's')}, "
        f"min {fmt(dispatch.get('min'), 's')}, max {fmt(dispatch.get('max'), 's')}, {dispatch.get('runs')} runs"
        + (f" ({forked} forked by a warm host)" if forked is not None else "")
        + f"; the HTTP enqueue alone {fmt(_median(dispatch.get('enqueue_http')), 's')} median; package ready -> "
        f"first line {fmt(_median(dispatch.get('ready_to_first_line')), 's')} median."
    )


def _details(results: dict[str, Any]) -> list[str]:
    f = results["figures"]
    celery = results.get("celery") or {}
    warm, fresh = f.get("dispatch") or {}, f.get("dispatch_fresh") or {}
    out = [
        "## 1. Dispatch latency",
        "",
        "One agent with default settings (capacity 2, long poll 20 s), the package installed, one run at a time: "
        "the bench takes `time.time()`, POSTs /runs over HTTP (the local gateway runs the authorizer and the API "
        "function), and the stamp job notes `time.time()` as its first line; the next run is enqueued once the "
        "agent has recorded the outcome. Twice: with warm job hosts (the default: a host process per package "
        "version has imported the SDK and the jobs, and forks a child per run) on the `default` environment, and "
        "with `RUNLY_WARM_HOSTS=false` (a new interpreter per run) on an environment and agent of its own. Celery: "
        "`apply_async` -> the task's first line, one worker (prefork, default concurrency), the same way.",
        "",
    ]
    if warm:
        out.append(_dispatch_bullet("runly, warm job hosts", warm))
    if fresh:
        out.append(_dispatch_bullet("runly, new interpreter per run", fresh))
    celery_dispatch = celery.get("dispatch") or {}
    if celery_dispatch:
        out.append(
            f"- Celery: median {fmt(celery_dispatch.get('median'), 's')}, p95 {fmt(celery_dispatch.get('p95'), 's')}, "
            f"{celery_dispatch.get('runs')} runs."
        )
    out += [
        "",
        "### Where a dispatch's time goes",
        "",
        "Per run, from timestamps on one clock: the bench's (enqueue), the AWS-call hook's in the gateway and the "
        "agent (SendMessage started, ReceiveMessage returned the message, and every call in between), the agent's "
        "log lines (claimed, package ready, job process started, outcome), the job's (its module imported, its "
        "first line). The last column is the sequence of AWS calls most runs made in that phase. With warm hosts "
        "the job's module was imported by the host long before the run, so there is no interpreter/imports phase: "
        "'spawn' is the agent's request to the host until the forked child's pid is back, and the child's setup "
        "(spec, job class, config, job object) runs from the fork to the first line.",
        "",
    ]
    for label, key, dispatch in (
        ("Warm job hosts", "dispatch_profile", warm),
        ("New interpreter per run", "dispatch_profile_fresh", fresh),
    ):
        if f.get(key):
            out += [f"**{label}** (median dispatch {fmt(dispatch.get('median'), 's')}):", ""]
            out += [_phase_table(f[key], dispatch.get("median")), ""]
    imports = f.get("imports") or {}
    if imports:
        bare = imports.get("bare interpreter (python -I -c pass)") or {}
        full = imports.get("interpreter + runly.runner + job module") or {}
        out += [
            f"What a new interpreter pays per run (and a warm host once, at its start), timed outside the agent "
            f"(medians of 10): `python -I -c pass` {fmt(bare.get('median'), 's')}; "
            f"`python -I -c 'import runly.runner, benchjobs.jobs'` {fmt(full.get('median'), 's')}. The costliest "
            "imports (`-X importtime`, one run; depth 0 is what was imported, deeper is what that imported):",
            "",
            "| module | depth | self | cumulative |",
            "| --- | --- | --- | --- |",
        ]
        for row in imports.get("top imports (cumulative ms)", []):
            out.append(f"| {row['module']} | {row.get('depth', 0)} | {row.get('self_ms', 0):.0f} ms | "
                       f"{row['cumulative_ms']:.0f} ms |")  # fmt: skip
        out.append("")
    out += [
        "## 2. Throughput",
        "",
        "N trivial runs (the stamp job) enqueued at once (POST /runs/batch, 100 a request) while no node serves "
        "their environment; then the node(s) start, each at its default capacity (2); runs/s = N ÷ (last run "
        "terminal - nodes started), agent start-up (and with warm hosts the host's start) included; 'steady' = "
        "(N-1) ÷ (last - first completion). Each measurement has a queue of its own: an agent stopped while "
        "long-polling leaves its poll open on the server, which would take messages of the next measurement (see "
        "7). Celery: N tasks sent at once while no worker runs, then the worker(s) start (prefork, default "
        "concurrency, default transport options); a task's note of its first line marks it done (tasks are "
        "acknowledged early: its message is deleted by then). CPU per run: CPU time of the job processes (reaped by "
        "the agent or by the warm host that forked them), the warm hosts themselves, the agents, the workers, and "
        "the moto server, during the measurement, ÷ runs. The new-interpreter measurement runs fewer runs to fit "
        "the time budget; its agent start-up weighs a little more in its runs/s.",
        "",
        _throughput_table(results),
        "",
    ]
    out += _throughput_calls(f)
    out += _checkpoint_section(f)
    out += _cost_section(f)
    out += _cold_section(f)
    out += _idle_section(f)
    out += _recovery_section(f)
    out += _client_section(f)
    return out


def _throughput_calls(f: dict[str, Any]) -> list[str]:
    """What runly's nodes asked of AWS per run in each throughput measurement, and how long moto took."""
    lines = []
    for key, mode in (("throughput", "warm job hosts"), ("throughput_fresh", "new interpreter per run")):
        for nodes, reps in (f.get(key) or {}).items():
            for rep in reps[:1]:
                calls = rep.get("calls") or {}
                if calls:
                    lines.append(
                        f"- {mode}, {nodes} node{'s' if nodes != '1' else ''}, {rep['runs']:,} runs queued: "
                        + "; ".join(
                            f"{name} {value['per_run']:.2f}/run ({value['median_ms']:.0f} ms)"
                            for name, value in calls.items()
                            if value["per_run"] >= 0.01
                        )
                    )
    if not lines:
        return []
    return [
        "The nodes' AWS calls per run during each measurement (first repetition), with moto's median time to "
        "answer each (the AWS-call hook's timings; a receive that waited for messages counts its wait):",
        "",
        *lines,
        "",
        "moto keeps a queue as a Python list: each ReceiveMessage walks the queue's messages and each "
        "DeleteMessage rebuilds the list (moto/sqs/models.py), so its time per call grows with the queue's depth "
        "— 1,000 runs queued at once make every receive and delete slower than the same call on a short queue, "
        "for runly and Celery alike, and moto, one process, is CPU-bound on the same 2 cores.",
        "",
    ]


def _with_interval(mode: dict[str, Any], key: str, baseline: bool) -> str:
    if baseline:
        return "-"
    return f"{fmt(mode.get(key), 'fraction')} [{_interval(mode.get(f'{key}_interval'))}]"


def _checkpoint_section(f: dict[str, Any]) -> list[str]:
    checkpoints = f.get("checkpoints") or {}
    modes = checkpoints.get("modes") or {}
    if not modes:
        return []
    none = modes.get("none") or {}
    default = modes.get("default (every 2 s)") or {}
    short_seconds = (none.get("seconds") or {}).get("median")
    inside_default = (default.get("checkpoints_inside") or {}).get("median")
    spread = none.get("samples") or []
    noise = (
        (percentile(spread, 75) - percentile(spread, 25)) / median(spread)
        if len(spread) >= 2 and median(spread)
        else None
    )
    out = [
        "## 3. Checkpoint overhead",
        "",
        "A no-op item job on the real agent (warm job hosts), timed by the job itself from its first item to its "
        "last: wall time (items/s) and the CPU time of the whole job process (`time.process_time()`: the items and "
        "the SDK's reporter thread, which sends progress and checkpoints), which moves less than wall time with "
        "other work on the machine. 'none' sets the interval to 1e9 s. A checkpoint is a DynamoDB transaction "
        "(fence + put) written by the agent; the reporter thread waits for it while the items go on. Modes "
        "alternate within each repetition, in an order that rotates from one repetition to the next. Overheads are "
        "ratios of medians against 'none' of the same length, with a bootstrap 90% interval; figure 3 is judged "
        "on the extra CPU time (chosen beforehand: what checkpoints cost the node, and steadier than wall time "
        "on a shared machine) and shows both.",
        "",
        f"**At the default interval no checkpoint falls inside a {checkpoints.get('items', 100_000):,}-item no-op "
        f"run**: it takes {fmt(short_seconds, 's')} (median), less than the 2 s before the first checkpoint is "
        f"due (median checkpoints inside: {inside_default or 0:g}). The SDK's one checkpoint when the items end is "
        "outside the timed part. So the target row (3) compares two runs that checkpoint identically; its "
        "difference is the machine's noise"
        + (f" (the interquartile range of 'none' alone is {noise:.0%} of its median)" if noise is not None else "")
        + ". What checkpoints cost when they do fall inside shows in the forced short intervals, the long runs and, "
        "most steadily, in each checkpoint's own cost below.",
        "",
        "| checkpoints | items | runs | items/s median | items/s p25 - p75 (min - max) | CPU ms median | "
        "checkpoints inside (median) | overhead, items/s [90% interval] | overhead, CPU [90% interval] | "
        "checkpoint round trip (median) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, mode in modes.items():
        speed = mode["items_per_second"]
        samples = mode.get("samples") or []
        quartiles = f"{percentile(samples, 25):,.0f} - {percentile(samples, 75):,.0f}" if samples else "-"
        cpu = mode.get("cpu_samples") or []
        baseline = name.startswith("none")
        out.append(
            f"| {name} | {mode['items']:,} | {speed['n']} | {speed['median']:,.0f} | {quartiles} "
            f"({speed['min']:,.0f} - {speed['max']:,.0f}) | {median(cpu) * 1000 if cpu else 0:,.0f} | "
            f"{(mode.get('checkpoints_inside') or {}).get('median') or 0:g} | "
            f"{_with_interval(mode, 'overhead', baseline)} | {_with_interval(mode, 'cpu_overhead', baseline)} | "
            f"{fmt((mode.get('checkpoint_round_trip') or {}).get('median'), 's')} |"
        )
    out.append("")
    each = checkpoints.get("per_checkpoint") or {}
    cpu, trip, transaction = each.get("reporter_cpu") or {}, each.get("round_trip") or {}, each.get("transaction") or {}
    if cpu.get("n"):
        out += [
            f"**Each checkpoint** ({cpu['n']} of them over these runs, the final ones included), timed in the job's "
            f"reporter thread (`bench/project`'s TimedChannel): CPU {fmt(cpu['median'] * 1000, 'ms')} median (p95 "
            f"{fmt(cpu['p95'] * 1000, 'ms')}): the message out and the acknowledgement in, the job process's whole "
            f"cost of a checkpoint besides building it; round trip {fmt(trip.get('median'), 's')} median (p95 "
            f"{fmt(trip.get('p95'), 's')}), during which the items go on. Of the round trip, the agent's DynamoDB "
            f"transaction took {fmt(transaction.get('median'), 's')} median on moto (p95 "
            f"{fmt(transaction.get('p95'), 's')}): moto copies the whole table to roll a transaction back "
            "(`copy.deepcopy` in moto/dynamodb/models transact_write_items), so its time grows with the runs the "
            "table holds (the checkpoint runs go first, while it holds few). A checkpoint waits for the previous "
            "one's acknowledgement, so the round trip bounds how many fit in a run at any interval. Figure 3c is "
            "the CPU per checkpoint over the default interval: the share of a core the job loses to checkpoints "
            "when they do fall inside.",
            "",
        ]
    return out


def _cost_section(f: dict[str, Any]) -> list[str]:
    single, batch = f.get("requests") or {}, f.get("requests_batch") or {}
    if not single and not batch:
        return []
    cost = f.get("cost") or f.get("cost_batch") or {}
    any_requests = single or batch
    sizes = ", ".join(f"{kind} {size} B" for kind, size in any_requests.get("item_sizes", {}).items())
    recorded = cost.get("counting") == "recorder"
    out = [
        "## 4. AWS requests and dollars per run",
        "",
        (
            '**How the dollars are counted** (docs/store.md, "How the bill is counted"): DynamoDB request units and '
            "SQS requests come from a run of short runs on a stack of their own behind a recording proxy "
            "(bench/recorder.py, section `bill`: the counting `make capacity` does, bench/billing.py), which reads "
            "each item before and after every write and bills the base table by the larger, each global secondary "
            "index by its own rules (a put when an item enters it, a delete when it leaves, a delete and a put when "
            "its key moves, an update when a projected attribute changes; by the projected entry's size), failed "
            "conditional writes included, and SQS per 64 KB chunk; those runs are of the bench's own size (a "
            f"{(f.get('bill') or {}).get('config_bytes', '?')} B config, a "
            f"{(f.get('bill') or {}).get('output_bytes', '?')} B output; `make capacity`, bench/CAPACITY.md, bills "
            "issue 14's 1 KB each). Lambda durations and log bytes are this run's own (below, no proxy in "
            "their path). The hook's counts below are the requests made; its units (base table only, sizes as the "
            "calls carried them) are shown beside the billed ones, and undercount."
            if recorded
            else "**These dollars count base-table units only** (the hook's view: no index writes, sizes as the "
            "calls carried them): they undercount. Run the `bill` section for the counting `make capacity` does."
        ),
        "",
        "Counted by a botocore hook (`bench/hooks/sitecustomize.py`, on the PYTHONPATH of the gateway and agent "
        "processes only) on two paths: **one POST /runs per run** (the warm dispatch runs, one at a time) and the "
        f"**batch path** ({(f.get('batch') or {}).get('runs', '?')} runs enqueued with POST /runs/batch, "
        f"{(f.get('batch') or {}).get('batch_size', 100)} a request, then run by the same agent). What an idle "
        "agent makes anyway in each window (figure 6, measured on an agent of its own over the whole run) is "
        "subtracted. The client only enqueued; it never polled the API. DynamoDB request units from the sizes of "
        f"the items as the calls carried them ({sizes}; 0 B: not found): reads 1 RRU per 4 KB strongly consistent "
        "and ½ eventually consistent, at least one unit; writes 1 WRU per 1 KB; transactions twice that. Prices: "
        f"`bench/prices-us-east-1.json` (list prices as of {cost.get('prices_as_of')}); function memory as the "
        f"CDK stack sets it ({cost.get('function_memory_mb')} MB).",
        "",
    ]
    for label, requests, bill in (("One POST /runs per run", single, f.get("cost") or {}),
                                  ("The batch path (POST /runs/batch)", batch, f.get("cost_batch") or {})):  # fmt: skip
        if not requests:
            continue
        out += [
            f"### {label}",
            "",
            f"{requests['runs']} runs in {requests['window_seconds']:.0f} s, "
            f"{requests.get('runs_per_http_request', 1):.0f} run(s) per HTTP request, {requests['retries']} retries "
            f"seen. Per run, as the hook sees them (base table only): {requests['read_units_per_run']:.2f} RRU and "
            f"{requests['write_units_per_run']:.2f} WRU"
            + (
                f"; billed, with every index write and real item sizes: {bill.get('write_units_per_run', 0):.2f} WRU "
                f"(of which {bill.get('index_write_units_per_run') or 0:.2f} in indexes) and "
                f"{bill.get('read_units_per_run', 0):.2f} RRU. "
                if bill.get("counting") == "recorder"
                else ". "
            )
            + f"Per HTTP request: authorizer {fmt(_median(requests.get('authorizer_ms')), 'ms')} (request start -> its "
            f"key read returned), API function {fmt(_median(requests.get('api_function_ms')), 'ms')} (the rest of "
            "the round trip: an upper bound, the local gateway's own work included).",
            "",
            _requests_table(requests),
            "",
            _cost_table(bill),
            "",
        ]
    floor = f.get("cost_floor") or {}
    if floor:
        short = floor["short_run"]
        out += [
            "**The protocol's floor** (bench/derive.py `protocol_floor`): what a durable, fenced run cannot do "
            "without. A short run writes its item three times (created with its config before the API answers; "
            "claimed by a conditional lease write; completed with its output, conditional on the lease) and one "
            "small KEYS_ONLY index entry so its environment's runs can be listed: "
            + ", ".join(f"{name} {units:g}" for name, units in short["writes"].items())
            + f" = {short['write_units']:g} WRU with a {floor.get('config_bytes', 0):,} B config and a "
            f"{floor.get('output_bytes', 0):,} B output (with {derive.FLOOR_RUN_ITEM_BYTES} B of the item's own "
            "attributes; `make capacity` gives the floor at 1 KB each); its message is sent, received and deleted ten "
            "to a request: "
            + ", ".join(f"{path} {requests:g}" for path, requests in short["sqs_requests"].items())
            + " SQS requests. In DynamoDB and SQS alone: "
            + ", ".join(f"{path} ${value:.2f}" for path, value in short["dynamodb_and_sqs_per_million"].items())
            + " per million runs. A running run: "
            f"{floor['running']['write_units_per_beat']:g} lease write and "
            f"{floor['running']['sqs_requests_per_beat']:g} ChangeMessageVisibilityBatch per beat, "
            f"${floor['running']['per_thousand_running_hours']:.2f} per thousand running run-hours at 15 s.",
            "",
        ]
    events = cost.get("events_per_run")
    out += [
        "The estimated lines are what the deployed stack adds and the embedded stack does not run: run events "
        f"follow the stack's default `run_events` setting, **{cost.get('run_events')}** ({events} EventBridge "
        "event(s) per short run: 'all' publishes every state a run enters, Queued, Running and Succeeded; "
        "'terminal' only the last; 'off' none), and Lambda logs START/END/REPORT lines (~350 B) plus what the "
        "functions print (measured on the local gateway at its log level), per invocation. Not counted: the "
        "run-events publisher's own invocations (one per stream batch of events: at most one per event, $0.20 per "
        "million plus its duration, fewer when the stream batches them; with 'terminal' the stream filter keeps "
        "the other writes from invoking it), and a client polling GET /runs/{id} for the result (each poll: an API "
        "Gateway request, two Lambda invocations, a key read and a run read).",
        "",
    ]
    return out


def _cold_section(f: dict[str, Any]) -> list[str]:
    cold = f.get("cold_start") or {}
    if not cold:
        return []
    out = [
        "## 5. Package cold start",
        "",
        f"A bundle of {cold['bundle_bytes'] / 1024**2:.1f} MB (the bench's job project, runly and its dependencies). "
        "Each repetition runs a version this node never ran (pushed at the start: no environment and no warm host "
        "of it exists). Phases from the agent's log lines (package cache, warm host) and the job's first line; "
        "'start' is package ready -> first line, the warm host's start included.",
        "",
        "| repetition | version | download | verify | install | warm host start | start (ready -> first line) "
        "| total |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for index, rep in enumerate(cold["reps"], 1):
        phases = rep["phases"]
        out.append(
            f"| {index} | {rep.get('version', '-')} | {fmt(phases.get('download'), 's')} | "
            f"{fmt(phases.get('verify'), 's')} | {fmt(phases.get('install'), 's')} | "
            f"{fmt(phases.get('warm host start'), 's')} | {fmt(phases.get('start (spawn -> first line)'), 's')} | "
            f"{fmt(rep['cold_total_s'], 's')} |"
        )
    out += [
        "",
        f"Warm (the dispatch runs): package lookup median {fmt(_median(cold.get('warm_package')), 's')} (p95 "
        f"{fmt((cold.get('warm_package') or {}).get('p95'), 's')}), start "
        f"{fmt(_median(cold.get('warm_start')), 's')}.",
        "",
    ]
    return out


def _idle_section(f: dict[str, Any]) -> list[str]:
    idle = f.get("idle") or {}
    if not idle:
        return []
    rss = idle.get("rss_mb") or {}
    memory = idle.get("memory_by_import") or {}
    steps = []
    previous = None
    for name, value in memory.items():
        steps.append(f"{name} {value:.1f} MB" + (f" (+{value - previous:.1f})" if previous is not None else ""))
        previous = value
    whole = idle.get("whole_run") or {}
    schedule = idle.get("schedule") or {}
    host = (f.get("dispatch") or {}).get("warm_host") or {}
    out = [
        "## 6. Idle node",
        "",
        f"An agent of its own in an environment that never gets work ({idle['settings']}), sampled from /proc "
        f"every second for {idle['seconds']:.0f} s while the other benchmarks ran (its CPU time and its requests "
        "are its own); its requests are also counted over the whole run, until the bench stopped the stack.",
        "",
        f"- AWS requests, {idle['seconds']:.0f} s window: {idle['requests_per_minute']:.2f}/min: "
        + ", ".join(f"{name} {value:.2f}/min" for name, value in idle.get("by_operation_per_minute", {}).items()),
    ]
    if whole:
        out.append(
            f"- AWS requests, whole run ({whole['seconds'] / 60:.1f} min, {whole['requests']} requests): "
            f"{whole['requests_per_minute']:.2f}/min: "
            + ", ".join(f"{name} {value:.2f}/min" for name, value in whole.get("by_operation_per_minute", {}).items())
        )
    if schedule:
        out.append(
            f"- Steady state from the agent's schedule: a long poll every {schedule['poll_wait_seconds']:g} s "
            f"({schedule['polls_per_minute']:g}/min) plus a node write every {schedule['node_write_seconds']:g} s "
            f"(`{schedule['node_write_setting']}`, {schedule['node_writes_per_minute']:.2f}/min) = "
            f"**{schedule['requests_per_minute']:.2f}/min**. A window shorter than the node write interval sees "
            "0 or 1 write, so its rate lands on either side of this."
        )
    out += [
        f"- RSS of the agent: median {rss.get('median') or 0:.1f} MB, max {rss.get('max') or 0:.1f} MB",
        f"- CPU: {idle['cpu_percent']:.2f}% of one core",
    ]
    if host:
        out.append(
            f"- One warm job host (the dispatch agent's, after its runs; informational): RSS {host['rss_mb']:.1f} MB, "
            f"PSS {host.get('pss_mb') or 0:.1f} MB (PSS shares the pages it has in common with other processes); "
            f"{host['hosts']} host(s) on that node; that agent's own RSS {host.get('agent_rss_mb') or 0:.1f} MB."
        )
    out += [
        "- Where the agent's memory goes (`bench/memory_probe.py`: RSS after each thing the agent loads, in order): "
        + "; ".join(steps),
        "",
    ]
    return out


def _recovery_section(f: dict[str, Any]) -> list[str]:
    recovery = f.get("recovery") or {}
    if not recovery:
        return []
    out = [
        "## 7. Recovery",
        "",
        f"Two agents with lease {recovery['lease_seconds']} s, heartbeat {recovery['heartbeat_seconds']} s, long "
        f"poll {recovery['poll_wait_seconds']} s (the bench's setting: the default lease is 60 s); an item run of "
        f"{recovery.get('items', 200)} items x {recovery.get('item_seconds', 0.05) * 1000:.0f} ms with a checkpoint "
        f"every {recovery['checkpoint_interval_seconds']:g} s. Once it has done {recovery.get('kill_after_items', 60)} "
        "items, the node running it is SIGKILLed — its agent, its warm host and its job process, as when a machine "
        "is lost — "
        "and the bench times until the second attempt's first line on the other node.",
        "",
        "| rep. | seconds to running again | lease left at the kill | beyond the lease | items done before | "
        "resumed at | items repeated | repeated before the watermark | missing | outcome |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for index, rep in enumerate(recovery["reps"], 1):
        lease_left, beyond = rep.get("lease_left_at_kill"), rep.get("beyond_lease")
        out.append(
            f"| {index} | {rep['seconds_to_running_again']:.2f} | "
            f"{'-' if lease_left is None else f'{lease_left:.2f}'} | {'-' if beyond is None else f'{beyond:.2f}'} | "
            f"{rep['items_done_before_kill']} | {rep['resumed_at_watermark']} | {rep['items_repeated']} | "
            f"{rep['items_before_watermark_repeated']} | {rep['items_missing']} | {rep['state']} |"
        )
    out += [
        "",
        "'Lease left at the kill': until the message becomes visible again (a lease after the killed agent last "
        "set its visibility; its lease in the store ends then too). 'Beyond the lease': seconds from then until "
        "the run ran again. A few seconds more than a poll's return means the killed agent's long poll, still open "
        "on the server, took the message the moment it became visible again and hid it for the receive's "
        f"VisibilityTimeout ({recovery.get('receive_visibility_seconds', '?')} s here: two heartbeats, not the "
        f"lease): moto does this, and so does SQS ({SQS_GHOST_POLL_REFERENCES}). "
        "Items repeated = items after the last durable checkpoint (at most one checkpoint interval of work), none "
        "before the watermark.",
        "",
    ]
    return out


def _client_section(f: dict[str, Any]) -> list[str]:
    client = f.get("client") or {}
    modes = client.get("modes") or {}
    if not modes:
        return []
    measured = client.get("measured") or {}
    out = [
        "## 9. The API client: keep-alive vs a new connection per request",
        "",
        f"{client['enqueues_per_mode']:,} sequential enqueues (POST /runs) per mode through "
        "`runly_client.client.RunlyClient` on the embedded stack (the local gateway runs the authorizer and the API "
        "function for each), without Idempotency-Keys (`generate_idempotency_keys=False`: a keyed enqueue is a "
        "TransactWriteItems, for which moto copies the whole table, so its latency would grow with every run "
        "recorded), in "
        f"{client['blocks']} alternating blocks: over the client's pooled keep-alive connection, and with "
        "`httpx.Limits(max_keepalive_connections=0)`, a new TCP connection per request. Latency is the enqueue "
        "call's as the application sees it; connections are counted by the client (its network streams): the "
        "keep-alive client opens one per block, as httpx closes a connection idle for 5 s (`keepalive_expiry`) "
        "while the other mode's block runs. The gateway "
        "is plain HTTP on 127.0.0.1: against API Gateway a new connection also costs a TLS handshake and a "
        "round trip to the region, which this does not measure.",
        "",
        "| mode | median | p95 | mean | enqueues/s | connections | client CPU per enqueue |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, m in modes.items():
        latency = m["latency"]
        out.append(
            f"| {mode} | {fmt(latency['median'], 's')} | {fmt(latency['p95'], 's')} | {fmt(latency['mean'], 's')} | "
            f"{m['enqueues_per_second']:.1f} | {m['connections']:,} | {m['client_cpu_ms_per_enqueue']:.2f} ms |"
        )
    share = client.get("ratio_of_medians") or {}
    low, high = share.get("interval") or [None, None]
    if share.get("ratio") is not None:
        out += [
            "",
            f"New connection ÷ keep-alive, medians: {share['ratio']:.2f}x (90% bootstrap interval "
            f"{low:.2f}-{high:.2f}).",
        ]
    if measured:
        out += [
            "",
            f"Measured on its own (`{measured.get('command', 'python -m bench --only client')}`, "
            f"{measured.get('started', '?')}, commit {measured.get('commit', '?')}, load average "
            f"{measured.get('load_average', '?')}), after the rest of this report: its figures were added to "
            "results.json and the report rendered again.",
        ]
    return [*out, ""]


def _row(summary: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    return next((row for row in summary if row["figure"].startswith(prefix)), {})


def _largest_phases(profile: dict[str, Any], count: int = 3) -> list[tuple[str, dict[str, Any]]]:
    phases = [(name, value) for name, value in profile.items() if not name.startswith("after") and value.get("median")]
    return sorted(phases, key=lambda item: -item[1]["median"])[:count]


def _phase_text(name: str, value: dict[str, Any]) -> str:
    calls = value.get("calls")
    return f"{name.split(':')[0]} {fmt(value.get('median'), 's')}" + (
        f" ({calls})" if calls and calls != "none" else ""
    )


def _calls_in(profile: dict[str, Any], prefix: str) -> str:
    phase: dict[str, Any] = next((value for name, value in profile.items() if name.startswith(prefix)), {})
    return str(phase.get("calls") or "?")


def _phase_median(profile: dict[str, Any], prefix: str) -> float | None:
    return next((value.get("median") for name, value in profile.items() if name.startswith(prefix)), None)


def _dollars(cost: dict[str, Any], prefix: str) -> float:
    return sum(
        line["dollars_per_million_runs"] for line in cost.get("lines", []) if line["component"].startswith(prefix)
    )


def _recommendations(results: dict[str, Any]) -> list[str]:
    """What the measurements say to change, each point with the figures behind it: regenerated from every run's
    results, so it never recommends what the figures show done."""
    f = results["figures"]
    summary = results.get("summary", [])
    celery = results.get("celery") or {}
    out = ["## What the measurements say to change", ""]
    out += _dispatch_advice(f, summary, celery)
    out += _throughput_advice(f, summary, celery)
    out += _checkpoint_advice(f)
    out += _cost_advice(f)
    out += _cold_advice(f, summary)
    out += _idle_advice(f, summary)
    out += _recovery_advice(f, summary)
    return out


def _dispatch_advice(f: dict[str, Any], summary: list[dict[str, Any]], celery: dict[str, Any]) -> list[str]:
    warm_row, fresh_row = _row(summary, "1. "), _row(summary, "1b. ")
    profile = f.get("dispatch_profile") or {}
    if warm_row.get("value") is None:
        return []
    celery_p50 = (celery.get("dispatch") or {}).get("median")
    share = warm_row.get("ratio")
    api = _phase_median(profile, "API")
    sqs = _phase_median(profile, "SQS")
    claim = _phase_median(profile, "claim")
    spawn = _phase_median(profile, "spawn")
    child = _phase_median(profile, "job process")
    outside = sum(value or 0.0 for value in (api, sqs, claim))
    out = [
        "### Dispatch (figures 1, 1b)",
        "",
        f"With warm job hosts (the default) a dispatch takes {fmt(warm_row['value'], 's')} at the median"
        + (f", {share:.1f}x Celery's {fmt(celery_p50, 's')}" if share is not None else "")
        + f" (target ≤ 1.5x: {verdict(warm_row.get('pass'))}). The largest phases: "
        + "; ".join(_phase_text(name, value) for name, value in _largest_phases(profile))
        + ".",
        "",
    ]
    if fresh_row.get("value") is not None:
        fresh_share = fresh_row.get("ratio")
        interpreter = _phase_median(f.get("dispatch_profile_fresh") or {}, "job process: interpreter")
        out += [
            f"A new interpreter per run (`RUNLY_WARM_HOSTS=false`) takes {fmt(fresh_row['value'], 's')}"
            + (f", {fresh_share:.1f}x Celery's" if fresh_share is not None else "")
            + f" (target ≤ 3x: {verdict(fresh_row.get('pass'))}), {fmt(interpreter, 's')} of it the interpreter's "
            "start and imports: the phase warm hosts remove. It stays the fallback when a host cannot start.",
            "",
        ]
    if warm_row.get("pass") is not False:
        return out
    imports = {row["module"]: row for row in (f.get("imports") or {}).get("top imports (cumulative ms)", [])}
    out += [
        f"The job process is no longer where the time goes: spawn (the agent's request to the host, fork, pid "
        f"back) {fmt(spawn, 's')} and the forked child's setup {fmt(child, 's')}. Before the agent even starts a "
        f"job, the API ({fmt(api, 's')}), the SQS hop ({fmt(sqs, 's')}) and the claim ({fmt(claim, 's')}) take "
        f"{fmt(outside, 's')}"
        + (f", {outside / celery_p50:.1f}x Celery's whole dispatch" if celery_p50 else "")
        + ". Celery's `apply_async` is one SendMessage from the caller's process to the worker's poll; a runly "
        "enqueue is an HTTP request through API Gateway, an authorizer and the API function, which read and write "
        "DynamoDB before SendMessage, and the agent writes the claim before it starts the job. Those calls are the "
        "product (authenticated API, durable run record, exactly-one owner)"
        + (
            ", and they alone exceed 1.5x Celery's dispatch here: the target is out of reach by tuning. What "
            "shortens them:"
            if celery_p50 and outside > DISPATCH_RATIO_WARM * celery_p50
            else ". What shortens them:"
        ),
        "",
    ]
    ideas: list[str] = []
    api_calls = _calls_in(profile, "API")
    if _authorizer_ttl() in ("0 s", "?") and "KEY/KEY" in api_calls:
        ideas.append(
            "**Authorizer results cached** (runly_core/resources.py `AUTHORIZER_RESULT_TTL_SECONDS`, "
            f"{_authorizer_ttl()} "
            "today): the authorizer Lambda and its key read (dynamodb GetItem KEY/KEY) would run once per key per "
            "TTL, not per request; the price is that a revoked key works until its cached answer expires."
        )
    reads = [call for call in api_calls.split(", ") if "GetItem" in call and "KEY/KEY" not in call]
    if len(reads) >= 2:
        ideas.append(
            f"**Fewer reads in POST /runs** (functions/logic/runs.py): before its PutItem the API reads "
            f"{', '.join(reads)} in series; one BatchGetItem, or a per-container cache for a few seconds (pins and "
            "versions change rarely), removes round trips."
        )
    if claim is not None and spawn is not None:
        ideas.append(
            f"**Start the fork while the claim is in flight** (node_agent/supervisor.py): the claim "
            f"({_calls_in(profile, 'claim')}, {fmt(claim, 's')}) and the spawn ({fmt(spawn, 's')}) run one after the "
            "other; the host could fork the child (and the child build the spec, job class and config) "
            "concurrently, the child waiting for a 'go' the agent sends once the claim succeeded (SIGKILLed if it "
            "failed). It saves the shorter of the two; the job's first line still runs only after the claim."
        )
    heavy = [row for row in imports.values() if row.get("depth", 0) >= 1][:3]
    if heavy and fresh_row.get("pass") is False:
        ideas.append(
            "**Lighter imports** for the fallback (and a host's start): the costliest in a new interpreter are "
            + ", ".join(f"{row['module']} {row['cumulative_ms']:.0f} ms" for row in heavy)
            + " (cumulative; the import table above)."
        )
    out += [f"{index}. {idea}" for index, idea in enumerate(ideas, 1)]
    out.append("")
    return out


def _authorizer_ttl() -> str:
    try:
        from runly_core.resources import AUTHORIZER_RESULT_TTL_SECONDS
    except ImportError:
        return "?"
    return f"{AUTHORIZER_RESULT_TTL_SECONDS} s"


def _throughput_advice(
    f: dict[str, Any], summary: list[dict[str, Any]], results_celery: dict[str, Any] | None = None
) -> list[str]:
    one, two, fresh = _row(summary, "2. Throughput, 1 node"), _row(summary, "2. Throughput, 2"), _row(summary, "2b.")
    if one.get("value") is None:
        return []
    runs = ((f.get("throughput") or {}).get("1") or [{}])[0]
    cpu = runs.get("cpu_ms_per_run") or {}
    cpu_text = "; ".join(f"{name} {value:.0f} ms" for name, value in cpu.items())
    moto = next((value for name, value in cpu.items() if name.startswith("moto")), None)
    out = [
        "### Throughput (figure 2)",
        "",
        f"One node with warm job hosts runs {fmt(one['value'], '')} runs/s"
        + (f" against Celery's {fmt(one.get('celery'), '')} tasks/s ({one['ratio']:.2f}x" if one.get("ratio") else "")
        + (f"; target ≥ 1x: {verdict(one.get('pass'))})" if one.get("ratio") else "")
        + f"; two nodes {fmt(two.get('value'), '')}"
        + (f" (Celery, two workers: {fmt(two.get('celery'), '')})" if two.get("celery") else "")
        + (f"; a new interpreter per run {fmt(fresh.get('value'), '')} on one node" if fresh.get("value") else "")
        + f". CPU per run with warm hosts: {cpu_text}.",
    ]
    celery_runs = (((results_celery or {}).get("throughput") or {}).get("1") or [{}])[0]
    celery_moto = next((v for k, v in (celery_runs.get("cpu_ms_per_run") or {}).items() if k.startswith("moto")), None)
    if moto is not None and moto > sum(value for name, value in cpu.items() if not name.startswith("moto")):
        out[-1] += (
            f" The moto server takes the most ({moto:.0f} ms a run: {1000 / moto:.0f} runs/s would use all of "
            "one core"
            + (f"; a Celery task costs it {celery_moto:.0f} ms" if celery_moto is not None else "")
            + "), and its SQS calls slow down with the queue's depth (above): on this machine a node waits on moto, "
            "not on its jobs. "
            + (
                "Two nodes were no faster than one: on the same 2 cores they add contention for moto, not capacity. "
                if two.get("value") is not None and two["value"] <= one["value"]
                else ""
            )
            + "What runly controls is the calls a run makes (above: a receive, the claim and the outcome's writes, "
            "the delete); on AWS, where a call's time does not grow with the queue and the queue is not on the node's "
            "cores, the figure to watch is runs/s per node with each node on its own machine."
        )
    if one.get("pass") is False:
        out.append(
            "To go faster per node: raise the default capacity for short jobs (runs are processes of their own; a "
            "forked run costs a few ms of CPU), and end a run with fewer calls in series after the job exits."
        )
    out.append("")
    return out


def _checkpoint_advice(f: dict[str, Any]) -> list[str]:
    checkpoints = f.get("checkpoints") or {}
    modes = checkpoints.get("modes") or {}
    default = modes.get("default (every 2 s)") or {}
    if not default:
        return []
    each = checkpoints.get("per_checkpoint") or {}
    cpu = (each.get("reporter_cpu") or {}).get("median")
    transaction = (each.get("transaction") or {}).get("median")
    out = [
        "### Checkpoints (figure 3)",
        "",
        f"At the default 2 s interval a {checkpoints['items']:,}-item no-op run takes no checkpoint while its items "
        f"run (median {(default.get('checkpoints_inside') or {}).get('median') or 0:g}), so its overhead is zero by "
        f"construction: the measured {fmt(default.get('overhead'), 'fraction')} of items/s "
        f"[{_interval(default.get('overhead_interval'))}] and {fmt(default.get('cpu_overhead'), 'fraction')} of CPU "
        f"[{_interval(default.get('cpu_overhead_interval'))}] are the machine's noise.",
    ]
    if cpu is not None:
        out[-1] += (
            f" When checkpoints do fall inside, each costs the job process {fmt(cpu * 1000, 'ms')} of CPU: "
            f"{cpu / 2:.2%} of a core at one every 2 s (figure 3c). Nothing to change in the SDK."
        )
    frequent = modes.get("every 0.01 s") or {}
    wall, extra = frequent.get("overhead"), frequent.get("cpu_overhead")
    if wall is not None and extra is not None and wall > extra + 0.1:
        out[-1] += (
            f" Forced every 0.01 s ({(frequent.get('checkpoints_inside') or {}).get('median') or 0:g} inside), the "
            f"items/s drop {wall:.1%} while the job's CPU grows {extra:.1%}: the rest is "
            "the checkpoint's write — the agent's and moto's work — on the same 2 cores; on AWS the write is not "
            "on the node."
        )
    if transaction is not None and transaction > 0.05:
        out[-1] += (
            f" The round trip is long on this stack ({fmt(transaction, 's')} per DynamoDB transaction on moto, "
            "which copies the table); the job does not wait for it."
        )
    out.append("")
    return out


def _cost_advice(f: dict[str, Any]) -> list[str]:
    single, batch = f.get("cost") or {}, f.get("cost_batch") or {}
    if not single:
        return []
    floor = _dollars(single, "API Gateway") + _dollars(single, "SQS") + _dollars(single, "DynamoDB write")
    requests = f.get("requests") or {}
    per_run = {f"{row['service']} {row['operation']} {row['item']}".strip(): row["per_run"]
               for row in requests.get("calls_per_run", [])}  # fmt: skip
    agent_writes = sum(v for k, v in per_run.items() if k.startswith("dynamodb UpdateItem RUN"))
    batch_requests = f.get("requests_batch") or requests
    batch_per_run: dict[str, float] = defaultdict(float)
    for row in batch_requests.get("calls_per_run", []):
        batch_per_run[f"{row['service']} {row['operation']}"] += row["per_run"]
    out = [
        "### Cost (figure 4)",
        "",
        f"One POST /runs per run: ${single.get('all_in_total', 0):.2f} per million short runs all-in "
        f"(${single.get('measured_total', 0):.2f} counted). API Gateway, SQS and DynamoDB writes alone make "
        f"${floor:.2f}, so one run per HTTP request cannot reach $3 at list prices by trimming the functions.",
    ]
    if batch:
        out[-1] += (
            f" The batch path (POST /runs/batch, {batch.get('runs_per_http_request', 0):.0f} runs a request): "
            f"${batch.get('all_in_total', 0):.2f} all-in (${batch.get('measured_total', 0):.2f} counted): "
            + ("within the target." if batch.get("all_in_total", 99) <= 3 else "still above the target.")
        )
    best = batch or single
    gap = best.get("all_in_total", 0) - 3.0
    if gap > 0:
        # A write unit's price: the bill's own units (the recorder's, index writes in) where it has them.
        units = best.get("write_units_per_run") or batch_requests.get("write_units_per_run") or 1
        wru = _dollars(best, "DynamoDB write") / max(1e-9, units)
        receives = batch_per_run.get("sqs ReceiveMessage", 0.0)
        options = [
            (f"one write fewer per run (${wru:.2f}: the record is written at enqueue, claim and outcome)", wru,
             "a state the record no longer keeps (the claim's Running and its lease: ownership would rest on the "
             "message's visibility alone)"),
            (f"`run_events` 'off' where nobody subscribes (${_dollars(best, 'EventBridge'):.2f})",
             _dollars(best, "EventBridge"), "no run events"),
            (f"receiving up to 10 messages per ReceiveMessage ({receives:.2f} a run now, one free slot at a time: "
             f"at most ${max(0.0, receives - 0.1) * 0.4:.2f})", max(0.0, receives - 0.1) * 0.4,
             "messages held by a node that cannot start them yet, delayed for the others"),
        ]  # fmt: skip
        chosen = [option for option in options if option[1] >= gap] or options
        out += [
            "",
            f"The batch path is ${gap:.2f} above the target. What would close it"
            + (" on its own: " if chosen is not options else ": none alone; together: ")
            + "; or ".join(text for text, _, _ in chosen)
            + ". The price of each: "
            + "; ".join(price for _, _, price in chosen)
            + ".",
        ]
    out += [
        "",
        "What is left per run, largest first (batch path where measured):",
        "",
    ]
    lines = sorted((batch or single).get("lines", []), key=lambda line: -line["dollars_per_million_runs"])[:4]
    for index, line in enumerate(lines, 1):
        component = line["component"]
        advice = ""
        if component.startswith("DynamoDB write"):
            best_bill = batch or single
            index_units = best_bill.get("index_write_units_per_run")
            advice = (
                f"the run's record is written {1 + agent_writes:.0f} times (created, claimed, ended: "
                f"{agent_writes:.0f} UpdateItems by the agent)"
                + (
                    f"; of its {best_bill.get('write_units_per_run', 0):.1f} WRU, {index_units:.1f} are index writes "
                    "(every index projects ALL, so each write of the run is written again into each index it is "
                    "in, and a claim or outcome moves the lease index's key: a delete and a put) and the rest are "
                    "the item's own, 1 WRU per KB of the larger of before and after: lean projections and a small "
                    "hot item (issue 14) take most of it."
                    if index_units is not None
                    else "; each under 1 KB is 1 WRU, so only fewer writes save."
                )
            )
        elif component.startswith("SQS"):
            sqs = {k: v for k, v in batch_per_run.items() if k.startswith("sqs ")}
            advice = ", ".join(f"{name.removeprefix('sqs ')} {value:.2f}" for name, value in sqs.items()) + " per run"
            if sqs.get("sqs DeleteMessage", 0) >= 0.5:
                advice += (
                    ": DeleteMessageBatch for outcomes recorded within the same heartbeat tick would bill up to 10 "
                    "deletes as one request."
                )
        elif component.startswith("EventBridge"):
            advice = f"follows `run_events` ({single.get('run_events')}): 'off' for deployments without subscribers."
        elif component.startswith("API Gateway"):
            advice = "one request per enqueue: the batch endpoint divides it by the batch size."
        out.append(
            f"{index}. {component}: ${line['dollars_per_million_runs']:.2f}" + (f" — {advice}" if advice else "")
        )
    out.append("")
    return out


def _cold_advice(f: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    row = _row(summary, "5. ")
    reps = (f.get("cold_start") or {}).get("reps") or []
    if row.get("value") is None or not reps:
        return []
    slowest = max(reps, key=lambda rep: rep["cold_total_s"])
    phases = slowest["phases"]
    out = [
        "### Package cold start (figure 5)",
        "",
        f"Median {fmt(row['value'], 's')} against 2 s ({verdict(row.get('pass'))}); the slowest repetition "
        f"{fmt(slowest['cold_total_s'], 's')}: install {fmt(phases.get('install'), 's')}, the warm host's start "
        f"{fmt(phases.get('warm host start'), 's')} (it imports the package's jobs, for the first time in a new "
        "environment).",
    ]
    if slowest["cold_total_s"] > 2.0:
        out[-1] += (
            " Over 2 s in that repetition: the install and the host's first imports are both on a new version's "
            "first run's path, and both slow down with the machine's load; the median is the target's figure."
        )
    out.append("")
    return out


def _idle_advice(f: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    idle = f.get("idle") or {}
    schedule = idle.get("schedule") or {}
    if not idle:
        return []
    rss_row = _row(summary, "6c.")
    whole_rate = (idle.get("whole_run") or {}).get("requests_per_minute", 0.0)
    out = ["### Idle node (figure 6)", ""]
    if schedule:
        out.append(
            f"The agent's schedule makes {schedule['requests_per_minute']:.2f} requests a minute: "
            f"{schedule['polls_per_minute']:g} long polls (SQS's longest wait, 20 s) and a node write every "
            f"{schedule['node_write_seconds'] / 60:g} minutes. The {idle.get('seconds', 0):.0f} s window measured "
            f"{idle.get('requests_per_minute', 0):.2f} and the whole run {whole_rate:.2f}. "
            + (
                "≤ 3 a minute is the long polls alone: any periodic write goes over it. Within the target, an idle "
                "node would write its record only when it joins, leaves or changes state, and the API would tell a "
                "live idle node from a dead one otherwise (its queue's poll activity is not visible to it, so the "
                "price is that a node that died idle shows until it is cleaned up); or accept 3.1 and say so in the "
                "target."
                if schedule["requests_per_minute"] > 3
                else "Within the target."
            )
        )
    if rss_row.get("value") is not None:
        memory = idle.get("memory_by_import") or {}
        heavy = max(((name, value - previous) for (name, value), previous in
                     zip(list(memory.items())[1:], list(memory.values())[:-1], strict=False)),
                    key=lambda item: item[1], default=None)  # fmt: skip
        out += [
            "",
            f"RSS {fmt(rss_row['value'], 'MB')} against 60 MB ({verdict(rss_row.get('pass'))})"
            + (
                f"; the largest step in the memory probe is {heavy[0].lstrip('+ ')} (+{heavy[1]:.1f} MB)"
                if heavy
                else ""
            )
            + ". A warm host is a process of its own (figure 6e), bounded by `max_warm_hosts` and stopped after "
            "`warm_host_idle_seconds` without a run, so an idle node has none after ten minutes.",
        ]
    out.append("")
    return out


def _recovery_advice(f: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    row = _row(summary, "7.")
    if row.get("value") is None:
        return []
    worst = ((f.get("recovery") or {}).get("seconds") or {}).get("max")
    return [
        "### Recovery (figure 7)",
        "",
        f"Median {fmt(row['value'], 's')}, worst {fmt(worst, 's')} against {row['target'].split('= ')[-1]} "
        f"({verdict(row.get('pass'))})"
        + (
            ": nothing to change."
            if row.get("pass")
            else ": see the 'beyond the lease' column above for how much of it the dead node's open poll took."
        ),
        "",
    ]


def _method() -> list[str]:
    return [
        "## How the numbers are made",
        "",
        "- Everything runs on the embedded stack: moto in server mode (SQS, DynamoDB, S3), the local gateway "
        "calling the deployed Lambda handlers, real agent processes. moto answers in milliseconds on loopback; on "
        "AWS each DynamoDB/SQS call takes ~5-20 ms, so on AWS the API and claim phases grow and the job process's "
        "start does not. moto also takes CPU from the same 2 cores, for runly and Celery alike.",
        "- Time is `time.time()` on one machine everywhere (bench, hook, agent log lines with ms resolution, jobs).",
        "- The AWS-call hook registers `before-call`/`after-call` handlers on every botocore session of the "
        "gateway and agent processes and writes one JSON line per call (`bench/counting.py` reads them); job "
        "processes and warm hosts run with `python -I` and never load it.",
        "- Medians and percentiles interpolate linearly between closest ranks (`bench/stats.py`); intervals of "
        "ratios of medians are bootstrap percentile intervals (2,000 resamples, fixed seed).",
        "- Celery runs from `bench/.venv-celery` (built by `make bench` from `bench/requirements-bench.txt`), "
        "against the same moto server, with queues made beforehand (`predefined_queues`), no result backend, "
        "remote control off (SQS has no broadcast), and `--without-gossip --without-mingle --without-heartbeat`.",
        "- `python -m bench --only SECTION[,SECTION]` runs some sections (its report goes to the run's scratch "
        "directory); `--render results.json` writes the report again from a results file.",
        "",
    ]
