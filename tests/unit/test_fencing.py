"""Self-fencing job processes (runly.fencing): a real job process, with runly_cli.run_local playing its agent.

Each job appends to a ledger file (one write per line, O_APPEND, a wall time on each), the way a job sends an email:
what is in the ledger is what a user would see. The process must write nothing after its agent hung up (100 ms)
or after its lease, as it last heard it, less the margin; and it publishes nothing (no result, no finalize).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from runly import Disposition, ItemConfig, ItemJob, Job
from runly.fencing import EXIT_AGENT_GONE, EXIT_LEASE_EXPIRED
from runly.runner import EXIT_LEASE_LOST
from runly.wire import LeaseMessage, RunSpec
from runly_cli.run_local import LocalRun, Project

REPO = Path(__file__).resolve().parents[2]


def _note(ledger: str, what: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {what}\n".encode())
    finally:
        os.close(fd)


class LedgerConfig(BaseModel):
    ledger: str
    child: bool = False  # start a child process that writes too


class Forever(Job[LedgerConfig]):
    """A plain job that never checkpoints and never ends by itself."""

    def run(self) -> None:
        if self.config.child:
            subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"])
        n = 0
        while True:
            _note(self.config.ledger, f"line {n}")
            n += 1
            time.sleep(0.01)


class ItemsConfig(ItemConfig):
    ledger: str


class ForeverItems(ItemJob[ItemsConfig, int]):
    checkpoint_interval = 0.1

    def items(self) -> range:
        return range(1_000_000)

    def process(self, item: int) -> None:
        time.sleep(0.01)
        _note(self.config.ledger, f"item {item}")

    def finalize(self, disposition: Disposition) -> None:
        _note(self.config.ledger, f"finalize {disposition.value}")


class ForeverAsyncItems(ForeverItems):
    async def process(self, item: int) -> None:  # type: ignore[override]
        await asyncio.sleep(0.01)
        _note(self.config.ledger, f"item {item}")


class HoldsTheInterpreter(Job[LedgerConfig]):
    """Notes one line, then sits in one C call that never lets another thread run (the GIL is held)."""

    def run(self) -> int:
        _note(self.config.ledger, "line 0")
        return sum(range(10**14))


class ProgressThenCheckpoint(Job[LedgerConfig]):
    """Sends progress to an agent that stopped reading (the line stays in the channel's buffer), then checkpoints."""

    def run(self) -> None:
        from runly.wire import Progress

        while not Path(self.config.ledger).exists():  # the test's agent says it closed its end
            time.sleep(0.01)
        try:
            self._channel.progress(Progress(succeeded=1))  # type: ignore[attr-defined]
        except OSError:
            pass  # broken pipe: the line stays buffered
        self.checkpoint({"at": 1})


def _spec(job: str, config: dict[str, object], lease: LeaseMessage | None) -> RunSpec:
    return RunSpec(
        run_id="r1", attempt=1, package="tests", version="1", job=job, entry_point=f"{__name__}:{job}",
        config=config, lease=lease,
    )  # fmt: skip


def _start(job: str, ledger: Path, lease: LeaseMessage | None, **config: object) -> LocalRun:
    run = LocalRun(
        spec=_spec(job, {"ledger": str(ledger), **config}, lease),
        cwd=REPO,
        env=Project(root=REPO, name="tests", version="1", jobs={}).env() | {"PYTHONPATH": str(REPO)},
    )
    return run.start()


def _lease(seconds: float, margin: float = 0.5) -> LeaseMessage:
    return LeaseMessage(deadline_monotonic=time.monotonic() + seconds, margin_seconds=margin)


def _lines(ledger: Path) -> list[tuple[float, str]]:
    if not ledger.exists():
        return []
    return [(float(t), rest) for t, _, rest in (line.split(" ", 2) for line in ledger.read_text().splitlines())]


def _wait_for_lines(ledger: Path, count: int = 3, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(_lines(ledger)) < count:
        assert time.monotonic() < deadline, "the job wrote nothing"
        time.sleep(0.01)


def test_a_job_whose_agent_hangs_up_ends_within_100_ms_and_writes_nothing_after(tmp_path: Path) -> None:
    for job in ("Forever", "ForeverItems", "ForeverAsyncItems"):
        ledger = tmp_path / f"{job}.txt"
        # Given a job busy writing, whose agent holds its lease far into the future
        run = _start(job, ledger, _lease(600))
        _wait_for_lines(ledger)

        # When its agent goes (the pipe from it ends, as when the agent is SIGKILLed)
        run.channel.hang_up()  # type: ignore[union-attr]
        gone = time.time()
        code = run.wait(timeout=5)

        # Then the process ended itself, saying why, within 100 ms, without a result or a finalize
        assert code == EXIT_AGENT_GONE, job
        lines = _lines(ledger)
        assert max(t for t, _ in lines) < gone + 0.1, job
        assert not [what for _, what in lines if what.startswith("finalize")], job
        assert run.result is None and run.error is None


def test_a_job_that_hears_no_renewal_ends_before_its_deadline_less_the_margin(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    # Given a job whose lease ends in 3 s, with a margin of 1 s
    lease = _lease(3, margin=1)
    started = time.monotonic()
    run = _start("ForeverItems", ledger, lease)

    # When the agent renews it three times, 0.5 s apart, and then stops (a frozen agent)
    for _ in range(3):
        time.sleep(0.5)
        renewed = _lease(3, margin=1)
        run.channel.send_lease(renewed)  # type: ignore[union-attr]
    code = run.wait(timeout=10)
    ended = time.monotonic()

    # Then the job lived past its first lease (the renewals reached it), its process was gone before the lease
    # itself ended (stop_at + margin: when another node may take the run over; how soon after stop_at this test
    # sees the exit depends on the machine's load), with the lease's own exit code; its last side effect came
    # before stop_at, the deadline less the margin: no finalize, nothing published
    assert code == EXIT_LEASE_EXPIRED
    assert lease.stop_at < ended < renewed.deadline_monotonic, (started, lease.stop_at, ended, renewed.stop_at)
    wall_stop = time.time() - (time.monotonic() - renewed.stop_at)
    lines = _lines(ledger)
    assert lines and max(t for t, _ in lines) <= wall_stop
    assert not [what for _, what in lines if what.startswith("finalize")]
    assert run.result is None and run.error is None


def test_a_job_holding_the_interpreter_is_killed_by_the_kernel_at_its_deadline(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    # Given a job stuck in one C call, so no other thread of it can run (its watchdog cannot)
    lease = _lease(4, margin=0.5)
    run = _start("HoldsTheInterpreter", ledger, lease)

    # Then the kernel timer ends it at the deadline less the margin
    code = run.wait(timeout=10)
    assert code == -signal.SIGKILL
    # (the timer fires at the instant; the rest is this test noticing the exit on a busy machine)
    assert -0.05 < time.monotonic() - lease.stop_at < 0.5
    assert run.result is None


def test_a_job_process_takes_its_children_with_it(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    # (a lease long enough for a slow start on a busy machine to write its lines and start its child first)
    run = _start("Forever", ledger, _lease(6, margin=0.5), child=True)
    _wait_for_lines(ledger)
    children = _children(run.pid)
    assert children, "the job started no child"

    assert run.wait(timeout=10) == EXIT_LEASE_EXPIRED
    time.sleep(0.1)
    assert [pid for pid in children if _alive(pid)] == []


def test_the_broken_pipe_exit_is_lease_lost_not_a_crash(tmp_path: Path) -> None:
    # Given a job process whose agent stopped reading its channel (the read end closed), but still holds the pipe
    # it answers on: the job's progress line stays in its buffer, and its checkpoint cannot be sent
    flag = tmp_path / "agent-closed-its-end"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(_spec("ProgressThenCheckpoint", {"ledger": str(flag)}, None).model_dump_json())
    channel_read, channel_write = os.pipe()
    ack_read, ack_write = os.pipe()
    env = Project(root=REPO, name="tests", version="1", jobs={}).env() | {
        "PYTHONPATH": str(REPO), "RUNLY_RUN_SPEC": str(spec_path), "RUNLY_CHANNEL_FD": str(channel_write),
        "RUNLY_ACK_FD": str(ack_read),
    }  # fmt: skip
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "runly.runner", "run"], cwd=REPO, env=env, stdout=output,
            stderr=subprocess.STDOUT, pass_fds=(channel_write, ack_read),
        )  # fmt: skip
        os.close(channel_write)
        os.close(ack_read)
        os.close(channel_read)
        flag.touch()
        try:
            code = process.wait(timeout=30)
        finally:
            os.close(ack_write)
        output.seek(0)
        log = output.read().decode()

    # Then it ends with the documented exit code of a refused checkpoint, not a traceback of BrokenPipeError
    assert code == EXIT_LEASE_LOST, log
    assert "BrokenPipeError" not in log


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
