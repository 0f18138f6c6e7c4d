"""Supervising one run on this node: package, job process, checkpoints, outcome.

Runs on a thread of its own. It writes the run only through fenced writes
(node_agent.aws), and stops writing the moment the lease is lost.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from node_agent import job_values
from node_agent.aws import AgentAws, Delivery, LeaseLost
from node_agent.backoff import retry
from node_agent.fork_servers import EXIT_STATUS_UNKNOWN, WarmHosts
from node_agent.isolation import Isolation
from node_agent.job_process import JobProcess, Outcome
from node_agent.job_values import Redactor
from node_agent.logs import LogSpool
from node_agent.package_cache import PackageCache, PackageDownloadError
from node_agent.process_tree import RunLimits
from node_agent.run_messages import hold_message
from node_agent.settings import AgentSettings
from runly import tracing
from runly.runner import EXIT_AGENT_GONE, EXIT_JOB_NOT_LOADED, EXIT_LEASE_EXPIRED, JOB_NOT_LOADED
from runly.sizes import LIMIT_ERRORS, NotJson, ValueTooLarge
from runly.wire import Checkpoint, CheckpointMessage, JobSpec, LeaseMessage, Progress, RunSpec
from runly_core import backoff
from runly_core.bundle import PackageError
from runly_core.contracts import FailureReason, RunState
from runly_core.records import RunRecord, utcnow

log = logging.getLogger(__name__)

# Reasons worth another attempt; a package error or a timeout would fail the same way again.
RETRIABLE = frozenset(
    {FailureReason.USER_ERROR, FailureReason.PROCESS_CRASH, FailureReason.NODE_LOST, FailureReason.LEASE_EXPIRED}
)
# A broken failure threshold, a changed item order or an output JSON cannot carry would fail the same way again.
NOT_RETRIED_ERRORS = frozenset({"FailureThresholdExceeded", "ResumeMismatch", NotJson.__name__})


def retry_delay(attempt: int, *, base: int, cap: int) -> int:
    """Seconds before a run's next attempt after attempt number ``attempt`` (from 1) failed: exponential, capped,
    with equal jitter (never under half the ceiling), so a burst of failures does not retry in step."""
    return int(backoff.delay(attempt - 1, base=base, cap=cap, least=0.5))


def run_attributes(record: RunRecord, node_id: str) -> dict[str, str | int]:
    """What the agent's spans of a run say about it (OpenTelemetry attributes, ``runly.*``)."""
    return {
        "runly.run_id": record.run_id,
        "runly.attempt": record.attempt,
        "runly.environment": record.environment,
        "runly.package": record.package,
        "runly.version": record.version,
        "runly.job": record.job,
        "runly.node_id": node_id,
    }


@dataclass
class RunSupervisor:
    settings: AgentSettings
    aws: AgentAws
    cache: PackageCache
    record: RunRecord
    delivery: Delivery
    checkpoint: Checkpoint | None
    cold: threading.Event  # the agent's second stop signal
    hosts: WarmHosts | None = None  # None: every run in a new interpreter
    # The newest lease durably written, as the job hears it (runly.fencing): from the claim, then each renewal.
    lease: LeaseMessage | None = None
    # The lease expiry the table's lease index holds for this attempt (None: the claim's, record.lease_until_ms):
    # a renewal moves the index entry only every few minutes (runly_core.run_store.LEASE_INDEX_REFRESH_MS).
    indexed_lease_until_ms: int | None = None
    isolation: Isolation | None = None  # the job user, the run's process tree and limits; None: none of them
    # Why the checkpoint to resume from could not be read (runly_core.run_objects.RunObjectUnreadable): the attempt
    # fails checkpoint_unreadable before its job starts. None: read, or none to read.
    checkpoint_error: str | None = None
    started: float = field(default_factory=time.monotonic)
    # When the job process started (monotonic): the run's timeout counts from here, per attempt, so the package's
    # download and install (bounded by the package cache itself) never count against the job's timeout_seconds.
    job_started: float | None = None
    process: JobProcess | None = None
    spool: LogSpool | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    # The secrets the job got, masked in whatever of the run the agent records (node_agent.job_values).
    redactor: Redactor = field(default_factory=lambda: Redactor(()))
    _last_progress_sent: Progress | None = None
    # Checkpoints this attempt wrote (acknowledged): a state stored in S3 alternates between two slots by it.
    _checkpoints_written: int = 0
    _lease_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    # ------------------------------------------------------------ called by the heartbeat thread
    def progress_to_send(self) -> Progress | None:
        """The newest progress if it changed since the last heartbeat (coalesced), else None."""
        latest = self.process.latest_progress if self.process else None
        if latest is None or latest == self._last_progress_sent:
            return None
        self._last_progress_sent = latest
        return self._redacted_progress(latest)

    def _redacted_progress(self, progress: Progress | None) -> Progress | None:
        if progress is None or not self.redactor:
            return progress
        return Progress.model_validate(self.redactor.json(progress.model_dump(mode="json")))

    def lease_renewed(self, lease: LeaseMessage) -> None:
        """A renewal was written durably: the job may now stop later (it stops by itself if none comes)."""
        with self._lease_lock:
            self.lease = lease
            process = self.process
        if process is not None:
            process.send_lease(lease)

    # ------------------------------------------------------------ the run
    def run(self) -> None:
        record = self.record
        work_dir = self.settings.work_dir / "runs" / f"{record.run_id}-{record.attempt:04d}"
        self.spool = LogSpool.create(work_dir, record.run_id, record.attempt)
        try:
            self._run(work_dir)
        except LeaseLost:
            log.warning("run %s attempt %d: lease lost; nothing more is written", record.run_id, record.attempt)
        except Exception:
            log.exception(
                "supervising run %s failed; its lease will expire and another attempt takes it", record.run_id
            )
        finally:
            try:
                self.spool.finish(self.aws.put_log_chunk)
            except Exception:  # the spool stays on disk; the next agent start ships it
                log.exception("could not ship the log of run %s", record.run_id)
            self.finished.set()

    def _run(self, work_dir: Any) -> None:
        record = self.record
        if self.checkpoint_error is not None:
            # Not retried: another attempt would read the same object. A requeue without resume starts afresh.
            self._finish(
                RunState.FAILED,
                FailureReason.CHECKPOINT_UNREADABLE,
                {"message": self.checkpoint_error, "type": "CheckpointUnreadable"},
            )
            return
        phase_started = time.monotonic()
        attributes = run_attributes(record, self.node_id)
        try:
            # Checked file by file unless a warm host already runs from it (it was checked when that host started).
            verify = self.hosts is None or not self.hosts.live(record.bundle_sha256)
            with tracing.span(
                "package ready", parent=record.trace, attributes=attributes, tracer_name="runly-agent"
            ) as ready:
                installed = self.cache.ensure(
                    record.bundle_sha256, lambda path: self.aws.download(record.bundle_key, path), verify=verify
                )
                ready.set_attribute("runly.package.cached", installed.cached)
        except PackageDownloadError as exc:
            # The feed, not the package, failed: worth another attempt.
            self._fail(
                FailureReason.PACKAGE_ERROR, {"message": str(exc), "type": "PackageDownloadError"}, retriable=True
            )
            return
        except PackageError as exc:
            self._finish(RunState.FAILED, FailureReason.PACKAGE_ERROR, {"message": str(exc), "type": "PackageError"})
            return
        log.info(
            "run %s: package %s %s ready in %.2f s (%s)",
            record.run_id, record.package, record.version, time.monotonic() - phase_started,
            "cached" if installed.cached else ", ".join(f"{k} {v:.2f}s" for k, v in installed.timings.items()),
        )  # fmt: skip
        job = next((job for job in installed.manifest.jobs if job.name == record.job), None)
        try:
            values = job_values.resolve(
                job, environment=self.settings.environment, values_path=self.settings.values_root,
                fetch=self.aws.get_parameters,
            )  # fmt: skip
        except job_values.MissingValues as exc:
            self._finish(RunState.FAILED, FailureReason.VALUE_ERROR, {"message": str(exc)})
            return
        except job_values.ValuesUnavailable as exc:
            self._fail(FailureReason.VALUE_ERROR, {"message": str(exc)}, retriable=True)
            return
        if values.secrets:
            self.redactor = values.redactor
            assert self.spool is not None
            self.spool.protect(self.redactor, values.pins)
        spec = RunSpec(
            run_id=record.run_id,
            attempt=record.attempt,
            package=record.package,
            version=record.version,
            job=record.job,
            entry_point=record.entry_point,
            config=json.loads(record.required_config_json),
            checkpoint=self.checkpoint,
            lease=self.lease,  # as of now; renewals that come while the job starts are sent once it says hello
        )
        assert self.spool is not None
        with installed:  # held: the environment is not evicted while the job runs
            if self.isolation is not None:
                self.isolation.reach(installed.python)
            hosts = self.hosts
            host = hosts.acquire(installed.sha256, installed.python) if hosts is not None else None
            try:
                # The job process continues the trace from this span (TRACEPARENT): its own span is its child.
                with tracing.span(
                    "job run", parent=record.trace, attributes=attributes, tracer_name="runly-agent"
                ) as run:
                    self.process = JobProcess(
                        spec=spec, python=installed.python, work_dir=work_dir, log_path=self.spool.log_path,
                        on_checkpoint=self._on_checkpoint, warm_host=host,
                        on_warm_host_failure=hosts.broken if hosts is not None else None, isolation=self.isolation,
                        limits=self._limits(job), values=values.env,
                        traceparent=str(run.traceparent) if run.traceparent else None,
                    )  # fmt: skip
                    try:
                        self.process.start()
                        self.job_started = time.monotonic()
                    except OSError as exc:  # the node's fault (permissions, resources), not the package's: retried
                        run.fail(f"the job process could not start: {exc}")
                        self._fail(FailureReason.PROCESS_CRASH, {"message": f"the job process could not start: {exc}"})
                        return
                    with self._lease_lock:
                        lease = self.lease
                    if lease is not None and lease != spec.lease:
                        self.process.send_lease(lease)  # renewed between the spec and the process
                    timed_out = self._wait()
                    outcome = self.process.outcome()
                    run.set_attribute("runly.exit_code", outcome.exit_code)
                    if timed_out or outcome.exit_code != 0:
                        run.fail("timed out" if timed_out else describe_exit(outcome.exit_code))
            finally:
                if host is not None and hosts is not None:
                    hosts.release(host)
        if self.lease_lost.is_set():
            log.warning(
                "run %s attempt %d lost its lease: job stopped, nothing recorded", record.run_id, record.attempt
            )
            return
        # The whole log is in the feed before the run turns terminal: whoever sees the outcome can read it.
        self._ship_log()
        self._record(outcome, timed_out)

    def _limits(self, job: JobSpec | None) -> RunLimits | None:
        """The node's limits, lowered to what the job declares in its package's manifest."""
        if self.isolation is None:
            return None
        return self.isolation.limits(job)

    def _ship_log(self) -> None:
        spool = self.spool
        assert spool is not None
        try:
            # The job has ended: nothing more is written to its log, so no tail is held back.
            retry(lambda: spool.ship(self.aws.put_log_chunk, final=True), what="shipping the log")
        except Exception:  # the log stays spooled; never let it change the run's outcome
            log.exception("could not ship the log of run %s", self.run_id)

    def _on_checkpoint(self, message: CheckpointMessage) -> str | None:
        if self.lease_lost.is_set():
            return "lease lost: another attempt owns this run"
        checkpoint = Checkpoint(
            watermark=message.watermark,
            last_item_id=message.last_item_id,
            state=message.state,
            attempt=self.record.attempt,
            written_at=utcnow(),
        )
        try:
            # Synchronous and retried through throttling: a checkpoint is never silently dropped. One over its
            # limit raises runly.sizes.CheckpointTooLarge before any write: the channel fails the run for it.
            sequence = self._checkpoints_written
            retry(lambda: self.aws.write_checkpoint(self.record, self.node_id, checkpoint, sequence), what="checkpoint")
        except LeaseLost:
            self.lease_lost.set()
            return "lease lost: another attempt owns this run"
        self._checkpoints_written += 1
        return None

    def _wait(self) -> bool:
        """Wait for the job process; stop it on cancel, lost lease, timeout or cold shutdown. True if it timed out."""
        assert self.process is not None
        deadline = (self.job_started or time.monotonic()) + self.record.timeout_seconds
        # Woken by the exit itself, so a short run's outcome is recorded at once; checks every 50 ms meanwhile.
        while self.process.wait(0.05) is None:
            if self.lease_lost.is_set() or self.process.violation is not None:
                self.process.kill()  # another attempt owns the run, or the job sent what cannot be stored: stop now
            elif self.cancel_requested.is_set() or self.cold.is_set():
                self.process.stop(self.settings.kill_grace_seconds)
            elif time.monotonic() > deadline:
                self.process.stop(self.settings.kill_grace_seconds)
                return True
        return False

    def _record(self, outcome: Outcome, timed_out: bool) -> None:
        progress = self.process.latest_progress if self.process else None
        if timed_out:
            message = f"run exceeded its timeout of {self.record.timeout_seconds} s"
            self._finish(RunState.TIMED_OUT, FailureReason.TIMEOUT, {"message": message}, progress=progress)
        elif self.cancel_requested.is_set():
            self._finish(RunState.CANCELLED, FailureReason.CANCELLED, {"message": "cancelled"}, progress=progress)
        elif self.cold.is_set() and outcome.killed:
            # Stopped by this node's shutdown, not by the job: back to the queue for another node, at once.
            self._end(
                RunState.QUEUED, FailureReason.NODE_LOST, {"message": "node shut down"}, progress=progress,
                retry_at=utcnow(),
            )  # fmt: skip
            hold_message(self.aws, self.delivery, 0, limit_seconds=self.settings.max_in_flight_seconds)
        elif outcome.memory_limit and outcome.result is None:
            # Over its memory limit: the node and its other runs go on; the same run would hit it again.
            limits = self.process.limits if self.process else None
            of = f" of {limits.memory_bytes // (1024 * 1024)} MiB" if limits is not None else ""
            message = f"run exceeded its memory limit{of} ({describe_exit(outcome.exit_code)})"
            self._finish(RunState.FAILED, FailureReason.MEMORY_LIMIT, {"message": message}, progress=progress)
        elif outcome.violation is not None:
            # The job sent a value over its limit (or one JSON cannot carry), bypassing the SDK's own checks: the
            # same code would send it again, so not retried.
            violation = outcome.violation
            self._finish(RunState.FAILED, violation.reason, {"message": violation.message}, progress=progress)
        elif outcome.result is not None and outcome.exit_code in (0, EXIT_STATUS_UNKNOWN):
            # The job sent its result as its last act; a warm host that died since only lost the exit status.
            try:
                self._finish(RunState.SUCCEEDED, None, None, output=outcome.result.output, progress=progress)
            except ValueTooLarge as exc:  # measured before anything was written (the channel measures it first)
                self._finish(RunState.FAILED, FailureReason(exc.reason), {"message": str(exc)}, progress=progress)
            except NotJson as exc:
                self._finish(RunState.FAILED, FailureReason.USER_ERROR, {"message": str(exc)}, progress=progress)
        elif outcome.exit_code == EXIT_LEASE_EXPIRED:
            # The job heard no renewal in time and stopped itself (runly.fencing): a fenced write, so nothing is
            # recorded when another attempt took the run over meanwhile.
            message = "the job process stopped itself: its lease was not renewed in time"
            self._fail(FailureReason.LEASE_EXPIRED, {"message": message}, progress=progress, retriable=True)
        elif outcome.exit_code == EXIT_AGENT_GONE:
            message = "the job process stopped itself: its pipe from the agent broke"
            self._fail(FailureReason.NODE_LOST, {"message": message}, progress=progress, retriable=True)
        elif outcome.error is not None and _not_loaded(outcome):
            # Importing the job's module raised or exited, or the entry point names nothing: every attempt would.
            error = {"message": outcome.error.message, "type": outcome.error.type, "traceback": outcome.error.traceback}
            self._finish(RunState.FAILED, FailureReason.PACKAGE_ERROR, error, progress=progress)
        elif outcome.error is not None:
            error = {"message": outcome.error.message, "type": outcome.error.type, "traceback": outcome.error.traceback}
            limit = LIMIT_ERRORS.get(outcome.error.type)
            if limit is not None:  # the SDK refused a value over its limit, in the job: that is the run's reason
                self._finish(RunState.FAILED, FailureReason(limit), error, progress=progress)
            else:
                retriable = outcome.error.type not in NOT_RETRIED_ERRORS
                self._fail(FailureReason.USER_ERROR, error, progress=progress, retriable=retriable)
        else:
            self._fail(FailureReason.PROCESS_CRASH, {"message": describe_exit(outcome.exit_code)}, progress=progress)

    def _fail(
        self,
        reason: FailureReason,
        error: dict[str, Any],
        *,
        retriable: bool | None = None,
        progress: Progress | None = None,
    ) -> None:
        record = self.record
        if retriable is None:
            retriable = reason in RETRIABLE
        if retriable and record.attempt < record.max_attempts:
            # Retried later on any node: the delay is the message's visibility; no node sleeps on it.
            delay = retry_delay(
                record.attempt, base=self.settings.retry_base_seconds, cap=self.settings.retry_max_seconds
            )
            retry_at = utcnow() + timedelta(seconds=delay)
            self._end(RunState.QUEUED, reason, error, progress=progress, retry_at=retry_at)
            # Through hold_message: a delay that would keep the message past SQS's in-flight cap gets a fresh one.
            limit = self.settings.max_in_flight_seconds
            retry(lambda: hold_message(self.aws, self.delivery, delay, limit_seconds=limit), what="retry delay")
            log.info("run %s attempt %d failed (%s); retry in %d s", record.run_id, record.attempt, reason, delay)
        else:
            self._finish(RunState.FAILED, reason, error, progress=progress)

    def _end(self, state: RunState, reason: FailureReason | None, error: dict[str, Any] | None, **kwargs: Any) -> None:
        if self.redactor:  # a secret the job printed into its error, progress or output is masked there too
            error = self.redactor.json(error)
            if "output" in kwargs:
                kwargs["output"] = self.redactor.json(kwargs["output"])
            if "progress" in kwargs:
                kwargs["progress"] = self._redacted_progress(kwargs["progress"])
        retry(
            lambda: self.aws.end_attempt(self.record, self.node_id, state=state, reason=reason, error=error, **kwargs),
            what="recording the attempt",
        )

    def _finish(
        self, state: RunState, reason: FailureReason | None, error: dict[str, Any] | None, **kwargs: Any
    ) -> None:
        if error is not None and reason is not None:
            error = {"reason": reason.value, **error}
        self._end(state, reason, error, **kwargs)
        # Deleted only now that the run is terminal: a node that dies before this loses nothing.
        self.aws.delete_soon(self.delivery)
        log.info("run %s %s", self.record.run_id, state)


def _not_loaded(outcome: Outcome) -> bool:
    """The job host could not load the job's class (runly.runner.run_job): both its exit code and its message say so."""
    return (
        outcome.error is not None
        and outcome.error.type == JOB_NOT_LOADED
        and outcome.exit_code in (EXIT_JOB_NOT_LOADED, EXIT_STATUS_UNKNOWN)
    )


def describe_exit(code: int) -> str:
    if code == EXIT_STATUS_UNKNOWN:
        return "job process ended while its warm host was down: its exit status is unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"job process was killed by {name}"
    if code == 137:
        return "job process was killed (exit 137: SIGKILL, often the out-of-memory killer)"
    return f"job process exited with code {code} without a result"
