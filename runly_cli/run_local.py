"""Run a job on this machine as a node would: started by the node's own spawn path (node_agent.job_process), a
process (and process group) of its own talking over the same channel, with this module playing the agent.

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
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node_agent.channel import AgentChannel, Violation
from node_agent.job_process import JobProcess, Outcome
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
    """One job process, started as a node starts it (node_agent.job_process: the one spawn path), with the project
    imported from source.

    ``on_output`` gets each line the job prints (stdout and stderr, followed in the log file as on a node);
    ``on_checkpoint`` each checkpoint before it is acknowledged (return a reason to refuse it, as on a lost lease).
    """

    spec: RunSpec
    cwd: Path
    env: dict[str, str]
    python: str = sys.executable
    on_output: Callable[[str], None] = lambda line: None
    on_checkpoint: Callable[[Checkpoint], str | None] = lambda checkpoint: None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    exit_code: int | None = None
    _job: JobProcess | None = None
    _outcome: Outcome | None = None
    _tail: threading.Thread | None = None
    _ended: threading.Event = field(default_factory=threading.Event)
    _scratch: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> LocalRun:
        self._scratch = tempfile.TemporaryDirectory(prefix="runly-local-")
        scratch = Path(self._scratch.name)
        log_path = scratch / "output.log"
        log_path.touch()
        self._job = JobProcess(
            spec=self.spec,
            python=Path(self.python),
            work_dir=Path(self.cwd),
            log_path=log_path,
            on_checkpoint=self._checkpoint,
            env=self.env,
            isolated_interpreter=False,  # the project comes from source, through the env's PYTHONPATH
            spec_dir=scratch,
            parent_death_signal=signal.SIGTERM,  # a cancel when the CLI dies: no job outlives it
        )
        self._job.start()
        self._tail = threading.Thread(target=self._follow, args=(log_path,), daemon=True, name="runly-local-output")
        self._tail.start()
        return self

    def _follow(self, log_path: Path) -> None:
        # A line at most LOG_CHUNK_BYTES at a time: a job printing one huge line costs the CLI no more than that.
        with open(log_path, "rb") as stream:
            pending = b""
            while True:
                chunk = stream.readline(LOG_CHUNK_BYTES)
                if chunk:
                    pending += chunk
                    if pending.endswith(b"\n") or len(pending) >= LOG_CHUNK_BYTES:
                        self.on_output(pending.decode("utf-8", errors="replace").rstrip("\n"))
                        pending = b""
                    continue
                if self._ended.is_set():
                    break
                time.sleep(0.02)
            if pending:
                self.on_output(pending.decode("utf-8", errors="replace").rstrip("\n"))

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

    def _require(self) -> JobProcess:
        assert self._job is not None, "not started"
        return self._job

    @property
    def latest_progress(self) -> Progress | None:
        return self._job.latest_progress if self._job is not None else None

    @property
    def channel(self) -> AgentChannel | None:
        """The agent's side of the job's channel (what the CLI plays), once started."""
        return self._job.channel if self._job is not None else None

    @property
    def violation(self) -> Violation | None:
        """Set once the job sent what a node would refuse to store: a node stops the job then (so may the caller)."""
        return self._job.violation if self._job is not None else None

    @property
    def result(self) -> ResultMessage | None:
        return self._outcome.result if self._outcome is not None else None

    @property
    def error(self) -> ErrorMessage | None:
        outcome = self._outcome
        if outcome is not None and outcome.violation is not None:
            return ErrorMessage(type=outcome.violation.reason.value, message=outcome.violation.message, traceback="")
        return outcome.error if outcome is not None else None

    @property
    def pid(self) -> int:
        return self._require().pid

    def poll(self) -> int | None:
        return self._require().poll()

    def cancel(self) -> None:
        """What the agent does on cancel: SIGTERM to the job's process group."""
        self._require().signal(signal.SIGTERM)

    def kill(self) -> None:
        self._require().signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        job = self._require()
        if self._outcome is None:
            if timeout is not None and job.wait(timeout) is None:
                raise subprocess.TimeoutExpired(f"run {self.spec.run_id}", timeout)
            self._outcome = job.outcome()
            self._ended.set()
            if self._tail is not None:
                self._tail.join(timeout=5)
            if self._scratch is not None:
                self._scratch.cleanup()
        self.exit_code = self._outcome.exit_code
        return self.exit_code

    @property
    def outcome(self) -> str:
        """succeeded, failed, cancelled, lost or crashed (from the exit code and the last message)."""
        from runly.runner import EXIT_CANCELLED, EXIT_LEASE_LOST, EXIT_OK

        if self._outcome is not None and self._outcome.violation is not None:
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
