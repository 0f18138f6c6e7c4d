"""The benchmarks' statistics (bench/stats.py) and the pure helpers that turn samples into figures."""

from __future__ import annotations

import math

import pytest

from bench.observe import parse_agent_line, phases
from bench.ours import read_ledger, top_imports, window_rates
from bench.stats import median, percentile, rate, ratio, ratio_of_medians, summarize


def test_percentiles_interpolate_between_closest_ranks_like_numpy() -> None:
    values = [15, 20, 35, 40, 50]
    assert percentile(values, 0) == 15
    assert percentile(values, 100) == 50
    assert percentile(values, 50) == 35
    # numpy.percentile([15, 20, 35, 40, 50], 40) == 29.0 (linear between ranks 1 and 2)
    assert percentile(values, 40) == pytest.approx(29.0)
    assert percentile(values, 95) == pytest.approx(48.0)


def test_percentile_does_not_depend_on_order_and_handles_one_value() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.5], 95) == 7.5
    assert median([1.0, 2.0, 3.0, 4.0]) == 2.5


def test_percentile_refuses_no_values_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_of_samples_and_of_none() -> None:
    summary = summarize([0.3, 0.1, 0.2])
    assert summary["n"] == 3
    assert summary["median"] == pytest.approx(0.2)
    assert summary["min"] == 0.1 and summary["max"] == 0.3
    assert summary["mean"] == pytest.approx(0.2)
    assert summarize([]) == {"n": 0, "median": None, "p95": None, "mean": None, "min": None, "max": None}


def test_ratio_and_rate_say_none_rather_than_divide_by_zero() -> None:
    assert ratio(0.4, 0.02) == pytest.approx(20)
    assert ratio(None, 1.0) is None and ratio(1.0, 0) is None
    assert rate(1000, 200.0) == 5.0
    assert rate(10, 0) is None and rate(10, None) is None


def test_window_rates_measure_each_block_of_completions() -> None:
    # Given 301 completions, 10 per second for the first 100, then 20 per second
    times = [i / 10 for i in range(101)] + [10 + i / 20 for i in range(1, 201)]
    rates = window_rates(sorted(times), 100)
    assert rates["n"] == 3
    assert rates["min"] == pytest.approx(10.0)
    assert rates["max"] == pytest.approx(20.0)


def test_agent_log_lines_are_read_into_events() -> None:
    claimed = parse_agent_line("2026-11-27 23:03:46,977 INFO node_agent.agent run run_1: claimed as attempt 2")
    assert claimed is not None and claimed.kind == "claimed" and claimed.run_id == "run_1"
    assert claimed.data == {"attempt": 2}
    assert math.isclose(claimed.t % 1, 0.977, abs_tol=1e-6)
    ready = parse_agent_line(
        "2026-11-27 23:03:45,527 INFO node_agent.supervisor run run_1: package hello 1.0.0 ready in 0.77 s "
        "(download 0.07s, verify 0.03s, install 0.66s, total 0.77s)"
    )
    assert ready is not None and ready.kind == "ready" and not ready.data["cached"]
    assert ready.data["phases"] == {"download": 0.07, "verify": 0.03, "install": 0.66, "total": 0.77}
    cached = parse_agent_line(
        "2026-11-27 23:03:46,983 INFO node_agent.supervisor run run_1: package hello 1.0.0 ready in 0.00 s (cached)"
    )
    assert cached is not None and cached.data["cached"]
    spawned = parse_agent_line(
        "2026-11-27 23:03:47,004 INFO node_agent.job_process run run_1 attempt 1: job process 26086 started"
    )
    assert spawned is not None and spawned.data == {"attempt": 1, "pid": 26086}
    forked = parse_agent_line(
        "2026-11-27 23:03:47,004 INFO node_agent.job_process run run_1 attempt 1: job process 26087 started (warm host)"
    )
    assert forked is not None and forked.data == {"attempt": 1, "pid": 26087, "warm": True}
    fresh = parse_agent_line(
        "2026-11-27 23:03:47,004 INFO node_agent.job_process run run_1 attempt 1: job process 26088 started "
        "(new interpreter)"
    )
    assert fresh is not None and fresh.data == {"attempt": 1, "pid": 26088}
    host = parse_agent_line(
        "2026-11-27 23:03:47,004 INFO node_agent.fork_servers warm host for 0123456789ab started in 0.31 s (pid 99)"
    )
    assert host is not None and host.kind == "host_started" and host.data["seconds"] == 0.31
    ended = parse_agent_line("2026-11-27 23:03:47,931 INFO node_agent.supervisor run run_1 Succeeded")
    assert ended is not None and ended.kind == "terminal" and ended.data == {"state": "Succeeded"}
    assert parse_agent_line("2026-11-27 23:03:47,931 INFO node_agent.agent node n1 joined environment default") is None
    assert parse_agent_line("not a log line") is None


def test_phase_timings_of_a_log_line() -> None:
    assert phases("download 0.07s, verify 0.03s") == {"download": 0.07, "verify": 0.03}
    assert phases("cached") == {}


def test_top_imports_reads_an_importtime_report_to_a_depth() -> None:
    report = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:      2000 |       2000 |     asyncio.events",
            "import time:      1000 |       9000 |   asyncio",
            "import time:       500 |      12000 | runly.items",
            "import time:       100 |        100 |         too.deep",
        ]
    )
    rows = top_imports(report, depth=2)
    assert [row["module"] for row in rows] == ["runly.items", "asyncio", "asyncio.events"]
    assert rows[0] == {"module": "runly.items", "depth": 0, "self_ms": 0.5, "cumulative_ms": 12.0}
    assert rows[1]["depth"] == 1


def test_ledger_separates_attempts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ledger = tmp_path / "ledger.txt"
    ledger.write_text(
        "r1 start 1 0 100.0\nr1 item 1 0 100.1\nr1 item 1 1 100.2\nr2 item 1 0 100.3\n"
        "r1 start 2 1 130.0\nr1 item 2 1 130.1\n"
    )
    entry = read_ledger(ledger, "r1")
    assert entry.starts == {1: (0, 100.0), 2: (1, 130.0)}
    assert entry.items == {1: [0, 1], 2: [1]}


def test_ratio_of_medians_with_a_bootstrap_interval_around_it() -> None:
    slower = [90.0, 91.0, 89.0, 90.5, 89.5] * 3
    faster = [100.0, 101.0, 99.0, 100.5, 99.5] * 3
    result = ratio_of_medians(slower, faster)
    assert result["ratio"] == pytest.approx(0.9)
    low, high = result["interval"]
    assert low <= 0.9 <= high and high - low < 0.05
    assert ratio_of_medians(slower, faster) == result  # a fixed seed: the same samples, the same interval
    assert ratio_of_medians([], faster) == {"ratio": None, "interval": [None, None]}
