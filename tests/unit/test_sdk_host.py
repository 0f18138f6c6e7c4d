"""The job process (``python -m runly.runner run``) and its channel, with a fake agent on the other end
(runly_cli.run_local plays the agent: reads the channel, acknowledges checkpoints, sends signals)."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime
from pathlib import Path

from runly import Disposition, ItemConfig, ItemJob
from runly.runner import EXIT_CANCELLED, EXIT_JOB_FAILED, EXIT_LEASE_LOST, EXIT_OK, Channel
from runly.wire import Checkpoint, RunSpec
from runly_cli.run_local import LocalRun, Project

REPO = Path(__file__).resolve().parents[2]


class TicksConfig(ItemConfig):
    count: int = 20
    delay: float = 0.0
    slow_from: int | None = None  # items from this one on take 5 s
    fail_with: str | None = None


class Ticks(ItemJob[TicksConfig, int]):
    checkpoint_interval = 0.1
    progress_interval = 0.05

    def items(self) -> range:
        return range(self.config.count)

    def process(self, item: int) -> None:
        if self.config.fail_with:
            raise RuntimeError(self.config.fail_with)
        slow = self.config.slow_from is not None and item >= self.config.slow_from
        time.sleep(5 if slow else self.config.delay)

    def finalize(self, disposition: Disposition) -> dict[str, object]:
        self.log.info("finalize %s after %d items", disposition.value, self.counts.done)
        if self.config.fail_with == "in finalize":
            raise RuntimeError("in finalize")
        return self.summary()


class AsyncTicks(Ticks):
    async def process(self, item: int) -> None:  # type: ignore[override]
        await asyncio.sleep(self.config.delay)


def _start(
    config: dict[str, object], *, checkpoint: Checkpoint | None = None, refuse: bool = False, job: str = "Ticks"
) -> LocalRun:
    spec = RunSpec(
        run_id="r1", attempt=2 if checkpoint else 1, package="tests", version="1", job="ticks",
        entry_point=f"{__name__}:{job}", config=config, checkpoint=checkpoint,
    )  # fmt: skip
    lines: list[str] = []
    run = LocalRun(
        spec=spec,
        cwd=REPO,
        env=Project(root=REPO, name="tests", version="1", jobs={}).env() | {"PYTHONPATH": str(REPO)},
        on_output=lines.append,
        on_checkpoint=lambda taken: "lease lost: another attempt owns this run" if refuse else None,
    )
    run.lines = lines  # type: ignore[attr-defined]
    return run.start()


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_job_process_reports_progress_checkpoints_and_its_result() -> None:
    run = _start({"count": 40, "delay": 0.01})

    assert run.wait(timeout=30) == EXIT_OK
    assert run.outcome == "succeeded"
    assert run.result is not None and run.result.output["succeeded"] == 40
    # checkpoints were acknowledged at the job's interval, not per item; the last covers every item
    assert 2 <= len(run.checkpoints) < 40
    assert run.checkpoints[-1].watermark == 40 and run.checkpoints[-1].last_item_id == "39"
    assert run.latest_progress is not None and run.latest_progress.succeeded == 40
    # and the job's logging reached stdout (the agent's log file)
    assert any("INFO tests.unit.test_sdk_host: finalize succeeded after 40 items" in line for line in run.lines)  # type: ignore[attr-defined]


def test_sigterm_cancels_cooperatively_with_a_final_checkpoint() -> None:
    _assert_sigterm_cancels(_start({"count": 10_000, "delay": 0.01}))


def test_sigterm_cancels_an_async_job_too() -> None:
    _assert_sigterm_cancels(_start({"count": 10_000, "delay": 0.01, "parallelism": 3}, job="AsyncTicks"))


def _assert_sigterm_cancels(run: LocalRun) -> None:
    _wait_for(lambda: run.checkpoints)

    run.cancel()

    assert run.wait(timeout=10) == EXIT_CANCELLED
    assert run.error is not None and run.error.type == "JobCancelled"
    assert run.result is None
    done = run.latest_progress.succeeded  # type: ignore[union-attr]
    assert 0 < done < 10_000
    assert run.checkpoints[-1].watermark == done  # what was done is durable: a resume repeats nothing
    assert any("finalize cancelled" in line for line in run.lines)  # type: ignore[attr-defined]


def test_a_refused_checkpoint_stops_the_process_at_once() -> None:
    # Given 4 threads busy with items of 5 s each, after 4 quick ones; the agent refuses the checkpoint
    run = _start({"count": 100, "slow_from": 4, "parallelism": 4}, refuse=True)
    started = time.monotonic()

    code = run.wait(timeout=10)

    # Then the process ends at once, without waiting for the items in flight, reporting no outcome
    assert code == EXIT_LEASE_LOST and run.outcome == "lost"
    assert run.result is None and run.error is None
    assert time.monotonic() - started < 3
    assert any("finalize lost" in line for line in run.lines)  # type: ignore[attr-defined]


def test_a_resumed_attempt_starts_at_the_checkpoint_of_its_spec() -> None:
    checkpoint = Checkpoint(
        watermark=15, last_item_id="14", attempt=1, written_at=datetime.now(UTC),
        state={"sdk": 1, "job": None, "counts": {"succeeded": 15, "failed_by_category": {}}},
    )  # fmt: skip

    run = _start({"count": 20}, checkpoint=checkpoint)

    assert run.wait(timeout=30) == EXIT_OK
    assert run.result is not None and run.result.output == {
        "total": 20, "succeeded": 20, "failed": 0, "failed_by_category": {}, "resumed_at": 15,
    }  # fmt: skip


def test_a_failing_job_sends_its_error() -> None:
    # (no pytest import here: the job process imports this module, and should start fast)
    run = _start({"count": 3, "fail_with": "in finalize"})

    assert run.wait(timeout=30) == EXIT_JOB_FAILED
    assert run.error is not None and run.error.type == "RuntimeError" and run.error.message == "in finalize"
    assert "Traceback" in run.error.traceback


def test_too_many_failed_items_fail_the_job_process() -> None:
    run = _start({"count": 3, "fail_with": "boom", "max_failed_items": 0})

    assert run.wait(timeout=30) == EXIT_JOB_FAILED
    assert run.error is not None and run.error.type == "FailureThresholdExceeded"
    assert "1 item failed, more than max_failed_items=0 (RuntimeError 1)" in run.error.message


def test_without_an_ack_pipe_checkpoints_are_skipped_and_the_job_runs() -> None:
    # An agent that passes no RUNLY_ACK_FD cannot make checkpoints durable: the job runs without them.
    stream = io.StringIO()
    job = Ticks(Ticks.parse_config({"count": 5}))
    job.bind(Channel(stream, None))

    assert job.execute()["succeeded"] == 5
    assert '"kind":"checkpoint"' not in stream.getvalue()
    assert '"kind":"progress"' in stream.getvalue()
