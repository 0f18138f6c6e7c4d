"""SQS access for the API: dispatching runs to an environment's queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from runly_core import backoff
from runly_core.contracts import RunMessage
from runly_core.records import run_environment
from runly_core.resources import SQS_MAX_DELAY_SECONDS

# SendMessageBatch takes at most 10 entries, and SQS bills a batch as one request.
MAX_BATCH_ENTRIES = 10
# Calls per group of entries, the first included; what SQS refuses is retried with capped backoff and jitter.
BATCH_SEND_ATTEMPTS = 3
RETRY_BASE_SECONDS = 0.05
RETRY_CAP_SECONDS = 1.0


class RunQueue:
    def __init__(
        self, queue_urls: dict[str, str], *, client: Any = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._urls = queue_urls
        self._sqs = client or boto3.client("sqs")
        self._sleep = sleep

    @property
    def environments(self) -> tuple[str, ...]:
        """The deployment's environments: one queue each (``cdk.json``), in a stable order."""
        return tuple(sorted(self._urls))

    def has_environment(self, environment: str) -> bool:
        return environment in self._urls

    def dispatch(self, message: RunMessage, *, delay_seconds: int = 0) -> str:
        """Send a run's message to its environment's queue, hidden for ``delay_seconds`` (SQS's DelaySeconds, at
        most 15 minutes); returns its message id."""
        if not 0 <= delay_seconds <= SQS_MAX_DELAY_SECONDS:
            raise ValueError(f"an SQS delay is 0 to {SQS_MAX_DELAY_SECONDS} seconds, not {delay_seconds}")
        response = self._sqs.send_message(
            QueueUrl=self._urls[message.environment],
            MessageBody=message.model_dump_json(),
            **({"DelaySeconds": delay_seconds} if delay_seconds else {}),
        )
        return str(response["MessageId"])

    def dispatch_run(self, run_id: str, *, delay_seconds: int = 0) -> str:
        """``dispatch`` of a run's message to the queue of the environment its id names (so its table key does):
        never one named by an attribute or an index key a node can write (the reaper's rule, docs/store.md)."""
        return self.dispatch(
            RunMessage(run_id=run_id, environment=run_environment(run_id)), delay_seconds=delay_seconds
        )

    def dispatch_many(self, messages: Sequence[RunMessage], delays: Sequence[int] = ()) -> set[int]:
        """Send the messages, 10 per call per environment's queue, retrying what SQS refused (entries or a whole
        call); returns the positions (in ``messages``) of those still unsent after every attempt. ``delays``: each
        message's DelaySeconds, by position (none: 0)."""
        unsent: set[int] = set()
        by_environment: dict[str, list[int]] = {}
        for position, message in enumerate(messages):
            by_environment.setdefault(message.environment, []).append(position)
        for environment, positions in by_environment.items():
            for start in range(0, len(positions), MAX_BATCH_ENTRIES):
                group = positions[start : start + MAX_BATCH_ENTRIES]
                unsent |= self._send_group(self._urls[environment], group, messages, delays)
        return unsent

    def _send_group(
        self, url: str, group: list[int], messages: Sequence[RunMessage], delays: Sequence[int]
    ) -> set[int]:
        remaining = list(group)
        for attempt in range(BATCH_SEND_ATTEMPTS):
            if attempt:
                self._sleep(backoff.delay(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
            entries = [
                {
                    "Id": str(position),
                    "MessageBody": messages[position].model_dump_json(),
                    **({"DelaySeconds": delays[position]} if position < len(delays) and delays[position] else {}),
                }
                for position in remaining
            ]
            try:
                response = self._sqs.send_message_batch(QueueUrl=url, Entries=entries)
            except (BotoCoreError, ClientError):
                continue  # none of the group was sent: try it all again
            remaining = [int(failed["Id"]) for failed in response.get("Failed", [])]
            if not remaining:
                return set()
        return set(remaining)
