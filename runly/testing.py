"""Run a job in-process, for job authors' own unit tests.

::

    from runly.testing import run_job

    def test_checksums_fail_by_category():
        run = run_job(Checksums, {"count": 20})
        assert run.outcome == "succeeded"
        assert run.counts.failed_by_category == {"TooLarge": 2}

    def test_resumes_where_it_crashed():
        crashed = run_job(Countdown, {"count": 100}, crash_after=40)
        assert crashed.outcome == "crashed" and crashed.last_checkpoint.watermark == 40
        resumed = crashed.resume()          # asserts no item before the watermark is processed again
        assert resumed.outcome == "succeeded" and resumed.processed_ids[0] == "40"

Checkpoints are taken after every item here (``checkpoint_interval=0``), so a simulated crash
leaves a checkpoint at the last item done before it; pass a positive interval to see the
time-based behaviour of a real run instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from runly.items import ItemCounts, ItemJob, ItemResult, SimulatedCrash
from runly.job import CheckpointRefused, Job, JobCancelled, JobContext
from runly.wire import Checkpoint, Progress

__all__ = ["JobRun", "RecordingChannel", "run_job"]

Outcome = Literal["succeeded", "failed", "cancelled", "crashed", "lost"]


class RecordingChannel:
    """A stand-in for the agent: keeps every progress report and acknowledges every checkpoint
    (until ``refuse_after`` checkpoints, after which it refuses them, as on a lost lease)."""

    can_checkpoint = True

    def __init__(self, attempt: int = 1, *, refuse_after: int | None = None) -> None:
        self.attempt = attempt
        self.refuse_after = refuse_after
        self.checkpoints: list[Checkpoint] = []
        self.progress_reports: list[Progress] = []
        self._lock = threading.Lock()

    def progress(self, progress: Progress) -> None:
        with self._lock:
            self.progress_reports.append(progress)

    def checkpoint(self, *, watermark: int | None = None, last_item_id: str | None = None, state: Any = None) -> None:
        with self._lock:
            if self.refuse_after is not None and len(self.checkpoints) >= self.refuse_after:
                raise CheckpointRefused("lease lost (simulated)")
            self.checkpoints.append(
                Checkpoint(
                    watermark=watermark,
                    last_item_id=last_item_id,
                    state=state,
                    attempt=self.attempt,
                    written_at=datetime.now(UTC),
                )
            )


@dataclass
class JobRun:
    """What one in-process attempt of a job did."""

    job_class: type[Job[Any]]
    config: dict[str, Any]
    job: Job[Any]
    outcome: Outcome
    output: Any = None
    error: BaseException | None = None
    results: list[ItemResult] = field(default_factory=list)  # in the order items finished
    checkpoints: list[Checkpoint] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.outcome == "succeeded"

    @property
    def counts(self) -> ItemCounts:
        """Counts of the whole run (an item job), the skipped items of a resumed attempt included."""
        if not isinstance(self.job, ItemJob):
            raise TypeError(f"{self.job_class.__qualname__} is not an ItemJob: it has no item counts")
        return self.job.counts

    @property
    def processed_ids(self) -> list[str]:
        """Ids of the items this attempt processed, in the order of the items."""
        return [result.item_id for result in sorted(self.results, key=lambda r: r.index)]

    @property
    def failures(self) -> list[ItemResult]:
        return [result for result in self.results if not result.ok]

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def job_state(self) -> Any:
        """The job's own state in the last checkpoint (what the next attempt's ``resumed_state`` will be)."""
        from runly.job import split_state

        return split_state(self.last_checkpoint.state)[0] if self.last_checkpoint else None

    def resume(self, **kwargs: Any) -> JobRun:
        """The next attempt, from this one's last checkpoint (as after a crash or a lost node)."""
        kwargs.setdefault("attempt", self.job.context.attempt + 1)
        return run_job(self.job_class, self.config, resume_from=self.last_checkpoint, **kwargs)


def run_job(
    job_class: type[Job[Any]],
    config: dict[str, Any] | BaseModel | None = None,
    *,
    crash_after: int | None = None,
    cancel_after: int | None = None,
    resume_from: Checkpoint | None = None,
    refuse_checkpoints_after: int | None = None,
    attempt: int = 1,
    run_id: str = "test-run",
    checkpoint_interval: float = 0.0,
) -> JobRun:
    """Run one attempt of ``job_class`` in this process and return what it did; never raises for
    the job's own failures (look at ``outcome`` and ``error``).

    - ``crash_after=N``: stop abruptly once N items finished, as a killed process would (no
      finalize, no further checkpoint); resume with ``.resume()``.
    - ``cancel_after=N``: cancel (as SIGTERM from the agent does) once N items finished.
    - ``resume_from``: start from this checkpoint; raises AssertionError if an item before its
      watermark is processed again.
    - ``refuse_checkpoints_after=N``: the agent refuses checkpoints after N (a lost lease).
    """
    raw = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config or {})
    context = JobContext(run_id=run_id, attempt=attempt, checkpoint=resume_from)
    job = job_class(job_class.parse_config(raw), context)
    channel = RecordingChannel(attempt, refuse_after=refuse_checkpoints_after)
    job.bind(channel, checkpoint_interval=checkpoint_interval)
    results: list[ItemResult] = []
    if isinstance(job, ItemJob):
        job._runner.listeners.append(_Listener(job, results, crash_after, cancel_after))
    elif crash_after is not None or cancel_after is not None:
        raise TypeError("crash_after and cancel_after count items: they need an ItemJob")

    run = JobRun(job_class=job_class, config=raw, job=job, outcome="succeeded", results=results)
    try:
        run.output = job.execute()
    except SimulatedCrash:
        run.outcome = "crashed"
    except CheckpointRefused as exc:
        run.outcome, run.error = "lost", exc
    except JobCancelled as exc:
        run.outcome, run.error = "cancelled", exc
    except Exception as exc:  # noqa: BLE001 - the job's failure is the test's to assert on
        run.outcome, run.error = "failed", exc
    run.checkpoints = list(channel.checkpoints)
    run.progress = list(channel.progress_reports)

    if resume_from is not None and resume_from.watermark:
        repeated = [result for result in results if result.index < resume_from.watermark]
        if repeated:
            first = min(repeated, key=lambda r: r.index)
            raise AssertionError(
                f"item {first.item_id!r} (#{first.index}) is before the checkpoint's watermark "
                f"{resume_from.watermark} but was processed again"
            )
    return run


@dataclass
class _Listener:
    job: ItemJob[Any, Any]
    results: list[ItemResult]
    crash_after: int | None
    cancel_after: int | None
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, result: ItemResult) -> None:
        with self._lock:
            self.results.append(replace(result))
            self._count += 1
            count = self._count
        if self.crash_after is not None and count >= self.crash_after:
            self.job._runner.crash()
        if self.cancel_after is not None and count >= self.cancel_after:
            self.job.cancellation.cancel("cancelled (simulated SIGTERM)")
