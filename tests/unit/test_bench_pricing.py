"""Dollars per million runs (bench/pricing.py) and figures beside targets (bench/derive.py)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import derive, pricing
from bench.pricing import LambdaUse

PRICES: dict[str, Any] = {
    "sqs_standard_per_million_requests": 0.40,
    "dynamodb_on_demand_per_million_wru": 0.625,
    "dynamodb_on_demand_per_million_rru": 0.125,
    "s3_put_per_thousand": 0.005,
    "s3_get_per_thousand": 0.0004,
    "lambda_per_million_requests": 0.20,
    "lambda_x86_per_gb_second": 0.0000166667,
    "api_gateway_http_per_million": 1.00,
    "eventbridge_custom_events_per_million": 1.00,
    "cloudwatch_logs_ingestion_per_gb": 0.50,
}


def by_component(lines: list[pricing.CostLine]) -> dict[str, float]:
    return {line.component: line.dollars_per_million_runs for line in lines}


def test_a_run_is_priced_line_by_line() -> None:
    lines = pricing.run_cost(
        calls={
            ("sqs", "SendMessage"): 1,
            ("sqs", "ReceiveMessage"): 1,
            ("sqs", "DeleteMessage"): 1,
            ("s3", "PutObject"): 1,
            ("s3", "GetObject"): 2,
            ("s3", "DeleteObject"): 5,
            ("dynamodb", "GetItem"): 4,
        },
        read_units=5.5,
        write_units=3,
        lambdas=[LambdaUse("api", 1, 512, 57.2)],
        api_requests=1,
        prices=PRICES,
    )
    dollars = by_component(lines)
    assert dollars["API Gateway (HTTP API) requests"] == pytest.approx(1.00)
    assert dollars["SQS requests"] == pytest.approx(1.20)
    assert dollars["DynamoDB write request units"] == pytest.approx(1.875)
    assert dollars["DynamoDB read request units"] == pytest.approx(0.6875)
    assert dollars["S3 PUT-class requests"] == pytest.approx(5.00)  # $0.005 per 1,000
    assert dollars["S3 GET-class requests"] == pytest.approx(0.80)  # deletes are free
    assert dollars["Lambda requests: api"] == pytest.approx(0.20)
    # 512 MB for 58 ms (rounded up to the millisecond) = 0.029 GB-s
    assert dollars["Lambda duration: api"] == pytest.approx(0.5 * 0.058 * 0.0000166667 * 1e6)
    assert pricing.total(lines) == pytest.approx(sum(dollars.values()))


def test_each_line_shows_its_arithmetic() -> None:
    (sqs,) = [
        line
        for line in pricing.run_cost(
            calls={("sqs", "SendMessage"): 3}, read_units=0, write_units=0, lambdas=[], api_requests=0, prices=PRICES
        )
        if line.component == "SQS requests"
    ]
    assert sqs.arithmetic == "3 requests/run x $0.400 per 1M x 1M runs = $1.200"
    (duration,) = [
        line
        for line in pricing.run_cost(
            calls={},
            read_units=0,
            write_units=0,
            lambdas=[LambdaUse("f", 1, 256, 10.2)],
            api_requests=0,
            prices=PRICES,
        )
        if line.component.startswith("Lambda duration")
    ]
    assert duration.arithmetic.startswith("0.00275 GB-s/run x $0.0000166667 per GB-s x 1M runs = $0.046 ")
    assert duration.arithmetic.endswith("(256 MB x 11 ms)")


def test_billed_gb_seconds_round_the_duration_up() -> None:
    assert pricing.billed_gb_seconds(1024, 0.1) == pytest.approx(0.001)
    assert pricing.billed_gb_seconds(512, 100.0) == pytest.approx(0.05)


def test_deployed_only_lines_are_marked_estimated_and_left_out_of_the_counted_total() -> None:
    estimated = pricing.deployed_only_cost(
        state_changes_per_run=3, log_bytes_per_invocation=500, invocations_per_run=2, prices=PRICES
    )
    dollars = by_component(estimated)
    assert dollars["EventBridge events (run state changes)"] == pytest.approx(3.00)
    assert dollars["CloudWatch Logs ingestion (functions' logs)"] == pytest.approx(1000 / 1024**3 * 0.5 * 1e6)
    assert all(not line.measured for line in estimated)
    assert pricing.total(estimated, measured_only=True) == 0


def test_the_prices_file_has_every_price_and_its_date() -> None:
    prices = pricing.load_prices()
    assert prices["region"] == "us-east-1" and prices["as_of"]
    assert set(PRICES) <= set(prices)


def requests_measured() -> dict[str, Any]:
    return {
        "runs": 200,
        "calls_per_run": [
            {"role": "gateway", "service": "sqs", "operation": "SendMessage", "item": "", "per_run": 1.0},
            {"role": "agent", "service": "sqs", "operation": "ReceiveMessage", "item": "", "per_run": 1.0},
            {"role": "agent", "service": "sqs", "operation": "DeleteMessage", "item": "", "per_run": 1.0},
        ],
        "read_units_per_run": 5.0,
        "write_units_per_run": 3.0,
        "authorizer_ms": {"median": 10.0},
        "api_function_ms": {"median": 50.0},
    }


def test_bill_of_a_run_from_the_counted_requests() -> None:
    bill = derive.bill(requests_measured(), gateway_log_bytes_per_request=0.0, prices=PRICES)
    dollars = {line["component"]: line["dollars_per_million_runs"] for line in bill["lines"]}
    assert dollars["SQS requests"] == pytest.approx(1.20)
    assert "Lambda requests: authorizer" in dollars
    logs = dollars["CloudWatch Logs ingestion (functions' logs)"]
    assert bill["all_in_total"] == pytest.approx(bill["measured_total"] + 3.0 + logs)


def test_figures_are_judged_against_their_targets() -> None:
    results: dict[str, Any] = {
        "figures": {
            "dispatch": {"median": 0.40, "p95": 0.45, "runs": 200},
            "warm_host_projection": 0.03,
            "warm_host_probe": {"n": 30},
            "throughput": {"1": [{"runs": 1000, "runs_per_second": 5.0}], "2": [{"runs": 1000, "runs_per_second": 5}]},
            "checkpoints": {
                "modes": {
                    "none": {"items": 100_000, "overhead": 0.0},
                    "default (every 2 s)": {"items": 100_000, "overhead": 0.01, "items_per_second": {"n": 5}},
                }
            },
            "cost": {"measured_total": 5.6, "all_in_total": 9.0},
            "cold_start": {"cold_total": {"median": 1.1, "p95": 1.2, "n": 3}, "warm_package": {"median": 0.003}},
            "idle": {"requests_per_minute": 7.0, "rss_mb": {"median": 68.0}, "cpu_percent": 0.1, "seconds": 120},
            "recovery": {
                "seconds": {"median": 20.0, "max": 30.0, "n": 3},
                "lease_seconds": 15,
                "poll_wait_seconds": 20,
            },
        },
        "celery": {"dispatch": {"median": 0.02}, "throughput": {"1": [{"runs_per_second": 7.5}]}},
    }
    rows = {row["figure"].split(" ")[0] + row["figure"].split(" ")[1][:4]: row for row in derive.figures(results)}
    verdicts = {row["figure"]: row["pass"] for row in derive.figures(results)}
    assert rows["1.Disp"]["ratio"] == pytest.approx(20.0) and rows["1.Disp"]["pass"] is False
    assert rows["1b.Disp"]["ratio"] == pytest.approx(1.5) and rows["1b.Disp"]["pass"] is True
    throughput_one = next(v for k, v in verdicts.items() if k.startswith("2. Throughput, 1"))
    assert throughput_one is False
    assert verdicts["3. Checkpoint overhead, default interval (2 s), 100,000 no-op items"] is True
    assert next(v for k, v in verdicts.items() if k.startswith("4. AWS cost")) is False
    assert next(v for k, v in verdicts.items() if k.startswith("5. Package cold start")) is True
    assert next(v for k, v in verdicts.items() if k.startswith("5b.")) is True
    assert next(v for k, v in verdicts.items() if k.startswith("6. Idle")) is False
    assert next(v for k, v in verdicts.items() if k.startswith("6b.")) is False
    assert next(v for k, v in verdicts.items() if k.startswith("7. Recovery")) is True


def test_warm_host_projection_replaces_the_process_start_by_the_fork() -> None:
    profile = {
        "spawn: spool, spec file, fork + exec": {"median": 0.005},
        "job process: interpreter start + imports": {"median": 0.300},
        "job process: spec, job class, config, job object": {"median": 0.004},
    }
    projected = derive.warm_host_projection({"median": 0.400}, profile, {"median": 0.004})
    assert projected == pytest.approx(0.400 - 0.309 + 0.004)
    assert derive.warm_host_projection({}, profile, {"median": 0.004}) is None
