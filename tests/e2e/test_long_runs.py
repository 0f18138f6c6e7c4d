"""Runs longer than SQS keeps a message in flight, with real agents on the embedded stack.

SQS refuses to keep a message in flight more than 12 hours after its receipt; the embedded stack's SQS here
refuses after 15 seconds (runly_cli.embedded.moto_server) and the agents replace a run's message 3 seconds before
that (RUNLY_MAX_IN_FLIGHT_SECONDS=12), so a 30-second run meets what a 3-day run meets, several times over.
Two agents share the environment: each replacement is received by one of them and handed to the holder.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runly_cli.embedded.stack import Child, EmbeddedStack, print_tail
from runly_client.client import RunlyClient
from runly_core.contracts import EnqueueRunRequest, FailureReason, RunState, RunView
from tests.e2e.conftest import FAST_AGENT

SQS_CAP = 15
AGENT_LIMIT = 12
ITEMS = 60
ITEM_SECONDS = 1.0  # two at a time: a run of about 30 s, twice SQS's cap here


@pytest.fixture(scope="module")
def long_runs(
    tmp_path_factory: pytest.TempPathFactory, e2ejobs_bundle: Path
) -> Iterator[tuple[EmbeddedStack, RunlyClient]]:
    stack = EmbeddedStack(
        state_dir=tmp_path_factory.mktemp("long-runs"),
        agent_env={**FAST_AGENT, "RUNLY_MAX_IN_FLIGHT_SECONDS": str(AGENT_LIMIT)},
        sqs_max_in_flight_seconds=SQS_CAP,
    )
    stack.start(agents=2)
    client = RunlyClient(stack.api_url, api_key=stack.admin_key)
    client.push(e2ejobs_bundle)
    yield stack, client
    for child in stack.children:
        if child.process.poll() not in (None, 0, -signal.SIGKILL):
            print_tail(child)
    stack.stop()


class Ledger:
    """What the ledger job noted (tests/e2e/projects/e2ejobs): per attempt, where it started, its items and
    the checkpoints the agent acknowledged."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.starts: dict[int, int] = {}
        self.items: dict[int, list[int]] = defaultdict(list)
        self.acked: dict[int, list[int]] = defaultdict(list)
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            run, kind, attempt, value = line.split()[:4]  # then the wall time it was written at
            if run != run_id:
                continue
            if kind == "start":
                self.starts[int(attempt)] = int(value)
            elif kind == "ckpt":
                self.acked[int(attempt)].append(int(value))
            else:
                self.items[int(attempt)].append(int(value))


def _enqueue(client: RunlyClient, ledger: Path) -> RunView:
    config = {"items": ITEMS, "item_seconds": ITEM_SECONDS, "ledger": str(ledger)}
    return client.enqueue(EnqueueRunRequest(package="e2ejobs", job="ledger", config=config))


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _log_lines(stack: EmbeddedStack, pattern: str) -> list[str]:
    found = []
    for child in stack.children:
        if child.name.startswith("local-node"):
            text = child.log_path.read_text(errors="replace") if child.log_path.exists() else ""
            found += [line for line in text.splitlines() if re.search(pattern, line)]
    return found


def _messages_in_queue(stack: EmbeddedStack) -> int:
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_urls["default"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]  # fmt: skip
    return sum(int(count) for count in attributes.values())


def _node(stack: EmbeddedStack, node_id: str) -> Child:
    return next(child for child in stack.children if child.name == node_id)


def test_a_run_longer_than_the_in_flight_cap_keeps_its_lease_across_replacements_and_succeeds_once(
    long_runs: tuple[EmbeddedStack, RunlyClient], tmp_path: Path
) -> None:
    stack, client = long_runs
    ledger = tmp_path / "ledger.txt"

    # Given a run of about 30 s, twice as long as SQS here keeps a message in flight
    run = _enqueue(client, ledger)
    started = time.monotonic()

    # When it runs to the end
    final = client.wait(run.id, timeout=120)
    took = time.monotonic() - started

    # Then it succeeded in its first attempt: its lease was never lost, though each of its messages could be kept
    # for 15 s at most
    assert final.state is RunState.SUCCEEDED, final
    assert len(final.attempts) == 1 and final.attempts[0].outcome is RunState.SUCCEEDED
    assert took > 2 * SQS_CAP
    # And its message was replaced several times, each replacement taken over by the node holding the run
    replaced = _log_lines(stack, rf"run {run.id}: its message reaches its in-flight limit")
    kept = _log_lines(stack, rf"run {run.id}: now holds message")
    assert len(replaced) >= 3 and len(kept) >= 3, (replaced, kept)
    # And every item was processed exactly once
    noted = Ledger(ledger, run.id)
    assert list(noted.items) == [1] and sorted(noted.items[1]) == list(range(ITEMS))
    # And no message of the run is left behind (a replacement received after the end finds the run done)
    _wait_for(lambda: _messages_in_queue(stack) == 0, 3 * SQS_CAP, "the queue to empty")


def test_a_node_killed_after_a_replacement_loses_the_run_to_another_which_resumes_it_from_its_checkpoint(
    long_runs: tuple[EmbeddedStack, RunlyClient], tmp_path: Path
) -> None:
    stack, client = long_runs
    ledger = tmp_path / "ledger.txt"

    # Given a long run whose holder has replaced its message, and which has checkpointed
    run = _enqueue(client, ledger)
    _wait_for(lambda: len(client.get_run(run.id).attempts) == 1, 60, "the run to start")
    holder = _node(stack, client.get_run(run.id).attempts[0].node_id)
    _wait_for(lambda: bool(_log_lines(stack, rf"run {run.id}: now holds message")), 3 * SQS_CAP, "a replacement")
    _wait_for(lambda: any(w > 0 for w in Ledger(ledger, run.id).acked[1]), 30, "a checkpoint")

    # When its node is killed outright
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait()

    # Then another node takes the run over and completes it, exactly once
    final = client.wait(run.id, timeout=120)
    assert final.state is RunState.SUCCEEDED, final
    assert [a.outcome for a in final.attempts] == [None, RunState.SUCCEEDED]
    assert final.attempts[0].reason is FailureReason.NODE_LOST
    assert final.attempts[1].node_id != holder.name
    # And it resumed from the last checkpoint acknowledged to the lost attempt, repeating no item before it
    noted = Ledger(ledger, run.id)
    resumed_from = noted.starts[2]
    assert resumed_from >= max(noted.acked[1]) > 0
    assert min(noted.items[2]) >= resumed_from
    missing = set(range(ITEMS)) - set(noted.items[1]) - set(noted.items[2])
    assert not missing, (sorted(missing), noted.starts, noted.acked, sorted(noted.items), final.attempts)
    # And both messages the run may have had when its node died are gone: none is left to run it again
    _wait_for(lambda: _messages_in_queue(stack) == 0, 3 * SQS_CAP, "the queue to empty")
    stack.start_agent()


def test_a_350_kib_checkpoint_survives_its_node_killed_and_the_next_attempt_resumes_from_exactly_it(
    long_runs: tuple[EmbeddedStack, RunlyClient], tmp_path: Path
) -> None:
    # (On this module's own stack: it kills a node, which the shared session stack's other tests must not see.)
    stack, client = long_runs
    # Given a real job that checkpointed a 350 KiB state (stored in S3: over 8 KiB) and noted its sha256
    ledger = tmp_path / "ledger.txt"
    request = EnqueueRunRequest(package="e2ejobs", job="bigstate", config={"kib": 350, "ledger": str(ledger)})
    run = client.enqueue(request)
    deadline = time.monotonic() + 60
    while not (ledger.exists() and ledger.read_text().strip()):
        assert time.monotonic() < deadline, "the job never noted its checkpoint"
        time.sleep(0.1)
    written = ledger.read_text().split()[3]
    holder = next(c for c in stack.children if c.name == client.get_run(run.id).attempts[0].node_id)

    # When its node is SIGKILLed (the stack's other node takes the run over)
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait()

    # Then the next attempt resumes from exactly that state (its sha256) and succeeds
    final = client.wait(run.id, timeout=120)
    assert final.state is RunState.SUCCEEDED, final
    assert [a.outcome for a in final.attempts] == [None, RunState.SUCCEEDED]
    assert final.attempts[0].reason is FailureReason.NODE_LOST
    assert final.output == {"resumed_sha256": written, "bytes": 350 * 1024 + len('{"attempt":1,"blob":""}')}
    stack.start_agent()  # two nodes again, for the module's next test
