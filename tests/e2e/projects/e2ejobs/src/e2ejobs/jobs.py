import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from pydantic import BaseModel, Field

from runly import Job
from runly.items import ItemConfig, ItemJob


class EchoConfig(BaseModel):
    message: str = "echo"


class Echo(Job[EchoConfig]):
    def run(self) -> dict[str, object]:
        print(f"echo says {self.config.message}")
        return {"message": self.config.message, "pid": os.getpid(), "attempt": self.context.attempt}


# Printed at import: a warm host imports this once, before any run (its own log, not a run's).
print("e2ejobs imported", flush=True)

# Module state: a run that sees another run's entries here would not be isolated from it.
_RUNS_IN_THIS_PROCESS: list[str] = []


class ProbeConfig(BaseModel):
    tag: str = "probe"


class Probe(Job[ProbeConfig]):
    """Reports what a run can see of its process: for the isolation tests of warm job hosts."""

    def run(self) -> dict[str, object]:
        _RUNS_IN_THIS_PROCESS.append(self.context.run_id)
        print(f"probe {self.config.tag} in process {os.getpid()}")
        return {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pgid": os.getpgid(0),
            "sid": os.getsid(0),
            "cwd": os.getcwd(),
            "runs_in_this_process": list(_RUNS_IN_THIS_PROCESS),
            "aws_variables": sorted(key for key in os.environ if key.startswith("AWS_")),
        }


class FailConfig(BaseModel):
    message: str = "this job always fails"


class Fail(Job[FailConfig]):
    def run(self) -> None:
        raise ValueError(self.config.message)


class CrashConfig(BaseModel):
    pass


class Crash(Job[CrashConfig]):
    def run(self) -> None:
        print("about to die", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class SleepConfig(BaseModel):
    seconds: float = Field(default=30, ge=0)


class Sleep(Job[SleepConfig]):
    def run(self) -> dict[str, float]:
        time.sleep(self.config.seconds)
        return {"slept": self.config.seconds}


class LedgerConfig(ItemConfig):
    items: int = Field(default=40, ge=1)
    item_seconds: float = Field(default=0.05, ge=0)
    ledger: str = Field(description="an append-only file on this machine where each processed item is noted")


def note(ledger: str, line: str) -> None:
    """A side effect a user would see: one line, with the wall time it was written at, on an append-only file.
    One write() per line on an O_APPEND file: lines from concurrent processes never interleave."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


class Ledger(ItemJob[LedgerConfig, int]):
    """Items that note themselves in a ledger file (``RUN KIND ATTEMPT VALUE WALL_TIME`` lines), so a chaos run can
    count repeats, resumes and lines written by an attempt after a newer one started (``start``: job code began)."""

    parallelism = 2
    checkpoint_interval = 0.5

    def _note(self, line: str) -> None:
        note(self.config.ledger, line)

    def bind(self, channel: Any, *, checkpoint_interval: float | None = None) -> None:
        # Note every checkpoint the agent acknowledged: the ground truth a resumed attempt must start from.
        super().bind(_NotingChannel(channel, self), checkpoint_interval=checkpoint_interval)

    def setup(self) -> None:
        watermark = self.resumed_from.watermark if self.resumed_from and self.resumed_from.watermark else 0
        self._note(f"{self.context.run_id} start {self.context.attempt} {watermark}")

    def items(self) -> range:
        return range(self.config.items)

    def process(self, item: int) -> None:
        time.sleep(self.config.item_seconds)
        self._note(f"{self.context.run_id} item {self.context.attempt} {item}")


class TickerConfig(BaseModel):
    ticks: int = Field(default=100, ge=1)
    tick_seconds: float = Field(default=0.05, ge=0)
    ledger: str = Field(description="an append-only file on this machine where each tick is noted")


class Ticker(Job[TickerConfig]):
    """A plain job that never checkpoints: each tick is a ledger line (as Ledger writes them), so a test sees
    whether an attempt went on after it lost its run."""

    def run(self) -> dict[str, int]:
        run_id, attempt = self.context.run_id, self.context.attempt
        note(self.config.ledger, f"{run_id} start {attempt} 0")
        for tick in range(self.config.ticks):
            time.sleep(self.config.tick_seconds)
            note(self.config.ledger, f"{run_id} item {attempt} {tick}")
        return {"ticks": self.config.ticks, "pid": os.getpid()}


class _NotingChannel:
    def __init__(self, channel: Any, job: Ledger) -> None:
        self._channel = channel
        self._job = job
        self.can_checkpoint = channel.can_checkpoint

    def progress(self, progress: Any) -> None:
        self._channel.progress(progress)

    def checkpoint(self, **message: Any) -> None:
        self._channel.checkpoint(**message)  # returns once durable; raises if refused
        self._job._note(f"{self._job.context.run_id} ckpt {self._job.context.attempt} {message.get('watermark') or 0}")


class OversizeConfig(BaseModel):
    what: str = Field(description="output, checkpoint, progress or nan; line: one long result line")
    kib: int = Field(default=1024, ge=0, description="how large, in KiB")
    raw: bool = Field(default=False, description="write straight to the channel pipe, bypassing the SDK's checks")


class Oversize(Job[OversizeConfig]):
    """Produces a value over its limit, through the SDK or (raw) as a job that ignores the SDK would."""

    def run(self) -> Any:
        what, kib = self.config.what, self.config.kib
        if what == "nan":
            return {"mean": float("nan")}
        if self.config.raw:
            self._write_raw(what, kib)
            time.sleep(60)  # the agent stops the job
            return None
        blob = "x" * (kib * 1024)
        if what == "output":
            return {"blob": blob}
        if what == "checkpoint":
            self.checkpoint({"blob": blob})
        elif what == "progress":
            self.report_progress(1, 2, message=blob)
        return {"unexpectedly": "accepted"}

    def _write_raw(self, what: str, kib: int) -> None:
        stream = self._channel._stream  # type: ignore[attr-defined]
        head = {
            "output": '{"kind":"result","output":"',
            "line": '{"kind":"result","output":"',
            "checkpoint": '{"kind":"checkpoint","seq":1,"state":"',
            "progress": '{"kind":"progress","progress":{"message":"',
        }[what]
        stream.write(head)
        kilobyte = "x" * 1024
        for _ in range(kib // 1024):
            stream.write(kilobyte * 1024)  # a megabyte at a time: the job's own memory stays small
        stream.write(kilobyte * (kib % 1024))
        stream.write('"}}\n' if what == "progress" else '"}\n')
        stream.flush()


# A grandchild that leaves the job's session (setsid), or is double-forked so its parent is gone too, and notes
# its pid; it would sleep for ten minutes if nothing ended it.
_ESCAPE = """
import os, sys, time
how, pid_file = sys.argv[1], sys.argv[2]
if how == "double_fork" and os.fork():
    os._exit(0)
os.setsid()
if how == "double_fork" and os.fork():
    os._exit(0)
with open(pid_file, "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(600)
"""


class SpawnConfig(BaseModel):
    how: str = Field(default="setsid", description="setsid or double_fork")
    pid_file: str
    then_sleep: float = Field(default=0, ge=0, description="seconds to sleep once the grandchild is there")


class Spawn(Job[SpawnConfig]):
    """Starts a grandchild that escapes the job's process group and session, then returns or sleeps."""

    def run(self) -> dict[str, object]:
        child = subprocess.Popen([sys.executable, "-c", _ESCAPE, self.config.how, self.config.pid_file])
        if self.config.how == "double_fork":
            child.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not os.path.getsize(self.config.pid_file):
            time.sleep(0.02)
        time.sleep(self.config.then_sleep)
        return {"job_pid": os.getpid()}


class HogConfig(BaseModel):
    mb: int = Field(default=4096, ge=1, description="how much to allocate, in MiB")


class Hog(Job[HogConfig]):
    """Allocates (and touches) memory a MiB-chunk at a time, far past its declared limit."""

    memory_limit_mb = 512

    def run(self) -> dict[str, int]:
        held = []
        for _ in range(self.config.mb // 16):
            held.append(b"x" * (16 * 1024 * 1024))
        return {"held_mb": 16 * len(held)}


class SnoopConfig(BaseModel):
    agent_pid: int
    other_env: str = Field(description="another package's cached environment")


class Snoop(Job[SnoopConfig]):
    """Tries to read the agent's environment and to plant a .pth file in another package's environment."""

    def run(self) -> dict[str, str]:
        found: dict[str, str] = {"uid": str(os.getuid())}
        try:
            with open(f"/proc/{self.config.agent_pid}/environ", "rb") as environ:
                found["environ"] = f"read {len(environ.read())} bytes"
        except OSError as exc:
            found["environ"] = f"refused: {type(exc).__name__}"
        site = next(iter(sorted(glob.glob(f"{self.config.other_env}/lib/python*/site-packages"))), "")
        try:
            with open(os.path.join(site or self.config.other_env, "planted.pth"), "w") as planted:
                planted.write("import os; os.environ['PLANTED'] = '1'\n")
            found["plant"] = "written"
        except OSError as exc:
            found["plant"] = f"refused: {type(exc).__name__}"
        return found


class CredentialsConfig(BaseModel):
    leak_in: str = Field(default="", description="'' (only print it), 'error', 'progress' or 'output'")


class Credentials(Job[CredentialsConfig]):
    """Gets a variable and a secret of its environment (runly.job.Job.variables/secrets), prints the secret, and
    leaks it wherever the config says: for the tests that it reaches no record, event, answer or shipped log."""

    variables = ("E2E_REGION",)
    secrets = ("E2E_TOKEN",)

    def run(self) -> dict[str, object]:
        import hashlib

        token = os.environ["E2E_TOKEN"]
        print(f"region={os.environ['E2E_REGION']} token={token}", flush=True)
        # The same secret split across two writes: one line in the log, whatever the chunking
        sys.stdout.write(f"again: {token[:5]}")
        sys.stdout.flush()
        sys.stdout.write(f"{token[5:]}\n")
        if self.config.leak_in == "error":
            raise RuntimeError(f"cannot connect with token {token}")
        if self.config.leak_in == "progress":
            self.report_progress(1, 1, message=f"connected with {token}")
            time.sleep(3)  # a heartbeat or two writes it
        found = {
            "region": os.environ["E2E_REGION"],
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "others": sorted(k for k in os.environ if k.startswith("E2E_") and k not in ("E2E_REGION", "E2E_TOKEN")),
        }
        if self.config.leak_in == "output":
            found["token"] = token
        return found


class NeedsAbsent(Job[EchoConfig]):
    """Declares a secret its environment does not have: the run fails before it starts."""

    secrets = ("E2E_ABSENT",)

    def run(self) -> dict[str, object]:
        print("this job should never have started", flush=True)
        return {}


class BigStateConfig(BaseModel):
    kib: int = Field(default=350, ge=1, description="the checkpoint state's size, in KiB")
    ledger: str = Field(description="an append-only file where the first attempt notes its acknowledged checkpoint")


class BigState(Job[BigStateConfig]):
    """Checkpoints a large state, notes its sha256 once the agent acknowledged it, then waits to be killed; an
    attempt resumed from it returns the sha256 of the state it was handed (a test compares the two)."""

    def run(self) -> dict[str, Any]:
        resumed = self.resumed_state
        if resumed is not None:
            data = json.dumps(resumed, ensure_ascii=False, separators=(",", ":")).encode()
            return {"resumed_sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        state = {"attempt": self.context.attempt, "blob": "é" * (self.config.kib * 512)}
        self.checkpoint(state)  # returns once durable
        data = json.dumps(state, ensure_ascii=False, separators=(",", ":")).encode()
        note(
            self.config.ledger, f"{self.context.run_id} ckpt {self.context.attempt} {hashlib.sha256(data).hexdigest()}"
        )
        time.sleep(600)  # until its node is killed
        return {"resumed_sha256": None}
