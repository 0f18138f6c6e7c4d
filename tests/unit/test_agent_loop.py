"""The agent's loop and heartbeat against a fake AWS adapter: no processes, no network."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from node_agent.agent import Agent, Clock
from node_agent.aws import ClaimRefused, Delivery, LeaseLost
from node_agent.settings import AgentSettings
from node_agent.supervisor import retry_delay
from runly.contracts import RunMessage, RunState
from runly.records import RunRecord


def _record(run_id: str) -> RunRecord:
    return RunRecord(
        run_id=run_id, state=RunState.RUNNING, package="p", version="1", job="j", entry_point="m:J",
        environment="default", config_json="{}", timeout_seconds=60, max_attempts=3, bundle_key="k",
        bundle_sha256="0" * 64, created_at="2026-01-01T00:00:00Z", attempt=1, lease_owner="node-1",
    )  # fmt: skip


def _delivery(run_id: str) -> Delivery:
    return Delivery(
        receipt_handle=f"rh-{run_id}", message=RunMessage(run_id=run_id, environment="default"), receive_count=1
    )


@dataclass
class FakeAws:
    batches: list[list[Delivery] | Exception] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)
    visibility: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    refusals: dict[str, ClaimRefused] = field(default_factory=dict)
    lease_state: RunState | Exception = RunState.RUNNING
    drain_requested: bool = False
    on_empty: threading.Event = field(default_factory=threading.Event)
    leases_until: list[int] = field(default_factory=list)

    def receive(self, max_messages: int, wait_seconds: int, visibility_seconds: int) -> list[Delivery]:
        self.asked.append(max_messages)
        if not self.batches:
            self.on_empty.set()
            return []
        batch = self.batches.pop(0)
        if isinstance(batch, Exception):
            raise batch
        return batch

    def claim(self, run_id: str, node_id: str, lease_seconds: int, now_ms: int) -> RunRecord:
        if run_id in self.refusals:
            raise self.refusals[run_id]
        return _record(run_id)

    def get_checkpoint(self, run_id: str) -> None:
        return None

    def set_visibility(self, delivery: Delivery, seconds: int) -> None:
        self.visibility[delivery.receipt_handle] = seconds

    def delete(self, delivery: Delivery) -> None:
        self.deleted.append(delivery.receipt_handle)

    def extend_lease(self, record: RunRecord, node_id: str, until_ms: int, progress: Any = None) -> RunState:
        self.leases_until.append(until_ms)
        if isinstance(self.lease_state, Exception):
            raise self.lease_state
        return self.lease_state

    def put_node(self, node: Any) -> bool:
        return self.drain_requested

    def delete_node(self, node_id: str) -> None:
        pass

    def put_log_chunk(self, key: str, data: bytes) -> None:
        pass


class FakeSupervisor:
    """Holds its slot until released, like a job that is still running."""

    def __init__(self, **kwargs: Any) -> None:
        self.record: RunRecord = kwargs["record"]
        self.delivery: Delivery = kwargs["delivery"]
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self.finished = threading.Event()
        self.release = threading.Event()

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def progress_to_send(self) -> None:
        return None

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
    """Time that moves only when the test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _agent(settings: AgentSettings, aws: FakeAws, clock: Clock | None = None) -> tuple[Agent, list[FakeSupervisor]]:
    started: list[FakeSupervisor] = []

    def factory(**kwargs: Any) -> FakeSupervisor:
        supervisor = FakeSupervisor(**kwargs)
        started.append(supervisor)
        return supervisor

    agent = Agent(settings, aws, cache=None, supervisor_factory=factory, clock=clock)  # type: ignore[arg-type]
    return agent, started


def _run_until_idle(agent: Agent, aws: FakeAws) -> threading.Thread:
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    assert aws.on_empty.wait(5), "the agent never polled an empty queue"
    return thread


def test_never_asks_for_more_messages_than_free_slots(settings: AgentSettings) -> None:
    # Given a node with 2 slots and runs waiting
    aws = FakeAws(batches=[[_delivery("a")], [_delivery("b")]])
    agent, started = _agent(settings, aws)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()

    # When both slots are taken, it asked for 2, then 1, and then stops asking while full
    _eventually(lambda: len(started) == 2)
    threading.Event().wait(0.3)
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
    aws = FakeAws(batches=[EndpointConnectionError(endpoint_url="http://sqs"), [_delivery("a")]])
    agent, started = _agent(settings, aws)
    thread = _run_until_idle(agent, aws)
    agent.request_stop()
    for supervisor in started:
        supervisor.release.set()
    thread.join(5)
    assert [s.run_id for s in started] == ["a"]


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
    threading.Event().wait(0.3)
    assert not agent._cold.is_set()  # the drain waits...

    # When the drain timeout passes (without anyone waiting ten minutes)
    clock.advance(601)

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
