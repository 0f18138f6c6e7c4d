"""bench/REPORT.md from results.json: the machine, the commands, each figure beside its target and Celery,
the profile of a dispatch, the bill of a run, and what would close each gap (with the numbers behind it)."""

from __future__ import annotations

from typing import Any

from bench.stats import ratio

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
        return f"{value:+.1%}"
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
    lines = ["| phase | median | p95 | share of the median dispatch |", "| --- | --- | --- | --- |"]
    for name, summary in profile.items():
        share = ratio(summary.get("median"), total)
        lines.append(
            f"| {name} | {fmt(summary.get('median'), 's')} | {fmt(summary.get('p95'), 's')} "
            f"| {'-' if share is None or name.startswith('after') else f'{share:.0%}'} |"
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
    lines.append(f"| **with the estimated lines** | | **${cost.get('all_in_total', 0):.2f}** | |")
    return "\n".join(lines)


def _throughput_table(results: dict[str, Any]) -> str:
    lines = [
        "| system | consumers | rep. | runs done | enqueue rate | first job after | to all terminal | runs/s "
        "| steady runs/s | 100-run windows, runs/s: median (min-max) | CPU per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    celery = results.get("celery") or {}
    sides = [("runly", "node", results["figures"].get("throughput") or {}),
             ("Celery", "worker", celery.get("throughput") or {})]  # fmt: skip
    tuned = celery.get("tuned_throughput")
    if tuned:
        sides.append((f"Celery, {tuned['setting']}", "worker", {"1": [tuned]}))
    for system, consumer, by_count in sides:
        for count, reps in by_count.items():
            for index, rep in enumerate(reps, 1):
                windows = rep.get("window_rates") or {}
                window_text = (
                    f"{windows['median']:.2f} ({windows['min']:.2f}-{windows['max']:.2f})" if windows.get("n") else "-"
                )
                cpu = "; ".join(f"{name} {value:.0f} ms" for name, value in (rep.get("cpu_ms_per_run") or {}).items())
                lines.append(
                    f"| {system} | {count} {consumer}{'s' if count != '1' else ''} | {index} | "
                    f"{rep['completed']}/{rep['runs']} | {fmt(rep.get('enqueue_per_second'), '')}/s | "
                    f"{fmt(rep.get('first_job_started_after'), 's')} | "
                    f"{fmt(rep.get('seconds_to_all_terminal'), 's')} | "
                    f"{fmt(rep.get('runs_per_second'), '')} | {fmt(rep.get('steady_runs_per_second'), '')} | "
                    f"{window_text} | {cpu or '-'} |"
                )
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    celery = results.get("celery") or {}
    load_start, load_end = meta.get("load_average_at_start"), meta.get("load_average_at_end")
    highest = max(load_start[0], (load_end or [0])[0]) if load_start else 0.0
    loaded = bool(machine.get("cores") and highest > 0.5 * machine["cores"])
    versions = ", ".join(f"{name} {version}" for name, version in machine.get("versions", {}).items())
    celery_versions = ", ".join(f"{k} {str(v).split()[0]}" for k, v in (celery.get("versions") or {}).items())
    out = [
        "# runly benchmarks",
        "",
        f"Generated by `make bench` on {meta['started']} in {meta.get('seconds', 0) / 60:.1f} minutes"
        + (" — **quick mode: few repetitions, not for quoting**" if meta.get("quick") else "")
        + ". Every number below is from `bench/results.json` of the same run; `bench/latency.png` charts the "
        "latency distributions and the dispatch profile.",
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
        + ", ".join(f"{k} {v}" for k, v in meta.get("sizes", {}).items())
        + ".",
        "",
    ]
    steps = meta.get("step_seconds") or {}
    if steps:
        out += [
            f"Where the run's {meta.get('seconds', 0) / 60:.1f} minutes went (the goal is 15 minutes on 2 cores): "
            + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in steps.items())
            + f". Throughput runs {meta.get('sizes', {}).get('throughput_runs', 1000):,} runs per measurement; at "
            "runly's present rate that is most of the time.",
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
        "better; throughput: higher is better). 1b is a projection from measured parts, not a measurement of a "
        "built feature (see 1).",
        "",
    ]
    out += _details(results)
    out += _recommendations(results)
    out += _method()
    return "\n".join(out) + "\n"


def _details(results: dict[str, Any]) -> list[str]:
    f = results["figures"]
    celery = results.get("celery") or {}
    dispatch = f.get("dispatch") or {}
    out = [
        "## 1. Dispatch latency",
        "",
        "One agent with default settings (capacity 2, long poll 20 s), the package installed, one run at a time: "
        "the bench takes `time.time()`, POSTs /runs over HTTP (the local gateway runs the authorizer and the API "
        "function), and the stamp job notes `time.time()` as its first line; the next run is enqueued once the "
        "agent has recorded the outcome. Celery: `apply_async` -> the task's first line, one worker (prefork, "
        "default concurrency), the same way.",
        "",
        f"- runly: median {fmt(dispatch.get('median'), 's')}, p95 {fmt(dispatch.get('p95'), 's')}, "
        f"min {fmt(dispatch.get('min'), 's')}, max {fmt(dispatch.get('max'), 's')}, {dispatch.get('runs')} runs; "
        f"the HTTP enqueue alone {fmt(_median(dispatch.get('enqueue_http')), 's')} median.",
    ]
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
        "agent (SendMessage started, ReceiveMessage returned the message), the agent's log lines (claimed, package "
        "ready, job process started, outcome), the job's (its module imported, its first line).",
        "",
        _phase_table(f.get("dispatch_profile") or {}, dispatch.get("median")),
        "",
    ]
    imports = f.get("imports") or {}
    if imports:
        bare = imports.get("bare interpreter (python -I -c pass)") or {}
        full = imports.get("interpreter + runly.host + job module") or {}
        out += [
            f"A job process's interpreter, timed outside the agent (medians of 10): `python -I -c pass` "
            f"{fmt(bare.get('median'), 's')}; `python -I -c 'import runly.host, benchjobs.jobs'` "
            f"{fmt(full.get('median'), 's')}. What the imports cost (`-X importtime`, one run; depth 0 is what was "
            "imported, deeper is what that imported):",
            "",
            "| module | depth | self | cumulative |",
            "| --- | --- | --- | --- |",
        ]
        for row in imports.get("top imports (cumulative ms)", []):
            out.append(f"| {row['module']} | {row.get('depth', 0)} | {row.get('self_ms', 0):.0f} ms | "
                       f"{row['cumulative_ms']:.0f} ms |")  # fmt: skip
        out.append("")
    probe = f.get("warm_host_probe") or {}
    if probe.get("n"):
        out += [
            f"**Warm job host probe** (`bench/warm_host_probe.py`, {probe['n']} runs): a process in the package's "
            "environment imports runly.host and the job module once, then forks a child per run that makes its own "
            "process group, builds the run spec, loads the job class, makes the job and runs it: fork -> first line "
            f"median {fmt(probe.get('median'), 's')}, p95 {fmt(probe.get('p95'), 's')}. Replacing the spawn, "
            "interpreter and job-setup phases above by it gives the projected dispatch p50 with warm hosts: "
            f"**{fmt(f.get('warm_host_projection'), 's')}** (figure 1b).",
            "",
        ]
    out += [
        "## 2. Throughput",
        "",
        "N trivial runs (the stamp job) enqueued at once over HTTP from a thread pool of 8 while no node serves "
        "their environment; then the node(s) start, each at its default capacity (2); runs/s = N ÷ (last run "
        "terminal - nodes started), agent start-up included; 'steady' = (N-1) ÷ (last - first completion). Each "
        "measurement has a queue of its own: an agent stopped while long-polling leaves its poll open on the "
        "server, which would take messages of the next measurement (see 7). Celery: N tasks sent at once while no "
        "worker runs, then the worker(s) start (prefork, default concurrency, default transport options); a task's "
        "note of its first line marks it done (tasks are acknowledged early: its message is deleted by then). CPU "
        "per run: CPU time of the job processes (the agents' reaped children), the agents, the workers, and the "
        "moto server, during the measurement, ÷ runs.",
        "",
        _throughput_table(results),
        "",
    ]
    checkpoints = f.get("checkpoints") or {}
    if checkpoints:
        out += [
            "## 3. Checkpoint overhead",
            "",
            "A no-op item job on the real agent; items/s measured by the job itself from its first item to its last "
            "(the checkpoint the SDK takes when the items end is outside the timed part). 'none' sets the interval "
            "to 1e9 s, which leaves only that final checkpoint. A checkpoint is a DynamoDB transaction (fence + "
            "put) that the job's reporter thread waits for; items go on meanwhile. 100,000 no-op items take a "
            "fraction of a second, less than the default interval, so no checkpoint falls inside the timed part in "
            "either of the first two modes: their difference is the machine's noise (see the spread of 'none' "
            "alone). The 0.1 s and 0.01 s rows, and the 20-times-longer runs, show what checkpoints cost.",
            "",
            "| checkpoints | items | items/s median | min - max | runs | checkpoints per run | overhead vs none |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, mode in checkpoints["modes"].items():
            speed = mode["items_per_second"]
            out.append(
                f"| {name} | {mode.get('items', checkpoints['items']):,} | {speed['median']:,.0f} | "
                f"{speed['min']:,.0f} - {speed['max']:,.0f} | {speed['n']} | {mode['checkpoints']['median']:.0f} | "
                f"{fmt(mode.get('overhead'), 'fraction')} |"
            )
        out.append("")
    out += _cost_section(f)
    out += _cold_section(f)
    out += _idle_section(f)
    out += _recovery_section(f)
    return out


def _cost_section(f: dict[str, Any]) -> list[str]:
    requests = f.get("requests") or {}
    cost = f.get("cost") or {}
    if not requests:
        return []
    sizes = ", ".join(f"{kind} {size} B" for kind, size in requests.get("item_sizes", {}).items())
    return [
        "## 4. AWS requests and dollars per run",
        "",
        f"Counted by a botocore hook (`bench/hooks/sitecustomize.py`, on the PYTHONPATH of the gateway and agent "
        f"processes only) over the {requests['runs']} dispatch runs ({requests['window_seconds']:.0f} s); what an "
        "idle agent makes anyway in that time (figure 6, measured on an agent of its own) is subtracted; "
        f"{requests['retries']} retries seen. The client only enqueued; it never polled the API. DynamoDB request "
        f"units from the sizes of the items as the calls carried them ({sizes}; 0 B: not found): reads 1 RRU per "
        "4 KB strongly consistent and ½ eventually consistent, at least one unit; writes 1 WRU per 1 KB; "
        "transactions twice that.",
        "",
        _requests_table(requests),
        "",
        f"Per run: {requests['read_units_per_run']:.2f} RRU and {requests['write_units_per_run']:.2f} WRU. Lambda "
        f"durations, per enqueue: authorizer {fmt(_median(requests.get('authorizer_ms')), 'ms')} (request start -> "
        f"its key read returned), API function {fmt(_median(requests.get('api_function_ms')), 'ms')} (the rest of "
        f"the HTTP round trip: an upper bound, the gateway's own work included); memory as the CDK stack sets it "
        f"({cost.get('function_memory_mb')} MB). Prices: `bench/prices-us-east-1.json` (list prices as of "
        f"{cost.get('prices_as_of')}).",
        "",
        _cost_table(cost),
        "",
        "The estimated lines are what the deployed stack adds and the embedded stack does not run: the table "
        "stream's publisher puts one EventBridge event per state a run enters (Queued, Running, Succeeded), and "
        "Lambda logs START/END/REPORT lines (~350 B) plus what the functions print (measured on the local gateway "
        "at its log level). Not counted: a client polling GET /runs/{id} for the result (each poll: an API Gateway "
        "request, two Lambda invocations, a key read and a run read).",
        "",
    ]


def _cold_section(f: dict[str, Any]) -> list[str]:
    cold = f.get("cold_start") or {}
    if not cold:
        return []
    out = [
        "## 5. Package cold start",
        "",
        f"A bundle of {cold['bundle_bytes'] / 1024**2:.1f} MB (the bench's job project, runly and its dependencies). "
        "First repetition: a version this node never ran; then the same version again after removing its "
        "environment from the node's cache. Phases from the agent's log lines (package cache) and the job's "
        "first line.",
        "",
        "| repetition | download | verify | install | start (package ready -> first line) | total |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for index, rep in enumerate(cold["reps"], 1):
        phases = rep["phases"]
        out.append(
            f"| {index}{' (new version)' if rep['new_version'] else ' (evicted)'} | "
            f"{fmt(phases.get('download'), 's')} | {fmt(phases.get('verify'), 's')} | "
            f"{fmt(phases.get('install'), 's')} | {fmt(phases.get('start (spawn -> first line)'), 's')} | "
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
    return [
        "## 6. Idle node",
        "",
        f"An agent of its own in an environment that never gets work ({idle['settings']}), sampled from /proc "
        f"every second for {idle['seconds']:.0f} s while the other benchmarks ran (its CPU time and its requests "
        "are its own).",
        "",
        f"- AWS requests: {idle['requests_per_minute']:.1f}/min: "
        + ", ".join(f"{name} {value:.1f}/min" for name, value in idle.get("by_operation_per_minute", {}).items()),
        f"- RSS: median {rss.get('median') or 0:.1f} MB, max {rss.get('max') or 0:.1f} MB",
        f"- CPU: {idle['cpu_percent']:.2f}% of one core",
        "- Where the memory goes (`bench/memory_probe.py`: RSS after each thing the agent loads, in order): "
        + "; ".join(steps),
        "",
    ]


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
        "items, the node running it is SIGKILLed — its agent and its job process, as when a machine is lost — "
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
        "the run ran again. About one more lease means the killed "
        "agent's long poll, still open on the server, took the message the moment it became visible again and hid "
        "it for another VisibilityTimeout (= the lease): moto does this, and so does SQS "
        f"({SQS_GHOST_POLL_REFERENCES}). "
        "Items repeated = items after the last durable checkpoint (at most one checkpoint interval of work), none "
        "before the watermark.",
        "",
    ]
    return out


def _recommendations(results: dict[str, Any]) -> list[str]:
    """What would close each gap, with the measurement that shows it and the exact change."""
    f = results["figures"]
    summary = {row["figure"]: row for row in results.get("summary", [])}
    profile = f.get("dispatch_profile") or {}

    def phase(name: str) -> float | None:
        return _median(profile.get(name))

    interpreter = phase("job process: interpreter start + imports")
    spawn = phase("spawn: spool, spec file, fork + exec")
    setup = phase("job process: spec, job class, config, job object")
    claim = phase("claim: read run, conditional write, read checkpoint")
    api = phase("API: authorize, record the run (until SendMessage)")
    probe = _median(f.get("warm_host_probe"))
    imports = {row["module"]: row for row in (f.get("imports") or {}).get("top imports (cumulative ms)", [])}
    out = ["## What the measurements say to change", ""]

    out += [
        "### Dispatch (figure 1, 1b)",
        "",
        f"1. **Warm job hosts** (node_agent/job_process.py, a new node_agent/job_host.py, runly/host.py). A new "
        f"interpreter per run costs {fmt(interpreter, 's')} of interpreter start and imports, {fmt(spawn, 's')} of "
        f"spawn and {fmt(setup, 's')} of job setup per run (profile above); a forked child of a process that has the "
        f"package imported reaches the first line in {fmt(probe, 's')}. Build: per bundle SHA-256 (the package "
        "cache's key), one host process `python -I -m runly.host serve` in the package environment, started on "
        "the first run of that version (or when the cache installs it), that imports runly.host and every job "
        "entry point of the manifest, then waits on a Unix socket. Per run the agent sends the spec path and "
        "passes the channel/ack pipe ends and the spool file descriptor (SCM_RIGHTS); the host forks; the child "
        "calls setsid(), dup2s the spool onto stdout/stderr, and runs `run_job` as today; the host answers with "
        "the child's pid and later its exit status (the agent is not the child's parent: it watches the pid with "
        "pidfd_open and signals the process group as now). Isolation is kept: one process per run, own process "
        "group, the agent outside. Invalidation: the host belongs to one SHA-256 — a new version is a new host; "
        "evicting an environment stops its host; an idle host exits after a few minutes. "
        "The host must start no thread before forking (runly.host imports none); hosts are bounded (e.g. "
        "`capacity`, least recently used stopped first).",
        "2. **Fewer imports in the job process** (runly/__init__.py, runly/items.py, runly/contracts.py): "
        + (
            f"runly.items costs {imports['runly.items']['cumulative_ms']:.0f} ms cumulative, of which asyncio "
            f"{imports.get('asyncio', {}).get('cumulative_ms', 0):.0f} ms; runly.contracts "
            f"{imports.get('runly.contracts', {}).get('self_ms', 0):.0f} ms of its own (building every API model). "
            if "runly.items" in imports
            else ""
        )
        + "`runly/__init__.py` imports runly.items eagerly, which imports asyncio at module level: import asyncio "
        "inside `ItemJob.run` for async jobs only. The host needs RunSpec and the channel messages, not every API "
        "model: move those into a small module (or give the API models `defer_build=True`). This shortens the cold "
        "path and a warm host's start alike.",
        f"3. **Claim in one round trip** (node_agent/aws.py `claim`, node_agent/agent.py `_start`): the claim is "
        f"GetItem + conditional UpdateItem + GetItem of the checkpoint, {fmt(claim, 's')} median here. A first "
        "attempt (record.attempt == 0) has no checkpoint: skip that read. Take the common case (Queued) with the "
        "conditional UpdateItem directly and `ReturnValuesOnConditionCheckFailure=ALL_OLD`, falling back to "
        "today's read-then-decide path only when the condition fails (lease held, expired, cancelling).",
        f"4. **Less work in POST /runs** (functions/logic/runs.py `enqueue`, functions/logic/packages.py): "
        f"{fmt(api, 's')} from request to SendMessage. The response computes `queued_reason`, which queries the "
        "nodes index on every enqueue (one Query, ½ RRU): a run just enqueued needs no reason (leave it to GET). "
        "Resolving the version reads the pin and queries every version of the package (so its cost grows with the "
        "versions pushed, job schemas included): GetItem the version when one is named, keep the newest version "
        "on the package's index item for when none is, and cache pins and versions per Lambda container for a "
        "few seconds.",
        "",
        "Even with all four, the peer's path is shorter: `apply_async` is one SQS SendMessage; a runly enqueue is "
        "API Gateway + authorizer + the run's record + SendMessage, and a start is a claim. The warm-host "
        "projection (1b) keeps the API and claim as they are today; items 3 and 4 take off what the profile "
        "shows for those phases.",
        "",
    ]

    throughput_row = next((row for name, row in summary.items() if name.startswith("2. Throughput, 1")), None)
    runs_cpu = [rep.get("cpu_ms_per_run") for rep in (f.get("throughput") or {}).get("1", [])]
    cpu_text = (
        "; ".join(f"{name} {value:.0f} ms" for name, value in runs_cpu[0].items()) if runs_cpu and runs_cpu[0] else ""
    )
    out += [
        "### Throughput (figure 2)",
        "",
        f"One node runs {fmt((throughput_row or {}).get('value'), '')} runs/s against Celery's "
        f"{fmt((throughput_row or {}).get('celery'), '')} tasks/s. CPU per run: {cpu_text or 'see figure 2'}. "
        "On 2 cores a node is bound by the CPU each run's new interpreter takes; a second node on the same "
        "machine adds no CPU, so it adds no throughput. Warm job hosts (above) remove most of the job process's "
        "CPU; the agent's own per-run work (a thread, a spool directory, four DynamoDB/SQS calls) stays.",
        "",
    ]

    cost = f.get("cost") or {}
    lines = {line["component"]: line for line in cost.get("lines", [])}

    def dollars(component: str) -> float:
        return float((lines.get(component) or {}).get("dollars_per_million_runs") or 0.0)

    floor = (
        dollars("API Gateway (HTTP API) requests") + dollars("SQS requests") + dollars("DynamoDB write request units")
    )
    out += [
        "### Cost (figure 4)",
        "",
        f"Counted ${cost.get('measured_total', 0):.2f} per million short runs, "
        f"${cost.get('all_in_total', 0):.2f} with the deployed stack's run events and logs. API Gateway "
        f"(${dollars('API Gateway (HTTP API) requests'):.2f}), three SQS requests "
        f"(${dollars('SQS requests'):.2f}) and three run writes (${dollars('DynamoDB write request units'):.2f}) "
        f"alone make ${floor:.2f}: one run per HTTP request cannot reach $3 at list prices. What would:",
        "",
        f"1. **Run events** (infrastructure/run_events.py): ${dollars('EventBridge events (run state changes)'):.2f} "
        "estimated — one event per state entered. Add `filters` to the stream's event source mapping so only "
        "terminal states reach the publisher (1 event per run: $1.00, and fewer publisher invocations), or make "
        "the bus opt-in per deployment.",
        "2. **Batching under load** (node_agent/aws.py, functions/dal/queue.py): SQS bills a batch of up to 10 "
        "messages as one request. ReceiveMessage already takes up to `free` messages; DeleteMessageBatch for "
        "outcomes recorded in the same heartbeat tick, and a batch enqueue endpoint (POST /runs with a list; "
        "SendMessageBatch) would take SQS and API Gateway + Lambda per run down by up to 10x for bulk "
        "submitters.",
        "3. **Authorizer** (runly/resources.py AUTHORIZER_RESULT_TTL_SECONDS = 0): every request invokes it and "
        f"reads the key (${dollars('Lambda requests: authorizer') + dollars('Lambda duration: authorizer'):.2f} "
        "plus 1 RRU per run). A TTL of 60-300 s removes both for repeat callers; the price is that a revoked key "
        "works until the cached answer expires.",
        "4. **Reads** (see dispatch 3 and 4): skipping the nodes Query, the first attempt's checkpoint read and the "
        "claim's read saves 2.5 RRU per run; reads are cheap ($0.125 per million RRU) but the round trips are not.",
        "",
    ]

    idle = f.get("idle") or {}
    memory = idle.get("memory_by_import") or {}
    settings_mb = None
    keys = list(memory)
    if "+ pydantic, pydantic-settings" in memory and keys:
        settings_mb = memory["+ pydantic, pydantic-settings"] - memory[keys[0]]
    s3_mb = None
    if "+ S3 client" in memory and "+ SQS client" in memory:
        s3_mb = memory["+ S3 client"] - memory["+ SQS client"]
    out += [
        "### Idle node (figure 6)",
        "",
        f"{idle.get('requests_per_minute', 0):.1f} requests/min: "
        + ", ".join(f"{name} {value:.1f}/min" for name, value in idle.get("by_operation_per_minute", {}).items())
        + ". A 20 s long poll (SQS's longest) is 3/min by itself, so ≤ 3/min leaves no room for a periodic node "
        "write. Change (node_agent/agent.py `_heartbeat_loop`/`heartbeat`): while the node runs nothing, write "
        "the node record only on a state change and otherwise every 10 minutes (expires_at = last_seen + 25 min; "
        "`queued_reason` reads it as today) → 3.1/min; per-run heartbeats stay as they are. The price: an idle node "
        "that dies still shows online for up to 25 minutes (a run enqueued meanwhile says 'waiting for a free "
        "node' instead of 'no node online').",
        f"RSS median {(idle.get('rss_mb') or {}).get('median') or 0:.1f} MB against 60 MB. From the memory probe: "
        + (f"pydantic + pydantic-settings {settings_mb:.1f} MB, " if settings_mb is not None else "")
        + (f"the S3 client {s3_mb:.1f} MB. " if s3_mb is not None else "")
        + "Changes: read the agent's settings with a plain pydantic model from os.environ (node_agent/settings.py; "
        "pydantic-settings imports its source providers); create the S3 client on first use (node_agent/aws.py: "
        "an idle node downloads nothing and ships no log).",
        "",
    ]

    recovery = f.get("recovery") or {}
    if recovery:
        out += [
            "### Recovery (figure 7) and stopping",
            "",
            "When a node dies while its long poll is open, the poll lives on at the server and can take the "
            "message of the very run that node held, the moment it becomes visible again — hiding it for another "
            "`lease_seconds` (the receive's VisibilityTimeout): the 'beyond the lease' column. The same happens to "
            "any message that arrives within 20 s after an agent stops (first SIGTERM interrupts the poll; its "
            "docstring expects 'that very instant' only). Change (node_agent/aws.py `receive`): receive with "
            "VisibilityTimeout = 2 x heartbeat_seconds (30 s by default) instead of the lease; the first heartbeat "
            "extends it to the lease as it already does. A message caught by a dead poll then returns after 30 s, "
            "not 60 s, at no extra request.",
            "",
        ]
    return out


def _method() -> list[str]:
    return [
        "## How the numbers are made",
        "",
        "- Everything runs on the embedded stack: moto in server mode (SQS, DynamoDB, S3), the local gateway "
        "calling the deployed Lambda handlers, real agent processes. moto answers in milliseconds on loopback; on "
        "AWS each DynamoDB/SQS call takes ~5-20 ms, so on AWS the API and claim phases grow and the job process's "
        "start does not.",
        "- Time is `time.time()` on one machine everywhere (bench, hook, agent log lines with ms resolution, jobs).",
        "- The AWS-call hook registers `before-call`/`after-call` handlers on every botocore session of the "
        "gateway and agent processes and writes one JSON line per call (`bench/counting.py` reads them); job "
        "processes run with `python -I` and never load it.",
        "- Medians and 95th percentiles interpolate linearly between closest ranks (`bench/stats.py`).",
        "- Celery runs from `bench/.venv-celery` (built by `make bench` from `bench/requirements-bench.txt`), "
        "against the same moto server, with queues made beforehand (`predefined_queues`), no result backend, "
        "remote control off (SQS has no broadcast), and `--without-gossip --without-mingle --without-heartbeat`.",
        "",
    ]
