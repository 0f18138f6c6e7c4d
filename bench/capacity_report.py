"""bench/CAPACITY.md from capacity.json: every design measured, as columns, then each design's partitions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The column the re-keyed table (issue 14, items 1-3) fills in when `python -m bench.capacity --design new` runs on
# its checkout; shown empty until then, so the reader sees where it goes.
EXPECTED_DESIGNS = ("today", "new")


def _money(value: Any) -> str:
    return "-" if value is None else f"${value:,.2f}" if value >= 0.1 else f"${value:,.4f}"


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}" if value >= 0.01 else f"{value:.2%}"


def render(document: Mapping[str, Any]) -> str:
    designs: dict[str, Mapping[str, Any]] = dict(document.get("designs") or {})
    names = [
        *[d for d in EXPECTED_DESIGNS if d in designs or d == "new"],
        *[d for d in designs if d not in EXPECTED_DESIGNS],
    ]
    first = next(iter(designs.values()), document)
    floor: Mapping[str, Any] = first.get("floor") or {}
    workload = first.get("workload") or {}
    prices = first.get("prices") or {}
    out = [
        "# Capacity and bill of the run store (`make capacity`)",
        "",
        "Measured on the embedded stack (moto server, the local gateway with the real API function and authorizer, "
        "real node agents) with a recording proxy in front of moto (bench/recorder.py): every DynamoDB, SQS and S3 "
        "request of every process, each billed as DynamoDB and SQS bill it (bench/billing.py; docs/store.md, "
        '"How the bill is counted"), then scaled to the workload below. Written by `python -m bench.capacity`; '
        "do not edit by hand.",
        "",
        f"**Workload:** {workload.get('new_short_runs_per_second', 0):,.0f} new short runs/s through "
        f"`{workload.get('short_run_path')}` (100 a request) over {workload.get('environments')} environments; "
        f"{workload.get('running_runs', 0):,} running runs heartbeating every {workload.get('heartbeat_seconds')} s "
        f"on {workload.get('nodes', 0):,} nodes ({workload.get('runs_per_node')} runs each, an assumption: the "
        f"issue does not say); {workload.get('config_bytes')} B config, {workload.get('output_bytes')} B output; "
        "run events at the stack's default.",
        "",
        f"**Prices:** AWS us-east-1 on-demand list prices, as of {prices.get('as_of')} (bench/prices-us-east-1.json: "
        "DynamoDB $0.625 per million write request units and $0.125 per million read request units, SQS $0.40 per "
        "million requests of 64 KB, Lambda $0.20 per million requests and $0.0000166667 per GB-s, API Gateway HTTP "
        "API $1.00 per million requests, S3 $0.005 per 1,000 PUT and $0.0004 per 1,000 GET, EventBridge $1.00 per "
        "million events). The DynamoDB figures (after its 2024-11-01 on-demand reduction) were checked on 2026-12-02 "
        "against a published summary of the us-east-1 prices (airbyte.com, July 2025); aws.amazon.com itself is not "
        "reachable from this machine: check the file against aws.amazon.com/*/pricing before quoting.",
        "",
        "**Limits:** a partition key takes at most 1,000 write units/s and 3,000 read units/s (the issue's target: "
        "at most 50% of each); a standard queue holds at most 120,000 messages in flight.",
        "",
        "**Not in the mix** (so not in the figures): the reaper (every minute; it queries each environment's lease "
        "partition for leases expired past the grace, few at steady state), search and the dashboard listing runs, "
        "clients polling GET /runs/{id}, checkpoints, the run-events publisher's own reads and Lambda invocations "
        "(its EventBridge events are in the bill, estimated), and retries after throttling (moto never throttles).",
        "",
        "## The designs side by side",
        "",
        "| figure | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]

    def row(label: str, value: Any) -> None:
        cells = []
        for name in names:
            design = designs.get(name)
            cells.append(
                "(not measured yet: `python -m bench.capacity --design new` on its checkout)"
                if design is None and name == "new" and label.startswith("commit")
                else "-"
                if design is None
                else value(design)
            )
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    def hottest(design: Mapping[str, Any], key: str) -> str:
        parts = design.get("partitions") or []
        if not parts:
            return "-"
        top = max(parts, key=lambda p: p[key])
        limit_key = "share_of_write_limit" if key == "wcu_per_second" else "share_of_read_limit"
        return (
            f"{top[key]:,.0f} ({_share(top[limit_key])} of the limit): {top['table_or_index']} `{top['partition_key']}`"
        )

    row("commit", lambda d: f"`{d.get('commit')}`")
    row("hottest partition, write units/s", lambda d: hottest(d, "wcu_per_second"))
    row("hottest partition, read units/s", lambda d: hottest(d, "rcu_per_second"))
    row(
        "partitions over 50% of a limit",
        lambda d: str(
            sum(1 for p in d.get("partitions") or [] if max(p["share_of_write_limit"], p["share_of_read_limit"]) > 0.5)
        ),
    )
    row("write units per short run (batch path)", lambda d: _num(d.get("write_units_per_short_run")))
    row("of which index writes", lambda d: _num(d.get("index_write_units_per_short_run")))
    row(
        "write units per short run, one POST /runs each",
        lambda d: _num((d.get("write_units_per_short_run_by_path") or {}).get("POST /runs")),
    )
    row("read units per short run (batch path)", lambda d: _num(d.get("read_units_per_short_run")))
    row("$ per million short runs, batch path, all-in", lambda d: _money(d.get("cost_per_million_short_runs")))
    row(
        "$ per million short runs, one POST /runs each, all-in",
        lambda d: _money((d.get("cost_per_million_short_runs_by_path") or {}).get("POST /runs")),
    )
    row(
        "floor: DynamoDB + SQS per million short runs, batch path",
        lambda d: _money(
            ((d.get("floor") or {}).get("short_run") or {})
            .get("dynamodb_and_sqs_per_million", {})
            .get("POST /runs/batch")
        ),
    )
    row(
        "write units per heartbeat",
        lambda d: _num(((d.get("running_hours") or {}).get("per_beat") or {}).get("write_units")),
    )
    row(
        "of which index writes",
        lambda d: _num(((d.get("running_hours") or {}).get("per_beat") or {}).get("index_write_units")),
    )
    row("$ per thousand running run-hours (heartbeats)", lambda d: _money(d.get("cost_per_thousand_running_hours")))
    row(
        "floor: $ per thousand running run-hours",
        lambda d: _money(((d.get("floor") or {}).get("running") or {}).get("per_thousand_running_hours")),
    )
    row(
        "SQS: messages in flight per queue",
        lambda d: (
            f"{(d.get('sqs') or {}).get('in_flight_messages_per_queue', 0):,} "
            f"({_share((d.get('sqs') or {}).get('share_of_in_flight_limit'))} of 120,000)"
        ),
    )
    row(
        "SQS: billed requests/s per queue", lambda d: _num((d.get("sqs") or {}).get("requests_per_second_per_queue"), 0)
    )
    out += [
        "",
        "Targets (issue 14): every partition at most 50% of its limits; at most $3.00 per million short runs all-in "
        "through POST /runs/batch with run events off, $4.00 with terminal events; at most $0.20 per thousand "
        "running run-hours.",
        "",
        "**The floor** is what a durable, fenced run cannot do without (bench/derive.py `protocol_floor`): a short run "
        "writes its item three times (created with its config before the API answers, claimed by a conditional "
        "lease write, completed with its output, conditional on the lease) and one small KEYS_ONLY index entry so "
        "its environment's runs can be listed; its message is sent, received and deleted, ten to a request. With a "
        f"{floor.get('config_bytes', 0):,} B config and a {floor.get('output_bytes', 0):,} B output: "
        + ", ".join(f"{name} {units:g}" for name, units in (floor.get("short_run") or {}).get("writes", {}).items())
        + f" = {(floor.get('short_run') or {}).get('write_units', 0):g} write units "
        f"(${(floor.get('short_run') or {}).get('write_units', 0) * 0.625:.2f} per million runs in DynamoDB alone at "
        "$0.625 per million units; a 1,024-byte config or output plus the item's own attributes crosses 1 KB, so "
        "the create and the completion are 2 units each). A running run: one lease write of at most 1 KB and a "
        "tenth of a ChangeMessageVisibilityBatch per beat.",
        "",
    ]
    for name in names:
        design = designs.get(name)
        if design is None:
            out += [
                f"## Design `{name}`",
                "",
                "Not measured yet. On the re-keyed checkout run "
                f"`python -m bench.capacity --design {name} --beside <this checkout>/bench/capacity.json` "
                "(or copy this capacity.json there first): this file then shows both columns.",
                "",
            ]
            continue
        out += _design_section(name, design)
    return "\n".join(out).rstrip() + "\n"


def _design_section(name: str, design: Mapping[str, Any]) -> list[str]:
    measurement = design.get("measurement") or {}
    mix = measurement.get("mix") or {}
    out = [
        f"## Design `{name}`: partitions at the workload, hottest first",
        "",
        f"Commit `{design.get('commit')}`, measured {measurement.get('measured')} in "
        f"{measurement.get('seconds', 0):.0f} s ({measurement.get('requests_recorded', 0):,} AWS requests recorded): "
        f"an idle window of {mix.get('idle_seconds')} s, {mix.get('single_runs')} runs one POST /runs each, "
        f"{mix.get('batch_runs')} through POST /runs/batch, one run heartbeating every "
        f"{mix.get('long_heartbeat_seconds')} s for {mix.get('long_seconds')} s (counted per beat).",
        "",
        "Tables and indexes as the stack created them (DescribeTable):",
        "",
    ]
    for table in (measurement.get("tables") or {}).values():
        for index in table.get("indexes") or []:
            keys = index["partition_key"] + (f", {index['sort_key']}" if index.get("sort_key") else "")
            extra = f" ({', '.join(index['non_key_attributes'])})" if index.get("non_key_attributes") else ""
            out.append(f"- `{index['name']}`: keys {keys}; projection {index['projection']}{extra}")
    out += [
        "",
        "| table or index | partition key | partitions | WCU/s per partition | RCU/s per partition | of write limit "
        "| of read limit |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in design.get("partitions") or []:
        flag = " **over 50%**" if max(p["share_of_write_limit"], p["share_of_read_limit"]) > 0.5 else ""
        out.append(
            f"| {p['table_or_index']} | `{p['partition_key']}` | {_num(p['partitions'], 0)} | "
            f"{_num(p['wcu_per_second'], 1)} | {_num(p['rcu_per_second'], 1)} | "
            f"{_share(p['share_of_write_limit'])}{flag} | {_share(p['share_of_read_limit'])} |"
        )
    out += [
        "",
        "Units per short run (batch path) and per heartbeat, by partition family, as measured:",
        "",
        "| table or index | partition key | WRU per short run | RRU per short run | WRU per beat | RRU per beat |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    paths = measurement.get("paths") or {}
    batch: Mapping[str, Any] = paths.get("POST /runs/batch") or next(iter(paths.values()), {})
    beat = measurement.get("heartbeat") or {}
    rows: dict[tuple[str, str], list[float]] = {}
    for source, offset in ((batch, 0), (beat, 2)):
        for part in source.get("partitions") or []:
            if part["service"] != "dynamodb":
                continue
            slot = rows.setdefault((part["target"], part["pattern"]), [0.0, 0.0, 0.0, 0.0])
            slot[offset] += part["write_units"]
            slot[offset + 1] += part["read_units"]
    for (target, pattern), values in sorted(rows.items(), key=lambda item: -item[1][0] - item[1][2]):
        label = f"index {target.split('/', 1)[1]}" if "/" in target else "table"
        out.append(f"| {label} | `{pattern}` | " + " | ".join(_num(v, 3) for v in values) + " |")
    if design.get("bills"):
        out += [
            "",
            "The Lambda duration lines are upper bounds: measured on moto under this machine's load (a batch of 100 "
            "runs is one TransactWriteItems/BatchWriteItem and some reads on moto, whose transactions copy the "
            "table), less the time the recorder added; `make bench` bills its own windows' durations, without the "
            "proxy. The DynamoDB and SQS lines are exact for this code and these item sizes.",
        ]
    for path_name, bill in (design.get("bills") or {}).items():
        out += [
            "",
            f"Bill per million short runs, {path_name} (bench/derive.py `bill`, the lines make bench shows):",
            "",
            "| line | per run | $ per million runs |",
            "| --- | --- | --- |",
        ]
        for line in bill.get("lines") or []:
            estimated = "" if line.get("measured", True) else " (estimated)"
            out.append(
                f"| {line['component']}{estimated} | {line['quantity']:.4g} {line['unit']} | "
                f"{_money(line['dollars_per_million_runs'])} |"
            )
        out.append(f"| **all-in** | | **{_money(bill.get('all_in_total'))}** |")
    running = design.get("running_hours") or {}
    if running:
        per = running.get("per_beat") or {}
        out += [
            "",
            f"Heartbeats, per thousand running run-hours ({running.get('beats_per_thousand_hours', 0):,.0f} "
            f"beats; per beat {per.get('write_units', 0):.2f} WRU, of which {per.get('index_write_units', 0):.2f} "
            f"in indexes, {per.get('read_units', 0):.2f} RRU, {per.get('sqs_requests', 0):.2f} SQS requests): "
            + ", ".join(f"{k} {_money(v)}" for k, v in (running.get("lines") or {}).items())
            + f"; total **{_money(running.get('total'))}**.",
        ]
    out.append("")
    return out
