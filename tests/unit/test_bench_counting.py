"""Counting AWS calls for the benchmarks: what the hook records (bench/counting.py) and the hook itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import counting
from bench.counting import Call, Units

REPO = Path(__file__).resolve().parents[2]


def call(operation: str, service: str = "dynamodb", t0: float = 0.0, role: str = "agent", **detail: object) -> Call:
    return Call(role=role, pid=1, t0=t0, t1=t0 + 0.01, service=service, operation=operation, detail=dict(detail))


# ---------------------------------------------------------------- item sizes


def test_item_size_follows_dynamodb_rules_for_plain_and_wire_values() -> None:
    plain = {"pk": "RUN#abc", "n": 12345, "ok": True, "tags": ["a", "bc"], "m": {"k": "v"}}
    wire = {
        "pk": {"S": "RUN#abc"},
        "n": {"N": "12345"},
        "ok": {"BOOL": True},
        "tags": {"L": [{"S": "a"}, {"S": "bc"}]},
        "m": {"M": {"k": {"S": "v"}}},
    }
    # pk 2+7, n 1+(3+1), ok 2+1, tags 4+(3+1+1+1+2), m 1+(3+1+1+1)
    expected = 9 + 5 + 3 + 12 + 7
    assert counting.item_size(plain) == expected
    assert counting.item_size(wire) == expected
    assert counting.item_size(None) == 0


def test_key_kind_names_an_item_by_its_key_prefixes() -> None:
    assert counting.key_kind({"pk": "RUN#r1", "sk": "CHECKPOINT"}) == "RUN/CHECKPOINT"
    assert counting.key_kind({"pk": "ENV#default#RUN#run_default_1", "sk": "CHECKPOINT"}) == "RUN/CHECKPOINT"
    assert counting.key_kind({"pk": "ENV#default#NODE#n1", "sk": "NODE"}) == "NODE/NODE"
    assert counting.key_kind({"pk": "ENV#default", "sk": "PIN#greeter"}) == "ENV/PIN"
    assert counting.key_kind({"pk": {"S": "PKG#hello"}, "sk": {"S": "VER#1.0.0"}}) == "PKG/VER"
    assert counting.key_kind(None) is None


# ---------------------------------------------------------------- what a call's parameters and response say


def test_describe_call_reads_dynamodb_parameters() -> None:
    get = counting.describe_call(
        "dynamodb", "GetItem", {"Key": {"pk": {"S": "RUN#r"}, "sk": {"S": "RUN"}}, "ConsistentRead": True}
    )
    assert get == {"kind": "RUN/RUN", "consistent": True}
    put = counting.describe_call("dynamodb", "PutItem", {"Item": {"pk": {"S": "RUN#r"}, "sk": {"S": "RUN"}}})
    assert put == {"kind": "RUN/RUN", "size": 2 + 5 + 2 + 3}
    query = counting.describe_call(
        "dynamodb", "Query", {"IndexName": "items-by-kind", "ExpressionAttributeValues": {":p": {"S": "NODE"}}}
    )
    assert query == {"consistent": False, "kind": "index items-by-kind"}
    table_query = counting.describe_call("dynamodb", "Query", {"ExpressionAttributeValues": {":p": {"S": "PKG#x"}}})
    assert table_query["kind"] == "PKG"
    transaction = counting.describe_call(
        "dynamodb",
        "TransactWriteItems",
        {
            "TransactItems": [
                {"ConditionCheck": {"Key": {"pk": {"S": "RUN#r"}, "sk": {"S": "RUN"}}}},
                {"Put": {"Item": {"pk": {"S": "RUN#r"}, "sk": {"S": "CHECKPOINT"}}}},
            ]
        },
    )
    assert transaction["items"] == [
        {"action": "ConditionCheck", "kind": "RUN/RUN", "size": None},
        {"action": "Put", "kind": "RUN/CHECKPOINT", "size": 2 + 5 + 2 + 10},
    ]
    assert counting.describe_call("sqs", "SendMessage", {"QueueUrl": "u"}) == {}


def test_describe_result_reads_messages_and_item_sizes() -> None:
    meta = {"ResponseMetadata": {"HTTPStatusCode": 200}}
    received = counting.describe_result("sqs", "ReceiveMessage", {**meta, "Messages": [{}, {}]})
    assert received == {"status": 200, "messages": 2}
    assert counting.describe_result("sqs", "ReceiveMessage", meta)["messages"] == 0
    got = counting.describe_result("dynamodb", "GetItem", {**meta, "Item": {"pk": "RUN#r"}})
    assert got["size"] == 2 + 5
    missing = counting.describe_result("dynamodb", "GetItem", meta)
    assert missing["size"] == 0
    failed = counting.describe_result(
        "dynamodb", "UpdateItem", {"Error": {"Code": "ConditionalCheckFailedException"}, **meta}
    )
    assert failed["error"] == "ConditionalCheckFailedException"


# ---------------------------------------------------------------- reading the files


def test_read_calls_reads_every_process_file_and_skips_torn_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"t0": 2.0, "t1": 2.1, "svc": "sqs", "op": "ReceiveMessage", "messages": 1}),
        json.dumps({"t0": 1.0, "t1": 1.1, "svc": "dynamodb", "op": "GetItem", "kind": "RUN/RUN"}),
        '{"t0": 3.0, "t1": 3.1, "svc": "sq',  # the process was killed while writing
    ]
    (tmp_path / "agent-12.jsonl").write_text("\n".join(lines))
    (tmp_path / "gateway-7.jsonl").write_text(json.dumps({"t0": 1.5, "t1": 1.6, "svc": "sqs", "op": "SendMessage"}))
    (tmp_path / "notes.txt").write_text("not a count file")
    calls = counting.read_calls(tmp_path)
    assert [(c.role, c.pid, c.operation) for c in calls] == [
        ("agent", 12, "GetItem"),
        ("gateway", 7, "SendMessage"),
        ("agent", 12, "ReceiveMessage"),
    ]
    assert calls[0].kind == "RUN/RUN" and calls[2].detail == {"messages": 1}
    assert [c.pid for c in counting.read_calls(tmp_path, pids=[7])] == [7]
    assert counting.read_calls(tmp_path / "missing") == []


def test_file_names_say_the_role_and_process() -> None:
    assert counting.parse_file_name("agent-1234.jsonl") == ("agent", 1234)
    assert counting.parse_file_name("gateway-9.jsonl") == ("gateway", 9)
    assert counting.parse_file_name("agent-x.jsonl") is None
    assert counting.parse_file_name("agent-12.json") is None


def test_count_and_window() -> None:
    calls = [call("GetItem", t0=1.0), call("GetItem", t0=2.0), call("SendMessage", "sqs", t0=2.5, role="gateway")]
    assert counting.count(counting.between(calls, 1.5, 3.0)) == {
        ("agent", "dynamodb", "GetItem"): 1,
        ("gateway", "sqs", "SendMessage"): 1,
    }
    assert counting.per_minute(calls, 30.0) == 6.0


def test_marginal_per_run_takes_the_idle_rate_off_and_never_goes_below_zero() -> None:
    window = {"receive": 130.0, "node heartbeat": 10.0, "claim": 100.0}
    idle = {"receive": 0.05, "node heartbeat": 0.0667}  # per second: a 20 s poll, a 15 s heartbeat
    per_run = counting.marginal_per_run(window, idle, window_seconds=600.0, runs=100)
    assert per_run["receive"] == pytest.approx(1.0)
    assert per_run["claim"] == pytest.approx(1.0)
    assert per_run["node heartbeat"] == 0.0
    with pytest.raises(ValueError):
        counting.marginal_per_run(window, idle, window_seconds=1.0, runs=0)


# ---------------------------------------------------------------- capacity units


def test_capacity_units_of_reads_by_size_and_consistency() -> None:
    assert counting.capacity_units(call("GetItem", consistent=True, size=800), {}) == Units(read=1.0)
    assert counting.capacity_units(call("GetItem", consistent=False, size=800), {}) == Units(read=0.5)
    assert counting.capacity_units(call("GetItem", consistent=True, size=0), {}) == Units(read=1.0)
    assert counting.capacity_units(call("Query", consistent=False, size=9000), {}) == Units(read=1.5)
    batch = call("BatchGetItem", gets=[{"consistent": True}, {"consistent": True}], sizes=[800, 5000])
    assert counting.capacity_units(batch, {}) == Units(read=3.0)


def test_capacity_units_of_writes_use_the_known_or_typical_size() -> None:
    assert counting.capacity_units(call("PutItem", kind="RUN/RUN", size=700), {}) == Units(write=1.0)
    assert counting.capacity_units(call("UpdateItem", kind="RUN/RUN", size=2100), {}) == Units(write=3.0)
    # An update that returns nothing is billed at the largest size seen of its kind.
    assert counting.capacity_units(call("UpdateItem", kind="RUN/RUN"), {"RUN/RUN": 1500}) == Units(write=2.0)
    assert counting.capacity_units(call("DeleteItem", kind="NODE/NODE"), {}) == Units(write=1.0)


def test_transactions_cost_twice() -> None:
    transaction = call(
        "TransactWriteItems",
        items=[{"action": "ConditionCheck", "kind": "RUN/RUN", "size": None}, {"action": "Put", "size": 300}],
    )
    assert counting.capacity_units(transaction, {"RUN/RUN": 900}) == Units(write=4.0)
    assert counting.capacity_units(call("SendMessage", "sqs"), {}) == Units()


def test_a_batch_write_is_billed_item_by_item() -> None:
    params = {
        "RequestItems": {
            "table": [
                {"PutRequest": {"Item": {"pk": "RUN#1", "sk": "RUN", "config": "x" * 1500}}},
                {"PutRequest": {"Item": {"pk": "RUN#2", "sk": "RUN"}}},
            ]
        }
    }
    detail = counting.describe_call("dynamodb", "BatchWriteItem", params)
    assert detail["kind"] == "RUN/RUN" and [write["size"] for write in detail["writes"]] == [1518, 12]
    assert counting.capacity_units(call("BatchWriteItem", **detail), {}) == Units(write=3.0)


def test_typical_sizes_keep_the_largest_of_each_kind() -> None:
    calls = [
        call("GetItem", kind="RUN/RUN", size=700),
        call("UpdateItem", kind="RUN/RUN", size=900),
        call("TransactWriteItems", items=[{"kind": "RUN/CHECKPOINT", "size": 300}]),
        call("Query", kind="PKG", size=9000),  # a query's size is many items': not one item's
    ]
    assert counting.typical_sizes(calls) == {"RUN/RUN": 900, "RUN/CHECKPOINT": 300}


# ---------------------------------------------------------------- the hook, in a process of its own


def test_the_hook_records_every_call_of_an_agent_process(tmp_path: Path) -> None:
    # Given a process whose command line names node_agent, with the hook on its PYTHONPATH
    script = """
import boto3
from moto import mock_aws
with mock_aws():
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)
    table = boto3.resource("dynamodb", region_name="us-east-1").create_table(
        TableName="t", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}])
    table.put_item(Item={"pk": "RUN#r", "sk": "RUN", "state": "Queued"})
    table.get_item(Key={"pk": "RUN#r", "sk": "RUN"}, ConsistentRead=True)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(REPO / "bench" / "hooks"), str(REPO)]),
            counting.COUNT_DIR_ENV: str(tmp_path),
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
        }
    )
    # When it makes AWS calls
    subprocess.run([sys.executable, "-", "node_agent"], input=script, text=True, env=env, check=True, cwd=tmp_path)
    # Then each one is recorded once, with what the bench needs to count and price it
    calls = counting.read_calls(tmp_path)
    assert {c.role for c in calls} == {"agent"}
    operations = [(c.service, c.operation) for c in calls]
    for expected in [("sqs", "SendMessage"), ("sqs", "ReceiveMessage"), ("dynamodb", "PutItem")]:
        assert operations.count(expected) == 1
    receive = next(c for c in calls if c.operation == "ReceiveMessage")
    assert receive.detail["messages"] == 1 and receive.t1 >= receive.t0 and receive.attempts == 1
    get = next(c for c in calls if c.operation == "GetItem")
    assert get.kind == "RUN/RUN" and get.detail["consistent"] is True and get.detail["size"] > 0


def test_the_hook_stays_out_of_other_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench" / "hooks"), counting.COUNT_DIR_ENV: str(tmp_path)}
    subprocess.run([sys.executable, "-c", "import sys; assert 'botocore' not in sys.modules"], env=env, check=True)
    assert list(tmp_path.iterdir()) == []
