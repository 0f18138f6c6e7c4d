"""Runs written straight to the table, for tests of what nodes and maintenance do with them."""

from __future__ import annotations

import json

import boto3

from runly_core import resources
from runly_core.contracts import RunState
from runly_core.records import RunRecord, iso, utcnow
from runly_core.run_store import run_item


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
    boto3.resource("dynamodb").Table(names.table).put_item(Item=run_item(record))
    return record
