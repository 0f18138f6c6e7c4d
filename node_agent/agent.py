"""The node agent: join an environment, take runs from its queue, run each out of process,
heartbeat, record the outcome, leave.

The loop reads like a checklist (see ``run``). Each run is supervised on its own
thread; one heartbeat thread extends every lease and message visibility on a
timer, so a busy or stuck job never loses its lease and a dead node loses it
within the lease time.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

from node_agent.aws import AgentAws, ClaimRefused, Delivery, LeaseLost
from node_agent.job_process import JobProcess, Outcome
from node_agent.package_cache import PackageCache, PackageDownloadError
from node_agent.settings import AgentSettings
from runly import __version__
from runly.bundle import PackageError
from runly.contracts import FailureReason, RunSpec, RunState
from runly.records import NodeRecord, RunRecord, iso, utcnow
from runly.resources import LOGS_PREFIX

log = logging.getLogger(__name__)

# Reasons worth another attempt; a package error or a timeout would fail the same way again.
RETRIABLE = frozenset({FailureReason.USER_ERROR, FailureReason.PROCESS_CRASH, FailureReason.NODE_LOST})


class _StopWaiting(BaseException):
    """Raised by the signal handler to end an idle long poll at once.

    A BaseException, so no library's ``except Exception`` swallows it. It is only
    raised while the agent holds no message, so nothing is stranded; a message
    the queue handed out in that instant comes back after its visibility timeout.
    """


class AgentState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class ActiveRun:
    record: RunRecord
    delivery: Delivery
    started: float = field(default_factory=time.monotonic)
    process: JobProcess | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Agent:
    def __init__(self, settings: AgentSettings, aws: AgentAws, cache: PackageCache) -> None:
        self.settings = settings
        self.aws = aws
        self.cache = cache
        self.state = AgentState.STARTING
        self.started_at = iso(utcnow())
        self._active: dict[str, ActiveRun] = {}
        self._lock = threading.Lock()
        self._draining = threading.Event()  # first signal: finish what runs, take nothing new
        self._cold = threading.Event()  # second signal: stop jobs now and hand their runs back
        self._stopped = threading.Event()
        self._polling = False  # in a long poll, holding no message: a stop may interrupt it

    # ------------------------------------------------------------ the loop
    def run(self) -> None:
        self.register()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        try:
            while not self._draining.is_set():
                free = self.settings.capacity - self.running_count()
                self.state = AgentState.BUSY if free == 0 else AgentState.IDLE
                if free == 0:
                    self._draining.wait(0.2)
                    continue
                # Never ask for more messages than there are free slots: nothing waits in a node's hands.
                try:
                    self._polling = True
                    deliveries = self.aws.receive(free, self.settings.poll_wait_seconds)
                    self._polling = False
                except _StopWaiting:
                    break
                for delivery in deliveries:
                    if self._draining.is_set():
                        self._release(delivery)
                    else:
                        self._start(delivery)
            self.state = AgentState.DRAINING
            log.info("draining: %d run(s) to finish", self.running_count())
            while self.running_count():
                self._cold.wait(0.2)
                if self._cold.is_set():
                    self._stop_all()
                    break
        finally:
            self._stopped.set()
            heartbeat.join(timeout=self.settings.heartbeat_seconds + 5)
            self.deregister()
            self.state = AgentState.STOPPED

    def request_stop(self) -> None:
        if self._draining.is_set():
            log.warning("second stop request: stopping jobs and handing their runs back")
            self._cold.set()
        else:
            log.info("stop requested: finishing running jobs, taking no new ones")
            self._draining.set()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            self.request_stop()
            if self._polling:
                raise _StopWaiting

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def running_count(self) -> int:
        with self._lock:
            return len(self._active)

    # ------------------------------------------------------------ node registration
    def _node_record(self) -> NodeRecord:
        with self._lock:
            running = sorted(self._active)
        now = utcnow()
        return NodeRecord(
            node_id=self.settings.node_id,
            host=platform.node(),
            environment=self.settings.environment,
            capacity=self.settings.capacity,
            running=running,
            agent_version=__version__,
            state=self.state.value,
            started_at=self.started_at,
            last_seen=iso(now),
            expires_at=int(now.timestamp()) + 3 * self.settings.lease_seconds,
        )

    def register(self) -> None:
        self.aws.put_node(self._node_record())
        log.info("node %s joined environment %s", self.settings.node_id, self.settings.environment)

    def deregister(self) -> None:
        try:
            self.aws.delete_node(self.settings.node_id)
        except Exception:
            log.exception("could not deregister node")

    # ------------------------------------------------------------ taking a run
    def _release(self, delivery: Delivery, delay: int = 0) -> None:
        self.aws.set_visibility(delivery, delay)

    def _start(self, delivery: Delivery) -> None:
        if delivery.message is None:
            # Not a run message: leave it to come back until the redrive policy moves it to the DLQ.
            log.error("poison message (not a run message), receive count %d", delivery.receive_count)
            self._release(delivery, delay=30)
            return
        run_id = delivery.message.run_id
        try:
            record = self.aws.claim(run_id, self.settings.node_id, self.settings.lease_seconds, now_ms())
        except ClaimRefused as refused:
            log.info("not starting %s: %s", run_id, refused)
            if refused.terminal:
                self.aws.delete(delivery)
            else:
                self._release(delivery, delay=refused.retry_in)
            return
        active = ActiveRun(record=record, delivery=delivery)
        active.thread = threading.Thread(target=self._supervise, args=(active,), name=f"run-{run_id}", daemon=True)
        with self._lock:
            self._active[run_id] = active
        active.thread.start()

    # ------------------------------------------------------------ supervising one run
    def _supervise(self, active: ActiveRun) -> None:
        record = active.record
        work_dir = self.settings.work_dir / "runs" / f"{record.run_id}-{record.attempt}"
        work_dir.mkdir(parents=True, exist_ok=True)
        log_path = work_dir / "output.log"
        try:
            try:
                installed = self.cache.ensure(
                    record.bundle_sha256, lambda path: self.aws.download(record.bundle_key, path)
                )
            except PackageDownloadError as exc:
                # The feed, not the package, failed: worth another attempt.
                self._fail(
                    active,
                    FailureReason.PACKAGE_ERROR,
                    {"message": str(exc), "type": "PackageDownloadError"},
                    retriable=True,
                )
                return
            except PackageError as exc:
                self._finish(
                    active, RunState.FAILED, FailureReason.PACKAGE_ERROR, {"message": str(exc), "type": "PackageError"}
                )
                return
            spec = RunSpec(
                run_id=record.run_id,
                attempt=record.attempt,
                package=record.package,
                version=record.version,
                job=record.job,
                entry_point=record.entry_point,
                config=json.loads(record.config_json),
            )
            with installed:  # held: the environment is not evicted while the job runs
                active.process = JobProcess(spec=spec, python=installed.python, work_dir=work_dir, log_path=log_path)
                active.process.start()
                timed_out = self._wait(active)
                outcome = active.process.outcome()
            self._ship_log(record, log_path)
            if active.lease_lost.is_set():
                log.warning(
                    "run %s attempt %d lost its lease: its job was stopped, nothing recorded",
                    record.run_id,
                    record.attempt,
                )
                return
            self._record_outcome(active, outcome, timed_out)
        except LeaseLost:
            log.warning("run %s attempt %d: lease lost while recording", record.run_id, record.attempt)
        except Exception:
            log.exception(
                "supervising run %s failed; the lease will expire and another attempt will take it", record.run_id
            )
        finally:
            with self._lock:
                self._active.pop(record.run_id, None)
            shutil.rmtree(work_dir, ignore_errors=True)

    def _wait(self, active: ActiveRun) -> bool:
        """Wait for the job process; stop it on cancel, lost lease, timeout or cold shutdown. True if it timed out."""
        assert active.process is not None
        deadline = active.started + active.record.timeout_seconds
        while active.process.poll() is None:
            if active.lease_lost.is_set():
                active.process.kill()  # another attempt owns the run: stop at once
            elif active.cancel_requested.is_set() or self._cold.is_set():
                active.process.stop(self.settings.kill_grace_seconds)
            elif time.monotonic() > deadline:
                active.process.stop(self.settings.kill_grace_seconds)
                return True
            time.sleep(0.05)
        return False

    def _record_outcome(self, active: ActiveRun, outcome: Outcome, timed_out: bool) -> None:
        if timed_out:
            self._finish(
                active,
                RunState.TIMED_OUT,
                FailureReason.TIMEOUT,
                {"message": f"run exceeded its timeout of {active.record.timeout_seconds} s"},
            )
        elif active.cancel_requested.is_set():
            self._finish(active, RunState.CANCELLED, FailureReason.CANCELLED, None)
        elif self._cold.is_set() and outcome.result is None:
            # Stopped by this node's shutdown, not by the job: another node takes it at once.
            self.aws.end_attempt(
                active.record,
                self.settings.node_id,
                state=RunState.QUEUED,
                reason=FailureReason.NODE_LOST,
                error={"message": "node shut down"},
            )
            self._release(active.delivery)
        elif outcome.result is not None and outcome.exit_code == 0:
            self._finish(active, RunState.SUCCEEDED, None, None, output=outcome.result.output)
        elif outcome.error is not None:
            self._fail(
                active,
                FailureReason.USER_ERROR,
                {"message": outcome.error.message, "type": outcome.error.type, "traceback": outcome.error.traceback},
            )
        else:
            self._fail(active, FailureReason.PROCESS_CRASH, {"message": _describe_exit(outcome.exit_code)})

    def _fail(
        self, active: ActiveRun, reason: FailureReason, error: dict[str, Any], *, retriable: bool | None = None
    ) -> None:
        record = active.record
        if retriable is None:
            retriable = reason in RETRIABLE
        if retriable and record.attempt < record.max_attempts:
            # Retry later on any node: the delay is the message's visibility, no node sleeps on it.
            delay = self._retry_delay(record.attempt)
            self.aws.end_attempt(record, self.settings.node_id, state=RunState.QUEUED, reason=reason, error=error)
            self._release(active.delivery, delay)
            log.info("run %s attempt %d failed (%s); retrying in %d s", record.run_id, record.attempt, reason, delay)
        else:
            self._finish(active, RunState.FAILED, reason, error)

    def _retry_delay(self, attempt: int) -> int:
        ceiling = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** (attempt - 1))
        return int(random.uniform(ceiling / 2, ceiling))  # jitter: retries of a burst of failures spread out

    def _finish(
        self,
        active: ActiveRun,
        state: RunState,
        reason: FailureReason | None,
        error: dict[str, Any] | None,
        output: Any = None,
    ) -> None:
        if error is not None and reason is not None:
            error = {"reason": reason.value, **error}
        self.aws.end_attempt(
            active.record, self.settings.node_id, state=state, reason=reason, error=error, output=output
        )
        # Deleted only now that the run is terminal: a node that dies before this loses nothing.
        self.aws.delete(active.delivery)
        log.info("run %s %s", active.record.run_id, state)

    def _ship_log(self, record: RunRecord, log_path: Path) -> None:
        if log_path.exists():
            try:
                self.aws.upload_log(f"{LOGS_PREFIX}{record.run_id}/attempt-{record.attempt}.log", log_path)
            except Exception:
                log.exception("could not ship the log of run %s", record.run_id)

    def _stop_all(self) -> None:
        with self._lock:
            runs = list(self._active.values())
        for active in runs:
            if active.thread is not None:
                active.thread.join(timeout=self.settings.kill_grace_seconds + 10)

    # ------------------------------------------------------------ heartbeat
    def _heartbeat_loop(self) -> None:
        while not self._stopped.wait(self.settings.heartbeat_seconds):
            self.heartbeat()

    def heartbeat(self) -> None:
        """Extend every lease and message visibility; learn about cancels and lost leases."""
        with self._lock:
            runs = list(self._active.values())
        until = now_ms() + self.settings.lease_seconds * 1000
        for active in runs:
            try:
                self.aws.set_visibility(active.delivery, self.settings.lease_seconds)
                state = self.aws.extend_lease(active.record, self.settings.node_id, until)
                if state is RunState.CANCELLING:
                    active.cancel_requested.set()
            except LeaseLost:
                log.warning("run %s: lease lost; stopping its job", active.record.run_id)
                active.lease_lost.set()
            except Exception:
                log.exception("heartbeat for run %s failed", active.record.run_id)
        try:
            self.aws.put_node(self._node_record())
        except Exception:
            log.exception("node heartbeat failed")


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"job process was killed by {name}"
    return f"job process exited with code {code} without a result"
