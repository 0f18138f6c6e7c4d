"""Runs written straight to the table, for tests of what nodes and maintenance do with them."""

from __future__ import annotations

import json
from typing import Any

import boto3

from runly_core import resources
from runly_core.contracts import RunState
from runly_core.records import RunRecord, iso, utcnow
from runly_core.run_store import config_item, run_item


def queued_run(names: resources.ResourceNames, run_id: str = "run_default_1") -> RunRecord:
    record = RunRecord(
        run_id=run_id,
        state=RunState.QUEUED,
        package="greeter",
        version="1.0.0",
        job="greet",
        entry_point="greeter.jobs:Greet",
        environment="default",
        config_json=json.dumps({"name": "Ada"}),
        timeout_seconds=60,
        max_attempts=3,
        bundle_key="packages/greeter/1.0.0/greeter-1.0.0.runly",
        bundle_sha256="0" * 64,
        created_at=iso(utcnow()),
    )
    put_run(boto3.resource("dynamodb").Table(names.table), record)
    return record


def put_run(table: Any, record: RunRecord, *, api_created: bool = True) -> None:
    """Write ``record`` as the API does: its run item and its CONFIG item (``api_created=False``: a forged run)."""
    table.put_item(Item=config_item(record))
    table.put_item(Item=run_item(record, api_created=api_created))
