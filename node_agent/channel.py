"""The agent's end of a job process's channel (the job's end is runly.runner.Channel).

One reader thread takes the job's messages (one JSON line each) off the channel pipe: it keeps the
newest progress and the result or the error, and answers every checkpoint on the ack pipe once the
handler has made it durable (or refused it). The node agent (node_agent.job_process) and
``runly run-local`` (runly_cli.run_local) both play the agent with it.

A job process is hostile: it may write anything to its channel, bypassing the SDK. The reader holds at most
MAX_CHANNEL_MESSAGE_BYTES of a line, and measures each value as it will be stored (runly.sizes); a value over its
limit, or one JSON cannot carry, is a ``violation``: the agent ends the job and fails the run with its reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from runly import sizes
from runly.limits import MAX_CHANNEL_MESSAGE_BYTES
from runly.wire import (
    AckMessage,
    ChannelMessage,
    CheckpointMessage,
    ErrorMessage,
    HelloMessage,
    LeaseMessage,
    Progress,
    ProgressMessage,
    ResultMessage,
)
from runly_core.contracts import FailureReason

log = logging.getLogger(__name__)
_messages: TypeAdapter[ChannelMessage] = TypeAdapter(ChannelMessage)

# Returns None once the checkpoint is durable, else why it was refused. Called on the reader thread; raises
# runly.sizes.ValueTooLarge or NotJson for a checkpoint that cannot be stored (the run fails for it).
CheckpointHandler = Callable[[CheckpointMessage], str | None]

READ_BYTES = 64 * 1024
SEND_TIMEOUT_SECONDS = 1.0  # how long a message to the job waits for room in its pipe (a job that reads never waits)
HEAD_BYTES = 256  # what is kept of a line over the limit: enough to tell its kind (and a checkpoint's seq)
_KIND = re.compile(rb'^\s*\{\s*"kind"\s*:\s*"(\w{1,20})"')
_SEQ = re.compile(rb'"seq"\s*:\s*(\d{1,18})\b')
_OVERSIZED_REASONS = {
    b"result": FailureReason.OUTPUT_TOO_LARGE,
    b"checkpoint": FailureReason.CHECKPOINT_TOO_LARGE,
    b"progress": FailureReason.PROGRESS_TOO_LARGE,
}


@dataclass(frozen=True)
class Violation:
    """Why the job must be stopped and its run failed (not retried): a message the agent cannot store."""

    reason: FailureReason
    message: str


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFinite(name)


def bounded_lines(fd: int, limit: int) -> Iterator[tuple[bytes, bool]]:
    """The lines read from ``fd`` as (line, False), without their newline; a line longer than ``limit`` bytes as
    (its first HEAD_BYTES, True), the rest of it dropped as it arrives. Holds at most ``limit`` + READ_BYTES."""
    pending = bytearray()
    skipping = False
    while chunk := os.read(fd, READ_BYTES):
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            end = len(chunk) if newline < 0 else newline
            if not skipping:
                if len(pending) + end - start > limit:
                    yield (bytes(pending[:HEAD_BYTES]) + chunk[start : start + HEAD_BYTES])[:HEAD_BYTES], True
                    pending.clear()
                    skipping = True
                else:
                    pending += chunk[start:end]
            if newline < 0:
                break
            if not skipping:
                yield bytes(pending), False
            pending.clear()
            skipping = False
            start = newline + 1
    if pending and not skipping:
        yield bytes(pending), False


class AgentChannel:
    def __init__(
        self,
        channel_fd: int,
        ack_fd: int,
        on_checkpoint: CheckpointHandler,
        *,
        on_unreadable: Callable[[str], None],
        name: str,
    ) -> None:
        self.latest_progress: Progress | None = None  # only the newest is kept
        self.result: ResultMessage | None = None
        self.error: ErrorMessage | None = None
        self.violation: Violation | None = None  # the first; once set, nothing more the job sends counts
        self._on_checkpoint = on_checkpoint
        self._on_unreadable = on_unreadable
        # Non-blocking: a job that stops reading its pipe must not block the heartbeat thread that sends leases.
        os.set_blocking(ack_fd, False)
        self._ack_fd = ack_fd
        self._acks_lock = threading.Lock()  # acks (the reader thread) and leases (the heartbeat's) share the pipe
        self.hears_leases = False  # the job said hello: its SDK fences itself on the leases we send
        self._lease: LeaseMessage | None = None
        self._name = name
        self._reader = threading.Thread(target=self._read, args=(channel_fd,), daemon=True, name=name)
        self._reader.start()

    def _read(self, channel_fd: int) -> None:
        try:
            for line, oversized in bounded_lines(channel_fd, MAX_CHANNEL_MESSAGE_BYTES):
                if oversized:
                    self._oversized(line)
                elif self.violation is None:  # after one, the rest is only drained (the job is being stopped)
                    self._take(line)
        finally:
            os.close(channel_fd)

    def _oversized(self, head: bytes) -> None:
        kind = _KIND.match(head)
        reason = _OVERSIZED_REASONS.get(kind.group(1) if kind else b"", FailureReason.MESSAGE_TOO_LARGE)
        what = kind.group(1).decode() if kind else "message"
        self._violate(reason, f"the job sent a {what} line over {MAX_CHANNEL_MESSAGE_BYTES} bytes, the channel's limit")
        seq = _SEQ.search(head)
        if reason is FailureReason.CHECKPOINT_TOO_LARGE and seq is not None:
            self._answer(int(seq.group(1)), self.violation.message if self.violation else "", reason)

    def _take(self, line: bytes) -> None:
        try:
            message = _messages.validate_python(json.loads(line, parse_constant=_reject_constant))
        except _NonFinite:
            kind = _KIND.match(line)
            what = kind.group(1).decode() if kind else "message"
            self._violate(
                FailureReason.USER_ERROR, f"the job sent a {what} holding NaN or Infinity, which JSON cannot represent"
            )
            return
        except (ValueError, ValidationError, RecursionError):  # not JSON, not UTF-8, too deep, not a message
            self._on_unreadable(line[:HEAD_BYTES].decode("utf-8", "replace"))
            return
        try:
            if isinstance(message, ProgressMessage):
                sizes.progress_json(message.progress)  # the heartbeat writes it: it must fit
                self.latest_progress = message.progress
            elif isinstance(message, CheckpointMessage):
                self._acknowledge(message)
            elif isinstance(message, ResultMessage):
                sizes.output_json(message.output)
                self.result = message
            elif isinstance(message, ErrorMessage):
                self.error = message
            elif isinstance(message, HelloMessage):
                with self._acks_lock:
                    self.hears_leases = True
                    lease = self._lease
                if lease is not None:
                    self.send_lease(lease)  # a renewal may have come before the job could hear it
        except sizes.ValueTooLarge as exc:
            self._violate(FailureReason(exc.reason), str(exc))
        except sizes.NotJson as exc:
            self._violate(FailureReason.USER_ERROR, str(exc))

    def _violate(self, reason: FailureReason, message: str) -> None:
        if self.violation is None:
            log.warning("%s: %s (%s): the job is stopped", self._reader.name, message, reason)
            self.violation = Violation(reason, message)

    def _acknowledge(self, message: CheckpointMessage) -> None:
        reason: FailureReason | None = None
        try:
            refused = self._on_checkpoint(message)
        except sizes.ValueTooLarge as exc:
            refused, reason = str(exc), FailureReason(exc.reason)
        except sizes.NotJson as exc:
            refused, reason = str(exc), FailureReason.USER_ERROR
        except Exception as exc:  # the job must get an answer, or it would wait forever
            log.exception("%s: checkpoint %d could not be written", self._reader.name, message.seq)
            refused = f"checkpoint failed: {exc}"
        self._answer(message.seq, refused, reason)
        if reason is not None and refused is not None:
            self._violate(reason, refused)

    def _answer(self, seq: int, refused: str | None, reason: FailureReason | None = None) -> None:
        ack = AckMessage(seq=seq, ok=refused is None, error=refused, reason=reason.value if reason else None)
        self._send(ack.model_dump_json())

    def send_lease(self, lease: LeaseMessage) -> None:
        """Tell the job its lease was renewed (only once durable). Kept, and sent only to a job that said hello: an
        SDK older than the lease messages would take one for a garbled acknowledgement."""
        with self._acks_lock:
            if self._lease is None or lease.deadline_monotonic >= self._lease.deadline_monotonic:
                self._lease = lease
            latest, hears = self._lease, self.hears_leases
        if hears:
            self._send(latest.model_dump_json())

    def _send(self, line: str) -> None:
        data = (line + "\n").encode()
        with self._acks_lock:
            deadline = time.monotonic() + SEND_TIMEOUT_SECONDS
            try:
                while data:
                    try:
                        data = data[os.write(self._ack_fd, data) :]
                    except BlockingIOError:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            log.warning("%s: the job does not read its pipe; a message to it is dropped", self._name)
                            return
                        select.select([], [self._ack_fd], [], left)
            except OSError:
                pass  # the job is gone (or the pipe closed): nothing to answer

    def hang_up(self) -> None:
        """Close the pipe to the job now: the job ends itself at once, as when its agent dies (runly.fencing)."""
        self._close_acks()

    def close(self, timeout: float = 5.0) -> None:
        """After the job process ended: let the reader take what is left on the pipe, close the ack pipe."""
        self._reader.join(timeout=timeout)
        self._close_acks()

    def _close_acks(self) -> None:
        with self._acks_lock:
            if self._ack_fd >= 0:
                try:
                    os.close(self._ack_fd)
                except OSError:
                    pass
                self._ack_fd = -1
