"""One job, run in its own OS process (and process group) inside its package's environment.

stdout and stderr go to a log file on disk (the agent ships it in chunks); the
job talks to the agent over a separate pair of pipes, so nothing the job prints
can be mistaken for a message:

- job -> agent (RUNLY_CHANNEL_FD): progress, checkpoints, the result or the error, one JSON line each;
- agent -> job (RUNLY_ACK_FD): one AckMessage per checkpoint, once it is durable (or refused).

The process is a new interpreter (``python -I -u -m runly.runner run``) or, when the package has a
warm host (node_agent.fork_servers), a child that host forks; either way the same environment,
descriptors, session and log file, and the agent watches and signals it alike.

This is the one way a job process is started: on a node by the supervisor, and on a developer's machine by
``runly run-local`` (runly_cli.run_local), which imports the project from source instead of a package's
environment (``env`` with its PYTHONPATH, ``isolated_interpreter=False``) and follows the log file as it grows.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from node_agent import process_tree
from node_agent.channel import AgentChannel, CheckpointHandler, Violation
from node_agent.fork_servers import CAN_PASS_VALUES, HostedProcess, WarmHost, WarmHostError
from node_agent.isolation import Isolation
from node_agent.process_tree import RunLimits, RunTree
from runly.wire import (
    ACK_ENV,
    CHANNEL_ENV,
    SPEC_ENV,
    TRACEPARENT_ENV,
    ErrorMessage,
    LeaseMessage,
    Progress,
    ResultMessage,
    RunSpec,
)

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
    memory_limit: bool = False  # the run went over its memory limit (killed by the kernel or a MemoryError)
    stragglers: int = 0  # processes of the run still there when its job process ended (killed then)


@dataclass
class JobProcess:
    spec: RunSpec
    python: Path
    work_dir: Path
    log_path: Path
    on_checkpoint: CheckpointHandler = field(default=lambda message: "no checkpoint handler")
    warm_host: WarmHost | None = None  # fork the run from this host; None (or a failing host): a new interpreter
    on_warm_host_failure: Callable[[WarmHost], None] | None = None
    isolation: Isolation | None = None  # None: as the agent's user, no limits, the process group alone
    limits: RunLimits | None = None  # None: the node's (isolation's)
    env: dict[str, str] | None = None  # the job's environment; None: the agent's without its own (job_environment)
    isolated_interpreter: bool = True  # python -I: a package's environment; False: a project imported from source
    spec_dir: Path | None = None  # where the RunSpec file goes; None: the work directory
    parent_death_signal: int | None = None  # without isolation: this signal when the starting thread ends
    # The job's declared variables and secrets (node_agent.job_values): in this process's environment and nowhere
    # else; a warm host's child gets them in its spawn request, the host itself never.
    values: Mapping[str, str] = field(default_factory=dict)
    # The trace context the job continues (TRACEPARENT): the agent's span of this job run. None: the job gets none,
    # not even one the agent itself was started with.
    traceparent: str | None = None
    _process: subprocess.Popen[bytes] | HostedProcess | None = None
    _channel: AgentChannel | None = None
    _killed: bool = False
    _tree: RunTree | None = None

    def start(self) -> None:
        name = f"{self.spec.run_id}-{self.spec.attempt:04d}"
        isolation = self.isolation
        if isolation is not None:
            # The job's working directory is its own, outside the agent's private directories.
            self.work_dir = isolation.job_dir(name)
            self.limits = self.limits or isolation.node_limits
            self._tree = isolation.tree(name, self.limits)
        else:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = (self.spec_dir or self.work_dir) / "spec.json"
        spec_path.write_text(self.spec.model_dump_json())
        if isolation is not None:
            isolation.user.give(spec_path)
        channel_read, channel_write = os.pipe()
        ack_read, ack_write = os.pipe()
        env = dict(self.env) if self.env is not None else job_environment()
        env[SPEC_ENV] = str(spec_path)
        env.pop(TRACEPARENT_ENV, None)
        if self.traceparent is not None:
            env[TRACEPARENT_ENV] = self.traceparent
            # The job's spans are its package's service, not the agent's (whose OTEL_SERVICE_NAME it inherits).
            env["OTEL_SERVICE_NAME"] = self.spec.package
        user = isolation.user if isolation is not None else None
        if self._tree is not None and self._tree.uses_rlimits:
            # Under RLIMIT_AS each thread's malloc arena reserves 64 MiB of address space: keep them few.
            env.setdefault("MALLOC_ARENA_MAX", "2")
        try:
            with open(self.log_path, "ab") as log_file, process_tree.spawning():
                if self.warm_host is not None and (CAN_PASS_VALUES or not self.values):
                    self._process = self._spawn_warm(self.warm_host, env, log_file.fileno(), channel_write, ack_read)
                if self._process is None:
                    env.update(self.values)  # names never start RUNLY_ (runly.limits.value_name_problem)
                    env.update({CHANNEL_ENV: str(channel_write), ACK_ENV: str(ack_read)})
                    # -I: neither PYTHONPATH nor the working directory can shadow the packaged code; -u: unbuffered.
                    flags = ["-I", "-u"] if self.isolated_interpreter else ["-u"]
                    self._process = subprocess.Popen(
                        [str(self.python), *flags, "-m", "runly.runner", "run"],
                        cwd=self.work_dir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        pass_fds=(channel_write, ack_read),
                        start_new_session=True,  # its own process group: signals reach the job's children too
                        preexec_fn=self._child_setup(),
                        user=user.popen_uid if user else None,
                        group=user.popen_gid if user else None,
                        extra_groups=user.popen_groups if user else None,
                    )
                process_tree.add_root(self._process.pid)
                if self._tree is not None:
                    self._tree.adopt(self._process.pid)
        except BaseException:
            if self._tree is not None:  # nothing started, or what started is the run's: end it, drop its record
                self._tree.end()
            raise
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

    def _child_setup(self) -> Callable[[], None] | None:
        """What the job process does before exec (process_tree.child_setup); without isolation, at most the
        parent-death signal."""
        if self.isolation is None or self._tree is None:
            if self.parent_death_signal is None:
                return None
            signum = self.parent_death_signal

            def setup() -> None:
                process_tree.prctl(process_tree.PR_SET_PDEATHSIG, signum)  # async-signal-safe: one system call

            return setup
        return process_tree.child_setup(self.limits, rlimits=self._tree.uses_rlimits)

    def _spawn_warm(
        self, host: WarmHost, env: dict[str, str], log_fd: int, channel_fd: int, ack_fd: int
    ) -> HostedProcess | None:
        try:
            hosted = host.spawn(
                cwd=self.work_dir, env=env, log_fd=log_fd, channel_fd=channel_fd, ack_fd=ack_fd, limits=self.limits,
                values=self.values,
            )  # fmt: skip
            if self.limits is not None and self._tree is not None and self._tree.uses_rlimits:
                # The host's child sets these itself before job code; the agent makes sure, from outside.
                process_tree.apply_rlimits(hosted.pid, self.limits)
            return hosted
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
    def channel(self) -> AgentChannel | None:
        """The agent's side of the job's channel, once started."""
        return self._channel

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
            if self._tree is not None:
                self._tree.note()  # the run's processes as they are now: the sweep at its end finds every one
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
        # Children the job left behind die with it: its process group, and every process of its tree (also those
        # that left the group or the session).
        self.signal(signal.SIGKILL)
        channel = self._channel
        memory_limit = (self._tree is not None and self._tree.oom_killed()) or (
            self.limits is not None and channel.error is not None and channel.error.type == "MemoryError"
        )
        stragglers = self.end_tree()
        return Outcome(
            exit_code=code, result=channel.result, error=channel.error, killed=self._killed,
            violation=channel.violation, memory_limit=memory_limit, stragglers=stragglers,
        )  # fmt: skip

    def end_tree(self) -> int:
        """SIGKILL whatever of the run is left (see node_agent.process_tree); return how many processes that was."""
        stragglers = 0
        if self._tree is not None:
            stragglers = self._tree.end()
            if stragglers:
                log.info("run %s: killed %d process(es) the job left behind", self.spec.run_id, stragglers)
        if self._process is not None:
            process_tree.remove_root(self._process.pid)
        if self.isolation is not None:
            if self.isolation.user.separate:
                parents = [os.getpid()] + ([self.warm_host.process.pid] if self.warm_host is not None else [])
                process_tree.sweep_strays(self.isolation.user.uid, parents)
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return stragglers
