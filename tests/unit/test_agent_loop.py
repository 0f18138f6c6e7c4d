"""The agent's loop and heartbeat against a fake AWS adapter: no processes, no network."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from node_agent.agent import MAX_REFUSED_RECEIVES, Agent, AgentState, Clock, receive_visibility
from node_agent.aws import ClaimRefused, Delivery, LeaseLost, LeaseRenewal, lease_until
from node_agent.run_messages import hold_message
from node_agent.settings import AgentSettings
from node_agent.supervisor import retry_delay
from runly_core.contracts import RunMessage, RunState
from runly_core.records import NodeRecord, RunRecord


def _record(run_id: str) -> RunRecord:
    return RunRecord(
        run_id=run_id, state=RunState.RUNNING, package="p", version="1", job="j", entry_point="m:J",
        environment="default", config_json="{}", timeout_seconds=60, max_attempts=3, bundle_key="k",
        bundle_sha256="0" * 64, created_at="2026-01-01T00:00:00Z", attempt=1, lease_owner="node-1",
    )  # fmt: skip


def _delivery(run_id: str, *, receipt: str | None = None, received_at: float = 0.0) -> Delivery:
    """A message of ``run_id``; its id and receipt handle are ``rh-{run_id}`` unless told. FakeAws.receive stamps
    when it was received, as AgentAws.receive does."""
    handle = receipt or f"rh-{run_id}"
    return Delivery(
        receipt_handle=handle, message=RunMessage(run_id=run_id, environment="default"), receive_count=1,
        message_id=f"id-{handle}", received_at=received_at,
    )  # fmt: skip


@dataclass
class FakeAws:
    batches: list[list[Delivery] | Exception] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)
    visibility: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    flushed: bool = False  # the batched deletes were flushed (the agent does it as it stops)
    refusals: dict[str, ClaimRefused] = field(default_factory=dict)
    lease_state: RunState | Exception = RunState.RUNNING
    drain_requested: bool = False
    on_empty: threading.Event = field(default_factory=threading.Event)
    leases_until: list[int] = field(default_factory=list)
    received_hidden_for: list[int] = field(default_factory=list)
    claims: list[tuple[str, int, int]] = field(default_factory=list)  # run, lease seconds, from (ms)
    nodes: list[NodeRecord] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # the order of claims and node writes
    on_receive: Callable[[], None] | None = None  # what happens during the long poll
    clock: Clock = field(default_factory=Clock)
    visibility_requests: list[list[tuple[str, int]]] = field(default_factory=list)  # one per batch call
    visibility_failures: dict[str, str] = field(default_factory=dict)  # receipt -> the error its change gets
    replacements: list[tuple[str, int, float]] = field(default_factory=list)  # run, delay, when (clock)
    handoffs: dict[str, Delivery] = field(default_factory=dict)  # run -> a message handed over in its item
    dropped_handoffs: list[str] = field(default_factory=list)
    offered: list[tuple[str, str]] = field(default_factory=list)  # run, receipt handed over by this node
    renewed: list[str] = field(default_factory=list)
    deleted_soon: list[str] = field(default_factory=list)

    def receive(self, max_messages: int, wait_seconds: int, visibility_seconds: int) -> list[Delivery]:
        self.asked.append(max_messages)
        self.received_hidden_for.append(visibility_seconds)
        asked_at = self.clock.time()
        if self.on_receive is not None and self.batches:
            self.on_receive()
        if not self.batches:
            self.on_empty.set()
            return []
        batch = self.batches.pop(0)
        if isinstance(batch, Exception):
            raise batch
        return [d if d.received_at else dataclasses.replace(d, received_at=asked_at) for d in batch]

    def claim(self, run_id: str, node_id: str, lease_seconds: int, now_ms: int) -> RunRecord:
        self.claims.append((run_id, lease_seconds, now_ms))
        self.calls.append(f"claim {run_id}")
        if run_id in self.refusals:
            raise self.refusals[run_id]
        return _record(run_id)

    def checkpoint_for(self, record: RunRecord) -> None:
        return None

    def set_visibility(self, delivery: Delivery, seconds: int) -> None:
        self.visibility[delivery.receipt_handle] = seconds

    def set_visibilities(self, changes: Sequence[tuple[Delivery, int]]) -> list[str | None]:
        self.visibility_requests.append([(d.receipt_handle, seconds) for d, seconds in changes])
        results: list[str | None] = []
        for delivery, seconds in changes:
            error = self.visibility_failures.get(delivery.receipt_handle)
            if error is None:
                self.visibility[delivery.receipt_handle] = seconds
            results.append(error)
        return results

    def send_replacement(self, delivery: Delivery, delay_seconds: int = 0) -> str:
        assert delivery.message is not None
        self.replacements.append((delivery.message.run_id, delay_seconds, self.clock.time()))
        return f"replacement-{len(self.replacements)}"

    def hand_over(self, leased: RunRecord, delivery: Delivery) -> bool:
        self.offered.append((leased.run_id, delivery.receipt_handle))
        return True

    def delete(self, delivery: Delivery) -> None:
        self.deleted.append(delivery.receipt_handle)

    def delete_soon(self, delivery: Delivery) -> None:
        self.deleted_soon.append(delivery.receipt_handle)

    def renew_lease(
        self,
        record: RunRecord,
        node_id: str,
        until_ms: int,
        progress: Any = None,
        *,
        drop_handoff: bool = False,
        indexed_until_ms: int | None = None,
    ) -> LeaseRenewal:
        self.leases_until.append(until_ms)
        if isinstance(self.lease_state, Exception):
            raise self.lease_state
        self.renewed.append(record.run_id)
        if drop_handoff:
            self.dropped_handoffs.append(record.run_id)
            self.handoffs.pop(record.run_id, None)
        return LeaseRenewal(self.lease_state, self.handoffs.get(record.run_id))

    def put_node(self, node: NodeRecord) -> bool:
        self.nodes.append(node)
        self.calls.append("put_node")
        return self.drain_requested

    def delete_node(self, node_id: str) -> None:
        pass

    def flush_deletes(self) -> None:
        self.flushed = True

    def put_log_chunk(self, key: str, data: bytes) -> None:
        pass

    def get_parameters(self, names: list[str]) -> tuple[dict[str, tuple[str, int]], list[str]]:
        return {}, list(names)  # no variable or secret is set


class FakeSupervisor:
    """Holds its slot until released, like a job that is still running."""

    def __init__(self, **kwargs: Any) -> None:
        self.record: RunRecord = kwargs["record"]
        self.delivery: Delivery = kwargs["delivery"]
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self.finished = threading.Event()
        self.release = threading.Event()
        self.leases: list[Any] = [kwargs["lease"]]  # the claim's, then every renewal the job was to hear
        self.indexed_lease_until_ms: int | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def progress_to_send(self) -> None:
        return None

    def lease_renewed(self, lease: Any) -> None:
        self.leases.append(lease)

    def run(self) -> None:
        self.release.wait(10)
        self.finished.set()


@pytest.fixture
def settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(
        queue_url="q", table_name="t", feed_bucket="b", node_id="node-1", capacity=2, lease_seconds=10,
        heartbeat_seconds=5, poll_wait_seconds=0, work_dir=tmp_path,
    )  # fmt: skip


class FakeClock(Clock):
    """Time that moves only when the test says so; the agent's waits on it end when their event is set or the test
    moved time past them, and a test can wait until the agent is waiting (``waiting``)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()
        self._waiting: dict[int, int] = {}  # id of the event -> how many waits on it began

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, event: threading.Event, seconds: float) -> bool:
        deadline = self.now + seconds
        with self._lock:
            self._waiting[id(event)] = self._waiting.get(id(event), 0) + 1
        while not event.wait(0.002):  # the real wait: only to see the test move time
            if self.now >= deadline:
                return False
        return True

    def waits_on(self, event: threading.Event) -> int:
        with self._lock:
            return self._waiting.get(id(event), 0)


def _agent(settings: AgentSettings, aws: FakeAws, clock: Clock | None = None) -> tuple[Agent, list[FakeSupervisor]]:
    started: list[FakeSupervisor] = []

    def factory(**kwargs: Any) -> FakeSupervisor:
        supervisor = FakeSupervisor(**kwargs)
        started.append(supervisor)
        return supervisor

    if clock is not None:
        aws.clock = clock
    agent = Agent(settings, aws, cache=None, supervisor_factory=factory, clock=clock)  # type: ignore[arg-type]
    return agent, started


def _run_until_idle(agent: Agent, aws: FakeAws) -> threading.Thread:
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    assert aws.on_empty.wait(5), "the agent never polled an empty queue"
    return thread


def test_never_asks_for_more_messages_than_free_slots(settings: AgentSettings) -> None:
    # Given a node with 2 slots and runs waiting
    clock = FakeClock()
    aws = FakeAws(batches=[[_delivery("a")], [_delivery("b")]])
    agent, started = _agent(settings, aws, clock)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()

    # When both slots are taken, it asked for 2, then 1, and then stops asking while full: it waits for a slot
    _eventually(lambda: len(started) == 2 and clock.waits_on(agent._slot_freed) > 0)
    assert aws.asked == [2, 1]
    # (and goes on waiting, asking nothing, as its waits time out)
    for _ in range(3):
        waits = clock.waits_on(agent._slot_freed)
        clock.advance(0.1)
        _eventually(lambda: clock.waits_on(agent._slot_freed) > waits)  # noqa: B023 (read at once)
    assert aws.asked == [2, 1]

    # And when one run ends, it asks for exactly one more
    started[0].release.set()
    assert aws.on_empty.wait(5)
    assert aws.asked[2] == 1

    agent.request_stop()
    started[1].release.set()
    thread.join(5)
    assert not thread.is_alive()


def _eventually(condition: Any, timeout: float = 5) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError("condition never held")


def test_refused_claims_delete_terminal_runs_and_delay_leased_ones(settings: AgentSettings) -> None:
    aws = FakeAws(
        batches=[[_delivery("done"), _delivery("leased")]],
        refusals={
            "done": ClaimRefused("done", "already Succeeded", terminal=True),
            "leased": ClaimRefused("leased", "leased by node-2", retry_in=7),
        },
    )
    agent, started = _agent(settings, aws)
    thread = _run_until_idle(agent, aws)
    agent.request_stop()
    thread.join(5)

    assert aws.deleted == ["rh-done"]
    assert aws.visibility == {"rh-leased": 7}
    assert started == []
    assert aws.offered == []  # no live holder was named: nothing to hand over


def test_a_message_of_a_run_leased_by_a_live_node_is_hidden_for_the_lease_and_handed_to_it(
    settings: AgentSettings,
) -> None:
    # Given a message (a replacement, or one delivered twice) of a run that node-2 holds for 7 more seconds
    aws = FakeAws(
        batches=[[_delivery("leased", receipt="rh-fresh")]],
        refusals={"leased": ClaimRefused("leased", "leased by node-2", retry_in=7, leased=_record("leased"))},
    )
    agent, started = _agent(settings, aws)
    thread = _run_until_idle(agent, aws)
    agent.request_stop()
    thread.join(5)

    # Then this node starts nothing, hides it for the rest of the lease, and offers it to the holder
    assert started == []
    assert aws.visibility == {"rh-fresh": 7}
    assert aws.offered == [("leased", "rh-fresh")]


def test_messages_received_while_draining_are_released_at_once(settings: AgentSettings) -> None:
    aws = FakeAws()
    agent, started = _agent(settings, aws)
    original_receive = aws.receive

    def receive_then_stop(max_messages: int, wait_seconds: int, visibility_seconds: int) -> list[Delivery]:
        agent.request_stop()  # the stop signal lands during the long poll
        aws.receive = original_receive  # type: ignore[method-assign]
        return [_delivery("late")]

    aws.receive = receive_then_stop  # type: ignore[method-assign]
    agent.run()

    assert aws.visibility == {"rh-late": 0}
    assert started == []


def test_receive_errors_back_off_and_the_loop_goes_on(settings: AgentSettings) -> None:
    clock = FakeClock()
    aws = FakeAws(batches=[EndpointConnectionError(endpoint_url="http://sqs"), [_delivery("a")]])
    agent, started = _agent(settings, aws, clock)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    # The failed receive is followed by a pause (capped backoff) before the next, which the clock lets pass
    _eventually(lambda: clock.waits_on(agent._draining) == 1)
    assert aws.asked == [2]
    clock.advance(30)
    assert aws.on_empty.wait(5), "the agent never polled again"
    agent.request_stop()
    for supervisor in started:
        supervisor.release.set()
    thread.join(5)
    assert [s.run_id for s in started] == ["a"]


def _refused(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "refused"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                       "ReceiveMessage")  # fmt: skip


def test_a_queue_that_keeps_refusing_the_agent_stops_it_saying_why(settings: AgentSettings) -> None:
    # Given a queue the node may not read (its policy denies it), and a run it had already started
    refusals: list[list[Delivery] | Exception] = [_refused("AccessDenied")] * MAX_REFUSED_RECEIVES
    aws = FakeAws(batches=[[_delivery("a")], *refusals])
    agent, started = _agent(settings, aws)
    agent.receive_backoff = lambda failures: 0.0
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()

    # When it has been refused MAX_REFUSED_RECEIVES times in a row, it takes nothing more, lets its run finish
    deadline = time.monotonic() + 5
    while agent.fatal_error is None:
        assert time.monotonic() < deadline, "the agent went on polling a queue that refuses it"
        time.sleep(0.01)
    assert thread.is_alive()  # draining: the run it holds is not abandoned
    (supervisor,) = started
    supervisor.release.set()
    thread.join(5)

    # Then it stopped, naming the error and the queue (main exits EXIT_CANNOT_RECEIVE with this message)
    assert not thread.is_alive()
    assert "AccessDenied" in agent.fatal_error and settings.queue_url in agent.fatal_error
    assert len(aws.asked) == 1 + MAX_REFUSED_RECEIVES


def test_transient_receive_errors_never_stop_the_agent(settings: AgentSettings) -> None:
    # Given more throttling and connection errors in a row than refusals would be allowed, then a run
    transient: list[list[Delivery] | Exception] = [
        _refused("ThrottlingException"),
        EndpointConnectionError(endpoint_url="http://sqs"),
    ]
    aws = FakeAws(batches=[*(transient * MAX_REFUSED_RECEIVES), [_delivery("a")]])
    agent, started = _agent(settings, aws)
    agent.receive_backoff = lambda failures: 0.0
    thread = _run_until_idle(agent, aws)

    # Then the agent is still taking work: the run was started
    assert agent.fatal_error is None and [s.run_id for s in started] == ["a"]
    agent.request_stop()
    for supervisor in started:
        supervisor.release.set()
    thread.join(5)


@pytest.mark.parametrize(
    ("lease_state", "flag"),
    [(RunState.CANCELLING, "cancel_requested"), (LeaseLost("gone"), "lease_lost")],
)
def test_heartbeat_delivers_cancel_and_lost_lease(settings: AgentSettings, lease_state: Any, flag: str) -> None:
    aws = FakeAws(batches=[[_delivery("a")]], lease_state=lease_state)
    agent, started = _agent(settings, aws)
    thread = _run_until_idle(agent, aws)

    agent.heartbeat()

    (supervisor,) = started
    assert getattr(supervisor, flag).is_set()
    assert aws.visibility["rh-a"] == settings.lease_seconds  # the message stays hidden as long as the lease
    agent.request_stop()
    supervisor.release.set()
    thread.join(5)


def test_the_job_hears_a_renewal_only_once_it_was_written(settings: AgentSettings) -> None:
    # Given a run claimed on a clock that moves only when the test says so
    clock = FakeClock()
    aws = FakeAws(batches=[[_delivery("a")]])
    agent, started = _agent(settings, aws, clock)
    thread = _run_until_idle(agent, aws)
    (supervisor,) = started

    # When a heartbeat renews the lease, and a later one fails (the write is refused)
    clock.advance(3)
    agent.heartbeat()
    aws.lease_state = LeaseLost("gone")
    agent.heartbeat()

    # Then the job heard the claim's lease and the one renewal written, as an instant on the monotonic clock: the
    # lease's end less the wall time it was computed at, from the same reading
    assert len(supervisor.leases) == 2
    renewed = supervisor.leases[1]
    assert aws.leases_until[0] == int(clock.now * 1000) + settings.lease_seconds * 1000 - 1000
    assert renewed.deadline_monotonic == pytest.approx(clock.monotonic() + settings.lease_seconds - 1)
    assert renewed.margin_seconds == 1.0
    agent.request_stop()
    supervisor.release.set()
    thread.join(5)


def test_a_drain_requested_through_the_api_stops_taking_work(settings: AgentSettings) -> None:
    aws = FakeAws(drain_requested=True)
    agent, _ = _agent(settings, aws)
    agent.run()  # returns by itself: the node record said drain
    assert aws.asked == []


def test_retry_delays_grow_and_are_capped_with_jitter() -> None:
    delays = [retry_delay(attempt, base=5, cap=60) for attempt in (1, 2, 3, 4, 5, 6) for _ in range(20)]
    assert all(0 <= d <= 60 for d in delays)
    first = [retry_delay(1, base=5, cap=60) for _ in range(50)]
    fourth = [retry_delay(4, base=5, cap=60) for _ in range(50)]
    assert max(first) <= 5 and min(fourth) >= 20
    assert len(set(fourth)) > 1  # jitter


def test_a_drain_that_outlasts_its_timeout_turns_cold(settings: AgentSettings) -> None:
    # Given a draining node whose job does not finish
    clock = FakeClock()
    drain = settings.model_copy(update={"drain_timeout_seconds": 600})
    aws = FakeAws(batches=[[_delivery("slow")]])
    agent, started = _agent(drain, aws, clock)
    thread = _run_until_idle(agent, aws)
    agent.request_stop()
    _eventually(lambda: agent.state is AgentState.DRAINING)  # the drain waits for its run to end...
    waits = clock.waits_on(agent._slot_freed)
    clock.advance(599)
    _eventually(lambda: clock.waits_on(agent._slot_freed) > waits)
    assert not agent._cold.is_set()  # ...and, a second short of its timeout, still waits

    # When the drain timeout passes (without anyone waiting ten minutes)
    clock.advance(2)

    # Then the agent turns cold (its supervisors stop their jobs and hand the runs back)
    _eventually(agent._cold.is_set)
    started[0].release.set()
    thread.join(5)
    assert not thread.is_alive()


def test_the_heartbeat_asks_for_a_lease_ending_just_before_the_message_reappears(settings: AgentSettings) -> None:
    clock = FakeClock()
    aws = FakeAws(batches=[[_delivery("a")]])
    agent, started = _agent(settings, aws, clock)
    thread = _run_until_idle(agent, aws)

    agent.heartbeat()
    clock.advance(5)
    agent.heartbeat()

    start_ms = int(1_800_000_000.0 * 1000)
    lease_ms = settings.lease_seconds * 1000
    assert aws.leases_until == [start_ms + lease_ms - 1000, start_ms + 5000 + lease_ms - 1000]
    assert aws.visibility["rh-a"] == settings.lease_seconds
    agent.request_stop()
    started[0].release.set()
    thread.join(5)


def test_an_idle_node_writes_its_record_rarely_and_stays_online_between_writes(settings: AgentSettings) -> None:
    # Given a node that runs nothing for half an hour, beating every 5 s (a node write every 10 min when idle)
    clock = FakeClock()
    aws = FakeAws()
    agent, _ = _agent(settings.model_copy(update={"idle_refresh_seconds": 600}), aws, clock)
    thread = _run_until_idle(agent, aws)
    start = clock.now

    online_throughout = True
    for _ in range(360):
        clock.advance(settings.heartbeat_seconds)
        agent.heartbeat()
        online_throughout &= aws.nodes[-1].expires_at > clock.now

    # Then it wrote its record when it joined (as idle: nothing happens between joining and the first poll),
    # then every 10 min, and nothing else
    assert {node.state for node in aws.nodes} == {"idle"}
    written_at = [round(_epoch(node.last_seen) - start) for node in aws.nodes]
    assert written_at == [0, 600, 1200, 1800]
    # And the API saw it online all along, though the record went unwritten for ten minutes at a time
    assert online_throughout
    agent.request_stop()
    thread.join(5)
    assert aws.flushed, "messages waiting to be deleted in a batch are deleted before the agent exits"


def test_a_node_running_anything_writes_its_record_every_heartbeat(settings: AgentSettings) -> None:
    clock = FakeClock()
    aws = FakeAws(batches=[[_delivery("a")]])
    agent, started = _agent(settings, aws, clock)
    thread = _run_until_idle(agent, aws)
    writes = len(aws.nodes)

    for _ in range(3):
        clock.advance(settings.heartbeat_seconds)
        agent.heartbeat()

    assert len(aws.nodes) == writes + 3
    assert aws.nodes[-1].running == ["a"]
    assert aws.nodes[-1].expires_at == int(clock.now + 2 * settings.heartbeat_seconds + 1)

    # When its run ends, the next beat writes that at once (a change), and from then on only the idle refresh
    started[0].release.set()
    _eventually(lambda: agent.running_count() == 0)
    clock.advance(settings.heartbeat_seconds)
    agent.heartbeat()
    clock.advance(settings.heartbeat_seconds)
    agent.heartbeat()
    assert len(aws.nodes) == writes + 4 and aws.nodes[-1].running == []
    agent.request_stop()
    thread.join(5)


@pytest.mark.parametrize(("poll_took", "written_first"), [(20.0, True), (1.0, False)])
def test_a_drain_asked_while_idle_is_honoured_before_new_work(
    settings: AgentSettings, poll_took: float, written_first: bool
) -> None:
    # Given an idle node (its record written rarely) that an admin drains through the API during a long poll
    clock = FakeClock()
    aws = FakeAws(batches=[[_delivery("a")]])
    agent, started = _agent(settings, aws, clock)

    def admin_drains_during_the_poll() -> None:
        clock.advance(poll_took)
        aws.drain_requested = True

    aws.on_receive = admin_drains_during_the_poll

    if written_first:
        # When a message arrives and the record was last written more than a heartbeat ago
        agent.run()  # returns by itself: the drain was seen before the claim

        # Then the node wrote its record before claiming, saw the drain, and handed the message back at once
        assert aws.calls == ["put_node", "put_node"]
        assert aws.visibility == {"rh-a": 0}
        assert started == []
    else:
        # When the record was written less than a heartbeat ago, the node claims without another write
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        _eventually(lambda: len(started) == 1)
        assert aws.calls == ["put_node", "claim a"]
        agent.request_stop()
        started[0].release.set()
        thread.join(5)


def test_messages_are_hidden_for_two_heartbeats_and_the_claim_lease_ends_before_they_reappear(
    settings: AgentSettings,
) -> None:
    # Given a lease much longer than two heartbeats, and a batch whose claims take a while
    long_lease = settings.model_copy(update={"lease_seconds": 60, "heartbeat_seconds": 5})
    clock = FakeClock()
    aws = FakeAws(batches=[[_delivery("a"), _delivery("b")]])
    agent, started = _agent(long_lease, aws, clock)
    aws.on_receive = lambda: clock.advance(3)  # the long poll returns 3 s in
    received_ms = int((clock.now + 3) * 1000)
    claim = aws.claim

    def slow_claim(run_id: str, node_id: str, lease_seconds: int, now_ms: int) -> RunRecord:
        clock.advance(0.8)  # a throttled write, retried
        return claim(run_id, node_id, lease_seconds, now_ms)

    aws.claim = slow_claim  # type: ignore[method-assign]
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    _eventually(lambda: len(started) == 2)

    # Then the messages were received hidden for two heartbeats (the first heartbeat extends that to the lease)
    # plus the claim lease's two margins (it ends 1 s before the message reappears; the job stops 1 s before that)
    # and a second for the claim's and the first beat's requests
    assert receive_visibility(long_lease) == 13
    assert aws.received_hidden_for[0] == 13
    # And each claim's lease counts from when the batch arrived, so it ends a second before its message reappears
    assert [(run_id, seconds, since) for run_id, seconds, since in aws.claims] == [
        ("a", 13, received_ms),
        ("b", 13, received_ms),
    ]
    assert lease_until(received_ms, 13) == received_ms + 13_000 - 1000
    # And the job hears that lease on the node's monotonic clock, to stop two heartbeats (and a second) after it
    received_monotonic = received_ms / 1000  # the fake clock's two clocks are one
    assert started[0].leases[0].stop_at == pytest.approx(received_monotonic + 11)
    agent.request_stop()
    for supervisor in started:
        supervisor.release.set()
    thread.join(5)


def test_a_slow_heartbeat_does_not_delay_the_first_beat_of_a_run_claimed_during_it(tmp_path: Path) -> None:
    # Given heartbeats every second whose node write (due on every beat, even idle) takes 1.2 s (throttled),
    # and a message received hidden for 2 s
    settings = AgentSettings(
        queue_url="q", table_name="t", feed_bucket="b", node_id="node-1", lease_seconds=4, heartbeat_seconds=1,
        poll_wait_seconds=0, work_dir=tmp_path, idle_refresh_seconds=1,
    )  # fmt: skip
    hidden_for = receive_visibility(settings)
    assert hidden_for == 4  # two heartbeats, plus the margins of the claim's lease and a second, at most the lease
    aws = FakeAws(batches=[[_delivery("a")]])
    beat_writing = threading.Event()
    first_beat_at: list[float] = []
    put_node, set_visibility = aws.put_node, aws.set_visibilities

    def slow_put_node(node: NodeRecord) -> bool:
        if threading.current_thread().name == "heartbeat":
            beat_writing.set()
            time.sleep(1.2)
        return put_node(node)

    def timed_set_visibility(changes: Sequence[tuple[Delivery, int]]) -> list[str | None]:
        if not first_beat_at and changes:
            first_beat_at.append(time.monotonic())
        return set_visibility(changes)

    def receive_during_a_beat() -> None:
        assert beat_writing.wait(5)  # the message arrives just after a beat began

    aws.put_node, aws.set_visibilities = slow_put_node, timed_set_visibility  # type: ignore[method-assign]
    aws.on_receive = receive_during_a_beat
    agent, started = _agent(settings, aws)

    # When a run is claimed just after a heartbeat began
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    _eventually(lambda: len(started) == 1)
    claimed_at = time.monotonic()
    _eventually(lambda: bool(first_beat_at))

    # Then its message is made to stay hidden (to the lease) within the two heartbeats its job may live unrenewed
    assert first_beat_at[0] - claimed_at < hidden_for - 2
    agent.request_stop()
    started[0].release.set()
    thread.join(10)


def _epoch(moment: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(moment).timestamp()


@dataclass
class Running:
    """An agent on a thread of its own with runs started (by FakeSupervisors that hold their slots)."""

    agent: Agent
    aws: FakeAws
    started: list[FakeSupervisor]
    thread: threading.Thread

    def stop(self) -> None:
        self.agent.request_stop()
        for supervisor in self.started:
            supervisor.release.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def _start_runs(settings: AgentSettings, clock: FakeClock, *run_ids: str) -> Running:
    aws = FakeAws(batches=[[_delivery(run_id) for run_id in run_ids]])
    agent, started = _agent(settings.model_copy(update={"capacity": max(2, len(run_ids))}), aws, clock)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    _eventually(lambda: len(started) == len(run_ids))
    return Running(agent, aws, started, thread)


def test_a_message_is_replaced_before_its_in_flight_limit_and_the_holder_keeps_the_replacement(
    settings: AgentSettings,
) -> None:
    # Given messages kept at most 30 s in flight (SQS: 12 h), a 10 s lease and a beat every 5 s
    limited = settings.model_copy(update={"max_in_flight_seconds": 30})
    clock = FakeClock()
    running = _start_runs(limited, clock, "a")
    agent, aws, started = running.agent, running.aws, running.started
    t0 = clock.now
    beats: list[tuple[float, list[tuple[str, int]]]] = []

    def beat() -> None:
        clock.advance(5)
        agent.heartbeat()
        beats.append((clock.now - t0, aws.visibility_requests[-1]))

    # When it beats for 30 s
    for _ in range(6):
        beat()

    # Then the message is hidden for the lease while a whole lease fits before its limit, then only up to the
    # limit, and never past it; a replacement is sent once, when a lease no longer fits (at 25 s)
    assert beats == [
        (5, [("rh-a", 10)]), (10, [("rh-a", 10)]), (15, [("rh-a", 10)]), (20, [("rh-a", 10)]),
        (25, [("rh-a", 5)]), (30, []),
    ]  # fmt: skip
    assert [(run, delay, when - t0) for run, delay, when in aws.replacements] == [("a", 0, 25)]
    # And the lease was renewed on every beat, past the old message's limit too (the replacement carries the run)
    assert aws.renewed == ["a"] * 6

    # When the node that received the replacement hands it over (received at 31 s)
    aws.handoffs["a"] = _delivery("a", receipt="rh-a2", received_at=t0 + 31)
    beat()  # 35 s: the renewal answers with it
    assert started[0].delivery.receipt_handle == "rh-a2"
    assert aws.deleted_soon == ["rh-a"]  # the old message goes: one message per run
    assert aws.dropped_handoffs == []
    beat()  # 40 s: the new receipt is beaten, and the handoff cleared from the run item
    assert beats[-1] == (40, [("rh-a2", 10)])
    assert aws.dropped_handoffs == ["a"]

    # And the new message is replaced when a lease no longer fits before its own limit (31 + 30 - 10 = 51 s)
    for _ in range(3):
        beat()
    assert [(when - t0) for _, _, when in aws.replacements] == [25, 55]
    assert aws.renewed == ["a"] * 11 and aws.deleted_soon == ["rh-a"]
    running.stop()


def test_a_failed_visibility_entry_fails_the_beat_of_that_run_alone(settings: AgentSettings) -> None:
    # Given three runs on a node, and a receipt SQS no longer accepts (its message was received elsewhere)
    clock = FakeClock()
    running = _start_runs(settings, clock, "a", "b", "c")
    agent, aws, started = running.agent, running.aws, running.started
    aws.visibility_failures["rh-b"] = "ReceiptHandleIsInvalid: the receipt handle has expired"

    # When the node beats
    clock.advance(5)
    agent.heartbeat()

    # Then one request changed all three visibilities; the other two leases were renewed, b's was not (as a
    # failed beat: logged, retried next time, its job untouched)
    assert aws.visibility_requests == [[("rh-a", 10), ("rh-b", 10), ("rh-c", 10)]]
    assert aws.renewed == ["a", "c"]
    assert not any(s.lease_lost.is_set() or s.cancel_requested.is_set() for s in started)

    # And when the change succeeds again, b's lease is renewed on the next beat
    del aws.visibility_failures["rh-b"]
    clock.advance(5)
    agent.heartbeat()
    assert aws.renewed == ["a", "c", "a", "b", "c"]
    running.stop()


def test_a_retry_delay_that_would_cross_the_limit_gets_a_fresh_message_delayed_at_most_15_minutes() -> None:
    aws = FakeAws()
    received = _delivery("r", received_at=1000.0)

    # Within the limit: the message is hidden for the delay
    hold_message(aws, received, 15, limit_seconds=30, now=1010.0)  # type: ignore[arg-type]
    assert aws.visibility == {"rh-r": 15} and aws.replacements == []

    # Past it: a fresh message, delayed by the delay, and the old one deleted
    hold_message(aws, received, 15, limit_seconds=30, now=1020.0)  # type: ignore[arg-type]
    assert [(run, delay) for run, delay, _ in aws.replacements] == [("r", 15)]
    assert aws.deleted == ["rh-r"]

    # A delay longer than SQS's 15 minutes: delayed 15 minutes (the run's retry_at holds the rest, see the claim)
    hold_message(aws, received, 2000, limit_seconds=30, now=1000.0)  # type: ignore[arg-type]
    assert [(run, delay) for run, delay, _ in aws.replacements][-1] == ("r", 900)

    # Handed back at once (a cold stop) past its limit: nothing to do, it is visible already
    replaced = len(aws.replacements)
    hold_message(aws, received, 0, limit_seconds=30, now=1040.0)  # type: ignore[arg-type]
    assert len(aws.replacements) == replaced and aws.visibility == {"rh-r": 15}
