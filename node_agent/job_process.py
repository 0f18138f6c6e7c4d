"""One job, run in its own OS process (and process group) inside its package's environment.

stdout and stderr go to a log file on disk (shipped by the agent); results come
back over a separate pipe as JSON lines, so nothing the job prints can be
mistaken for a result.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from runly.contracts import ChannelMessage, ErrorMessage, ResultMessage, RunSpec

log = logging.getLogger(__name__)
_messages: TypeAdapter[ChannelMessage] = TypeAdapter(ChannelMessage)


@dataclass
class Outcome:
    exit_code: int
    result: ResultMessage | None = None
    error: ErrorMessage | None = None
    killed: bool = False


@dataclass
class JobProcess:
    spec: RunSpec
    python: Path
    work_dir: Path
    log_path: Path
    _process: subprocess.Popen[bytes] | None = None
    _reader: threading.Thread | None = None
    _messages: list[ChannelMessage] = field(default_factory=list)
    _killed: bool = False

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.work_dir / "spec.json"
        spec_path.write_text(self.spec.model_dump_json())
        read_fd, write_fd = os.pipe()
        env = {
            key: value
            for key, value in os.environ.items()
            # The job gets no AWS credentials or agent settings of the node's.
            if not key.startswith(("AWS_", "RUNLY_"))
        }
        env.update({"RUNLY_RUN_SPEC": str(spec_path), "RUNLY_CHANNEL_FD": str(write_fd), "PYTHONUNBUFFERED": "1"})
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                # -I: neither PYTHONPATH nor the working directory can shadow the packaged code; -u: unbuffered logs.
                [str(self.python), "-I", "-u", "-m", "runly.host", "run"],
                cwd=self.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,  # its own process group: signals reach the job's children too
            )
        os.close(write_fd)
        self._reader = threading.Thread(
            target=self._read_channel, args=(read_fd,), daemon=True, name=f"channel-{self.spec.run_id}"
        )
        self._reader.start()
        log.info("job process started", extra={"run_id": self.spec.run_id, "pid": self._process.pid})

    def _read_channel(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8") as stream:
            for line in stream:
                try:
                    self._messages.append(_messages.validate_python(json.loads(line)))
                except (ValueError, ValidationError):
                    log.warning("unreadable message from job process", extra={"run_id": self.spec.run_id})

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def poll(self) -> int | None:
        assert self._process is not None
        return self._process.poll()

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not exited within the grace period."""
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
        assert self._process is not None and self._reader is not None
        code = self._process.wait()
        self._reader.join(timeout=5)
        result = next((m for m in self._messages if isinstance(m, ResultMessage)), None)
        error = next((m for m in self._messages if isinstance(m, ErrorMessage)), None)
        return Outcome(exit_code=code, result=result, error=error, killed=self._killed)
