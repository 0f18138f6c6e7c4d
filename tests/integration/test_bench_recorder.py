"""The recording proxy (bench/recorder.py) in front of a real moto server: requests pass through unchanged and each
is billed from the item images it read around the write, with the indexes the table was created with."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from bench.recorder import Recorder
from runly_cli.embedded.stack import free_port


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    front = Recorder(f"http://127.0.0.1:{port}")
    front.start()
    try:
        yield front
    finally:
        front.stop()
        server.stop()


def client(recorder: Recorder, service: str) -> Any:
    assert recorder._server is not None
    host, port = recorder._server.server_address[:2]
    return boto3.client(service, endpoint_url=f"http://{host!s}:{port}", region_name="us-east-1",
                        aws_access_key_id="tester", aws_secret_access_key="x")  # fmt: skip


def charges(record: dict[str, Any]) -> list[tuple[str | None, str, float]]:
    return [(c["index"], c["action"], c["write"]) for c in record["charges"]]


def test_writes_are_billed_with_their_index_writes_from_the_table_definition(recorder: Recorder) -> None:
    dynamodb = client(recorder, "dynamodb")
    dynamodb.create_table(
        TableName="t", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "lp", "ls")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{
            "IndexName": "lease", "Projection": {"ProjectionType": "KEYS_ONLY"},
            "KeySchema": [{"AttributeName": "lp", "KeyType": "HASH"}, {"AttributeName": "ls", "KeyType": "RANGE"}],
        }],
    )  # fmt: skip
    key = {"pk": {"S": "RUN#1"}, "sk": {"S": "RUN"}}
    # Given a 1.5 KB item put with a lease,
    dynamodb.put_item(TableName="t", Item={**key, "lp": {"S": "LEASED"}, "ls": {"S": "100"},
                                          "config": {"S": "x" * 1500}})  # fmt: skip
    # when a heartbeat moves the lease's sort key, and a stale writer's conditional write fails,
    dynamodb.update_item(TableName="t", Key=key, UpdateExpression="SET ls = :t",
                         ExpressionAttributeValues={":t": {"S": "200"}})  # fmt: skip
    with pytest.raises(ClientError):
        dynamodb.update_item(TableName="t", Key=key, UpdateExpression="SET ls = :t", ConditionExpression="ls = :old",
                             ExpressionAttributeValues={":t": {"S": "300"}, ":old": {"S": "100"}})  # fmt: skip
    got = dynamodb.get_item(TableName="t", Key=key, ConsistentRead=True)["Item"]

    # then the requests passed through unchanged,
    assert got["ls"] == {"S": "200"} and len(got["config"]["S"]) == 1500
    writes = [r for r in recorder.records if r["service"] == "dynamodb" and r["operation"] in ("PutItem", "UpdateItem")]
    put, beat, stale = writes
    # and each is billed as DynamoDB bills it: the item's 2 units, the KEYS_ONLY entry's 1,
    assert charges(put) == [(None, "table write", 2.0), ("lease", "index put", 1.0)]
    assert put["charges"][1]["partition_key"] == "LEASED"
    # a moved index key as a delete and a put in that index,
    assert charges(beat) == [(None, "table write", 2.0), ("lease", "index delete", 1.0), ("lease", "index put", 1.0)]
    # a failed condition as the table write alone.
    assert stale["error"] == "ConditionalCheckFailedException"
    assert charges(stale) == [(None, "table write", 2.0)]
    [read] = [r for r in recorder.records if r["operation"] == "GetItem"]
    assert [(c["action"], c["read"]) for c in read["charges"]] == [("table read", 1.0)]
    assert {r["principal"] for r in recorder.records} == {"tester"}


def test_sqs_requests_are_recorded_per_64_kb_chunk(recorder: Recorder) -> None:
    sqs = client(recorder, "sqs")
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x" * (100 * 1024))
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "y"} for n in range(10)])
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert received
    by_operation = {r["operation"]: r for r in recorder.records if r["service"] == "sqs"}
    assert by_operation["SendMessage"]["requests"] == 2  # 100 KB: two chunks
    assert by_operation["SendMessageBatch"]["requests"] == 1 and by_operation["SendMessageBatch"]["entries"] == 10
    assert by_operation["ReceiveMessage"]["queue"] == "q"
