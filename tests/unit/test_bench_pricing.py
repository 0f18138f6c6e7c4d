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
    bill = derive.bill(requests_measured(), gateway_log_bytes_per_request=0.0, prices=PRICES, run_events="terminal")
    dollars = {line["component"]: line["dollars_per_million_runs"] for line in bill["lines"]}
    assert dollars["SQS requests"] == pytest.approx(1.20)
    assert "Lambda requests: authorizer" in dollars
    logs = dollars["CloudWatch Logs ingestion (functions' logs)"]
    # run_events "terminal": one event per run, at its terminal state.
    assert bill["all_in_total"] == pytest.approx(bill["measured_total"] + 1.0 + logs)
    every_state = derive.bill(requests_measured(), gateway_log_bytes_per_request=0.0, prices=PRICES, run_events="all")
    assert every_state["all_in_total"] == pytest.approx(bill["all_in_total"] + 2.0)


def test_a_batch_of_runs_shares_one_http_request_and_its_invocations() -> None:
    # Given runs enqueued 100 to a POST /runs/batch
    batch = {**requests_measured(), "path": "POST /runs/batch", "http_requests_per_run": 0.01}
    single = derive.bill(requests_measured(), gateway_log_bytes_per_request=0.0, prices=PRICES, run_events="off")
    # When billed
    bill = derive.bill(batch, gateway_log_bytes_per_request=0.0, prices=PRICES, run_events="off")
    dollars = {line["component"]: line["dollars_per_million_runs"] for line in bill["lines"]}
    # Then API Gateway and both functions are paid once per 100 runs; SQS and DynamoDB per run as counted
    assert dollars["API Gateway (HTTP API) requests"] == pytest.approx(0.01)
    assert dollars["Lambda requests: API function (POST /runs/batch)"] == pytest.approx(0.002)
    assert dollars["Lambda requests: authorizer"] == pytest.approx(0.002)
    assert dollars["SQS requests"] == pytest.approx(1.20)
    assert bill["runs_per_http_request"] == pytest.approx(100)
    assert bill["all_in_total"] < single["all_in_total"]


def test_the_run_events_default_is_read_from_the_stack_settings() -> None:
    assert derive.run_events_default() in derive.EVENTS_PER_SHORT_RUN


def test_figures_are_judged_against_their_targets() -> None:
    results: dict[str, Any] = {
        "figures": {
            "dispatch": {"median": 0.03, "p95": 0.05, "runs": 200, "warm_host": {"rss_mb": 36.0, "pss_mb": 26.0}},
            "dispatch_fresh": {"median": 0.40, "p95": 0.45, "runs": 200},
            "throughput": {"1": [{"runs": 1000, "runs_per_second": 8.0}], "2": [{"runs": 1000, "runs_per_second": 9}]},
            "throughput_fresh": {"1": [{"runs": 300, "runs_per_second": 2.5}]},
            "checkpoints": {
                "items": 100_000,
                "long_items": 3_000_000,
                "per_checkpoint": {"reporter_cpu": {"median": 0.0005, "n": 40}},
                "modes": {
                    "none": {"items": 100_000, "items_per_second": {"median": 900_000.0}},
                    "default (every 2 s)": {
                        "items": 100_000,
                        "overhead": 0.01,
                        "items_per_second": {"n": 15, "median": 891_000.0},
                        "checkpoints_inside": {"median": 0.0},
                    },
                    "none, 3,000,000 items": {"items": 3_000_000, "items_per_second": {"median": 900_000.0}},
                    "default (every 2 s), 3,000,000 items": {
                        "items": 3_000_000,
                        "overhead": 0.08,
                        "items_per_second": {"n": 3, "median": 828_000.0},
                        "checkpoints_inside": {"median": 1.0},
                    },
                },
            },
            "cost": {"measured_total": 5.6, "all_in_total": 7.0, "runs_per_http_request": 1},
            "cost_batch": {"measured_total": 2.0, "all_in_total": 2.9, "runs_per_http_request": 100},
            "cold_start": {"cold_total": {"median": 1.1, "p95": 1.2, "n": 3}, "warm_package": {"median": 0.003}},
            "idle": {
                "requests_per_minute": 3.0,
                "whole_run": {"seconds": 700.0, "requests": 35, "requests_per_minute": 3.0},
                "schedule": {"polls_per_minute": 3.0, "node_writes_per_minute": 0.1, "requests_per_minute": 3.1},
                "rss_mb": {"median": 58.0},
                "cpu_percent": 0.1,
                "seconds": 120,
            },
            "recovery": {
                "seconds": {"median": 20.0, "max": 30.0, "n": 3},
                "lease_seconds": 15,
                "poll_wait_seconds": 20,
            },
        },
        "celery": {
            "dispatch": {"median": 0.02},
            "throughput": {"1": [{"runs_per_second": 7.5}], "2": [{"runs_per_second": 12.0}]},
        },
    }
    rows = {row["figure"].split(" ")[0]: row for row in derive.figures(results)}
    assert rows["1."]["ratio"] == pytest.approx(1.5) and rows["1."]["pass"] is True
    assert rows["1b."]["ratio"] == pytest.approx(20.0) and rows["1b."]["pass"] is False
    throughput = [row for row in derive.figures(results) if row["figure"].startswith("2")]
    assert [row["pass"] for row in throughput] == [True, None, False]
    assert throughput[1]["celery"] == 12.0
    assert rows["3."]["pass"] is True and "no checkpoint fell inside" in rows["3."]["figure"]
    assert rows["3b."]["pass"] is None and "1 checkpoint(s) inside" in rows["3b."]["figure"]  # noisy: shown only
    assert rows["3c."]["value"] == pytest.approx(0.0005 / 2.0) and rows["3c."]["pass"] is True
    assert rows["4."]["pass"] is False and rows["4b."]["pass"] is True
    assert "100 runs a request" in rows["4b."]["figure"]
    assert rows["5."]["pass"] is True and rows["5b."]["pass"] is True
    assert rows["6."]["pass"] is True and rows["6a."]["pass"] is True
    assert rows["6b."]["pass"] is False  # 3 polls + a node write every 10 minutes
    assert rows["6c."]["pass"] is True and rows["6e."]["pass"] is None
    assert rows["7."]["pass"] is True
