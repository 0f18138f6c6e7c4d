"""EventBridge access for the publisher: put entries on the runly bus. boto3 lives here only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

# PutEvents takes at most 10 entries per call.
MAX_ENTRIES_PER_CALL = 10
# Standard retries (with jitter) on throttling and 5xx of the whole call; entries refused inside a successful
# call are retried by the publisher.
BOTO_CONFIG = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=3, read_timeout=10)


class BusUnavailable(Exception):
    """The PutEvents call itself failed (after the client's own retries): none of its entries was put."""


class BusEntry(BaseModel):
    source: str
    detail_type: str
    detail_json: str
    time: datetime


class EventBus:
    def __init__(self, name: str, *, client: Any = None) -> None:
        self.name = name
        self._events = client or boto3.client("events", config=BOTO_CONFIG)

    def put(self, entries: Sequence[BusEntry]) -> list[int]:
        """Put up to 10 entries in one call; returns the positions of the entries EventBridge refused."""
        if len(entries) > MAX_ENTRIES_PER_CALL:
            raise ValueError(f"at most {MAX_ENTRIES_PER_CALL} entries per call, got {len(entries)}")
        request = [
            {
                "EventBusName": self.name,
                "Source": entry.source,
                "DetailType": entry.detail_type,
                "Detail": entry.detail_json,
                "Time": entry.time,
            }
            for entry in entries
        ]
        try:
            response = self._events.put_events(Entries=request)
        except (BotoCoreError, ClientError) as exc:
            raise BusUnavailable(str(exc)) from exc
        if not response.get("FailedEntryCount"):
            return []
        return [position for position, result in enumerate(response["Entries"]) if result.get("ErrorCode")]
