"""Variables and secrets on the embedded stack: real agents, real job processes (a warm host's child in one
environment, a new interpreter in the other). A job that declares a variable and a secret gets both in its
environment, and prints the secret; then the secret's value is nowhere but in that process: not in the run record
(the API's view and the raw DynamoDB items), not in the events built from them, not in any API answer (the secrets
listing included), not in the shipped log (redacted, also when split across writes), not in the agents' or the
API's own logs. A node of one environment gets that environment's values only (the IAM side is proved by
tests/infrastructure/test_node_policy_cases.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from functions.events.changes import state_change
from runly_cli.embedded.stack import EmbeddedStack
from runly_client.client import RunlyClient
from runly_core.contracts import EnqueueRunRequest, RunState, RunView
from runly_core.run_store import run_key
from tests.e2e.conftest import FAST_AGENT, stop_printing_failures

# Per environment: its region and its secret (each long and unlike anything else a run writes).
VALUES = {
    "default": ("eu-west-1", "tok-default-7f3a9c1e5b2d4f6a8c0e"),
    "staging": ("us-east-2", "tok-staging-2b4d6f8a0c1e3a5c7e9b"),
}
# The default environment's agent forks runs from a warm host (the secret reaches the child through a memfd); the
# staging one starts a new interpreter per run (the secret is in its exec environment).
AGENT_SETTINGS = {"default": {"warm_hosts": "true"}, "staging": {"warm_hosts": "false"}}


@pytest.fixture(scope="module")
def values_stack(
    tmp_path_factory: pytest.TempPathFactory, e2ejobs_bundle: Path
) -> Iterator[tuple[EmbeddedStack, RunlyClient]]:
    embedded = EmbeddedStack(
        state_dir=tmp_path_factory.mktemp("values-stack"), agent_env=FAST_AGENT, environments=tuple(VALUES)
    )
    embedded.start(agents=0)
    client = RunlyClient(embedded.api_url, api_key=embedded.admin_key)
    try:
        client.push(e2ejobs_bundle)
        for environment, (region, token) in VALUES.items():
            client.set_variable(environment, "E2E_REGION", region)
            client.set_secret(environment, "E2E_TOKEN", token)
            embedded.start_agent(environment, **AGENT_SETTINGS[environment])
        yield embedded, client
    finally:
        stop_printing_failures(embedded)


def _run(client: RunlyClient, environment: str, job: str, config: dict[str, Any] | None = None) -> RunView:
    request = EnqueueRunRequest(package="e2ejobs", job=job, environment=environment, config=config or {})
    return client.wait(client.enqueue(request).id, timeout=90)


def _raw_items(stack: EmbeddedStack) -> list[dict[str, Any]]:
    dynamodb = stack.client("dynamodb")
    items: list[dict[str, Any]] = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=stack.names.table):
        items += page["Items"]
    return items


def _shipped_logs(stack: EmbeddedStack, run_id: str) -> bytes:
    s3 = stack.client("s3")
    found = b""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.names.feed_bucket, Prefix="runs/"):
        for entry in sorted(page.get("Contents", []), key=lambda e: e["Key"]):
            if run_id in entry["Key"]:
                found += s3.get_object(Bucket=stack.names.feed_bucket, Key=entry["Key"])["Body"].read()
    return found


def _events(stack: EmbeddedStack, run_id: str) -> list[str]:
    """The Run State Changed event the publisher would build from the run item as it is now (a MODIFY from
    Running), as JSON."""
    key = run_key(run_id)
    item = stack.client("dynamodb").get_item(
        TableName=stack.names.table, Key={name: {"S": value} for name, value in key.items()}
    )["Item"]
    record = {
        "eventName": "MODIFY",
        "dynamodb": {
            "Keys": {name: item[name] for name in key},
            "NewImage": item,
            "OldImage": {**item, "state": {"S": RunState.RUNNING.value}},
            "SequenceNumber": "1",
            "ApproximateCreationDateTime": 1767225600,
        },
    }
    change = state_change(DynamoDBRecord(record))
    assert change is not None
    return [change.model_dump_json()]


def _everything_the_run_left(stack: EmbeddedStack, client: RunlyClient, run: RunView) -> dict[str, str]:
    environment = run.environment
    answers = {
        "GET /runs/{id}": client.get_run(run.id).model_dump_json(),
        "GET /runs": json.dumps([r.model_dump(mode="json") for r in client.list_runs(environment=environment).items]),
        "GET /runs/{id}/logs": client.get_logs(run.id).model_dump_json(),
        "GET secrets": json.dumps([s.model_dump(mode="json") for s in client.list_secrets(environment)]),
        "GET secret": client.get_secret(environment, "E2E_TOKEN").model_dump_json(),
        "GET variables": json.dumps([v.model_dump(mode="json") for v in client.list_variables(environment)]),
        "GET /nodes": client.list_nodes().model_dump_json(),
    }
    return {
        **answers,
        "raw DynamoDB items": json.dumps(_raw_items(stack)),
        "events": json.dumps(_events(stack, run.id)),
        "shipped logs": _shipped_logs(stack, run.id).decode(errors="replace"),
        "downloaded logs": client.download_logs(run.id),
        **{f"{child.name}'s own log": child.log_path.read_text(errors="replace") for child in stack.children},
    }


def _assert_nowhere(left: dict[str, str], secret: str) -> None:
    where = [name for name, text in left.items() if secret in text]
    assert where == [], f"the secret is in: {where}"


@pytest.mark.parametrize("environment", list(VALUES))
def test_a_job_gets_its_variable_and_secret_and_the_secret_is_nowhere_else(
    values_stack: tuple[EmbeddedStack, RunlyClient], environment: str
) -> None:
    stack, client = values_stack
    region, token = VALUES[environment]
    # Given a job that declares E2E_REGION and E2E_TOKEN, run in the environment
    run = _run(client, environment, "credentials")
    # Then it got both, its environment's own (it reports the secret's hash, never the secret), and no other
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.output == {
        "region": region,
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        "pid": run.output["pid"],
        "ppid": run.output["ppid"],
        "others": [],
    }
    # Forked by the warm host in the default environment (the memfd path), a new interpreter in staging
    started = f"run {run.id} attempt 1: job process {run.output['pid']} started"
    agent_log = "".join(c.log_path.read_text() for c in stack.children if c.name.startswith("local-node"))
    how = "warm host" if AGENT_SETTINGS[environment]["warm_hosts"] == "true" else "new interpreter"
    assert f"{started} ({how})" in agent_log
    # And the secret it printed, twice (once whole, once in two writes), is masked in the log the agent shipped
    shipped = _shipped_logs(stack, run.id).decode()
    assert f"region={region} token=***" in shipped and "again: ***" in shipped, shipped
    # And neither environment's secret is anywhere the run left a trace
    left = _everything_the_run_left(stack, client, run)
    for _, secret in VALUES.values():
        _assert_nowhere(left, secret)


@pytest.mark.parametrize("leak_in", ["error", "progress", "output"])
def test_a_secret_the_job_puts_in_its_error_progress_or_output_is_masked_in_the_record(
    values_stack: tuple[EmbeddedStack, RunlyClient], leak_in: str
) -> None:
    stack, client = values_stack
    _, token = VALUES["default"]
    run = _run(client, "default", "credentials", {"leak_in": leak_in})
    if leak_in == "error":
        # A user error is retried: every attempt leaked it, and every one is masked
        run = client.wait(run.id, timeout=90)
        assert run.state is RunState.FAILED and run.error is not None
        assert run.error.message == "cannot connect with token ***"
    elif leak_in == "progress":
        assert run.state is RunState.SUCCEEDED
        assert run.progress is not None and run.progress.message == "connected with ***"
    else:
        assert run.state is RunState.SUCCEEDED and run.output is not None
        assert run.output["token"] == "***"
    _assert_nowhere(_everything_the_run_left(stack, client, run), token)


def test_a_run_whose_secret_is_missing_fails_before_the_job_starts_and_is_not_retried(
    values_stack: tuple[EmbeddedStack, RunlyClient],
) -> None:
    stack, client = values_stack
    run = _run(client, "default", "needs_absent")
    assert run.state is RunState.FAILED and run.error is not None
    assert run.error.reason == "value_error"
    assert run.error.message == (
        "environment 'default' has no secret E2E_ABSENT, which job 'needs_absent' declares: set it (runly vars set / "
        "runly secrets set) and requeue the run"
    )
    assert len(run.attempts) == 1
    assert "should never have started" not in _shipped_logs(stack, run.id).decode()
