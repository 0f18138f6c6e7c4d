"""The bill's unit arithmetic (bench/billing.py): item sizes as DynamoDB counts them, the index write rules, read
units, SQS chunks, and the table definition read from DescribeTable."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bench import billing, capacity
from bench.billing import Charge, IndexDef, TableDef
from bench.counting import item_size, value_size


def S(text: str) -> dict[str, str]:
    return {"S": text}


def N(text: str) -> dict[str, str]:
    return {"N": text}


# ---------------------------------------------------------------- item sizes


def test_attribute_names_count_as_well_as_values() -> None:
    # "pk" (2) + "RUN#1" (5); "state" (5) + "Queued" (6)
    assert item_size({"pk": S("RUN#1"), "state": S("Queued")}) == 7 + 11
    # A longer name alone costs more: the same value under a 20-byte name.
    assert item_size({"a" * 20: S("Queued")}) == 26


def test_strings_count_utf8_bytes_not_characters() -> None:
    assert value_size(S("é")) == 2
    assert value_size(S("日本")) == 6


@pytest.mark.parametrize(
    ("number", "size"),
    [
        ("0", 2),  # nothing significant: 1 digit, 1 byte + 1
        ("7", 2),
        ("12345", 4),  # ceil(5 / 2) + 1
        ("100000", 2),  # trailing zeros do not count: "1"
        ("0.0050", 2),  # leading and trailing zeros do not count: "5"
        ("-12.25", 3),  # sign and point do not count: "1225" -> 2 + 1
        ("1764691200123", 8),  # a millisecond timestamp: 13 digits -> 7 + 1
        ("1.5E+3", 2),  # the exponent is not a digit of the number: "15"
    ],
)
def test_numbers_take_a_byte_per_two_significant_digits_plus_one(number: str, size: int) -> None:
    assert value_size(N(number)) == size


def test_binary_counts_its_decoded_bytes() -> None:
    raw = bytes(range(100))
    assert value_size({"B": base64.b64encode(raw).decode()}) == 100
    assert value_size(raw) == 100


def test_nested_maps_and_lists_cost_three_bytes_plus_one_per_element_plus_names() -> None:
    attempts = {"L": [{"M": {"node": S("n1"), "attempt": N("1")}}]}
    # inner map: 3 + (1 + len("node") + 2) + (1 + len("attempt") + 2) = 3 + 7 + 10 = 20; the list: 3 + 1 + 20
    assert value_size(attempts) == 24
    assert item_size({"attempts": attempts}) == 8 + 24
    assert value_size({"NULL": True}) == 1 and value_size({"BOOL": False}) == 1
    assert value_size({"SS": ["ab", "c"]}) == 3


# ---------------------------------------------------------------- the table's definition

DESCRIBED: dict[str, Any] = {
    "TableName": "store",
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    "GlobalSecondaryIndexes": [
        {
            "IndexName": "by-env",
            "KeySchema": [{"AttributeName": "g1pk", "KeyType": "HASH"}, {"AttributeName": "g1sk", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        },
        {
            "IndexName": "by-lease",
            "KeySchema": [{"AttributeName": "g2pk", "KeyType": "HASH"}, {"AttributeName": "g2sk", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        },
        {
            "IndexName": "by-kind",
            "KeySchema": [{"AttributeName": "g3pk", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["state"]},
        },
    ],
}
TABLE = TableDef.from_description(DESCRIBED)


def test_the_definition_comes_from_describe_table() -> None:
    assert TABLE.key_attributes == ("pk", "sk")
    assert [i.name for i in TABLE.indexes] == ["by-env", "by-lease", "by-kind"]
    assert TABLE.index("by-lease") == IndexDef("by-lease", "g2pk", "g2sk", "KEYS_ONLY")
    assert TABLE.index("by-kind") == IndexDef("by-kind", "g3pk", None, "INCLUDE", ("state",))


def test_projections_keep_what_the_index_stores() -> None:
    item = {
        "pk": S("R#1"),
        "sk": S("RUN"),
        "g2pk": S("LEASED"),
        "g2sk": S("2026"),
        "g3pk": S("K"),
        "state": S("Running"),
        "config": S("x" * 500),
    }
    lease = TABLE.index("by-lease")
    kind = TABLE.index("by-kind")
    env = TABLE.index("by-env")
    assert lease and kind and env
    assert billing.projected(TABLE, lease, item) == {k: item[k] for k in ("pk", "sk", "g2pk", "g2sk")}
    assert billing.projected(TABLE, kind, item) == {k: item[k] for k in ("pk", "sk", "g3pk", "state")}
    # Sparse: without one of the index's keys the item is not in the index at all.
    assert billing.projected(TABLE, env, item) is None


# ---------------------------------------------------------------- writes and the index rules


def run_item(**extra: Any) -> dict[str, Any]:
    return {"pk": S("R#1"), "sk": S("RUN"), "g1pk": S("ENV#a"), "g1sk": S("t1"), "state": S("Queued"), **extra}


def by_action(charges: list[Charge]) -> list[tuple[str | None, str, float]]:
    return [(c.index, c.action, c.write) for c in charges]


def test_a_new_item_is_one_table_write_and_one_put_in_each_index_it_enters() -> None:
    after = run_item(config=S("x" * 1500))  # over 1 KB: 2 units in the table and in the ALL index
    charges = billing.write_charges(TABLE, None, after)
    assert by_action(charges) == [(None, "table write", 2.0), ("by-env", "index put", 2.0)]
    assert charges[1].partition_key == "ENV#a"


def test_a_changed_index_key_is_a_delete_and_a_put_in_that_index() -> None:
    before = run_item(g2pk=S("LEASED"), g2sk=S("1000"))
    after = run_item(g2pk=S("LEASED"), g2sk=S("2000"))  # a heartbeat moving the lease expiry
    assert by_action(billing.write_charges(TABLE, before, after)) == [
        (None, "table write", 1.0),
        # by-env projects ALL, so the moved lease attribute is an update there too (its keys did not move)
        ("by-env", "index update", 1.0),
        ("by-lease", "index delete", 1.0),
        ("by-lease", "index put", 1.0),
    ]


def test_a_projected_attribute_change_is_one_update_an_unprojected_one_is_free() -> None:
    before = run_item(g3pk=S("K"), note=S("a"))
    changed_state = {**before, "state": S("Running")}
    # by-env projects ALL and by-kind INCLUDEs state: both updated; nothing moved
    assert by_action(billing.write_charges(TABLE, before, changed_state)) == [
        (None, "table write", 1.0),
        ("by-env", "index update", 1.0),
        ("by-kind", "index update", 1.0),
    ]
    changed_note = {**before, "note": S("b")}  # only the ALL index sees it
    assert by_action(billing.write_charges(TABLE, before, changed_note)) == [
        (None, "table write", 1.0),
        ("by-env", "index update", 1.0),
    ]


def test_leaving_an_index_is_one_delete_and_absent_indexes_cost_nothing() -> None:
    before = run_item(g2pk=S("LEASED"), g2sk=S("1000"))
    after = run_item()  # the lease removed: out of the sparse lease index
    assert by_action(billing.write_charges(TABLE, before, after)) == [
        (None, "table write", 1.0),
        ("by-env", "index update", 1.0),  # ALL: it projected the lease attributes
        ("by-lease", "index delete", 1.0),
    ]
    node = {"pk": S("NODE#1"), "sk": S("NODE"), "seen": N("1")}
    assert by_action(billing.write_charges(TABLE, node, {**node, "seen": N("2")})) == [(None, "table write", 1.0)]


def test_the_table_write_is_billed_by_the_larger_image_and_index_writes_by_the_projected_entry() -> None:
    big = run_item(g2pk=S("LEASED"), g2sk=S("1"), output=S("x" * 3000))
    small = run_item(g2pk=S("LEASED"), g2sk=S("2"))
    charges = billing.write_charges(TABLE, big, small)  # the output removed: the item shrinks
    assert charges[0].write == 3.0  # ceil((3000 + ~60) / 1024) of the item before
    lease = [c for c in charges if c.index == "by-lease"]
    assert [c.write for c in lease] == [1.0, 1.0]  # KEYS_ONLY entries stay small whatever the item holds
    assert all(c.size < 100 for c in lease)
    env = [c for c in charges if c.index == "by-env"]
    assert [c.action for c in env] == ["index update"] and env[0].write == 3.0  # ALL: the larger of the two


def test_a_failed_conditional_write_still_costs_the_table_write_but_no_index_write() -> None:
    before = run_item(g2pk=S("LEASED"), g2sk=S("1"))
    charges = billing.write_charges(TABLE, before, None, succeeded=False)
    assert by_action(charges) == [(None, "table write", 1.0)]
    # A failed PutItem: the larger of the item there and the item it tried to put.
    attempted = run_item(config=S("x" * 2100))
    assert billing.write_charges(TABLE, None, None, succeeded=False, attempted=attempted)[0].write == 3.0


def test_a_transaction_doubles_every_write_and_a_condition_check_counts() -> None:
    item = run_item()
    targets = [
        billing.WriteTarget("store", {"pk": S("R#1"), "sk": S("RUN")}, "Put", item),
        billing.WriteTarget("store", {"pk": S("R#2"), "sk": S("RUN")}, "ConditionCheck"),
    ]
    charges = billing.dynamodb_write_charges(
        "TransactWriteItems",
        targets,
        [None, run_item(pk=S("R#2"))],
        [item, run_item(pk=S("R#2"))],
        {"store": TABLE},
        status=200,
        error=None,
    )
    assert by_action(charges) == [(None, "table write", 2.0), ("by-env", "index put", 2.0), (None, "table write", 2.0)]
    # Cancelled by a condition: billed, nothing written to an index.
    cancelled = billing.dynamodb_write_charges(
        "TransactWriteItems",
        targets,
        [None, None],
        [None, None],
        {"store": TABLE},
        status=400,
        error="TransactionCanceledException",
    )
    assert [c.action for c in cancelled] == ["table write", "table write"]
    # Any other error (a malformed request) costs nothing.
    assert (
        billing.dynamodb_write_charges(
            "PutItem", targets[:1], [None], [None], {"store": TABLE}, status=400, error="ValidationException"
        )
        == []
    )


def test_write_targets_name_every_item_a_request_touches() -> None:
    tables = {"store": TABLE}
    put = billing.write_targets("PutItem", {"TableName": "store", "Item": run_item()}, tables)
    assert [(t.action, t.key) for t in put] == [("Put", {"pk": S("R#1"), "sk": S("RUN")})]
    batch = billing.write_targets(
        "BatchWriteItem",
        {
            "RequestItems": {
                "store": [
                    {"PutRequest": {"Item": run_item()}},
                    {"DeleteRequest": {"Key": {"pk": S("R#9"), "sk": S("RUN")}}},
                ]
            }
        },
        tables,
    )
    assert [t.action for t in batch] == ["Put", "Delete"]


# ---------------------------------------------------------------- reads


def test_reads_round_per_4_kb_and_indexes_are_eventually_consistent() -> None:
    assert billing.read_units(100, consistent=True) == 1.0
    assert billing.read_units(4097, consistent=True) == 2.0
    assert billing.read_units(4097, consistent=False) == 1.0
    assert billing.read_units(0, consistent=False) == 0.5  # a GetItem of nothing still costs the minimum
    assert billing.read_units(100, consistent=True, transactional=True) == 2.0
    charge = billing.read_charge("store", "by-env", "ENV#a", 5000, consistent=True)
    assert charge.read == 1.0  # 2 blocks, halved: a GSI read is eventually consistent


def test_a_query_is_billed_by_the_total_of_the_projected_entries_it_read() -> None:
    items = [run_item(g2pk=S("LEASED"), g2sk=S(str(n)), config=S("x" * 1000)) for n in range(10)]
    params = {
        "TableName": "store",
        "IndexName": "by-lease",
        "KeyConditionExpression": "#p = :p AND #s < :now",
        "ExpressionAttributeNames": {"#p": "g2pk", "#s": "g2sk"},
        "ExpressionAttributeValues": {":p": S("LEASED"), ":now": S("9")},
    }
    [charge] = billing.dynamodb_read_charges(
        "Query", params, {"Items": items, "Count": 10}, {"store": TABLE}, status=200
    )
    # KEYS_ONLY: ten entries of ~25 bytes, not ten 1 KB items: one 4 KB block, eventually consistent.
    assert (charge.index, charge.partition_key, charge.read) == ("by-lease", "LEASED", 0.5)
    params_all = {
        **params,
        "IndexName": "by-env",
        "ExpressionAttributeNames": {"#p": "g1pk", "#s": "g1sk"},
        "ExpressionAttributeValues": {":p": S("ENV#a"), ":now": S("9")},
    }
    items_env = [run_item(config=S("x" * 1000)) for _ in range(10)]
    [charge] = billing.dynamodb_read_charges(
        "Query", params_all, {"Items": items_env, "Count": 10}, {"store": TABLE}, status=200
    )
    assert charge.read == 1.5  # ~10.5 KB: 3 blocks, halved


def test_batch_get_rounds_each_item() -> None:
    params = {
        "RequestItems": {
            "store": {
                "Keys": [{"pk": S("R#1"), "sk": S("RUN")}, {"pk": S("R#2"), "sk": S("RUN")}],
                "ConsistentRead": True,
            }
        }
    }
    response = {"Responses": {"store": [run_item()]}}  # R#2 not found
    charges = billing.dynamodb_read_charges("BatchGetItem", params, response, {"store": TABLE}, status=200)
    assert [c.read for c in charges] == [1.0, 1.0]


# ---------------------------------------------------------------- SQS


def test_sqs_bills_each_64_kb_chunk_of_a_request() -> None:
    assert billing.sqs_requests(0) == 1  # an empty receive is still a request
    assert billing.sqs_requests(64 * 1024) == 1
    assert billing.sqs_requests(64 * 1024 + 1) == 2
    entries = [{"Id": str(n), "MessageBody": "x" * 10_000} for n in range(10)]
    assert billing.sqs_requests(billing.sqs_payload_bytes("SendMessageBatch", {"Entries": entries}, {})) == 2
    received = {
        "Messages": [{"Body": "x" * 100, "MessageAttributes": {"a": {"DataType": "String", "StringValue": "yz"}}}]
    }
    assert billing.sqs_payload_bytes("ReceiveMessage", {}, received) == 100 + 1 + 6 + 2


# ---------------------------------------------------------------- partition families


def test_key_patterns_replace_what_varies() -> None:
    envs, nodes = ["default", "long"], ["local-node-1"]
    assert (
        capacity.key_pattern("ENV#default#RUN#run_default_20261202161200_abcdef012345", environments=envs, nodes=nodes)
        == "ENV#{env}#RUN#{run}"
    )
    assert capacity.key_pattern("ENV#long#LEASED", environments=envs, nodes=nodes) == "ENV#{env}#LEASED"
    assert capacity.key_pattern("ENV#default#LEASED#7", environments=envs, nodes=nodes) == "ENV#{env}#LEASED#{shard}"
    assert capacity.key_pattern("ENV#default#NODE#local-node-1", environments=envs, nodes=nodes) == (
        "ENV#{env}#NODE#{node}"
    )
    assert capacity.key_pattern("KEY#0f3a9c2e11d4", environments=envs, nodes=nodes) == "KEY#{id}"
    assert capacity.fan_out("ENV#{env}#RUN#{run}") == "item"
    assert capacity.fan_out("ENV#{env}#LEASED#{shard}") == "shard"
    assert capacity.fan_out("ENV#{env}#LEASED") == "environment"
    assert capacity.fan_out("LEASED") == "single"


def test_scaling_divides_a_family_by_its_partitions() -> None:
    def family(pattern: str, write: float, target: str = "store/by-lease") -> dict[str, Any]:
        return {
            "service": "dynamodb",
            "target": target,
            "pattern": pattern,
            "write_units": write,
            "read_units": 0.0,
            "shards_seen": 0,
            "peak_write_units_one_key_one_second": 0.0,
            "peak_read_units_one_key_one_second": 0.0,
        }

    measured = {
        "paths": {"POST /runs/batch": {"partitions": [family("ENV#{env}#RUNS", 2.0, "store/by-env")]}},
        "heartbeat": {"partitions": [family("LEASED", 4.0), family("ENV#{env}#RUN#{run}", 2.0, "store")]},
        "idle": {"partitions": []},
    }
    workload = capacity.Workload()
    rows = {p["partition_key"]: p for p in capacity.scale(measured, workload)}
    # 100,000 runs beating every 15 s, 4 units each, on one partition
    assert rows["LEASED"]["wcu_per_second"] == pytest.approx(100_000 / 15 * 4, rel=1e-3)
    # 5,000 runs/s x 2 units over 10 environments
    assert rows["ENV#{env}#RUNS"]["wcu_per_second"] == pytest.approx(1000.0)
    # one run's own item: 2 units every 15 s
    assert rows["ENV#{env}#RUN#{run}"]["wcu_per_second"] == pytest.approx(2 / 15, abs=1e-3)
    assert next(iter(capacity.scale(measured, workload)))["partition_key"] == "LEASED"  # hottest first


# ---------------------------------------------------------------- the floor and make bench's bill


def test_the_protocol_floor_with_1_kb_config_and_output() -> None:
    from bench import derive, pricing

    floor = derive.protocol_floor(pricing.load_prices(), config_bytes=1024, output_bytes=1024, heartbeat_seconds=15)
    # create 2 (1 KB config + the item's own bytes cross 1 KB), claim 1, complete 2, one KEYS_ONLY entry 1
    assert floor["short_run"]["write_units"] == 6.0
    assert floor["short_run"]["sqs_requests"]["POST /runs/batch"] == pytest.approx(0.3)
    assert floor["short_run"]["dynamodb_and_sqs_per_million"]["POST /runs/batch"] == pytest.approx(6 * 0.625 + 0.12)
    # 240,000 beats per thousand hours: 1 WRU and a tenth of a ChangeMessageVisibilityBatch each
    assert floor["running"]["per_thousand_running_hours"] == pytest.approx(240_000 * (0.625 + 0.1 * 0.4) / 1e6)


def test_make_bench_bills_the_recorders_units_with_its_own_durations() -> None:
    from bench import derive

    recorded = {
        "runs": 100,
        "http_requests": 1,
        "read_units": 2.0,
        "write_units": 25.0,
        "index_write_units": 13.0,
        "billed_requests": {"sqs SendMessageBatch": 0.1, "dynamodb UpdateItem": 2.0},
        "authorizer_ms": {"median": 900.0},
        "api_function_ms": {"median": 20_000.0},
        "gateway_log_bytes_per_http_request": 10.0,
    }
    hooked = {
        "write_units_per_run": 3.0,
        "read_units_per_run": 1.0,
        "authorizer_ms": {"median": 9.0},
        "api_function_ms": {"median": 300.0},
        "gateway_log_bytes_per_http_request": 50.0,
    }
    counted = derive.billed_requests(hooked, recorded, "POST /runs/batch")
    assert counted is not None
    assert (counted["write_units_per_run"], counted["index_write_units_per_run"]) == (25.0, 13.0)
    assert counted["api_function_ms"] == {"median": 300.0}  # no proxy in the hook's window
    assert counted["counting"] == "recorder" and counted["hook_write_units_per_run"] == 3.0
    # DynamoDB is billed by its units, not per request; SQS per request
    assert [(r["service"], r["operation"]) for r in counted["calls_per_run"]] == [("sqs", "SendMessageBatch")]
    alone = derive.billed_requests(hooked, None, "POST /runs/batch")
    assert alone is not None and alone["counting"] == "hook, base table only"


# ---------------------------------------------------------------- designs side by side


def synthetic_measurement(index_units: float) -> dict[str, Any]:
    def path(runs: int, http: int) -> dict[str, Any]:
        return {
            "runs": runs, "http_requests": http, "read_units": 1.0, "write_units": 4.0 + index_units,
            "index_write_units": index_units, "billed_requests": {"sqs SendMessageBatch": 0.1},
            "authorizer_ms": {"median": 10.0}, "api_function_ms": {"median": 100.0},
            "gateway_log_bytes_per_http_request": 100.0, "run_lifetime_seconds": {"median": 0.3},
            "partitions": [{"service": "dynamodb", "target": "store/by-env", "pattern": "ENV#{env}#RUNS",
                            "write_units": index_units, "read_units": 0.0, "shards_seen": 0, "node_owned": False,
                            "peak_write_units_one_key_one_second": 0.0, "peak_read_units_one_key_one_second": 0.0}],
        }  # fmt: skip

    return {
        "paths": {"POST /runs": path(30, 30), "POST /runs/batch": path(100, 1)},
        "heartbeat": {
            "write_units": 1.0,
            "read_units": 0.0,
            "index_write_units": 0.0,
            "node_write_units": 0.0,
            "billed_requests": {"sqs ChangeMessageVisibilityBatch": 0.1},
            "partitions": [],
        },
        "idle": {"partitions": [], "billed_requests": {}},
        "tables": {},
        "mix": {},
    }


def test_a_second_design_is_written_beside_the_first(tmp_path: Any) -> None:
    from bench import pricing

    prices = pricing.load_prices()
    today = tmp_path / "today"
    new = tmp_path / "new"
    capacity.write(today, "today", capacity.figures(synthetic_measurement(9.0), prices))
    # On the re-keyed checkout: its own measurement as "new", today's taken from the other checkout's file.
    document = capacity.write(
        new, "new", capacity.figures(synthetic_measurement(1.0), prices), beside=[today / "capacity.json"]
    )
    assert set(document["designs"]) == {"today", "new"}
    assert document["design"] == "new" and document["write_units_per_short_run"] == 5.0
    assert document["designs"]["today"]["write_units_per_short_run"] == 13.0
    text = (new / "CAPACITY.md").read_text()
    assert "| figure | today | new |" in text
    assert "| write units per short run (batch path) | 13.00 | 5.00 |" in text
    # 5,000 runs/s x 9 index units over 10 environments: 4,500 per partition, flagged over half the limit
    assert "4,500 (450% of the limit)" in text


def test_a_running_hour_bills_its_share_of_the_nodes_visibility_batches() -> None:
    # A beat measured with one run on its node: one ChangeMessageVisibilityBatch and one run write a beat
    measured = {
        "heartbeat": {
            "billed_requests": {"sqs ChangeMessageVisibilityBatch": 1.0, "dynamodb UpdateItem": 2.0},
            "write_units": 1.0,
            "read_units": 0.0,
            "index_write_units": 0,
            "node_write_units": 1.0,
        }
    }
    prices = {
        "dynamodb_on_demand_per_million_wru": 0.625,
        "dynamodb_on_demand_per_million_rru": 0.125,
        "sqs_standard_per_million_requests": 0.40,
    }
    workload = capacity.Workload(runs_per_node=50)
    cost = capacity.running_hours_cost(measured, prices, workload)
    assert cost is not None
    # 50 runs a node: 5 batches a beat, a tenth of one per run; the node's own write shared 50 ways
    assert cost["per_beat"]["sqs_requests"] == pytest.approx(0.1)
    assert cost["per_beat"]["write_units"] == pytest.approx(1.02)
    beats = 1000 * 3600 / workload.heartbeat_seconds
    assert cost["lines"]["SQS requests"] == pytest.approx(0.1 * beats * 0.40 / 1e6)
    # 15 runs a node: 2 batches for 15 runs
    uneven = capacity.running_hours_cost(measured, prices, capacity.Workload(runs_per_node=15))
    assert uneven is not None and uneven["per_beat"]["sqs_requests"] == pytest.approx(2 / 15)
