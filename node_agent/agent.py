"""The node agent: join an environment, take runs from its queue, run each out of process,
heartbeat, record the outcome, leave.

The loop reads like a checklist (see ``run``). Each run is supervised on its own
thread (node_agent.supervisor); one heartbeat thread extends every lease and
message visibility on a timer, so a busy or stuck job never loses its lease and
a dead node loses it within the lease time.
"""

from __future__ import annotations

import logging
import math
import platform
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType

from node_agent.aws import AgentAws, ClaimRefused, Delivery, LeaseLost, lease_until
from node_agent.backoff import delay as backoff_delay
from node_agent.backoff import is_transient
from node_agent.fork_servers import WarmHosts
from node_agent.isolation import Isolation
from node_agent.logs import ship_leftovers
from node_agent.package_cache import PackageCache
from node_agent.run_messages import MessageKeeper, hold_message
from node_agent.settings import AgentSettings
from node_agent.supervisor import RunSupervisor, run_attributes
from runly import __version__, tracing
from runly.wire import LeaseMessage
from runly_core.contracts import RunState
from runly_core.records import NodeRecord, RunRecord, iso, utcnow
from runly_core.resources import FENCE_MARGIN_MS, LEASE_MARGIN_MS
from runly_core.run_objects import RunObjectUnreadable

log = logging.getLogger(__name__)


class _StopWaiting(BaseException):
    """Raised by the signal handler to end an idle long poll at once.

    A BaseException, so no library's ``except Exception`` swallows it. It is only
    raised while the agent holds no message, so nothing is stranded; a message
    the queue handed out in that very instant comes back after its visibility timeout.
    """


class AgentState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"


class Clock:
    """Wall time (lease expiries, shared with other nodes) and monotonic time (local deadlines).
    Tests pass a fake one to move time without waiting."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` (of this clock) for ``event``; whether it was set."""
        return event.wait(seconds)


FIRST_RENEWAL_SLACK_SECONDS = 1  # see receive_visibility
# A refusal of the receive call that is not transient (access denied, no such queue, a bad token) is tried again
# this many times in a row, with backoff (about a minute in all: a policy or queue may be being fixed), then the
# agent stops taking work, lets its runs finish and exits with EXIT_CANNOT_RECEIVE, saying why, instead of
# polling a queue it may not read forever. Transient errors (network, throttling, 5xx) are retried without end.
MAX_REFUSED_RECEIVES = 6
EXIT_CANNOT_RECEIVE = 3


def now_ms(clock: Clock | None = None) -> int:
    return int((clock or Clock()).time() * 1000)


def job_lease(until_ms: int, wall_ms: int, monotonic: float) -> LeaseMessage:
    """A lease ending at ``until_ms`` (wall clock, as written to the run), as the job hears it: on this node's
    monotonic clock, from a reading of both clocks taken together (``monotonic`` first, so it errs early)."""
    return LeaseMessage(
        deadline_monotonic=monotonic + (until_ms - wall_ms) / 1000, margin_seconds=FENCE_MARGIN_MS / 1000
    )


def receive_visibility(settings: AgentSettings) -> int:
    """How long a received message stays hidden before its first heartbeat extends it to the lease.

    Two heartbeats, not the whole lease: when a node dies, a long poll it left open at the queue can still
    take a message (even the very run it held) and hide it for this long, so a shorter hide brings the run
    back sooner, at no extra request. The first heartbeat comes within one interval of a claim. Plus the two
    margins the claim's lease is cut by (LEASE_MARGIN_MS before the message reappears, FENCE_MARGIN_MS before
    which the job stops itself) and a second for the claim's and the first beat's own requests: so the job,
    too, has two heartbeats from its claim to hear its first renewal (runly.fencing).
    """
    margins = math.ceil((LEASE_MARGIN_MS + FENCE_MARGIN_MS) / 1000) + FIRST_RENEWAL_SLACK_SECONDS
    return min(settings.lease_seconds, max(2, math.ceil(2 * settings.heartbeat_seconds)) + margins)


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        aws: AgentAws,
        cache: PackageCache,
        supervisor_factory: Callable[..., RunSupervisor] = RunSupervisor,
        clock: Clock | None = None,
        hosts: WarmHosts | None = None,
        isolation: Isolation | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.isolation = isolation  # job user, process trees, limits (node_agent.isolation); None: none
        self.settings = settings
        self.aws = aws
        self.cache = cache
        self._new_supervisor = supervisor_factory
        self.messages = MessageKeeper(
            aws, lease_seconds=settings.lease_seconds, limit_seconds=settings.max_in_flight_seconds, now=self.clock.time
        )
        self.hosts = hosts  # warm job hosts, one per package version; None: a new interpreter per run
        self.state = AgentState.STARTING
        self.started_at = iso(utcnow())
        # When the node record was last written (clock.monotonic) and what it said: an idle node writes it
        # only on a change and every idle_refresh_seconds.
        self._node_written: tuple[float, str, list[str]] | None = None
        self._active: dict[str, tuple[RunSupervisor, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._draining = threading.Event()  # first signal (or a drain from the API): finish what runs, take nothing new
        self._cold = threading.Event()  # second signal or drain timeout: stop jobs now, hand their runs back
        self._stopped = threading.Event()
        self._slot_freed = threading.Event()
        self._polling = False  # in a long poll, holding no message: a stop may interrupt it
        self.fatal_error: str | None = None  # why the agent stopped on its own (it exits EXIT_CANNOT_RECEIVE)
        # The pause after the n-th failed receive in a row (tests make it 0).
        self.receive_backoff: Callable[[int], float] = lambda failures: backoff_delay(failures, base=0.5, cap=30.0)

    @property
    def runs_dir(self) -> Path:
        return self.settings.work_dir / "runs"

    # ------------------------------------------------------------ the loop
    def run(self) -> None:
        ship_leftovers(self.runs_dir, self.aws.put_log_chunk, self.aws.get_parameters)
        # Registered as idle: it polls next, and a record written as 'starting' would need another write at once.
        self.state = AgentState.IDLE
        self.register()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        try:
            self._take_work()
            self._drain()
        finally:
            self._stopped.set()
            heartbeat.join(timeout=self.settings.heartbeat_seconds + 5)
            self.state = AgentState.STOPPED
            self.deregister()
            self.aws.flush_deletes()
            if self.hosts is not None:
                self.hosts.stop_all()

    def _take_work(self) -> None:
        failures = 0
        refused = 0  # consecutive non-transient failures
        while not self._draining.is_set():
            self._slot_freed.clear()  # before counting: a run ending after the count wakes the wait below
            free = self.settings.capacity - self.running_count()
            self.state = AgentState.BUSY if free == 0 else AgentState.IDLE
            if free == 0:
                # Woken the moment a run ends, so a full node takes its next run at once (bounded, for a drain).
                self.clock.wait(self._slot_freed, 0.1)
                continue
            # Never ask for more messages than there are free slots: nothing waits in a node's hands.
            visibility = receive_visibility(self.settings)
            try:
                self._polling = True
                deliveries = self.aws.receive(free, self.settings.poll_wait_seconds, visibility)
                self._polling = False
            except _StopWaiting:
                self._polling = False
                return
            except Exception as exc:
                self._polling = False
                if not is_transient(exc):
                    refused += 1
                    log.error("receiving from the queue failed (%d of %d in a row): %s", refused,
                              MAX_REFUSED_RECEIVES, exc, exc_info=refused == 1)  # fmt: skip
                    if refused >= MAX_REFUSED_RECEIVES:
                        self.fatal_error = (
                            f"the queue {self.settings.queue_url} refused {refused} receives in a row ({exc}): "
                            "check the node's credentials and policy and the queue URL; runs in progress finish"
                        )
                        log.critical("stopping: %s", self.fatal_error)
                        self._draining.set()
                        return
                else:
                    refused = 0
                pause = self.receive_backoff(failures)
                failures += 1
                log.warning("receive failed (%s); polling again in %.1f s", exc, pause)
                self.clock.wait(self._draining, pause)
                continue
            failures = refused = 0
            # The messages were handed out at the latest now: the claims' leases count from here, so each
            # ends before its message could reappear, however long the claims of the batch take.
            received_monotonic = self.clock.monotonic()
            received_ms = now_ms(self.clock)
            if deliveries and self._node_write_older_than(self.settings.heartbeat_seconds):
                # An idle node writes its record rarely, so it hears of a drain asked through the API only
                # when it writes: do so now, before taking new work, not after.
                self._refresh_node_record()
            for delivery in deliveries:
                if self._draining.is_set():
                    self.aws.set_visibility(delivery, 0)  # not started: another node takes it at once
                else:
                    self._start(delivery, visibility, received_ms, received_monotonic)

    def _drain(self) -> None:
        self.state = AgentState.DRAINING
        if not self.running_count():
            return
        log.info(
            "draining: %d run(s) to finish (at most %d s)", self.running_count(), self.settings.drain_timeout_seconds
        )
        deadline = self.clock.monotonic() + self.settings.drain_timeout_seconds
        while True:
            self._slot_freed.clear()  # before counting: a run ending after the count ends the wait below
            if not self.running_count():
                break
            if self._cold.is_set() or self.clock.monotonic() > deadline:
                self._cold.set()  # supervisors SIGTERM their jobs (they watch it too), then record and release
                break
            # Woken when a run ends; a second signal is seen within the bound (the supervisors see it at once).
            self.clock.wait(self._slot_freed, 0.1)
        for _, thread in self._snapshot():
            thread.join(timeout=self.settings.kill_grace_seconds + 30)

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

    def _snapshot(self) -> list[tuple[RunSupervisor, threading.Thread]]:
        with self._lock:
            return list(self._active.values())

    # ------------------------------------------------------------ node registration
    def _node_record(self) -> NodeRecord:
        with self._lock:
            running = sorted(self._active)
        now = self.clock.time()
        # The longest this record may go unwritten: one heartbeat while runs are running; while none is, the
        # idle refresh (checked on each heartbeat). Twice that, so that one failed write does not show a live
        # node offline. The price: an idle node that died shows online for up to that long.
        interval = self.settings.heartbeat_seconds
        if not running:
            interval += self.settings.idle_refresh_seconds
        return NodeRecord(
            node_id=self.settings.node_id,
            host=platform.node(),
            environment=self.settings.environment,
            capacity=self.settings.capacity,
            running=running,
            agent_version=__version__,
            state=self.state.value,
            started_at=self.started_at,
            last_seen=iso(datetime.fromtimestamp(now, UTC)),
            # Online while this is in the future; DynamoDB's TTL removes a dead node's record eventually.
            expires_at=int(now + 2 * interval + 1),
        )

    def _write_node_record(self) -> None:
        """Write the node record, and learn whether a drain was asked through the API."""
        node = self._node_record()
        drain = self.aws.put_node(node)
        with self._lock:
            self._node_written = (self.clock.monotonic(), node.state, node.running)
        if drain and not self._draining.is_set():
            # Not request_stop: the API asks once and means warm; it must never escalate to a cold stop.
            log.info("drain requested through the API: finishing running jobs, taking no new ones")
            self._draining.set()

    def _refresh_node_record(self) -> None:
        try:
            self._write_node_record()
        except Exception:  # the next heartbeat writes it again; the record outlives several
            log.exception("writing the node record failed")

    def _node_write_older_than(self, seconds: float) -> bool:
        with self._lock:
            written = self._node_written
        return written is None or self.clock.monotonic() - written[0] >= seconds

    def _node_write_due(self) -> bool:
        """Every heartbeat while runs are running; while none is, on a change and every idle refresh."""
        with self._lock:
            running = sorted(self._active)
            written = self._node_written
        if running or written is None or (self.state.value, running) != (written[1], written[2]):
            return True
        return self._node_write_older_than(self.settings.idle_refresh_seconds)

    def register(self) -> None:
        self._write_node_record()
        log.info("node %s joined environment %s", self.settings.node_id, self.settings.environment)

    def deregister(self) -> None:
        try:
            self.aws.delete_node(self.settings.environment, self.settings.node_id)
        except Exception:  # leaving must not hide why we stopped; the record expires anyway
            log.exception("could not deregister node")

    # ------------------------------------------------------------ taking a run
    def _start(self, delivery: Delivery, visibility: int, received_ms: int, received_monotonic: float) -> None:
        """Claim the run of a message received at ``received_ms`` (``received_monotonic``), hidden for ``visibility``
        seconds, and start it."""
        if delivery.message is None:
            # Not a run message: it comes back until the redrive policy moves it to the DLQ.
            log.error("poison message (not a run message), receive count %d", delivery.receive_count)
            self.aws.set_visibility(delivery, 30)
            return
        run_id = delivery.message.run_id
        claim_started_ns = time.time_ns()
        try:
            # A lease as long as the message stays hidden, counted from when it was handed out: it ends
            # (LEASE_MARGIN_MS) before the message can reappear. The first heartbeat extends both.
            record = self.aws.claim(run_id, self.settings.node_id, visibility, received_ms)
            checkpoint_error = None
            try:
                checkpoint = self.aws.checkpoint_for(record)
            except RunObjectUnreadable as exc:
                log.error("run %s: its checkpoint cannot be read: %s", run_id, exc)
                checkpoint, checkpoint_error = None, str(exc)
        except ClaimRefused as refused:
            log.info("not starting %s: %s", run_id, refused)
            if refused.terminal:
                self.aws.delete(delivery)
                return
            hold_message(
                self.aws, delivery, refused.retry_in, limit_seconds=self.settings.max_in_flight_seconds,
                now=self.clock.time(),
            )  # fmt: skip
            if refused.leased is not None:
                self._hand_over(refused.leased, delivery)
            return
        except Exception:
            log.exception("claiming %s failed; it comes back after its visibility timeout", run_id)
            return
        log.info("run %s: claimed as attempt %d", run_id, record.attempt)
        self._trace_claim(record, claim_started_ns, time.time_ns())
        supervisor = self._new_supervisor(
            settings=self.settings,
            aws=self.aws,
            cache=self.cache,
            record=record,
            delivery=delivery,
            checkpoint=checkpoint,
            checkpoint_error=checkpoint_error,
            cold=self._cold,
            hosts=self.hosts,
            # The lease the claim wrote, for the job to stop by unless it hears a renewal (runly.fencing).
            lease=job_lease(record.lease_until_ms or received_ms, received_ms, received_monotonic),
            **({"isolation": self.isolation} if self.isolation is not None else {}),
        )
        thread = threading.Thread(target=self._supervise, args=(supervisor,), name=f"run-{run_id}", daemon=True)
        with self._lock:
            self._active[run_id] = (supervisor, thread)
        thread.start()

    def _trace_claim(self, record: RunRecord, claim_started_ns: int, claimed_ns: int) -> None:
        """The run's time in the queue (from its creation, or its previous attempt's end, to this claim) and the
        claim itself, as spans of the run's trace: known only once the claim has read the run, so recorded after."""
        trace = record.trace
        if trace is None or not tracing.available():
            return
        attributes = run_attributes(record, self.settings.node_id)
        previous = record.attempts[-2] if len(record.attempts) > 1 else None
        # Since its previous attempt ended (a retry), or started (a lost node's, ended by this takeover).
        waited_from = (previous.ended_at or previous.started_at) if previous is not None else None
        queued_since = waited_from or datetime.fromisoformat(record.created_at)
        tracing.record_span(
            "queued", parent=trace, start_time_ns=int(queued_since.timestamp() * 1e9), end_time_ns=claim_started_ns,
            attributes=attributes, tracer_name="runly-agent",
        )  # fmt: skip
        tracing.record_span(
            "claim", parent=trace, start_time_ns=claim_started_ns, end_time_ns=claimed_ns, attributes=attributes,
            tracer_name="runly-agent",
        )  # fmt: skip

    def _hand_over(self, leased: RunRecord, delivery: Delivery) -> None:
        """A message of a run that a live attempt holds (a replacement sent before SQS's in-flight cap, or a
        message delivered twice): offer it to that attempt, hidden for the rest of its lease meanwhile, so the
        run keeps one message, received afresh (node_agent.run_messages)."""
        try:
            if self.aws.hand_over(leased, delivery):
                log.info("run %s: handed message %s to %s", leased.run_id, delivery.message_id, leased.lease_owner)
        except Exception:  # it comes back when hidden for the rest of the lease, and is offered again
            log.exception("run %s: handing its message to %s failed", leased.run_id, leased.lease_owner)

    def _supervise(self, supervisor: RunSupervisor) -> None:
        try:
            supervisor.run()
        finally:
            with self._lock:
                self._active.pop(supervisor.run_id, None)
            self.messages.forget(supervisor.run_id)
            self._slot_freed.set()

    # ------------------------------------------------------------ heartbeat
    def _heartbeat_loop(self) -> None:
        # On a fixed schedule, not a fixed pause after each beat: a slow beat (throttling, many runs) does not
        # push the next one back, so a run claimed just after a beat is beaten within about one interval,
        # inside the two its message was received hidden for (receive_visibility).
        interval = self.settings.heartbeat_seconds
        next_beat = time.monotonic() + interval
        while not self._stopped.wait(max(0.0, next_beat - time.monotonic())):
            self.heartbeat()
            next_beat = max(next_beat + interval, time.monotonic())
            if self.hosts is not None:
                self.hosts.stop_idle()

    def heartbeat(self) -> None:
        """Extend every message visibility (one request per 10 runs, replacing messages before SQS's in-flight
        cap) and lease, write the newest progress, learn about cancels, lost leases, messages handed over and
        (when the node record is written: _node_write_due) drain requests."""
        monotonic = self.clock.monotonic()
        wall_ms = now_ms(self.clock)
        until = lease_until(wall_ms, self.settings.lease_seconds)
        beating = [supervisor for supervisor, _ in self._snapshot() if not supervisor.finished.is_set()]
        kept = self.messages.beat(beating)
        for supervisor in beating:
            if supervisor.run_id not in kept:
                continue  # a failed beat for this run (logged): the next one tries again
            try:
                drop = self.messages.handoff_to_drop(supervisor.run_id)
                indexed = supervisor.indexed_lease_until_ms or supervisor.record.lease_until_ms
                renewal = self.aws.renew_lease(
                    supervisor.record,
                    self.settings.node_id,
                    until,
                    supervisor.progress_to_send(),
                    drop_handoff=drop,
                    indexed_until_ms=indexed,
                )
                supervisor.indexed_lease_until_ms = renewal.indexed_until_ms
                # Durable: now the job may hear it, and stop later (runly.fencing).
                supervisor.lease_renewed(job_lease(until, wall_ms, monotonic))
                if drop:
                    self.messages.handoff_dropped(supervisor.run_id)
                if renewal.handoff is not None:
                    self.messages.adopt(supervisor, renewal.handoff)
                if renewal.state is RunState.CANCELLING:
                    supervisor.cancel_requested.set()
            except LeaseLost:
                if not supervisor.finished.is_set():
                    log.warning("run %s: lease lost; stopping its job", supervisor.run_id)
                    supervisor.lease_lost.set()
            except Exception:  # one failed beat is retried on the next; the lease outlives several
                log.exception("heartbeat for run %s failed", supervisor.run_id)
        if self._node_write_due():
            self._refresh_node_record()
