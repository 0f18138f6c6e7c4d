"""The job SDK: what a job author subclasses.

- :class:`Job` is one action: implement ``run()``; what it returns (JSON) is the run's output.
- :class:`runly.items.ItemJob` enumerates items and processes each (see that module).

Both get a typed config (``self.config``), facts about the run (``self.context``), a logger
(``self.log``), a cancellation token (``self.cancellation``, set by SIGTERM from the agent),
job-defined checkpoints (``self.checkpoint(state)``, returned to a resumed attempt as
``self.resumed_state``) and progress reports. The job process talks to its agent through a
:class:`JobChannel`; the host (``runly.runner``) provides the real one, ``runly.testing`` a recording one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

from runly import sizes, tracing
from runly.wire import Checkpoint, Progress

ConfigT = TypeVar("ConfigT", bound=BaseModel)

log = logging.getLogger(__name__)

# The SDK wraps the job's own state blob so that it can carry the counts of the items before the
# watermark to the next attempt: {"sdk": 1, "job": <the job's state>, "counts": {...}}.
_STATE_MARK = "sdk"


class Disposition(StrEnum):
    """How a run's work ended, as ``finalize`` sees it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # This attempt lost its lease (a checkpoint was refused): another attempt owns the run now.
    # finalize may release resources but must publish nothing; its return value is discarded.
    LOST = "lost"


class JobContext(BaseModel):
    """Facts about the run that a job may want (ids for logs and idempotency, where it resumes from)."""

    run_id: str
    attempt: int
    checkpoint: Checkpoint | None = None
    # The W3C trace context of the job's span (runly.tracing), or of the agent's span of the run where nothing
    # records spans here: hand it on (a ``traceparent`` header) to what the job calls, to keep them in the trace.
    traceparent: str | None = None


class CheckpointRefused(Exception):
    """The agent could not write the checkpoint: this attempt lost its lease and must stop."""


class JobCancelled(Exception):
    """The run was cancelled (SIGTERM from the agent) and the job stopped early.

    Raise it from ``Job.run`` (or call ``self.cancellation.raise_if_cancelled()``) to honour a cancel.
    """


class CancellationToken:
    """Set once when the run should stop (SIGTERM from the agent, or the lease lost); never cleared.

    Cheap to check in a loop (``if self.cancelled: ...``); ``wait(seconds)`` sleeps but wakes at once
    on cancel, which makes it the right way to pause inside a job.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds; True (at once) if the run is cancelled."""
        return self._event.wait(timeout)

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise JobCancelled(self.reason or "cancelled")


class JobChannel(Protocol):
    """What a job needs from its agent; ``runly.runner.Channel`` is the real one."""

    @property
    def can_checkpoint(self) -> bool: ...

    def progress(self, progress: Progress) -> None: ...

    def checkpoint(
        self, *, watermark: int | None = None, last_item_id: str | None = None, state: Any = None
    ) -> None: ...


class NullChannel:
    """No agent: progress goes nowhere and checkpoints are not taken (a job run directly, in a script)."""

    can_checkpoint = False

    def progress(self, progress: Progress) -> None:
        pass

    def checkpoint(self, *, watermark: int | None = None, last_item_id: str | None = None, state: Any = None) -> None:
        raise CheckpointRefused("no agent to write checkpoints to")


def split_state(state: Any) -> tuple[Any, dict[str, Any]]:
    """(the job's own state, the SDK's counts) from a checkpoint's state blob."""
    if isinstance(state, dict) and state.get(_STATE_MARK) == 1:
        return state.get("job"), dict(state.get("counts") or {})
    return state, {}


def join_state(job_state: Any, counts: dict[str, Any] | None) -> dict[str, Any]:
    envelope: dict[str, Any] = {_STATE_MARK: 1, "job": job_state}
    if counts is not None:
        envelope["counts"] = counts
    return envelope


class Reporter:
    """Sends the job's progress and checkpoints to the agent, off the job's hot path.

    A background thread wakes a few times a second and sends progress when it changed (at most
    every ``progress_interval``) and a checkpoint when the job's watermark or state moved (at most
    every ``checkpoint_interval``); the threads processing items never wait for the agent.
    With ``checkpoint_interval == 0`` there is no thread: the job calls :meth:`tick` after every
    item (``runly.testing`` uses it to make checkpoints deterministic).
    """

    def __init__(
        self, job: Job[Any], channel: JobChannel, *, progress_interval: float, checkpoint_interval: float
    ) -> None:
        self.job = job
        self.channel = channel
        self.progress_interval = progress_interval
        self.checkpoint_interval = checkpoint_interval
        self.inline = checkpoint_interval <= 0
        self.checkpoints_taken = 0
        self._last_progress: Progress | None = None
        self._last_checkpoint = job._checkpoint_key()
        self._next_progress = 0.0
        self._next_checkpoint = time.monotonic() + checkpoint_interval
        self._checkpoint_lock = threading.Lock()
        self._progress_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress_broken = False

    def start(self) -> Reporter:
        if not self.inline and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="runly-reporter", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        wake = max(0.01, min(self.progress_interval, self.checkpoint_interval) / 2)
        while not self._stop.wait(wake):
            self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_progress:
            self._next_progress = now + self.progress_interval
            self.send_progress()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + self.checkpoint_interval
            self.checkpoint()

    def send_progress(self) -> None:
        with self._progress_lock:
            progress = self.job._progress_snapshot()
            if progress is None or progress == self._last_progress or self._progress_broken:
                return
            try:
                self.channel.progress(progress)
            except (OSError, ValueError) as exc:  # the agent is gone; it will stop this process
                self._progress_broken = True
                log.warning("progress could not be sent: %s", exc)
                return
            except sizes.ProgressTooLarge as exc:  # the run goes on without progress rather than failing for it
                self._progress_broken = True
                log.error("progress is no longer reported: %s", exc)
                return
            self._last_progress = progress

    def checkpoint(self) -> bool:
        """Write a checkpoint if anything moved since the last one; wait for the agent.

        True when the job's latest watermark and state are durable. A refusal (lease lost) marks
        the job lost and returns False: the caller stops.
        """
        if not self.channel.can_checkpoint:
            return False
        with self._checkpoint_lock:
            if self.job.lease_lost:
                return False
            key = self.job._checkpoint_key()
            if key == self._last_checkpoint:
                return True
            message = self.job._checkpoint_snapshot()
            if message is None:  # the job may not checkpoint any more (a simulated crash)
                return False
            try:
                self.channel.checkpoint(**message)
            except CheckpointRefused as exc:
                self.job._lose_lease(str(exc))
                return False
            except sizes.ValueTooLarge as exc:  # on the reporter's thread too: the job learns it from execute
                self.job._exceed_limit(exc)
                return False
            self._last_checkpoint = key
            self.checkpoints_taken += 1
            return True

    def stop(self, *, flush_progress: bool = True) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if flush_progress:
            self.send_progress()


class Job(Generic[ConfigT]):
    """A job with a typed config and one action.

    Subclass as ``class Hello(Job[HelloConfig])`` and implement :meth:`run`;
    what ``run`` returns (JSON-serialisable) is the run's output.

    A long action can make itself resumable: call ``self.checkpoint(state)`` now and then (it
    returns once the agent has written it durably); a later attempt of the same run finds it in
    ``self.resumed_state``. It should check ``self.cancelled`` and stop (raise ``JobCancelled``)
    when the run is cancelled.
    """

    config_model: ClassVar[type[BaseModel]]
    # How often progress and checkpoints go to the agent, at most (seconds); the agent keeps only
    # the newest progress, and writes every checkpoint to DynamoDB before it acknowledges it.
    progress_interval: ClassVar[float] = 0.5
    checkpoint_interval: ClassVar[float] = 2.0
    # A run's limits, lower than the node's (RUNLY_MEMORY_LIMIT_BYTES, RUNLY_PIDS_LIMIT) if need be; None: the
    # node's. Recorded in the package's manifest by ``runly pack``; a run over its memory limit ends memory_limit.
    memory_limit_mb: ClassVar[int | None] = None
    max_processes: ClassVar[int | None] = None
    # The environment's variables and secrets a run of this job gets, by name, as environment variables of its process
    # (``os.environ["API_TOKEN"]``). Recorded in the package's manifest by ``runly pack``; the agent resolves them
    # when the run starts, and a run whose secret is missing fails before the job starts (docs/jobs.md).
    variables: ClassVar[tuple[str, ...]] = ()
    secrets: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Job):
                (model,) = get_args(base)[:1]
                if isinstance(model, type) and issubclass(model, BaseModel):
                    cls.config_model = model

    def __init__(self, config: ConfigT, context: JobContext | None = None) -> None:
        self.config = config
        self.context = context or JobContext(run_id="local", attempt=1)
        self.log = logging.getLogger(type(self).__module__)
        self.cancellation = CancellationToken()
        self.lease_lost = False
        self.limit_exceeded: sizes.ValueTooLarge | None = None  # a value went over its limit: the run fails
        self._channel: JobChannel = NullChannel()
        self._reporter: Reporter | None = None
        resumed = self.context.checkpoint
        self._resumed_state, self._resumed_counts = split_state(resumed.state if resumed else None)
        self._job_state: Any = self._resumed_state
        self._state_version = 0
        self._state_lock = threading.Lock()
        self._progress: Progress | None = None

    # ------------------------------------------------------------ what job authors use
    @classmethod
    def parse_config(cls, raw: dict[str, Any]) -> ConfigT:
        if not hasattr(cls, "config_model"):
            raise TypeError(f"{cls.__qualname__} must subclass Job[SomeConfigModel]")
        return cls.config_model.model_validate(raw)  # type: ignore[return-value]

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return cls.config_model.model_json_schema()

    @classmethod
    def default_config(cls) -> dict[str, Any] | None:
        """The config with every default filled in, or None when a field has no default."""
        try:
            return cls.config_model().model_dump(mode="json")
        except ValidationError:
            return None

    def run(self) -> Any:
        raise NotImplementedError

    @property
    def cancelled(self) -> bool:
        """True once the run is being cancelled: finish what is in hand, start nothing new."""
        return self.cancellation.cancelled

    @property
    def resumed_from(self) -> Checkpoint | None:
        """The checkpoint this attempt resumes from (None on a first attempt)."""
        return self.context.checkpoint

    @property
    def resumed_state(self) -> Any:
        """The state the previous attempt passed to :meth:`checkpoint` (None if none)."""
        return self._resumed_state

    def checkpoint(self, state: Any = None, *, wait: bool = True) -> bool:
        """Record ``state`` (JSON, at most ``runly.limits.MAX_CHECKPOINT_STATE_BYTES`` as compact UTF-8 JSON)
        as this run's checkpoint.

        ``wait=True`` (the default) writes it now and returns once the agent has made it durable;
        ``wait=False`` only keeps it, to go out with the next periodic checkpoint (use that when
        calling it often, e.g. from ``process``). Returns False when there is no agent to write
        to (a job run directly). Raises :class:`CheckpointRefused` when this attempt lost its
        lease: stop at once, another attempt owns the run. Raises :class:`runly.sizes.CheckpointTooLarge` for a
        state over the limit (uncaught, it ends the run as ``checkpoint_too_large``) and
        :class:`runly.sizes.NotJson` for one that is not JSON (NaN, Infinity, a lone surrogate).
        """
        sizes.checkpoint_state_json(state)  # fail here, in the caller, on a state that cannot be stored
        with self._state_lock:
            self._job_state = state
            self._state_version += 1
        reporter = self._reporter_or_inline()
        if not wait and not reporter.inline:  # inline (runly.testing): no thread would send it later
            return self._channel.can_checkpoint
        written = reporter.checkpoint()
        if self.lease_lost:
            raise CheckpointRefused("lease lost: another attempt owns this run")
        if self.limit_exceeded is not None:
            raise self.limit_exceeded
        return written

    @contextlib.contextmanager
    def span(self, name: str, **attributes: str | int | float | bool) -> Iterator[Any]:
        """A span of the job's own work (an item, a call), in the run's trace: ``with self.span("resize", item=id):``.

        It is a child of the span current on this thread, or else of the job's span (items processed on threads of
        their own start from it too). Yields the OpenTelemetry span (None where OpenTelemetry is not installed or
        exports nothing: then the block runs and nothing is recorded). An exception leaving the block is recorded.
        """
        parent = None if tracing.in_span() else self._job_trace
        with tracing.span(name, parent=parent, attributes=attributes, tracer_name=type(self).__module__) as traced:
            yield traced.span

    @property
    def _job_trace(self) -> tracing.TraceParent | None:
        traceparent = self.context.traceparent
        return tracing.TraceParent.parse(traceparent) if traceparent else None

    def report_progress(self, done: int | None = None, total: int | None = None, message: str | None = None) -> None:
        """For a one-action job: how far it is (sent to the agent at most every ``progress_interval``).

        ``message`` is at most ``runly.limits.MAX_PROGRESS_MESSAGE_BYTES`` (UTF-8, as JSON): a longer one
        raises :class:`runly.sizes.ProgressTooLarge` here.
        """
        sizes.check_progress_message(message)
        self._progress = Progress(total=total, succeeded=done or 0, message=message)

    # ------------------------------------------------------------ what the host and runly.testing use
    def bind(self, channel: JobChannel, *, checkpoint_interval: float | None = None) -> None:
        """Connect the job to its agent's channel (before ``execute``)."""
        self._channel = channel
        self._reporter = Reporter(
            self,
            channel,
            progress_interval=self.progress_interval if checkpoint_interval != 0 else 0.0,
            checkpoint_interval=self.checkpoint_interval if checkpoint_interval is None else checkpoint_interval,
        )

    def execute(self) -> Any:
        """Run the job with its reporter going; return the output, or raise.

        Raises :class:`CheckpointRefused` if the attempt lost its lease, whatever ``run`` did.
        """
        reporter = self._reporter_or_inline().start()
        try:
            output = self.run()
        except BaseException as exc:
            if self.limit_exceeded is not None and not self.lease_lost:
                raise self.limit_exceeded from exc  # the cause of the cancel the job honoured
            raise
        finally:
            reporter.stop(flush_progress=not self.lease_lost)
        if self.lease_lost:
            raise CheckpointRefused("lease lost: another attempt owns this run")
        if self.limit_exceeded is not None:
            raise self.limit_exceeded
        # Checked here, in the job, where the author sees it (runly.testing too): NaN would be stored as null.
        sizes.output_json(output)
        return output

    def _reporter_or_inline(self) -> Reporter:
        if self._reporter is None:
            self._reporter = Reporter(
                self, self._channel, progress_interval=self.progress_interval, checkpoint_interval=0
            )
        return self._reporter

    def _exceed_limit(self, exc: sizes.ValueTooLarge) -> None:
        log.error("%s: the run stops", exc)
        if self.limit_exceeded is None:
            self.limit_exceeded = exc
        self.cancellation.cancel(str(exc))

    def _lose_lease(self, reason: str) -> None:
        log.error("checkpoint refused (%s): this attempt stops; another attempt owns the run", reason)
        self.lease_lost = True
        self.cancellation.cancel("lease lost")

    # Hooks of the reporter; ItemJob adds its watermark and counts.
    def _progress_snapshot(self) -> Progress | None:
        return self._progress

    def _checkpoint_key(self) -> tuple[int | None, int]:
        return (None, self._state_version)

    def _checkpoint_snapshot(self) -> dict[str, Any] | None:
        with self._state_lock:
            return {"state": join_state(self._job_state, None)}
