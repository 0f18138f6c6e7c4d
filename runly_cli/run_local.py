"""Run a job on this machine as a node would: ``python -m runly.runner run`` in a process (and
process group) of its own, talking over the same channel, with this module playing the agent.

``runly run-local`` uses it (with a live view); so do the tests of the host's channel. Unlike a
node it installs nothing: the job project's source and the current environment's packages are used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from node_agent.channel import AgentChannel
from runly import sizes
from runly.limits import LOG_CHUNK_BYTES
from runly.runner import ENTRY_POINT_GROUP
from runly.wire import Checkpoint, CheckpointMessage, ErrorMessage, JobSpec, Progress, ResultMessage, RunSpec


class ProjectError(Exception):
    """The directory is not a job project runly can run or describe."""


@dataclass
class Project:
    """A job project on disk: where its code is and which jobs it declares."""

    root: Path
    name: str
    version: str
    jobs: dict[str, str]  # name -> module:Class

    @property
    def import_root(self) -> Path:
        """``src/`` in a src layout, else the project's root."""
        return self.root / "src" if (self.root / "src").is_dir() else self.root

    @classmethod
    def load(cls, root: Path) -> Project:
        root = Path(root).resolve()
        pyproject = root / "pyproject.toml"
        if not pyproject.is_file():
            raise ProjectError(f"{root} has no pyproject.toml: is it a job project? (`runly init` makes one)")
        try:
            project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        except tomllib.TOMLDecodeError as exc:
            raise ProjectError(f"{pyproject} is not valid TOML: {exc}") from exc
        jobs = dict(project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {}))
        if not jobs:
            raise ProjectError(
                f'{pyproject} declares no jobs: add [project.entry-points."{ENTRY_POINT_GROUP}"] '
                'my-job = "pkg.jobs:MyJob"'
            )
        return cls(root=root, name=str(project.get("name", root.name)), version=str(project.get("version", "0")),
                   jobs=jobs)  # fmt: skip

    def entry_point(self, job: str) -> str:
        try:
            return self.jobs[job]
        except KeyError:
            raise ProjectError(f"{self.name} has no job {job!r}; its jobs: {', '.join(sorted(self.jobs))}") from None

    def env(self) -> dict[str, str]:
        """The environment of a process that imports the project from source."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLY_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.import_root), os.environ.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def describe(self, python: str = sys.executable) -> list[JobSpec]:
        """The jobs with their config schemas, asked of ``runly.runner describe`` in a fresh process."""
        args = [f"{name}={value}" for name, value in sorted(self.jobs.items())]
        result = subprocess.run(
            [python, "-m", "runly.runner", "describe", *args],
            cwd=self.root, env=self.env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ProjectError(f"describing the jobs of {self.root} failed (does the job module import?): {last}")
        return [JobSpec.model_validate(item) for item in json.loads(result.stdout)]


@dataclass
class LocalRun:
    """One job process and the agent's side of its channel.

    ``on_output`` gets each line the job prints (stdout and stderr); ``on_checkpoint`` each
    checkpoint before it is acknowledged (return a reason to refuse it, as on a lost lease).
    """

    spec: RunSpec
    cwd: Path
    env: dict[str, str]
    python: str = sys.executable
    on_output: Callable[[str], None] = lambda line: None
    on_checkpoint: Callable[[Checkpoint], str | None] = lambda checkpoint: None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    exit_code: int | None = None
    _process: subprocess.Popen[bytes] | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _channel: AgentChannel | None = None
    _spec_dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> LocalRun:
        self._spec_dir = tempfile.TemporaryDirectory(prefix="runly-local-")
        spec_path = Path(self._spec_dir.name) / "spec.json"
        spec_path.write_text(self.spec.model_dump_json(), encoding="utf-8")
        channel_read, channel_write = os.pipe()
        ack_read, ack_write = os.pipe()
        env = {
            **self.env,
            "RUNLY_RUN_SPEC": str(spec_path),
            "RUNLY_CHANNEL_FD": str(channel_write),
            "RUNLY_ACK_FD": str(ack_read),
        }
        try:
            self._process = subprocess.Popen(
                [self.python, "-u", "-m", "runly.runner", "run"],
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(channel_write, ack_read),
                start_new_session=True,  # as on a node: Ctrl-C reaches us, and we pass it on as SIGTERM
                preexec_fn=_terminate_with_parent,
            )
        finally:
            os.close(channel_write)
            os.close(ack_read)
        self._channel = AgentChannel(
            channel_read, ack_write, self._checkpoint, on_unreadable=self._unreadable, name="runly-local-channel"
        )
        assert self._process.stdout is not None
        output = threading.Thread(target=self._read_output, args=(self._process.stdout,), daemon=True)
        output.start()
        self._threads.append(output)
        return self

    def _read_output(self, stream: IO[bytes]) -> None:
        # A line at most LOG_CHUNK_BYTES at a time: a job printing one huge line costs the CLI no more than that.
        for raw in iter(lambda: stream.readline(LOG_CHUNK_BYTES), b""):
            self.on_output(raw.decode("utf-8", errors="replace").rstrip("\n"))

    def _checkpoint(self, message: CheckpointMessage) -> str | None:
        checkpoint = Checkpoint(
            watermark=message.watermark,
            last_item_id=message.last_item_id,
            state=message.state,
            attempt=self.spec.attempt,
            written_at=datetime.now(UTC),
        )
        sizes.checkpoint_json(checkpoint)  # as a node would: one over its limit fails the run (the channel says so)
        refused = self.on_checkpoint(checkpoint)
        if refused is None:
            self.checkpoints.append(checkpoint)
        return refused

    def _unreadable(self, line: str) -> None:
        self.on_output(f"[runly] unreadable message from the job process: {line[:200]!r}")

    @property
    def latest_progress(self) -> Progress | None:
        return self._channel.latest_progress if self._channel is not None else None

    @property
    def result(self) -> ResultMessage | None:
        return self._channel.result if self._channel is not None else None

    @property
    def error(self) -> ErrorMessage | None:
        channel = self._channel
        if channel is not None and channel.violation is not None:
            return ErrorMessage(type=channel.violation.reason.value, message=channel.violation.message, traceback="")
        return channel.error if channel is not None else None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def poll(self) -> int | None:
        assert self._process is not None
        return self._process.poll()

    def cancel(self) -> None:
        """What the agent does on cancel: SIGTERM to the job's process group."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        assert self._process is not None
        self.exit_code = self._process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._channel is not None:
            self._channel.close()
        if self._spec_dir is not None:
            self._spec_dir.cleanup()
        return self.exit_code

    @property
    def outcome(self) -> str:
        """succeeded, failed, cancelled, lost or crashed (from the exit code and the last message)."""
        from runly.runner import EXIT_CANCELLED, EXIT_LEASE_LOST, EXIT_OK

        if self._channel is not None and self._channel.violation is not None:
            return "failed"  # the job sent what a node would refuse to store (see violation)
        if self.exit_code == EXIT_OK and self.result is not None:
            return "succeeded"
        if self.exit_code == EXIT_CANCELLED:
            return "cancelled"
        if self.exit_code == EXIT_LEASE_LOST:
            return "lost"
        if self.error is not None:
            return "failed"
        return "crashed"


def _terminate_with_parent() -> None:
    """In the child: SIGTERM (a cancel) when the process that started it dies, so no job outlives its CLI."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the job may outlive a killed CLI


def read_checkpoint(path: Path) -> Checkpoint | None:
    if not path.is_file():
        return None
    return Checkpoint.model_validate_json(path.read_text(encoding="utf-8"))


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically: a crash while writing leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(checkpoint.model_dump_json(), encoding="utf-8")
    os.replace(partial, path)


def local_spec(project: Project, job: str, config: dict[str, Any], checkpoint: Checkpoint | None) -> RunSpec:
    return RunSpec(
        run_id="local",
        attempt=checkpoint.attempt + 1 if checkpoint else 1,
        package=project.name,
        version=project.version,
        job=job,
        entry_point=project.entry_point(job),
        config=config,
        checkpoint=checkpoint,
    )
