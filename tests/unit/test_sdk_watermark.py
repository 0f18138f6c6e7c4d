"""The watermark never passes an item that is not done, however items finish."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runly import ItemConfig, ItemJob
from runly.items import _Runner
from runly.testing import RecordingChannel


class Config(ItemConfig):
    count: int = 10


class Numbers(ItemJob[Config, int]):
    def items(self) -> list[int]:
        return list(range(self.config.count))

    def process(self, item: int) -> None:
        pass


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.integers(min_value=0, max_value=5).flatmap(
        lambda start: st.tuples(
            st.just(start),
            st.permutations(range(start, start + 40)),
            st.sets(st.integers(min_value=start, max_value=start + 39)),
        )
    )
)
def test_the_watermark_is_the_first_item_not_done(case: tuple[int, list[int], set[int]]) -> None:
    # Given items finishing in any order (some failed), from a start watermark
    start, order, failed = case
    runner = _Runner(job=Numbers(Numbers.parse_config({})), start=start)
    done: set[int] = set()

    for index in order:
        runner.record(index, index, "Bad" if index in failed else None, None, 1, 0.0, None)
        done.add(index)

        # Then the watermark is exactly the first index not done: all before it are done
        first_not_done = next(i for i in range(start, start + 41) if i not in done)
        assert runner.watermark == first_not_done
        assert all(i in done for i in range(start, runner.watermark))
        # and the counts a checkpoint carries are those of the items below the watermark
        below = range(start, runner.watermark)
        assert runner.committed_succeeded == sum(1 for i in below if i not in failed)
        assert sum(runner.committed_failed.values()) == sum(1 for i in below if i in failed)
        if runner.watermark > start:
            assert runner.last_item == runner.watermark - 1
    assert runner.watermark == start + 40 and not runner.pending


class _CheckingChannel(RecordingChannel):
    """An agent that checks, at the moment of each checkpoint, that every item below it has finished."""

    def __init__(self, finished: set[int], lock: threading.Lock) -> None:
        super().__init__()
        self.finished, self.lock, self.violations = finished, lock, []  # type: ignore[var-annotated]

    def checkpoint(self, *, watermark: int | None = None, last_item_id: str | None = None, state: Any = None) -> None:
        with self.lock:
            missing = [i for i in range(watermark or 0) if i not in self.finished]
        if missing:
            self.violations.append((watermark, missing[:5]))
        if watermark:
            assert last_item_id == str(watermark - 1)
        super().checkpoint(watermark=watermark, last_item_id=last_item_id, state=state)


def test_under_real_threads_no_checkpoint_passes_an_unfinished_item() -> None:
    finished: set[int] = set()
    lock = threading.Lock()
    rng = random.Random(5)
    delays = [rng.choice([0, 0, 0.001, 0.002, 0.008]) for _ in range(600)]

    class Jittery(Numbers):
        def process(self, item: int) -> None:
            time.sleep(delays[item])  # out-of-order completion across 8 threads
            with lock:
                finished.add(item)

    channel = _CheckingChannel(finished, lock)
    job = Jittery(Jittery.parse_config({"count": 600, "parallelism": 8}))
    job.bind(channel, checkpoint_interval=0.01)

    output = job.execute()

    assert output["succeeded"] == 600
    assert len(channel.checkpoints) >= 5
    assert channel.violations == []
    assert channel.checkpoints[-1].watermark == 600
