from __future__ import annotations

from countdown.jobs import Countdown

from runly.testing import run_job


def test_counts_down_every_tick() -> None:
    run = run_job(Countdown, {"count": 50, "delay": 0})

    assert run.succeeded
    assert run.output["succeeded"] == 50 and run.output["total"] == 50
    assert run.output["attempts"] == [1]
    assert run.processed_ids[:3] == ["50", "49", "48"]


def test_a_crash_resumes_from_the_checkpoint_without_repeating_a_tick() -> None:
    # Given an attempt that crashed after 30 of 100 ticks
    crashed = run_job(Countdown, {"count": 100, "delay": 0}, crash_after=30)
    assert crashed.outcome == "crashed"
    assert crashed.last_checkpoint is not None and crashed.last_checkpoint.watermark == 30

    # When the next attempt starts from its checkpoint
    resumed = crashed.resume()

    # Then it does only the 70 ticks left (resume() itself asserts none before the watermark ran)
    assert resumed.succeeded
    assert resumed.processed_ids == [str(tick) for tick in range(70, 0, -1)]
    assert resumed.output["resumed_at"] == 30 and resumed.output["succeeded"] == 100
    assert resumed.output["attempts"] == [1, 2]


def test_cancel_stops_between_ticks() -> None:
    run = run_job(Countdown, {"count": 100, "delay": 0}, cancel_after=10)

    assert run.outcome == "cancelled"
    assert len(run.results) == 10
    assert run.last_checkpoint is not None and run.last_checkpoint.watermark == 10
