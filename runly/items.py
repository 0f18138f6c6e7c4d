"""Item jobs: enumerate items, process each (in parallel if asked), record a result per item.

Lifecycle, in order::

    setup()                   # open connections, read what every item needs
    items()                   # the items, in a stable order (a list, a generator...)
    process(item)             # once per item; sync (run on threads) or ``async def`` (on asyncio)
    finalize(disposition)     # always runs: succeeded, failed, cancelled (or lost, see Disposition)
    -> output                 # what finalize returns, or the default summary (counts)

**Results.** ``process`` returning is a success; raising is a failure whose *category* is the
exception's type name, or the category of :class:`ItemFailed`. The run counts results by
category; a failure threshold (``max_failed_items``, ``max_failed_ratio``) stops it as Failed.
A failing item is retried ``item_retries`` times with exponential backoff first
(:class:`ItemFailed` is not retried unless raised with ``retry=True``).

**Settings.** ``parallelism``, ``max_failed_items``, ``max_failed_ratio`` and ``item_retries`` are
class attributes (the job's defaults); a config field of the same name, when set, overrides
them for one run. Subclass :class:`ItemConfig` to give a job's config all four.

**Resume.** Each item has an id (:meth:`ItemJob.item_id`: its ``id`` attribute or ``"id"`` key,
else ``str(item)``) and ``items()`` must yield the same items in the same order on every
attempt. The SDK keeps a *watermark*, the number of leading items that are all done (succeeded
or failed for good), and checkpoints it through the agent every ``checkpoint_interval`` seconds
(and once more when the items end or the run is cancelled), never per item. A resumed attempt
skips the first ``watermark`` items without calling ``process`` for them, after checking that
the item just before the watermark still has the id recorded in the checkpoint. Items that
finished after the watermark (out of order, in parallel) are processed again: ``process`` must
tolerate that (at-least-once).

**Cancellation.** SIGTERM from the agent sets ``self.cancellation``: items in flight finish, no
new one starts, ``finalize(CANCELLED)`` runs and the run ends Cancelled.

**Lease lost.** If the agent refuses a checkpoint, another attempt owns the run: no new item
starts, items in flight are not waited for, and ``finalize(LOST)`` runs only to release
resources (it must publish nothing; its output is discarded). Then the process exits.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from runly import sizes
from runly.job import CheckpointRefused, ConfigT, Disposition, Job, JobCancelled, JobContext, join_state
from runly.limits import MAX_CATEGORIES, MAX_ITEM_ID_BYTES, OTHER_CATEGORY
from runly.wire import Progress

ItemT = TypeVar("ItemT")

log = logging.getLogger(__name__)

RECENT_ERRORS = 20
_LOGGED_TRACEBACKS = 10  # the first failures are logged with their traceback, the rest in one line each
_RATIO_MIN_ITEMS = 20  # with no known total, a failure ratio is judged once this many items finished
_WAIT_SLICE = 0.2  # how often a waiting thread looks at the cancellation and stop flags


class ItemFailed(Exception):
    """Raise from ``process`` to fail an item with a category of your choice.

    Not retried unless ``retry=True`` (it says the item is bad, not that the attempt was unlucky).
    """

    def __init__(self, message: str = "", *, category: str | None = None, retry: bool = False) -> None:
        super().__init__(message)
        self.category = category or "ItemFailed"
        self.retry = retry


class FailureThresholdExceeded(Exception):
    """Too many items failed: the run stops as Failed."""


class ResumeMismatch(Exception):
    """The checkpoint does not fit the items any more (their order or number changed)."""


class SimulatedCrash(BaseException):
    """``runly.testing`` stopped the job as a crash would: no finalize, no further checkpoint."""


class ItemConfig(BaseModel):
    """Base for the config of an item job: the run's own parallelism, failure threshold and retries.

    Each field left unset (null) keeps the job class's default.
    """

    parallelism: int | None = Field(default=None, ge=1, le=1024, description="items processed at once")
    max_failed_items: int | None = Field(
        default=None, ge=0, description="the run fails when more items than this have failed"
    )
    max_failed_ratio: float | None = Field(
        default=None, ge=0, le=1, description="the run fails when more than this fraction of its items failed"
    )
    item_retries: int | None = Field(default=None, ge=0, le=100, description="retries of a failing item")


@dataclass(slots=True)
class ItemResult:
    """The result of one item: ``ok``, or a failure with its category."""

    index: int  # position in items()
    item_id: str
    ok: bool
    category: str | None = None  # None for a success
    error: str | None = None
    attempts: int = 1
    duration: float = 0.0
    value: Any = None  # what process returned


@dataclass
class ItemCounts:
    """Counts of the whole run so far (a resumed attempt carries the counts of the items it skips)."""

    total: int | None
    succeeded: int
    failed_by_category: dict[str, int]
    resumed_at: int = 0  # items skipped because an earlier attempt did them

    @property
    def failed(self) -> int:
        return sum(self.failed_by_category.values())

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


class _Abandoned(Exception):
    """An item given up mid-retry because the run is stopping: it is not done."""


@dataclass
class _Runner:
    """The state of one attempt of an item job: counts, watermark, stop flags."""

    job: ItemJob[Any, Any]
    start: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    total: int | None = None
    watermark: int = 0
    last_item: Any = None  # the item at watermark - 1
    has_last_item: bool = False
    pending: dict[int, tuple[Any, str | None]] = field(default_factory=dict)  # done beyond the watermark
    succeeded: int = 0
    failed_by_category: Counter[str] = field(default_factory=Counter)
    committed_succeeded: int = 0  # counts of the items below the watermark: what a checkpoint carries
    committed_failed: Counter[str] = field(default_factory=Counter)
    attempt_failed: int = 0  # failures of this attempt (the first few are logged with their traceback)
    recent_errors: deque[ItemResult] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))
    stop_reason: str | None = None  # "threshold", "error", "crash"
    threshold_message: str | None = None
    fatal: BaseException | None = None
    crashed: bool = False
    listeners: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.watermark = self.start

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None or self.job.cancellation.cancelled

    def record(self, index: int, item: Any, category: str | None, error: BaseException | None, attempts: int,
               duration: float, value: Any) -> ItemResult | None:  # fmt: skip
        """Count one finished item and move the watermark; the result, when anyone wants it."""
        with self.lock:
            if self.crashed:
                return None
            if category is not None:
                category = self._bounded(category)
            if category is None:
                self.succeeded += 1
            else:
                self.failed_by_category[category] += 1
                self.attempt_failed += 1
            pending = self.pending
            if index == self.watermark:
                self._commit(item, category)
                while self.watermark in pending:
                    self._commit(*pending.pop(self.watermark))
            else:
                pending[index] = (item, category)
            if category is not None:
                self._check_threshold()
        if category is None and not self.listeners:
            return None  # the hot path: a success nobody looks at costs no object
        result = ItemResult(
            index=index,
            item_id=self.job.item_id(item),
            ok=category is None,
            category=category,
            error=None if error is None else f"{type(error).__name__}: {error}",
            attempts=attempts,
            duration=duration,
            value=value,
        )
        if category is not None:
            self._log_failure(result, error)
            with self.lock:
                self.recent_errors.append(result)
        return result

    def _bounded(self, category: str) -> str:
        """The category as counted: its name cut to MAX_CATEGORY_BYTES; past MAX_CATEGORIES distinct ones, the
        overflow category (the progress and the checkpoint carry every category: each has a byte limit)."""
        category = sizes.category_name(category)
        known = self.failed_by_category
        if category in known or len(known) < MAX_CATEGORIES - 1 or category == OTHER_CATEGORY:
            return category
        return OTHER_CATEGORY

    def notify(self, result: ItemResult | None) -> None:
        if result is not None:
            for listener in self.listeners:
                listener(result)

    def _commit(self, item: Any, category: str | None) -> None:
        self.watermark += 1
        self.last_item = item
        self.has_last_item = True
        if category is None:
            self.committed_succeeded += 1
        else:
            self.committed_failed[category] += 1

    def _check_threshold(self) -> None:
        # Judged on the whole run: the failures of earlier attempts (carried by the checkpoint) count,
        # so a crash or a retry does not reset the budget.
        job = self.job
        max_items = job.setting("max_failed_items")
        max_ratio = job.setting("max_failed_ratio")
        failed = sum(self.failed_by_category.values())
        done = self.succeeded + failed
        if max_items is not None and failed > max_items:
            self._exceed(f"{_items(failed)} failed, more than max_failed_items={max_items}")
        elif max_ratio is not None:
            if self.total is not None:
                if failed > max_ratio * self.total:
                    self._exceed(
                        f"{failed} of {self.total} items failed, more than max_failed_ratio={max_ratio:g} of them"
                    )
            elif done >= _RATIO_MIN_ITEMS and failed > max_ratio * done:
                self._exceed(f"{failed} of the {done} items done failed, more than max_failed_ratio={max_ratio:g}")

    def _exceed(self, message: str) -> None:
        if self.stop_reason is None:
            by_category = ", ".join(f"{name} {count}" for name, count in self.failed_by_category.most_common())
            self.threshold_message = f"{message} ({by_category})"
            self.stop_reason = "threshold"

    def _log_failure(self, result: ItemResult, error: BaseException | None) -> None:
        # ItemFailed is a verdict, not a bug: its traceback says nothing.
        with_traceback = self.attempt_failed <= _LOGGED_TRACEBACKS and not isinstance(error, ItemFailed)
        self.job.log.warning(
            "item %s failed (%s) after %d attempt(s): %s",
            result.item_id, result.category, result.attempts, result.error,
            exc_info=(type(error), error, error.__traceback__) if with_traceback and error is not None else None,
        )  # fmt: skip

    def fail_hard(self, exc: BaseException) -> None:
        with self.lock:
            if self.fatal is None:
                self.fatal = exc
            if self.stop_reason is None:
                self.stop_reason = "error"

    def crash(self) -> None:
        """Stop as a crash would (``runly.testing``): record nothing more, checkpoint nothing more."""
        with self.lock:
            self.crashed = True
            self.stop_reason = "crash"

    def counts(self) -> ItemCounts:
        with self.lock:
            return ItemCounts(
                total=self.total,
                succeeded=self.succeeded,
                failed_by_category=dict(self.failed_by_category),
                resumed_at=self.start,
            )


class ItemJob(Job[ConfigT], Generic[ConfigT, ItemT]):
    """A job over items: implement :meth:`items` and :meth:`process`; optionally :meth:`setup`,
    :meth:`finalize` and :meth:`item_id`. See the module's documentation for the semantics."""

    # Defaults of the job; a config field of the same name (see ItemConfig) overrides each per run.
    parallelism: int = 1
    max_failed_items: int | None = None
    max_failed_ratio: float | None = None
    item_retries: int = 0
    retry_backoff: float = 1.0  # seconds before the first retry; doubles per retry
    retry_backoff_max: float = 60.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, config: ConfigT, context: JobContext | None = None) -> None:
        super().__init__(config, context)
        start = self.resumed_from.watermark if self.resumed_from and self.resumed_from.watermark else 0
        self._runner = _Runner(job=self, start=start)
        carried = self._resumed_counts
        if carried:
            runner = self._runner
            runner.succeeded = runner.committed_succeeded = int(carried.get("succeeded", 0))
            failed = Counter({str(k): int(v) for k, v in dict(carried.get("failed_by_category") or {}).items()})
            runner.failed_by_category = Counter(failed)
            runner.committed_failed = Counter(failed)

    # ------------------------------------------------------------ what job authors implement
    def setup(self) -> Any:
        """Before the items: open what ``process`` needs. May be ``async def`` if ``process`` is."""

    def items(self) -> Iterable[ItemT]:
        raise NotImplementedError

    def process(self, item: ItemT) -> Any:
        raise NotImplementedError

    def finalize(self, disposition: Disposition) -> Any:
        """Always runs, last. What it returns (if not None) is the run's output instead of the summary.

        May be ``async def`` if ``process`` is.
        """
        return None

    def item_id(self, item: ItemT) -> str:
        """A stable id of an item: its ``id`` attribute, its ``"id"`` key, else ``str(item)``."""
        ident = getattr(item, "id", None)
        if ident is None and isinstance(item, Mapping):
            ident = item.get("id")
        return str(item if ident is None else ident)

    def _stored_item_id(self, item: ItemT) -> str:
        # As the checkpoint holds it: an id of any length is compared by its first MAX_ITEM_ID_BYTES.
        return sizes.truncate_utf8(self.item_id(item), MAX_ITEM_ID_BYTES)

    def count_items(self, items: Iterable[ItemT]) -> int | None:
        """The number of items, for progress and ratios: ``len(items)`` when it has one, else None."""
        return len(items) if isinstance(items, Sized) else None

    # ------------------------------------------------------------ what job code may read
    def setting(self, name: str) -> Any:
        """A run setting: the config's field of that name when set, else the class attribute."""
        value = getattr(self.config, name, None)
        return getattr(self, name) if value is None else value

    @property
    def counts(self) -> ItemCounts:
        return self._runner.counts()

    @property
    def recent_errors(self) -> list[ItemResult]:
        with self._runner.lock:
            return list(self._runner.recent_errors)

    def summary(self) -> dict[str, Any]:
        """The default output: counts of the whole run."""
        counts = self.counts
        return {
            "total": counts.total,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "failed_by_category": counts.failed_by_category,
            "resumed_at": counts.resumed_at,
        }

    # ------------------------------------------------------------ the lifecycle
    def run(self) -> Any:
        is_async = inspect.iscoroutinefunction(self.process)
        if not is_async:
            for hook in (self.setup, self.finalize):
                if inspect.iscoroutinefunction(hook):
                    raise TypeError(
                        f"{type(self).__qualname__}.{hook.__name__} is async but process is not: "
                        "make process async too (they share one event loop)"
                    )
            return self._run_sync()
        # Imported here, not at the top: asyncio is a large share of a job process's start-up, and
        # only async jobs need it (by now it is in sys.modules for the async methods below).
        import asyncio

        return asyncio.run(self._run_async())

    def _run_sync(self) -> Any:
        error: BaseException | None = None
        try:
            self.setup()
            source = self._open(self.items())
            if self.setting("parallelism") <= 1:
                self._drive_sequential(source)
            else:
                self._drive_threads(source)
        except SimulatedCrash:
            raise
        except BaseException as exc:  # noqa: BLE001 - finalize runs whatever happened; re-raised below
            error = exc
        disposition = self._before_finalize(error)
        output = None
        try:
            output = self.finalize(disposition)
        except Exception as exc:  # noqa: BLE001 - a failing finalize fails the run
            error = self._finalize_failed(error, exc)
        return self._conclude(disposition, error, output)

    async def _run_async(self) -> Any:
        error: BaseException | None = None
        try:
            await _maybe_await(self.setup())
            source = self._open(self.items())
            await self._drive_async(source)
        except SimulatedCrash:
            raise
        except BaseException as exc:  # noqa: BLE001 - finalize runs whatever happened; re-raised below
            error = exc
        disposition = self._before_finalize(error)
        output = None
        try:
            output = await _maybe_await(self.finalize(disposition))
        except Exception as exc:  # noqa: BLE001 - a failing finalize fails the run
            error = self._finalize_failed(error, exc)
        return self._conclude(disposition, error, output)

    def _open(self, items: Iterable[ItemT]) -> Iterator[tuple[int, ItemT]]:
        """The items as (index, item) from the watermark on, after checking the checkpoint still fits."""
        runner = self._runner
        if hasattr(items, "__aiter__"):
            raise TypeError("items() must return a plain iterable (a list, a generator), not an async one")
        runner.total = self.count_items(items)
        iterator = iter(items)
        if runner.start > 0:
            sentinel = object()
            # Skipped without calling process: C-speed, whatever the number.
            deque(itertools.islice(iterator, runner.start - 1), maxlen=0)
            last = next(iterator, sentinel)
            if last is sentinel:
                raise ResumeMismatch(
                    f"the checkpoint says the first {runner.start} items are done, but items() now yields fewer: "
                    "the items changed since the run started"
                )
            expected = self.resumed_from.last_item_id if self.resumed_from else None
            actual = self._stored_item_id(last)  # type: ignore[arg-type]
            if expected is not None and actual != expected:
                raise ResumeMismatch(
                    f"item #{runner.start} (the last one done before the checkpoint) was {expected!r} "
                    f"and is now {actual!r}: items() must yield the same items in the same order on every attempt"
                )
            runner.last_item, runner.has_last_item = last, True
            self.log.info("resuming at item %d (%s): the items before it are done", runner.start + 1, actual)
        return enumerate(iterator, runner.start)

    def _before_finalize(self, error: BaseException | None) -> Disposition:
        runner = self._runner
        if runner.crashed:
            raise SimulatedCrash("crashed")
        if self.lease_lost:
            return Disposition.LOST
        # The watermark is made durable before finalize: a node lost during finalize does not redo items.
        reporter = self._reporter
        if reporter is not None:
            reporter.checkpoint()
            reporter.send_progress()
        if self.lease_lost:
            return Disposition.LOST
        if error is not None or runner.stop_reason in ("error", "threshold"):
            return Disposition.FAILED
        if self.cancellation.cancelled:
            return Disposition.CANCELLED
        return Disposition.SUCCEEDED

    def _finalize_failed(self, error: BaseException | None, exc: Exception) -> BaseException:
        if error is None:
            return exc
        self.log.exception("finalize failed too (the run fails with the first error)")
        return error

    def _conclude(self, disposition: Disposition, error: BaseException | None, output: Any) -> Any:
        runner = self._runner
        if disposition is Disposition.LOST:
            raise CheckpointRefused("lease lost: another attempt owns this run")
        if error is not None:
            raise error
        if runner.fatal is not None:
            raise runner.fatal
        if runner.stop_reason == "threshold":
            raise FailureThresholdExceeded(runner.threshold_message)
        counts = self.counts
        if disposition is Disposition.CANCELLED:
            raise JobCancelled(
                f"cancelled after {counts.done} items ({counts.succeeded} succeeded, {counts.failed} failed)"
            )
        return self.summary() if output is None else output

    # ------------------------------------------------------------ processing one item
    def _failure(self, exc: Exception, attempts: int) -> tuple[str, float | None]:
        """(category, delay before a retry or None for no retry)."""
        if isinstance(exc, ItemFailed):
            category, retryable = exc.category, exc.retry
        else:
            category, retryable = type(exc).__name__, isinstance(exc, self.retry_on)
        if retryable and attempts <= self.setting("item_retries"):
            return category, min(self.retry_backoff * 2 ** (attempts - 1), self.retry_backoff_max)
        return category, None

    def _process_sync(self, index: int, item: ItemT) -> None:
        runner = self._runner
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                value = self.process(item)
            except Exception as exc:  # noqa: BLE001 - any exception of an item is that item's failure
                category, delay = self._failure(exc, attempts)
                if delay is not None:
                    self.log.info("item %s: %s; retry %d in %.1f s", self.item_id(item), category, attempts, delay)
                    if self.cancellation.wait(delay) or runner.stop_reason:
                        return  # abandoned: not done, the watermark stays before it
                    continue
                result = runner.record(index, item, category, exc, attempts, time.perf_counter() - started, None)
                break
            result = runner.record(index, item, None, None, attempts, time.perf_counter() - started, value)
            break
        self._item_ended(result)

    def _item_ended(self, result: ItemResult | None) -> None:
        """After an item's last attempt: an inline reporter (no reporter thread) ticks, then the runner is told."""
        reporter = self._reporter
        if reporter is not None and reporter.inline:
            reporter.tick()
        if result is not None:
            self._runner.notify(result)

    async def _process_async(self, index: int, item: ItemT) -> None:
        runner = self._runner
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                value = await self.process(item)
            except Exception as exc:  # noqa: BLE001 - any exception of an item is that item's failure
                category, delay = self._failure(exc, attempts)
                if delay is not None:
                    self.log.info("item %s: %s; retry %d in %.1f s", self.item_id(item), category, attempts, delay)
                    import asyncio  # see run()

                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline:
                        if runner.stopping:
                            return  # abandoned: not done, the watermark stays before it
                        await asyncio.sleep(min(_WAIT_SLICE, deadline - time.monotonic()))
                    continue
                result = runner.record(index, item, category, exc, attempts, time.perf_counter() - started, None)
                break
            result = runner.record(index, item, None, None, attempts, time.perf_counter() - started, value)
            break
        self._item_ended(result)

    # ------------------------------------------------------------ driving the items
    def _drive_sequential(self, source: Iterator[tuple[int, ItemT]]) -> None:
        runner = self._runner
        process = self._process_sync
        for index, item in source:
            process(index, item)
            if runner.stopping:
                break

    def _drive_threads(self, source: Iterator[tuple[int, ItemT]]) -> None:
        runner = self._runner
        take = threading.Lock()  # items() is a plain iterator: one thread at a time pulls from it

        def work() -> None:
            try:
                while not runner.stopping:
                    with take:
                        if runner.stopping:
                            return
                        try:
                            index, item = next(source)
                        except StopIteration:
                            return
                    self._process_sync(index, item)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
                runner.fail_hard(exc)

        # Daemon threads: a lost lease must not wait for items in flight (the process exits).
        threads = [
            threading.Thread(target=work, name=f"runly-item-{n}", daemon=True)
            for n in range(self.setting("parallelism"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(_WAIT_SLICE)  # in slices: the main thread must stay free to take SIGTERM
                if self.lease_lost:
                    return
        if runner.fatal is not None and not runner.crashed:
            raise runner.fatal

    async def _drive_async(self, source: Iterator[tuple[int, ItemT]]) -> None:
        import asyncio  # see run()

        runner = self._runner
        parallelism = self.setting("parallelism")
        if parallelism <= 1:
            for index, item in source:
                await self._process_async(index, item)
                if runner.stopping:
                    break
            return
        running: set[asyncio.Task[None]] = set()

        async def collect(timeout: float | None) -> None:
            nonlocal running
            done, running = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if (exc := task.exception()) is not None:
                    runner.fail_hard(exc)

        while True:
            while len(running) >= parallelism and not runner.stopping:
                await collect(_WAIT_SLICE)
            if runner.stopping:
                break
            try:
                index, item = next(source)
            except StopIteration:
                break
            running.add(asyncio.create_task(self._process_async(index, item)))
        while running and not self.lease_lost:
            await collect(_WAIT_SLICE)
        for task in running:  # only when the lease is lost: stop at once
            task.cancel()
        if runner.fatal is not None and not runner.crashed:
            raise runner.fatal

    # ------------------------------------------------------------ the reporter's view
    def _progress_snapshot(self) -> Progress | None:
        runner = self._runner
        with runner.lock:
            failed = dict(runner.failed_by_category)
            return Progress(
                total=runner.total,
                succeeded=runner.succeeded,
                failed=sum(failed.values()),
                failed_by_category=failed,
                message=self._progress.message if self._progress else None,
            )

    def _checkpoint_key(self) -> tuple[int | None, int]:
        return (self._runner.watermark, self._state_version)

    def _checkpoint_snapshot(self) -> dict[str, Any] | None:
        runner = self._runner
        with runner.lock:
            if runner.crashed:
                return None
            watermark = runner.watermark
            last_item, has_last = runner.last_item, runner.has_last_item
            counts = {"succeeded": runner.committed_succeeded, "failed_by_category": dict(runner.committed_failed)}
        with self._state_lock:
            job_state = self._job_state
        return {
            "watermark": watermark,
            "last_item_id": self._stored_item_id(last_item) if has_last else None,
            "state": join_state(job_state, counts),
        }


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
