"""A long job made of many small steps, that picks up where it left off.

Kill the node (or the job process) halfway: the next attempt starts from the last checkpoint,
skipping every tick before its watermark, and its output says which attempts did the work.
Nothing in the job is about checkpoints except ``self.checkpoint`` for its own bit of state:
the SDK checkpoints the watermark by itself, every ``checkpoint_interval`` seconds.
"""

from __future__ import annotations

import time

from pydantic import Field

from runly import Disposition, ItemConfig, ItemJob


class CountdownConfig(ItemConfig):
    count: int = Field(default=600, ge=1, le=10_000_000, description="how many ticks")
    delay: float = Field(default=0.05, ge=0, le=60, description="seconds per tick")


class Countdown(ItemJob[CountdownConfig, int]):
    """Counts down ``count`` ticks of ``delay`` seconds each (30 s by default)."""

    checkpoint_interval = 1.0  # seconds: a crash repeats at most about this much work

    def setup(self) -> None:
        # The job's own state, carried from attempt to attempt: which attempts worked on this run.
        previous = self.resumed_state or {}
        self.attempts = [*previous.get("attempts", []), self.context.attempt]
        self.started = time.monotonic()
        self.checkpoint({"attempts": self.attempts}, wait=False)  # goes out with the next checkpoint
        if self.resumed_from:
            self.log.info("attempt %d resumes after %s ticks", self.context.attempt, self.resumed_from.watermark)

    def items(self) -> range:
        return range(self.config.count, 0, -1)  # the ticks, counted down; a range has a length: total known

    def process(self, tick: int) -> None:
        # Sleeping on the cancellation token: a cancel interrupts the pause at once.
        self.cancellation.wait(self.config.delay)
        if tick % 100 == 0:
            self.log.info("T-%d", tick)

    def finalize(self, disposition: Disposition) -> dict[str, object]:
        return {
            **self.summary(),
            "disposition": disposition.value,
            "attempts": self.attempts,
            "seconds_this_attempt": round(time.monotonic() - self.started, 3),
        }
