"""The jobs of runly's benchmarks (packed and pushed by ``make bench``).

Each notes wall-clock times (``time.time()``) to a file on this machine, so the bench can compare them
with the times it took on its side (the same clock): when the job's module was imported, when the first
line of job code ran, when items were processed.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from runly import Job
from runly.items import ItemConfig, ItemJob
from runly.job import Disposition, JobChannel, JobContext

if TYPE_CHECKING:
    from runly.wire import Progress

IMPORTED_AT = time.time()  # the job process has started and imported runly.runner and this module


def note(path: str, line: str) -> None:
    # One write() per line on an O_APPEND file: lines of concurrent processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class StampConfig(BaseModel):
    stamps: str | None = Field(default=None, description="file to note '<run id> <first line> <module imported>' in")


class Stamp(Job[StampConfig]):
    """The trivial job: notes when its first line ran, and nothing else."""

    def run(self) -> None:
        started = time.time()
        if self.config.stamps:
            note(self.config.stamps, f"{self.context.run_id} {started:.6f} {IMPORTED_AT:.6f} {os.getpid()}")


class TimedChannel:
    """The agent's channel, with each checkpoint timed where the SDK's reporter thread makes it: when it started,
    its round trip (the agent writes it to DynamoDB, then acknowledges; items go on meanwhile) and the CPU time
    that thread spent on it (the message out, the acknowledgement in)."""

    def __init__(self, inner: JobChannel) -> None:
        self._inner = inner
        self.checkpoints: list[tuple[float, float, float]] = []  # (started, round trip s, reporter CPU s)

    @property
    def can_checkpoint(self) -> bool:
        return self._inner.can_checkpoint

    def progress(self, progress: Progress) -> None:
        self._inner.progress(progress)

    def checkpoint(self, *, watermark: int | None = None, last_item_id: str | None = None, state: Any = None) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            self._inner.checkpoint(watermark=watermark, last_item_id=last_item_id, state=state)
        finally:
            self.checkpoints.append((started, time.perf_counter() - started, time.thread_time() - cpu))


class NoopItemsConfig(ItemConfig):
    items: int = Field(default=100_000, ge=1)
    checkpoint_every: float = Field(
        default=2.0, gt=0, description="seconds between automatic checkpoints (1e9: none until the items end)"
    )


class NoopItems(ItemJob[NoopItemsConfig, int]):
    """Items that do nothing: what is left is the SDK's own cost per item, checkpoints included."""

    def __init__(self, config: NoopItemsConfig, context: JobContext | None = None) -> None:
        super().__init__(config, context)
        self._last = self.config.items - 1
        self._started = self._finished = 0.0
        # CPU time of the whole process (items and the reporter thread that sends checkpoints): steadier than
        # wall time on a machine other work shares.
        self._cpu_started = self._cpu_finished = 0.0
        self._timed: TimedChannel | None = None

    def bind(self, channel: JobChannel, *, checkpoint_interval: float | None = None) -> None:
        # The host binds the job to its agent's channel: with this run's interval instead of the class's.
        every = self.config.checkpoint_every if checkpoint_interval is None else checkpoint_interval
        self._timed = TimedChannel(channel)
        super().bind(self._timed, checkpoint_interval=every)

    def items(self) -> range:
        self._cpu_started = time.process_time()
        self._started = time.perf_counter()
        return range(self.config.items)

    def process(self, item: int) -> None:
        if item == self._last:
            self._finished = time.perf_counter()
            self._cpu_finished = time.process_time()

    def finalize(self, disposition: Disposition) -> dict[str, object]:
        seconds = self._finished - self._started
        reporter = self._reporter
        timed = self._timed.checkpoints if self._timed is not None else []
        return {
            **self.summary(),
            "seconds": seconds,
            "items_per_second": self.counts.done / seconds if seconds > 0 else None,
            "checkpoints": getattr(reporter, "checkpoints_taken", None),
            # Started while the items ran (the timed part); the one the SDK takes when they end is not.
            "checkpoints_inside": sum(1 for started, _, _ in timed if self._started <= started <= self._finished),
            "checkpoint_round_trips": [round_trip for _, round_trip, _ in timed],
            "checkpoint_cpu_seconds": [cpu for _, _, cpu in timed],
            "cpu_seconds": self._cpu_finished - self._cpu_started,
        }


class LedgerConfig(ItemConfig):
    items: int = Field(default=200, ge=1)
    item_seconds: float = Field(default=0.05, ge=0)
    ledger: str = Field(description="file where each attempt notes its start and each item it processed")


class Ledger(ItemJob[LedgerConfig, int]):
    """Slow items that note themselves, so the bench sees when a run resumed elsewhere and what it repeated."""

    checkpoint_interval = 1.0

    def setup(self) -> None:
        watermark = self.resumed_from.watermark if self.resumed_from and self.resumed_from.watermark else 0
        note(self.config.ledger, f"{self.context.run_id} start {self.context.attempt} {watermark} {time.time():.6f}")

    def items(self) -> range:
        return range(self.config.items)

    def process(self, item: int) -> None:
        time.sleep(self.config.item_seconds)
        note(self.config.ledger, f"{self.context.run_id} item {self.context.attempt} {item} {time.time():.6f}")


class EchoConfig(BaseModel):
    payload: str = Field(default="", max_length=64 * 1024, description="returned as the output (make capacity: 1 KB)")
    seconds: float = Field(default=0.0, ge=0, le=3600, description="how long to run before returning (heartbeats)")


class Echo(Job[EchoConfig]):
    """A run of a given size and length: returns its config's payload after ``seconds`` (make capacity's runs)."""

    def run(self) -> dict[str, str]:
        if self.config.seconds:
            self.cancellation.wait(self.config.seconds)
            self.cancellation.raise_if_cancelled()
        return {"payload": self.config.payload}
