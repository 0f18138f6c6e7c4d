"""The job host: the entry point of a job process, run by the node agent inside
the package's own environment (``python -m runly.runner run``), and by ``runly pack``
to describe a package's jobs (``python -m runly.runner describe``); ``serve`` is the warm
host (runly.fork_server) that forks a child per run instead.

It talks to the agent over a structured channel (a pipe whose fd is in
RUNLY_CHANNEL_FD), never over stdout, which belongs to the job's own output.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

from pydantic import BaseModel

from runly import sizes, tracing
from runly.fencing import EXIT_AGENT_GONE, EXIT_LEASE_EXPIRED, AgentLink
from runly.job import CheckpointRefused, Job, JobCancelled, JobContext
from runly.limits import (
    MAX_CHANNEL_MESSAGE_BYTES,
    MAX_CHECKPOINT_BYTES,
    MAX_ERROR_DETAIL_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_ERROR_TYPE_BYTES,
)
from runly.wire import (
    ACK_ENV,
    CHANNEL_ENV,
    SPEC_ENV,
    TRACEPARENT_ENV,
    AckMessage,
    CheckpointMessage,
    ErrorMessage,
    HelloMessage,
    JobSpec,
    Progress,
    ProgressMessage,
    ResultMessage,
    RunSpec,
)

__all__ = [
    "EXIT_AGENT_GONE",
    "EXIT_LEASE_EXPIRED",
    "Channel",
    "CheckpointRefused",
    "describe_jobs",
    "load_job_class",
    "main",
    "run_job",
]

ENTRY_POINT_GROUP = "runly.jobs"

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_HOST_ERROR = 3
EXIT_CANCELLED = 4  # the job stopped on SIGTERM (cancel, drain): an ErrorMessage of type JobCancelled was sent
EXIT_LEASE_LOST = 5  # a checkpoint was refused: another attempt owns the run; nothing else was sent
# The job's class could not be loaded (its module raised or exited at import, or the entry point names nothing):
# an ErrorMessage of type JOB_NOT_LOADED was sent. The package is at fault, so the agent does not retry it.
EXIT_JOB_NOT_LOADED = 6
JOB_NOT_LOADED = "JobNotLoaded"
# 7 (EXIT_LEASE_EXPIRED) and 8 (EXIT_AGENT_GONE): the process fenced itself (runly.fencing); nothing was sent.


class AckSource(Protocol):
    def readline(self) -> str: ...


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


def describe_jobs(declared: dict[str, str] | None = None) -> list[JobSpec]:
    """Every job the installed packages declare in the ``runly.jobs`` entry-point group
    (or the ``declared`` name -> module:Class pairs, for a project that is not installed)."""
    if declared is None:
        declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    specs = []
    for name, value in sorted(declared.items()):
        cls = load_job_class(value)
        specs.append(
            JobSpec(
                name=name,
                entry_point=value,
                config_schema=cls.config_schema(),
                default_config=cls.default_config(),
                memory_limit_mb=cls.memory_limit_mb,
                max_processes=cls.max_processes,
                variables=list(cls.variables),
                secrets=list(cls.secrets),
            )
        )
    return specs


class Channel:
    """Line-delimited JSON between the job process and its agent.

    ``send`` is fire-and-forget (progress, result); ``checkpoint`` waits for the
    agent's acknowledgement, because a checkpoint only counts once it is durable.
    """

    def __init__(self, stream: IO[str], acks: AckSource | None = None) -> None:
        self._stream = stream
        self._acks = acks
        self._lock = threading.Lock()
        self._seq = 0

    @property
    def can_checkpoint(self) -> bool:
        """False when the agent passed no ack pipe: it cannot make checkpoints durable."""
        return self._acks is not None

    def send(self, message: BaseModel) -> None:
        self._write(_line(message))

    def _write(self, line: str) -> None:
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def progress(self, progress: Progress) -> None:
        sizes.progress_json(progress)  # what the agent stores, measured as it will
        self.send(ProgressMessage(progress=progress))

    def checkpoint(self, *, watermark: int | None = None, last_item_id: str | None = None, state: Any = None) -> None:
        if self._acks is None:
            raise CheckpointRefused("no agent to write checkpoints to")
        with self._lock:
            self._seq += 1
            seq = self._seq
            message = CheckpointMessage(seq=seq, watermark=watermark, last_item_id=last_item_id, state=state)
            line = message.model_dump_json()
            # The agent stores these fields with two of its own (attempt, written_at), about as long as kind and seq.
            sizes.check(line, MAX_CHECKPOINT_BYTES, sizes.CheckpointTooLarge)
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
                while True:
                    line = self._acks.readline()
                    if not line:
                        raise CheckpointRefused("the agent closed the channel")
                    ack = AckMessage.model_validate_json(line)
                    if ack.seq == seq:
                        break
            except (OSError, ValueError) as exc:  # a broken pipe or a garbled ack: not durable
                raise CheckpointRefused(f"the channel to the agent failed: {exc}") from exc
        if not ack.ok:
            if ack.reason == sizes.CheckpointTooLarge.reason:  # the agent measured it over the limit
                raise sizes.CheckpointTooLarge(ack.error or "checkpoint too large")
            raise CheckpointRefused(ack.error or "checkpoint refused")


def _line(message: BaseModel) -> str:
    """One message as a channel line; the agent reads no line longer than MAX_CHANNEL_MESSAGE_BYTES."""
    line = message.model_dump_json()
    sizes.check(line, MAX_CHANNEL_MESSAGE_BYTES, sizes.MessageTooLarge)
    return line + "\n"


def error_message(type_name: str, message: str, traceback_text: str) -> ErrorMessage:
    """A failure as reported to the agent, each part cut to its limit (the traceback keeps its start and its end:
    where it was raised, and the exception)."""
    return ErrorMessage(
        type=sizes.truncate_json_string(type_name, MAX_ERROR_TYPE_BYTES),
        message=sizes.truncate_json_string(message, MAX_ERROR_MESSAGE_BYTES),
        traceback=sizes.truncate_json_string(traceback_text, MAX_ERROR_DETAIL_BYTES, both_ends=True),
    )


def configure_logging() -> None:
    """Job logs (the standard ``logging`` module) go to stdout, which the agent spools and ships."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def install_cancel_handler(job: Job[Any]) -> None:
    """SIGTERM (the agent's cancel or drain) becomes the job's cancellation token, not an exit:
    the job finishes what it holds; the agent SIGKILLs it after its grace period otherwise.

    The token is set on a thread of its own, woken through the signal wakeup fd: a Python signal
    handler runs on the main thread between any two bytecodes, possibly while that thread holds
    the very lock (the token's, logging's, threading's) that setting the token needs.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    watched = {signal.SIGTERM.value, signal.SIGINT.value}

    def watch() -> None:
        while data := os.read(read_fd, 64):
            for signum in data:
                if signum in watched and not job.cancellation.cancelled:
                    name = signal.Signals(signum).name
                    logging.getLogger("runly.runner").warning("%s received: cancelling (items in flight finish)", name)
                    job.cancellation.cancel(f"cancelled ({name})")

    threading.Thread(target=watch, name="runly-signals", daemon=True).start()
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in watched:
        signal.signal(signum, _ignore)  # a handler must be set, or the default action ends the process


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def run_job(spec: RunSpec, channel: Channel, *, handle_signals: bool = False, traceparent: str | None = None) -> int:
    """Run one job to its end and report it on the channel; return the process's exit code.

    ``traceparent`` (the agent's span of this run, TRACEPARENT): the job's span continues it, where OpenTelemetry is
    installed (runly.tracing); the job sees it as ``context.traceparent`` either way.

    Exit codes: 0 a ResultMessage was sent; 1 the job failed (ErrorMessage); 4 the job stopped
    on cancellation (ErrorMessage of type JobCancelled); 5 a checkpoint was refused (lease lost);
    6 the job's class could not be loaded (ErrorMessage of type JobNotLoaded). The process may also end
    itself, from another thread, with 7 (its lease ran out unrenewed) or 8 (its agent is gone): runly.fencing.
    """
    try:
        cls = load_job_class(spec.entry_point)
    except BaseException as exc:  # noqa: BLE001 - SystemExit at import too: the package cannot run this job
        message = f"job {spec.job} ({spec.entry_point}) could not be loaded: {type(exc).__name__}: {exc}"
        _send_quietly(channel, ErrorMessage(type=JOB_NOT_LOADED, message=message, traceback=traceback.format_exc()))
        traceback.print_exc()
        return EXIT_JOB_NOT_LOADED
    attributes: dict[str, str | int] = {
        "runly.run_id": spec.run_id,
        "runly.attempt": spec.attempt,
        "runly.job": spec.job,
    }
    with tracing.span(f"job {spec.job}", parent=_trace_parent(traceparent), attributes=attributes) as traced:
        code = _execute(cls, spec, channel, handle_signals=handle_signals, traced=traced)
        if code not in (EXIT_OK, EXIT_JOB_FAILED):  # a failure has its status already, with the exception
            traced.fail(f"the job ended with exit code {code}")
        return code


def _trace_parent(traceparent: str | None) -> tracing.TraceParent | None:
    if traceparent is None:
        return None
    try:
        return tracing.TraceParent.parse(traceparent)
    except tracing.InvalidTraceParent as exc:
        logging.getLogger("runly.runner").warning("%s ignored (%s): a new trace", TRACEPARENT_ENV, exc)
        return None


def _execute(
    cls: type[Job[Any]], spec: RunSpec, channel: Channel, *, handle_signals: bool, traced: tracing.Traced
) -> int:
    lease_lost = False
    try:
        context = JobContext(
            run_id=spec.run_id, attempt=spec.attempt, checkpoint=spec.checkpoint,
            traceparent=str(traced.traceparent) if traced.traceparent else None,
        )  # fmt: skip
        job = cls(cls.parse_config(spec.config), context)
        if handle_signals:
            install_cancel_handler(job)
        job.bind(channel)
        output = job.execute()
    except CheckpointRefused:
        lease_lost = True
    except JobCancelled as exc:
        _send_quietly(channel, error_message("JobCancelled", str(exc) or "cancelled", ""))
        print(f"job cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except BaseException as exc:  # noqa: BLE001 - every failure of user code is reported, then the process ends
        traced.fail(f"{type(exc).__name__}: {exc}", exc)
        _send_quietly(channel, error_message(type(exc).__name__, str(exc), traceback.format_exc()))
        traceback.print_exc()
        return EXIT_JOB_FAILED
    if lease_lost:
        print("checkpoint refused: this attempt lost its lease; stopping", file=sys.stderr)
        return EXIT_LEASE_LOST
    channel.send(ResultMessage(output=output))
    return EXIT_OK


def _send_quietly(channel: Channel, message: BaseModel) -> None:
    try:
        channel.send(message)
    except (OSError, ValueError):
        pass  # the agent is gone: the exit code still tells


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "describe":
        # Optional NAME=module:Class arguments: describe those (a project that is not installed).
        declared = dict(arg.split("=", 1) for arg in argv[2:]) if len(argv) > 2 else None
        # stdout carries the JSON alone: what the job modules print while they import goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            specs = describe_jobs(declared)
        print(json.dumps([spec.model_dump(mode="json") for spec in specs]))
        return EXIT_OK
    if command == "run":
        return run_main()
    if command == "serve" and len(argv) == 3:
        from runly.fork_server import serve

        return serve(argv[2])
    print("usage: python -m runly.runner {run|serve SOCKET|describe [NAME=module:Class ...]}", file=sys.stderr)
    return EXIT_HOST_ERROR


def run_main() -> int:
    """The run named by the environment (RUNLY_RUN_SPEC, RUNLY_CHANNEL_FD, RUNLY_ACK_FD): in a new
    interpreter (``run``) or in a child forked by a warm host (``serve``)."""
    configure_logging()
    _not_dumpable()
    spec = RunSpec.model_validate_json(Path(os.environ[SPEC_ENV]).read_text())
    # From here on, the process ends itself when its agent goes or its lease runs out (runly.fencing).
    link = AgentLink(os.fdopen(int(os.environ[ACK_ENV]), "rb"), spec.lease) if ACK_ENV in os.environ else None
    stream = os.fdopen(int(os.environ[CHANNEL_ENV]), "w", encoding="utf-8")
    traceparent = os.environ.get(TRACEPARENT_ENV)
    # Where OpenTelemetry is installed and OTEL_* asks for export (the agent's, inherited): the job's spans, as the
    # package's service. Flushed below, also before a lease-lost exit; a self-fenced exit (runly.fencing) drops them.
    flush_spans = tracing.configure(spec.package) if traceparent is not None else None
    try:
        channel = Channel(stream, link)
        if link is not None and spec.lease is not None:
            channel.send(HelloMessage())  # before any job code: every renewal from now on reaches the watchdog
        code = run_job(spec, channel, handle_signals=True, traceparent=traceparent)
    finally:
        if flush_spans is not None:
            flush_spans()
        # The agent may be gone, leaving a line a failed send kept in the buffer: closing must not raise over the
        # exit code (it would turn "lease lost" into a crash).
        try:
            stream.close()
        except OSError:
            pass
    if code == EXIT_LEASE_LOST:
        # Stop at once: threads still processing items must not hold the process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _not_dumpable() -> None:
    """Other jobs of the node's job user may not ptrace this one or read its memory (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
