"""Values over their byte limits, produced by a real job on a real node (the embedded stack): each ends its run
with its own reason, is not retried, and costs the agent no more memory than a channel line's limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from runly import limits
from runly_cli.embedded.stack import EmbeddedStack
from runly_client.client import RunlyClient
from runly_core.contracts import EnqueueRunRequest, FailureReason, PackageVersionView, RunState, RunView

MiB = 1024


def _run(client: RunlyClient, config: dict[str, object]) -> RunView:
    run = client.enqueue(EnqueueRunRequest(package="e2ejobs", job="oversize", config=config, max_attempts=3))
    return client.wait(run.id, timeout=120)


def _assert_failed_once(run: RunView, reason: FailureReason) -> None:
    assert run.state is RunState.FAILED, run
    assert run.error is not None and run.error.reason is reason, run.error
    # Not retried: one attempt, ended with that reason (not a lost lease, not a crash)
    assert [(a.outcome, a.reason) for a in run.attempts] == [(RunState.FAILED, reason)]
    assert run.output is None


# Over every value's limit and over one channel line (the output's 2 MiB, plus its envelope): the SDK refuses it
# naming its limit, the agent reading a raw line refuses the line.
OVER_A_LINE_KIB = limits.MAX_CHANNEL_MESSAGE_BYTES // 1024 + 64


@pytest.mark.parametrize(
    ("what", "kib", "reason"),
    [
        ("output", OVER_A_LINE_KIB, FailureReason.OUTPUT_TOO_LARGE),
        ("checkpoint", OVER_A_LINE_KIB, FailureReason.CHECKPOINT_TOO_LARGE),
        ("progress", OVER_A_LINE_KIB, FailureReason.PROGRESS_TOO_LARGE),
    ],
)
@pytest.mark.parametrize("raw", [False, True], ids=["sdk", "bypassing-the-sdk"])
def test_a_value_over_its_limit_ends_the_run_with_its_reason_and_is_not_retried(
    client: RunlyClient, e2ejobs: PackageVersionView, what: str, kib: int, reason: FailureReason, raw: bool
) -> None:
    run = _run(client, {"what": what, "kib": kib, "raw": raw})
    _assert_failed_once(run, reason)
    # Said as that: by the SDK in the job (its limit named), or by the agent (the line it refused)
    assert run.error is not None and ("line over" if raw else "the limit is") in run.error.message


def test_a_1000_kib_output_is_stored_out_of_line_and_served_whole(
    client: RunlyClient, e2ejobs: PackageVersionView
) -> None:
    # A real job returns about 1000 KiB: the agent stores it in S3 (runs/{env}/{run}/output/{sha256}.json) and the
    # run item names it; GET /runs/{id} reads it back, checked against its sha256, byte for byte.
    run = _run(client, {"what": "output", "kib": 1000})
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.output == {"blob": "x" * (1000 * 1024)}
    assert client.get_run(run.id).output == run.output


def test_nan_in_an_output_is_a_job_failure_saying_so(client: RunlyClient, e2ejobs: PackageVersionView) -> None:
    run = _run(client, {"what": "nan"})
    _assert_failed_once(run, FailureReason.USER_ERROR)
    assert run.error is not None and "NaN" in run.error.message


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def test_a_150_mb_line_leaves_the_agents_memory_bounded(
    stack: EmbeddedStack, client: RunlyClient, e2ejobs: PackageVersionView
) -> None:
    agents = [child for child in stack.children if child.name.startswith("local-node-")]
    assert len(agents) == 1
    pid = agents[0].process.pid
    # Given the agent has run an oversized line once (every code path it takes is loaded)
    _run(client, {"what": "line", "kib": 3 * MiB, "raw": True})
    before = _memory_kib(pid)

    # When a job writes one 150 MB line to its channel
    run = _run(client, {"what": "line", "kib": 150 * MiB, "raw": True})

    # Then the run fails with the reason, once
    _assert_failed_once(run, FailureReason.OUTPUT_TOO_LARGE)
    # And the agent's peak memory grew by far less than the line (it holds at most a line's limit of it)
    after = _memory_kib(pid)
    grew_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(f"agent memory: before {before}, after {after} (KiB); peak grew {grew_mib:.1f} MiB")
    assert grew_mib < 20, (before, after)
