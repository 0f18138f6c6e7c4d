"""The agent's end of a job process's channel (the job's end is runly.host.Channel).

One reader thread takes the job's messages (one JSON line each) off the channel pipe: it keeps the
newest progress and the result or the error, and answers every checkpoint on the ack pipe once the
handler has made it durable (or refused it). The node agent (node_agent.job_process) and
``runly run-local`` (runly.local_run) both play the agent with it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable

from pydantic import TypeAdapter, ValidationError

from runly.wire import (
    AckMessage,
    ChannelMessage,
    CheckpointMessage,
    ErrorMessage,
    Progress,
    ProgressMessage,
    ResultMessage,
)

log = logging.getLogger(__name__)
_messages: TypeAdapter[ChannelMessage] = TypeAdapter(ChannelMessage)

# Returns None once the checkpoint is durable, else why it was refused. Called on the reader thread.
CheckpointHandler = Callable[[CheckpointMessage], str | None]


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
        self._on_checkpoint = on_checkpoint
        self._on_unreadable = on_unreadable
        self._acks = os.fdopen(ack_fd, "w", encoding="utf-8")
        self._reader = threading.Thread(target=self._read, args=(channel_fd,), daemon=True, name=name)
        self._reader.start()

    def _read(self, channel_fd: int) -> None:
        with os.fdopen(channel_fd, "r", encoding="utf-8") as stream:
            for line in stream:
                try:
                    message = _messages.validate_python(json.loads(line))
                except (ValueError, ValidationError):
                    self._on_unreadable(line)
                    continue
                if isinstance(message, ProgressMessage):
                    self.latest_progress = message.progress
                elif isinstance(message, CheckpointMessage):
                    self._acknowledge(message)
                elif isinstance(message, ResultMessage):
                    self.result = message
                elif isinstance(message, ErrorMessage):
                    self.error = message

    def _acknowledge(self, message: CheckpointMessage) -> None:
        try:
            refused = self._on_checkpoint(message)
        except Exception as exc:  # the job must get an answer, or it would wait forever
            log.exception("%s: checkpoint %d could not be written", self._reader.name, message.seq)
            refused = f"checkpoint failed: {exc}"
        try:
            self._acks.write(AckMessage(seq=message.seq, ok=refused is None, error=refused).model_dump_json() + "\n")
            self._acks.flush()
        except (OSError, ValueError):
            pass  # the job is gone; nothing to answer

    def close(self, timeout: float = 5.0) -> None:
        """After the job process ended: let the reader take what is left on the pipe, close the ack pipe."""
        self._reader.join(timeout=timeout)
        try:
            self._acks.close()
        except OSError:
            pass
