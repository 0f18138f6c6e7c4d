"""The item job SDK: lifecycle, results by category, threshold, retries, parallelism, cancellation,
checkpoints and resume (in-process, through runly.testing)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, Field

from runly import Disposition, ItemConfig, ItemFailed, ItemJob, Job
from runly.job import NullChannel
from runly.testing import JobRun, run_job
from runly.wire import Checkpoint


class Config(ItemConfig):
    count: int = 10
    fail: list[int] = Field(default_factory=list)  # items that raise ValueError
    reject: list[int] = Field(default_factory=list)  # items that raise ItemFailed(category="Rejected")
    delay: float = 0.0


class Recorder(ItemJob[Config, int]):
    """Records every call of its lifecycle, in order (class-level: one test at a time)."""

    calls: ClassVar[list[str]] = []

    def setup(self) -> None:
        type(self).calls = ["setup"]

    def items(self) -> Iterable[int]:
        self.calls.append("items")
        return list(range(self.config.count))

    def process(self, item: int) -> int:
        if self.config.delay:
            time.sleep(self.config.delay)
        if item in self.config.fail:
            raise ValueError(f"bad {item}")
        if item in self.config.reject:
            raise ItemFailed("rejected", category="Rejected")
        self.calls.append(f"process {item}")
        return item * 2

    def finalize(self, disposition: Disposition) -> Any:
        self.calls.append(f"finalize {disposition}")
        return None


def _processed(run: JobRun) -> list[int]:
    return sorted(result.index for result in run.results)


# ---------------------------------------------------------------- lifecycle


def test_lifecycle_runs_in_order_and_the_summary_is_the_default_output() -> None:
    run = run_job(Recorder, {"count": 3})

    assert Recorder.calls == ["setup", "items", "process 0", "process 1", "process 2", "finalize succeeded"]
    assert run.output == {"total": 3, "succeeded": 3, "failed": 0, "failed_by_category": {}, "resumed_at": 0}
    assert [r.value for r in run.results] == [0, 2, 4]


def test_what_finalize_returns_is_the_output() -> None:
    class WithOutput(Recorder):
        def finalize(self, disposition: Disposition) -> Any:
            return {"done": self.counts.succeeded, "disposition": disposition.value}

    assert run_job(WithOutput, {"count": 4}).output == {"done": 4, "disposition": "succeeded"}


@pytest.mark.parametrize("where", ["setup", "items", "finalize"])
def test_an_error_in_the_lifecycle_fails_the_run_and_finalize_still_runs(where: str) -> None:
    seen: list[Disposition] = []

    class Broken(Recorder):
        def setup(self) -> None:
            if where == "setup":
                raise RuntimeError("setup broke")

        def items(self) -> Iterator[int]:
            yield 0
            if where == "items":
                raise RuntimeError("items broke")
            yield 1

        def finalize(self, disposition: Disposition) -> Any:
            seen.append(disposition)
            if where == "finalize":
                raise RuntimeError("finalize broke")

    run = run_job(Broken)

    assert run.outcome == "failed" and str(run.error) == f"{where} broke"
    assert seen == [Disposition.SUCCEEDED if where == "finalize" else Disposition.FAILED]


def test_a_failing_finalize_does_not_hide_the_first_error() -> None:
    class Both(Recorder):
        def setup(self) -> None:
            raise RuntimeError("first")

        def finalize(self, disposition: Disposition) -> Any:
            raise RuntimeError("second")

    assert str(run_job(Both).error) == "first"


def test_async_setup_with_a_sync_process_is_refused_clearly() -> None:
    class Mixed(Recorder):
        async def setup(self) -> None:  # type: ignore[override]
            pass

    run = run_job(Mixed)
    assert run.outcome == "failed" and "make process async too" in str(run.error)


# ---------------------------------------------------------------- results, threshold, retries


def test_failures_are_counted_by_category() -> None:
    run = run_job(Recorder, {"count": 10, "fail": [1, 2], "reject": [5]})

    assert run.succeeded
    assert run.counts.succeeded == 7 and run.counts.failed == 3
    assert run.counts.failed_by_category == {"ValueError": 2, "Rejected": 1}
    assert {r.item_id: r.error for r in run.failures} == {
        "1": "ValueError: bad 1", "2": "ValueError: bad 2", "5": "ItemFailed: rejected",
    }  # fmt: skip
    assert run.job.recent_errors[-1].item_id == "5"  # type: ignore[attr-defined]


def test_more_failures_than_allowed_stop_the_run_as_failed() -> None:
    # Given a threshold of 2 failed items, and items 1, 2, 3 failing
    run = run_job(Recorder, {"count": 50, "fail": [1, 2, 3], "max_failed_items": 2})

    # Then the third failure fails the run, no further item starts, and finalize knows
    assert run.outcome == "failed"
    assert type(run.error).__name__ == "FailureThresholdExceeded"
    assert "3 items failed, more than max_failed_items=2 (ValueError 3)" in str(run.error)
    assert _processed(run) == [0, 1, 2, 3]
    assert Recorder.calls[-1] == "finalize failed"


def test_a_failure_ratio_of_the_known_total_stops_the_run_early() -> None:
    run = run_job(Recorder, {"count": 20, "fail": [0, 1, 2], "max_failed_ratio": 0.1})

    assert run.outcome == "failed" and "3 of 20 items failed" in str(run.error)
    assert _processed(run) == [0, 1, 2]


def test_failures_under_the_threshold_let_the_run_succeed() -> None:
    assert run_job(Recorder, {"count": 20, "fail": [0, 1], "max_failed_ratio": 0.1}).succeeded


def test_the_threshold_counts_the_failures_of_earlier_attempts() -> None:
    # Given a checkpoint of an attempt that had 2 failures among its first 5 items
    counts = {"succeeded": 3, "failed_by_category": {"ValueError": 2}}
    checkpoint = Checkpoint(
        watermark=5, last_item_id="4", attempt=1, written_at=datetime.now(UTC),
        state={"sdk": 1, "job": None, "counts": counts},
    )  # fmt: skip

    # When the resumed attempt meets one more failure, with at most 2 allowed
    run = run_job(Recorder, {"count": 20, "fail": [8], "max_failed_items": 2}, resume_from=checkpoint, attempt=2)

    # Then the run fails there: a crash does not reset the failure budget
    assert run.outcome == "failed" and "3 items failed" in str(run.error)
    assert _processed(run) == [5, 6, 7, 8]


def test_a_failing_item_is_retried_with_backoff_then_succeeds() -> None:
    attempts: dict[int, list[float]] = {}

    class Flaky(Recorder):
        item_retries = 3
        retry_backoff = 0.02

        def process(self, item: int) -> int:
            attempts.setdefault(item, []).append(time.monotonic())
            if item == 1 and len(attempts[item]) < 3:
                raise ConnectionError("try again")
            return item

    run = run_job(Flaky, {"count": 3})

    assert run.succeeded and run.counts.failed == 0
    assert {r.item_id: r.attempts for r in run.results} == {"0": 1, "1": 3, "2": 1}
    first, second, third = attempts[1]
    assert second - first >= 0.02 and third - second >= 0.04  # doubles each time


def test_retries_run_out_and_item_failed_is_not_retried() -> None:
    class Hopeless(Recorder):
        item_retries = 2
        retry_backoff = 0.001

    run = run_job(Hopeless, {"count": 3, "fail": [0], "reject": [1]})

    assert {r.item_id: r.attempts for r in run.failures} == {"0": 3, "1": 1}


def test_the_config_overrides_the_class_settings_per_run() -> None:
    class Defaults(Recorder):
        item_retries = 0

    job = Defaults(Defaults.parse_config({"item_retries": 4, "parallelism": 3}))
    assert job.setting("item_retries") == 4 and job.setting("parallelism") == 3
    assert job.setting("max_failed_items") is None
    assert Defaults(Defaults.parse_config({})).setting("parallelism") == 1


# ---------------------------------------------------------------- parallelism


def test_threads_really_overlap_up_to_the_parallelism() -> None:
    # A barrier of 4 only opens if 4 items are in process at the same time.
    barrier = threading.Barrier(4, timeout=5)
    active, peak, lock = [0], [0], threading.Lock()

    class Parallel(Recorder):
        def process(self, item: int) -> int:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            barrier.wait()
            with lock:
                active[0] -= 1
            return item

    run = run_job(Parallel, {"count": 12, "parallelism": 4})

    assert run.succeeded, run.error
    assert peak[0] == 4 and run.counts.succeeded == 12


def test_async_process_overlaps_on_one_event_loop() -> None:
    active, peak = [0], [0]
    loops: set[int] = set()

    class Async(ItemJob[Config, int]):
        parallelism = 5

        async def setup(self) -> None:
            self.loop = asyncio.get_running_loop()

        def items(self) -> list[int]:
            return list(range(self.config.count))

        async def process(self, item: int) -> int:
            loops.add(id(asyncio.get_running_loop()))
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            await asyncio.sleep(0.02)
            active[0] -= 1
            if item in self.config.fail:
                raise ValueError(item)
            return item

        async def finalize(self, disposition: Disposition) -> Any:
            assert asyncio.get_running_loop() is self.loop
            return {"disposition": disposition.value, **self.summary()}

    started = time.monotonic()
    run = run_job(Async, {"count": 25, "fail": [3]})

    assert run.output["disposition"] == "succeeded" and run.output["failed_by_category"] == {"ValueError": 1}
    assert peak[0] == 5 and len(loops) == 1
    assert time.monotonic() - started < 25 * 0.02  # overlapped, not one after another


# ---------------------------------------------------------------- cancellation


@pytest.mark.parametrize("parallelism", [1, 4])
def test_cancel_lets_items_in_flight_finish_and_starts_no_new_one(parallelism: int) -> None:
    run = run_job(Recorder, {"count": 100, "delay": 0.01, "parallelism": parallelism}, cancel_after=8)

    assert run.outcome == "cancelled" and "cancelled after" in str(run.error)
    assert 8 <= len(run.results) <= 8 + parallelism - 1
    assert Recorder.calls[-1] == "finalize cancelled"
    # the checkpoint taken on the way out covers what was done
    assert run.last_checkpoint is not None and run.last_checkpoint.watermark == len(run.results)


def test_cancel_interrupts_a_retry_backoff_and_the_item_is_not_done() -> None:
    class Slow(Recorder):
        item_retries = 5
        retry_backoff = 10.0

    job_run: list[JobRun] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: job_run.append(run_job(Slow, {"count": 3, "fail": [1]})))
    thread.start()
    time.sleep(0.2)
    # Cancel it the way the host does: through the job's token
    job = next(obj for obj in _live_jobs() if isinstance(obj, Slow))
    job.cancellation.cancel()
    thread.join(timeout=5)

    (run,) = job_run
    assert time.monotonic() - started < 5
    assert run.outcome == "cancelled" and _processed(run) == [0]
    assert run.last_checkpoint is not None and run.last_checkpoint.watermark == 1


def _live_jobs() -> list[Any]:
    import gc

    return [obj for obj in gc.get_objects() if isinstance(obj, ItemJob)]


# ---------------------------------------------------------------- checkpoints and resume


def test_a_resumed_attempt_skips_the_items_before_the_watermark() -> None:
    checkpoint = Checkpoint(watermark=6, last_item_id="5", attempt=1, written_at=datetime.now(UTC))

    run = run_job(Recorder, {"count": 10}, resume_from=checkpoint, attempt=2)

    assert run.succeeded and _processed(run) == [6, 7, 8, 9]
    assert "process 5" not in Recorder.calls
    assert run.output["resumed_at"] == 6


def test_a_crash_then_resume_carries_the_counts_and_repeats_nothing() -> None:
    crashed = run_job(Recorder, {"count": 30, "fail": [2, 20], "parallelism": 3}, crash_after=12)
    assert crashed.outcome == "crashed" and "finalize" not in " ".join(Recorder.calls)
    watermark = crashed.last_checkpoint.watermark  # type: ignore[union-attr]
    # (items finishing on other threads in that instant may be counted too)
    assert watermark is not None and 12 - 3 <= watermark <= len(crashed.results)

    resumed = crashed.resume()

    assert resumed.succeeded
    assert min(_processed(resumed)) == watermark
    assert resumed.output["succeeded"] == 28 and resumed.output["failed_by_category"] == {"ValueError": 2}


def test_resume_fails_clearly_when_the_items_changed_order() -> None:
    checkpoint = Checkpoint(watermark=3, last_item_id="7", attempt=1, written_at=datetime.now(UTC))

    run = run_job(Recorder, {"count": 10}, resume_from=checkpoint)

    assert run.outcome == "failed" and type(run.error).__name__ == "ResumeMismatch"
    assert "item #3 (the last one done before the checkpoint) was '7' and is now '2'" in str(run.error)
    assert run.results == []


def test_resume_fails_clearly_when_there_are_fewer_items() -> None:
    checkpoint = Checkpoint(watermark=30, last_item_id="29", attempt=1, written_at=datetime.now(UTC))

    run = run_job(Recorder, {"count": 10}, resume_from=checkpoint)

    assert run.outcome == "failed" and "items() now yields fewer" in str(run.error)


def test_the_jobs_own_state_reaches_the_next_attempt() -> None:
    class Stateful(Recorder):
        def setup(self) -> None:
            self.seen = list((self.resumed_state or {}).get("seen", []))

        def process(self, item: int) -> int:
            self.seen.append(item)
            self.checkpoint({"seen": self.seen}, wait=False)
            return item

    crashed = run_job(Stateful, {"count": 10}, crash_after=4)
    assert crashed.job_state == {"seen": [0, 1, 2, 3]}
    resumed = crashed.resume()
    assert resumed.job.seen == list(range(10))  # type: ignore[attr-defined]


def test_item_ids_come_from_an_id_attribute_an_id_key_or_str() -> None:
    class Row(BaseModel):
        id: int

    job = Recorder(Recorder.parse_config({}))
    assert job.item_id(Row(id=7)) == "7"  # type: ignore[arg-type]
    assert job.item_id({"id": "k"}) == "k"  # type: ignore[arg-type]
    assert job.item_id(42) == "42"


def test_the_total_is_known_only_for_sized_items() -> None:
    class Generated(Recorder):
        def items(self) -> Iterator[int]:
            yield from range(3)

    assert run_job(Generated).output["total"] is None
    assert run_job(Recorder, {"count": 3}).output["total"] == 3


def test_a_refused_checkpoint_stops_the_attempt_and_finalize_sees_lost() -> None:
    run = run_job(Recorder, {"count": 50}, refuse_checkpoints_after=3)

    assert run.outcome == "lost"
    assert len(run.checkpoints) == 3 and len(run.results) <= 4
    assert Recorder.calls[-1] == "finalize lost"


def test_checkpoints_and_progress_are_sent_at_a_bounded_interval() -> None:
    # Given a job of ~0.8 s with a checkpoint interval of 0.2 s and progress every 0.1 s
    class Timed(Recorder):
        checkpoint_interval = 0.2
        progress_interval = 0.1

    run = run_job(Timed, {"count": 160, "delay": 0.005}, checkpoint_interval=Timed.checkpoint_interval)

    # Then checkpoints come at most every 0.2 s (plus the last one, at the end), never per item
    times = [c.written_at.timestamp() for c in run.checkpoints]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 2 <= len(run.checkpoints) <= 8
    assert all(gap >= 0.19 for gap in gaps[:-1])
    assert run.checkpoints[-1].watermark == 160
    watermarks = [c.watermark or 0 for c in run.checkpoints]
    assert watermarks == sorted(watermarks)
    # and progress is coalesced: far fewer reports than items, the last one complete
    assert 3 <= len(run.progress) <= 20
    assert run.progress[-1].succeeded == 160 and run.progress[-1].total == 160


# ---------------------------------------------------------------- one-action jobs


class Steps(BaseModel):
    steps: int = 3


class Stepper(Job[Steps]):
    def run(self) -> dict[str, Any]:
        done = (self.resumed_state or {}).get("done", 0)
        for step in range(done, self.config.steps):
            self.report_progress(step + 1, self.config.steps, f"step {step + 1}")
            self.checkpoint({"done": step + 1})
        return {"from": done}


def test_a_one_action_job_checkpoints_its_state_and_reports_progress() -> None:
    run = run_job(Stepper, {"steps": 3})

    assert run.output == {"from": 0}
    assert [c.state for c in run.checkpoints] == [{"sdk": 1, "job": {"done": n}} for n in (1, 2, 3)]
    assert run.progress[-1].message == "step 3" and run.progress[-1].total == 3

    resumed = run_job(Stepper, {"steps": 5}, resume_from=run.last_checkpoint, attempt=2)
    assert resumed.output == {"from": 3}


def test_a_job_run_directly_has_no_checkpoints_but_runs() -> None:
    job = Stepper(Stepper.parse_config({"steps": 2}))
    assert isinstance(job._channel, NullChannel)
    assert job.checkpoint({"x": 1}) is False
    assert job.execute() == {"from": 0}


def test_checkpoint_state_must_be_json() -> None:
    job = Stepper(Stepper.parse_config({}))
    with pytest.raises(TypeError):
        job.checkpoint({"when": object()})
