"""The live view of a run: a stacked succeeded/failed bar, items/s, counts by category, recent errors.

Shared by ``runly run-local`` (progress read from the job's channel) and ``runly runs watch``
(progress read from the API).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from runly.wire import Progress

BAR_WIDTH = 40


class RunView:
    def __init__(self, title: str) -> None:
        self.title = title
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)

    def rate(self, done: int) -> float | None:
        """Items per second over the last few seconds."""
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > 10:
            self._samples.popleft()
        first_time, first_done = self._samples[0]
        if now - first_time < 0.5:
            return None
        return (done - first_done) / (now - first_time)

    def render(
        self, state: str, progress: Progress | None, *, errors: Iterable[str] = (), note: str | None = None
    ) -> RenderableType:
        parts: list[RenderableType] = [Text.assemble((self.title, "bold"), "  ", (state, _state_style(state)))]
        if progress is not None:
            done = progress.succeeded + progress.failed
            rate = self.rate(done)
            parts.append(stacked_bar(progress))
            line = Text()
            line.append(f"{done:,}" + (f" / {progress.total:,}" if progress.total is not None else "") + " items")
            line.append(f"   {progress.succeeded:,} succeeded", "green")
            line.append(f"   {progress.failed:,} failed", "red" if progress.failed else "dim")
            if rate is not None:
                line.append(f"   {rate:,.1f} items/s")
                if progress.total and rate > 0 and done < progress.total:
                    line.append(f"   ~{_duration((progress.total - done) / rate)} left", "dim")
            parts.append(line)
            if progress.failed_by_category:
                table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2, 0, 0))
                table.add_column("failed by category")
                table.add_column("items", justify="right")
                for category, count in sorted(progress.failed_by_category.items(), key=lambda kv: -kv[1])[:8]:
                    table.add_row(category, f"{count:,}")
                parts.append(table)
            if progress.message:
                parts.append(Text(progress.message, "italic"))
        recent = list(errors)
        if recent:
            parts.append(Text("recent errors:", "bold red"))
            parts.extend(Text(f"  {line}", "red", overflow="ellipsis", no_wrap=True) for line in recent)
        if note:
            parts.append(Text(note, "dim"))
        return Group(*parts)


def stacked_bar(progress: Progress, width: int = BAR_WIDTH) -> Text:
    """Succeeded (green) then failed (red) over the total; a run of unknown total fills as it goes."""
    done = progress.succeeded + progress.failed
    total = progress.total if progress.total else max(done, 1)
    ok = round(width * progress.succeeded / total) if total else 0
    bad = round(width * progress.failed / total) if total else 0
    if progress.failed and bad == 0:
        bad = 1  # a failure is always visible
    ok = min(ok, width - bad)
    bar = Text()
    bar.append("█" * ok, "green")
    bar.append("█" * bad, "red")
    bar.append("░" * (width - ok - bad), "dim")
    if progress.total:
        bar.append(f" {100 * done / progress.total:5.1f}%")
    return bar


def _state_style(state: str) -> str:
    return {
        "Succeeded": "green", "succeeded": "green",
        "Failed": "red", "failed": "red", "TimedOut": "red", "crashed": "red",
        "Cancelled": "magenta", "cancelled": "magenta",
    }.get(state, "yellow")  # fmt: skip


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
