"""One job, run in its own OS process (and process group) inside its package's environment.

stdout and stderr go to a log file on disk (the agent ships it in chunks); the
job talks to the agent over a separate pair of pipes, so nothing the job prints
can be mistaken for a message:

- job -> agent (RUNLY_CHANNEL_FD): progress, checkpoints, the result or the error, one JSON line each;
- agent -> job (RUNLY_ACK_FD): one AckMessage per checkpoint, once it is durable (or refused).

The process is a new interpreter (``python -I -u -m runly.host run``) or, when the package has a
warm host (node_agent.warm_hosts), a child that host forks; either way the same environment,
descriptors, session and log file, and the agent watches and signals it alike.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.warm_hosts import HostedProcess, WarmHost, WarmHostError
from runly.agent_channel import AgentChannel, CheckpointHandler, Violation
from runly.wire import ErrorMessage, LeaseMessage, Progress, ResultMessage, RunSpec

log = logging.getLogger(__name__)


def job_environment() -> dict[str, str]:
    """The agent's environment minus its own: a job gets no AWS credentials or agent settings of the node's."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "RUNLY_"))}


@dataclass
class Outcome:
    exit_code: int
    result: ResultMessage | None = None
    error: ErrorMessage | None = None
    killed: bool = False
    violation: Violation | None = None  # the job sent what cannot be stored: its run fails with this reason


@dataclass
class JobProcess:
    spec: RunSpec
    python: Path
    work_dir: Path
    log_path: Path
    on_checkpoint: CheckpointHandler = field(default=lambda message: "no checkpoint handler")
    warm_host: WarmHost | None = None  # fork the run from this host; None (or a failing host): a new interpreter
    on_warm_host_failure: Callable[[WarmHost], None] | None = None
    _process: subprocess.Popen[bytes] | HostedProcess | None = None
    _channel: AgentChannel | None = None
    _killed: bool = False

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.work_dir / "spec.json"
        spec_path.write_text(self.spec.model_dump_json())
        channel_read, channel_write = os.pipe()
        ack_read, ack_write = os.pipe()
        env = job_environment()
        env["RUNLY_RUN_SPEC"] = str(spec_path)
        try:
            with open(self.log_path, "ab") as log_file:
                if self.warm_host is not None:
                    self._process = self._spawn_warm(self.warm_host, env, log_file.fileno(), channel_write, ack_read)
                if self._process is None:
                    env.update({"RUNLY_CHANNEL_FD": str(channel_write), "RUNLY_ACK_FD": str(ack_read)})
                    self._process = subprocess.Popen(
                        # -I: neither PYTHONPATH nor the working directory can shadow the packaged code; -u: unbuffered.
                        [str(self.python), "-I", "-u", "-m", "runly.host", "run"],
                        cwd=self.work_dir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        pass_fds=(channel_write, ack_read),
                        start_new_session=True,  # its own process group: signals reach the job's children too
                    )
        finally:
            os.close(channel_write)
            os.close(ack_read)
        self._channel = AgentChannel(
            channel_read,
            ack_write,
            self.on_checkpoint,
            on_unreadable=self._unreadable,
            name=f"channel-{self.spec.run_id}",
        )
        how = "warm host" if isinstance(self._process, HostedProcess) else "new interpreter"
        log.info("run %s attempt %d: job process %d started (%s)", self.spec.run_id, self.spec.attempt, self.pid, how)

    def _spawn_warm(
        self, host: WarmHost, env: dict[str, str], log_fd: int, channel_fd: int, ack_fd: int
    ) -> HostedProcess | None:
        try:
            return host.spawn(cwd=self.work_dir, env=env, log_fd=log_fd, channel_fd=channel_fd, ack_fd=ack_fd)
        except WarmHostError as exc:
            log.warning("run %s: %s; starting a new interpreter instead", self.spec.run_id, exc)
            if self.on_warm_host_failure is not None:
                self.on_warm_host_failure(host)
            return None

    def _unreadable(self, line: str) -> None:
        log.warning("run %s: unreadable message from the job process", self.spec.run_id)

    def send_lease(self, lease: LeaseMessage) -> None:
        """A renewed lease, for the job's watchdog (sent once the job said it hears them: runly.fencing)."""
        if self._channel is not None:
            self._channel.send_lease(lease)

    @property
    def latest_progress(self) -> Progress | None:
        """The job's newest progress (only the newest is kept: the heartbeat writes it)."""
        return self._channel.latest_progress if self._channel is not None else None

    @property
    def violation(self) -> Violation | None:
        """Set once the job sent a message over its limit (or not JSON): the supervisor stops it."""
        return self._channel.violation if self._channel is not None else None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def poll(self) -> int | None:
        assert self._process is not None
        return self._process.poll()

    def wait(self, timeout: float) -> int | None:
        """The exit code once the process has ended, or None after ``timeout`` seconds."""
        assert self._process is not None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM the process group (the SDK turns it into cooperative cancellation), then SIGKILL
        it if it has not exited within the grace period."""
        self._killed = True
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.poll() is None:
            self.signal(signal.SIGKILL)

    def kill(self) -> None:
        self._killed = True
        self.signal(signal.SIGKILL)

    def outcome(self) -> Outcome:
        assert self._process is not None and self._channel is not None
        code = self._process.wait()
        self._channel.close()
        # Children the job left behind die with it: the group is the job's.
        self.signal(signal.SIGKILL)
        channel = self._channel
        return Outcome(
            exit_code=code, result=channel.result, error=channel.error, killed=self._killed, violation=channel.violation
        )
