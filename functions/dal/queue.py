"""SQS access for the API: dispatching runs to an environment's queue."""

from __future__ import annotations

from typing import Any

import boto3

from runly.contracts import RunMessage


class RunQueue:
    def __init__(self, queue_urls: dict[str, str], *, client: Any = None) -> None:
        self._urls = queue_urls
        self._sqs = client or boto3.client("sqs")

    @property
    def environments(self) -> tuple[str, ...]:
        """The deployment's environments: one queue each (``cdk.json``), in a stable order."""
        return tuple(sorted(self._urls))

    def has_environment(self, environment: str) -> bool:
        return environment in self._urls

    def dispatch(self, message: RunMessage) -> str:
        response = self._sqs.send_message(
            QueueUrl=self._urls[message.environment], MessageBody=message.model_dump_json()
        )
        return str(response["MessageId"])
