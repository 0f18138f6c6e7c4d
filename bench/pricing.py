"""Dollars per million runs from counted requests and AWS list prices (pure arithmetic, shown in the report).

Prices live in ``bench/prices-us-east-1.json`` with the date they were taken; every line of the bill
carries the arithmetic that produced it, so a reader can check it by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).with_name("prices-us-east-1.json")
MILLION = 1_000_000

# S3 bills PUT, COPY, POST and LIST requests at one price and GET and every other request at another;
# DELETE (and canceling a multipart upload) is free.
S3_PUT_CLASS = frozenset(
    {
        "PutObject",
        "CopyObject",
        "PostObject",
        "ListObjects",
        "ListObjectsV2",
        "ListObjectVersions",
        "ListBuckets",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
    }
)
S3_FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload"})


def load_prices(path: Path = PRICES_FILE) -> dict[str, Any]:
    prices: dict[str, Any] = json.loads(path.read_text())
    return prices


@dataclass(frozen=True)
class LambdaUse:
    """One function's invocations per run, its memory and its (measured) billed duration."""

    function: str
    invocations: float
    memory_mb: int
    duration_ms: float


@dataclass(frozen=True)
class CostLine:
    component: str
    quantity: float  # per run
    unit: str
    dollars_per_million_runs: float
    arithmetic: str
    measured: bool = True  # False: estimated from the deployed stack's design, not counted on the embedded stack


def _money(value: float) -> str:
    if value == 0 or value >= 0.01:
        return f"${value:,.3f}"
    return "$" + f"{value:.10f}".rstrip("0")


def _line(component: str, quantity: float, unit: str, price: float, per: int, *, measured: bool = True,
          note: str = "") -> CostLine:  # fmt: skip
    dollars = quantity * price / per * MILLION
    per_text = {MILLION: "1M", 1000: "1,000", 1: unit}.get(per, f"{per:,}")
    arithmetic = f"{quantity:.4g} {unit}/run x {_money(price)} per {per_text} x 1M runs = {_money(dollars)}" + (
        f" ({note})" if note else ""
    )
    return CostLine(component, quantity, unit, dollars, arithmetic, measured)


def billed_gb_seconds(memory_mb: int, duration_ms: float) -> float:
    """Lambda bills duration rounded up to the millisecond, times the configured memory in GB."""
    return memory_mb / 1024 * math.ceil(duration_ms) / 1000


def run_cost(
    *,
    calls: Mapping[tuple[str, str], float],
    read_units: float,
    write_units: float,
    lambdas: Iterable[LambdaUse],
    api_requests: float,
    prices: Mapping[str, Any],
) -> list[CostLine]:
    """The bill of one run, per million runs, from what it was measured to use.

    ``calls``: API calls per run by (service, operation), every process summed; ``read_units`` and
    ``write_units``: DynamoDB on-demand request units per run (bench.counting.capacity_units).
    """
    sqs = sum(count for (service, _), count in calls.items() if service == "sqs")
    s3_put = sum(count for (service, op), count in calls.items() if service == "s3" and op in S3_PUT_CLASS)
    s3_get = sum(
        count
        for (service, op), count in calls.items()
        if service == "s3" and op not in S3_PUT_CLASS and op not in S3_FREE
    )
    lines = [
        _line("API Gateway (HTTP API) requests", api_requests, "requests", prices["api_gateway_http_per_million"],
              MILLION),
        _line("SQS requests", sqs, "requests", prices["sqs_standard_per_million_requests"], MILLION),
        _line("DynamoDB write request units", write_units, "WRU", prices["dynamodb_on_demand_per_million_wru"],
              MILLION),
        _line("DynamoDB read request units", read_units, "RRU", prices["dynamodb_on_demand_per_million_rru"],
              MILLION),
    ]  # fmt: skip
    if s3_put:
        lines.append(_line("S3 PUT-class requests", s3_put, "requests", prices["s3_put_per_thousand"], 1000))
    if s3_get:
        lines.append(_line("S3 GET-class requests", s3_get, "requests", prices["s3_get_per_thousand"], 1000))
    for use in lambdas:
        lines.append(
            _line(f"Lambda requests: {use.function}", use.invocations, "invocations",
                  prices["lambda_per_million_requests"], MILLION)
        )  # fmt: skip
        gb_seconds = use.invocations * billed_gb_seconds(use.memory_mb, use.duration_ms)
        lines.append(
            _line(f"Lambda duration: {use.function}", gb_seconds, "GB-s", prices["lambda_x86_per_gb_second"], 1,
                  note=f"{use.memory_mb} MB x {math.ceil(use.duration_ms)} ms")
        )  # fmt: skip
    return lines


def deployed_only_cost(
    *, state_changes_per_run: float, log_bytes_per_invocation: float, invocations_per_run: float,
    prices: Mapping[str, Any],
) -> list[CostLine]:  # fmt: skip
    """What the deployed stack adds that the embedded stack does not run, estimated from its design:
    one EventBridge event per run state change (the table stream's publisher) and the functions' logs."""
    log_gb = log_bytes_per_invocation * invocations_per_run / 1024**3
    return [
        _line("EventBridge events (run state changes)", state_changes_per_run, "events",
              prices["eventbridge_custom_events_per_million"], MILLION, measured=False),
        _line("CloudWatch Logs ingestion (functions' logs)", log_gb, "GB",
              prices["cloudwatch_logs_ingestion_per_gb"], 1, measured=False,
              note=f"{log_bytes_per_invocation:.0f} bytes x {invocations_per_run:g} invocations"),
    ]  # fmt: skip


def total(lines: Iterable[CostLine], *, measured_only: bool = False) -> float:
    return sum(line.dollars_per_million_runs for line in lines if line.measured or not measured_only)
