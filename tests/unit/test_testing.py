"""runly.testing: the harness job authors use in their own tests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from runly import ItemConfig, ItemJob, Job
from runly.testing import RecordingChannel, run_job


class Config(ItemConfig):
    count: int = 10


class Letters(ItemJob[Config, str]):
    def items(self) -> list[str]:
        return [f"item-{n}" for n in range(self.config.count)]

    def process(self, item: str) -> str:
        if item == "item-3":
            raise KeyError(item)
        return item.upper()


def test_it_returns_results_counts_output_and_checkpoints() -> None:
    run = run_job(Letters, Config(count=5))

    assert run.outcome == "succeeded" and run.succeeded and run.error is None
    assert run.processed_ids == ["item-0", "item-1", "item-2", "item-3", "item-4"]
    assert [r.value for r in run.results if r.ok] == ["ITEM-0", "ITEM-1", "ITEM-2", "ITEM-4"]
    assert run.counts.failed_by_category == {"KeyError": 1}
    assert run.output["succeeded"] == 4
    # checkpoints after every item here, so a simulated crash is deterministic
    assert [c.watermark for c in run.checkpoints] == [1, 2, 3, 4, 5]
    assert run.last_checkpoint is not None and run.last_checkpoint.last_item_id == "item-4"
    assert run.progress[-1].failed == 1


def test_a_crash_leaves_the_last_checkpoint_and_resume_continues_from_it() -> None:
    crashed = run_job(Letters, {"count": 10}, crash_after=6)

    assert crashed.outcome == "crashed" and crashed.output is None
    assert crashed.last_checkpoint is not None and crashed.last_checkpoint.watermark == 6

    resumed = crashed.resume()
    assert resumed.job.context.attempt == 2
    assert resumed.processed_ids == ["item-6", "item-7", "item-8", "item-9"]
    assert resumed.counts.succeeded == 9 and resumed.counts.resumed_at == 6


def test_resume_catches_an_item_before_the_watermark_being_processed_again() -> None:
    class Forgetful(Letters):
        # A broken engine: starts from the first item whatever the checkpoint says.
        def _open(self, items: Iterable[str]) -> Iterator[tuple[int, str]]:
            super()._open(items)
            return enumerate(iter(items))

    crashed = run_job(Forgetful, {"count": 5}, crash_after=2)

    with pytest.raises(AssertionError, match=r"item 'item-0' \(#0\) is before the checkpoint's watermark 2"):
        crashed.resume()


def test_cancel_after_and_a_lost_lease_are_outcomes_too() -> None:
    assert run_job(Letters, {"count": 10}, cancel_after=2).outcome == "cancelled"
    lost = run_job(Letters, {"count": 10}, refuse_checkpoints_after=1)
    assert lost.outcome == "lost" and len(lost.checkpoints) == 1


def test_a_one_action_job_runs_but_counts_no_items() -> None:
    class Plain(BaseModel):
        x: int = 1

    class Single(Job[Plain]):
        def run(self) -> Any:
            return {"x": self.config.x}

    run = run_job(Single, {"x": 2})
    assert run.output == {"x": 2}
    with pytest.raises(TypeError, match="not an ItemJob"):
        _ = run.counts
    with pytest.raises(TypeError, match="need an ItemJob"):
        run_job(Single, crash_after=1)


def test_the_recording_channel_refuses_after_its_limit() -> None:
    channel = RecordingChannel(3, refuse_after=1)
    channel.checkpoint(watermark=1)
    from runly import CheckpointRefused

    with pytest.raises(CheckpointRefused):
        channel.checkpoint(watermark=2)
    assert [c.attempt for c in channel.checkpoints] == [3]
