"""The job host: the entry point of a job process, run by the node agent inside
the package's own environment (``python -m runly.host run``), and by ``runly pack``
to describe a package's jobs (``python -m runly.host describe``).

It talks to the agent over a structured channel (a pipe whose fd is in
RUNLY_CHANNEL_FD), never over stdout, which belongs to the job's own output.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from runly.contracts import (
    AckMessage,
    CheckpointMessage,
    ErrorMessage,
    JobSpec,
    Progress,
    ProgressMessage,
    ResultMessage,
    RunSpec,
)
from runly.job import Job, JobContext

ENTRY_POINT_GROUP = "runly.jobs"
SPEC_ENV = "RUNLY_RUN_SPEC"
CHANNEL_ENV = "RUNLY_CHANNEL_FD"
ACK_ENV = "RUNLY_ACK_FD"

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_HOST_ERROR = 3


def load_job_class(entry_point: str) -> type[Job[Any]]:
    module_name, _, attr = entry_point.partition(":")
    if not module_name or not attr:
        raise ValueError(f"entry point {entry_point!r} is not of the form module:Class")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Job)):
        raise TypeError(f"{entry_point} is not a runly Job class")
    return target


def describe_jobs() -> list[JobSpec]:
    """Every job the installed packages declare in the ``runly.jobs`` entry-point group."""
    specs = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        cls = load_job_class(ep.value)
        specs.append(
            JobSpec(
                name=ep.name,
                entry_point=ep.value,
                config_schema=cls.config_schema(),
                default_config=cls.default_config(),
            )
        )
    return specs


class CheckpointRefused(Exception):
    """The agent could not write the checkpoint: this attempt lost its lease and must stop."""


class Channel:
    """Line-delimited JSON between the job process and its agent.

    ``send`` is fire-and-forget (progress, result); ``checkpoint`` waits for the
    agent's acknowledgement, because a checkpoint only counts once it is durable.
    """

    def __init__(self, stream: IO[str], acks: IO[str] | None = None) -> None:
        self._stream = stream
        self._acks = acks
        self._lock = threading.Lock()
        self._seq = 0

    def send(self, message: BaseModel) -> None:
        line = message.model_dump_json() + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def progress(self, progress: Progress) -> None:
        self.send(ProgressMessage(progress=progress))

    def checkpoint(self, *, watermark: int | None = None, last_item_id: str | None = None, state: Any = None) -> None:
        if self._acks is None:
            raise CheckpointRefused("no agent to write checkpoints to")
        with self._lock:
            self._seq += 1
            seq = self._seq
            message = CheckpointMessage(seq=seq, watermark=watermark, last_item_id=last_item_id, state=state)
            self._stream.write(message.model_dump_json() + "\n")
            self._stream.flush()
            while True:
                line = self._acks.readline()
                if not line:
                    raise CheckpointRefused("the agent closed the channel")
                ack = AckMessage.model_validate_json(line)
                if ack.seq == seq:
                    break
        if not ack.ok:
            raise CheckpointRefused(ack.error or "checkpoint refused")


def run_job(spec: RunSpec, channel: Channel) -> int:
    try:
        cls = load_job_class(spec.entry_point)
        job = cls(cls.parse_config(spec.config), JobContext(run_id=spec.run_id, attempt=spec.attempt))
        output = job.run()
        json.dumps(output)  # the output must be JSON: fail here, in the job, not in the agent
    except BaseException as exc:  # noqa: BLE001 - every failure of user code is reported, then the process ends
        channel.send(ErrorMessage(type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc()))
        traceback.print_exc()
        return EXIT_JOB_FAILED
    channel.send(ResultMessage(output=output))
    return EXIT_OK


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "describe":
        print(json.dumps([spec.model_dump(mode="json") for spec in describe_jobs()]))
        return EXIT_OK
    if command == "run":
        spec = RunSpec.model_validate_json(Path(os.environ[SPEC_ENV]).read_text())
        acks = os.fdopen(int(os.environ[ACK_ENV]), "r", encoding="utf-8") if ACK_ENV in os.environ else None
        with os.fdopen(int(os.environ[CHANNEL_ENV]), "w", encoding="utf-8") as stream:
            return run_job(spec, Channel(stream, acks))
    print("usage: python -m runly.host {run|describe}", file=sys.stderr)
    return EXIT_HOST_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv))
