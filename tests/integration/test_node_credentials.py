"""Node credentials for on-premises agents: the session policy, STS AssumeRole (in-process moto) and the
POST /nodes/credentials handler with the authorizer's context, as API Gateway passes it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from functions.nodes import credentials
from functions.nodes.credentials import (
    CREDENTIALS_SECONDS,
    ROUTE,
    CredentialsSettings,
    UnknownEnvironment,
    issue_credentials,
    session_name,
    session_policy,
)
from functions.nodes.policy import node_policy_document, without_sids
from functions.nodes.sts import RoleAssumer
from runly_cli.embedded.gateway import build_event
from runly_core.contracts import NodeCredentials

ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/runly-test-NodeRole-default"
QUEUE_ARN = f"arn:aws:sqs:us-east-1:{ACCOUNT}:runly-test-default"
TABLE_ARN = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/runly-test-store"
BUCKET_ARN = "arn:aws:s3:::runly-test-feed-123456789012-us-east-1"
PARAMETERS_ARN = f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/runly-test"
SETTINGS = {
    "RUNLY_PARAMETERS_ARN": PARAMETERS_ARN,
    "RUNLY_TABLE_ARN": TABLE_ARN,
    "RUNLY_FEED_BUCKET_ARN": BUCKET_ARN,
    "RUNLY_NODE_ROLES": json.dumps({"default": {"role_arn": ROLE_ARN, "queue_arn": QUEUE_ARN}}),
}


class FakeContext:
    function_name = "runly-node-credentials"
    function_version = "$LATEST"
    invoked_function_arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:runly-node-credentials"
    memory_limit_in_mb = 512
    aws_request_id = "req-1"
    log_group_name = "/aws/lambda/runly-node-credentials"
    log_stream_name = "stream"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


class RecordingSts:
    """The real (moto) STS client, with every AssumeRole request kept for the test to read."""

    def __init__(self) -> None:
        self._client = boto3.client("sts")
        self.requests: list[dict[str, Any]] = []

    def assume_role(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        response: dict[str, Any] = self._client.assume_role(**request)
        return response


@pytest.fixture
def sts(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingSts]:
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    recording = RecordingSts()
    credentials.get_settings.cache_clear()
    credentials.role_assumer.cache_clear()
    monkeypatch.setattr(credentials, "role_assumer", lambda: RoleAssumer(client=recording))
    yield recording
    credentials.get_settings.cache_clear()


def _call(context: dict[str, str] | None) -> tuple[int, dict[str, Any]]:
    event = build_event(
        method="POST",
        raw_path=ROUTE,
        raw_query="",
        headers=[],
        body=b"",
        source_ip="10.0.0.9",
        route_key=f"POST {ROUTE}",
    )
    if context is not None:
        event["requestContext"]["authorizer"] = {"lambda": context}
    response = credentials.lambda_handler(event, FakeContext())  # type: ignore[arg-type]
    return response["statusCode"], json.loads(response["body"])


# --- the policy -----------------------------------------------------------------------------------------------


def test_the_node_policy_allows_its_queue_its_log_prefix_and_its_environment_items_only() -> None:
    # What each request may do is tested case by case in tests/infrastructure/test_node_policy_cases.py.
    document = node_policy_document(
        environment="default",
        queue_arn=QUEUE_ARN,
        feed_bucket_arn=BUCKET_ARN,
        table_arn=TABLE_ARN,
        parameters_arn=PARAMETERS_ARN,
    )
    by_sid = {statement["Sid"]: statement for statement in document["Statement"]}
    assert set(by_sid) == {"QueueValuesAndRuns", "ReadPackages", "ReadItems", "WriteRuns", "WriteNodes"}
    # Receive, Delete, SendMessage; ChangeMessageVisibility (tests/infrastructure/test_node_policy_cases.py); the
    # values' reads; the runs' objects read and written. Each action applies only to its own service's resource.
    assert (by_sid["QueueValuesAndRuns"]["Action"], by_sid["QueueValuesAndRuns"]["Resource"]) == (
        ["sqs:*Message", "sqs:Change*", "ssm:GetParameters", "s3:GetObject", "s3:PutObject"],
        [QUEUE_ARN, f"{PARAMETERS_ARN}/default/*", f"{BUCKET_ARN}/runs/default/*"],
    )
    # The packages: read only
    assert (by_sid["ReadPackages"]["Action"], by_sid["ReadPackages"]["Resource"]) == (
        "s3:GetObject",
        f"{BUCKET_ARN}/packages/*",
    )
    leading = {
        sid: by_sid[sid]["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
        for sid in ("ReadItems", "WriteRuns", "WriteNodes")
    }
    assert leading == {
        "ReadItems": ["ENV#default#*"],
        "WriteRuns": ["ENV#default#RUN#*"],
        "WriteNodes": ["ENV#default#NODE#*"],
    }
    assert by_sid["ReadItems"]["Action"] == ["dynamodb:GetItem", "dynamodb:ConditionCheckItem"]
    assert by_sid["WriteRuns"]["Action"] == "dynamodb:UpdateItem"
    assert by_sid["WriteNodes"]["Action"] == ["dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    assert all(statement["Effect"] == "Allow" for statement in document["Statement"])


def test_the_session_policy_fits_sts_limit_even_with_the_longest_names() -> None:
    # STS refuses a session policy over 2048 characters: the longest stage, environment and region names must fit.
    stage, environment = "s" * 21, "e" * 31
    queue_arn = f"arn:aws-us-gov:sqs:ap-southeast-4:{ACCOUNT}:runly-{stage}-{environment}"
    settings = CredentialsSettings.model_validate(
        {
            "table_arn": f"arn:aws-us-gov:dynamodb:ap-southeast-4:{ACCOUNT}:table/runly-{stage}-store",
            "feed_bucket_arn": f"arn:aws-us-gov:s3:::runly-{stage}-feed-{ACCOUNT}-ap-southeast-4",
            "parameters_arn": f"arn:aws-us-gov:ssm:ap-southeast-4:{ACCOUNT}:parameter/runly-{stage}",
            "node_roles": {environment: {"role_arn": ROLE_ARN, "queue_arn": queue_arn}},
        }
    )
    policy = session_policy(environment, settings)
    print(f"session policy: {len(policy)} characters")
    assert len(policy) <= 2048


def test_the_session_is_named_after_the_node_key_within_sts_rules() -> None:
    assert session_name("0123456789abcdef") == "runly-node-0123456789abcdef"
    assert len(session_name("k" * 100)) == 64
    assert all(c.isalnum() or c in "+=,.@-_" for c in session_name("a b/c:d"))


# --- issuing ------------------------------------------------------------------------------------------------


def test_credentials_come_from_the_environment_role_with_its_policy_for_15_minutes(sts: RecordingSts) -> None:
    issued = issue_credentials("default", "0123456789abcdef")

    [request] = sts.requests
    assert request["RoleArn"] == ROLE_ARN
    assert request["RoleSessionName"] == "runly-node-0123456789abcdef"
    assert request["DurationSeconds"] == CREDENTIALS_SECONDS == 900
    assert json.loads(request["Policy"]) == without_sids(
        node_policy_document(
            environment="default",
            queue_arn=QUEUE_ARN,
            feed_bucket_arn=BUCKET_ARN,
            table_arn=TABLE_ARN,
            parameters_arn=PARAMETERS_ARN,
        )
    )
    assert issued.environment == "default"
    assert issued.access_key_id and issued.secret_access_key and issued.session_token
    assert datetime.now(UTC) < issued.expiration <= datetime.now(UTC) + timedelta(seconds=CREDENTIALS_SECONDS + 5)


def test_an_environment_the_deployment_lacks_gets_nothing(sts: RecordingSts) -> None:
    with pytest.raises(UnknownEnvironment):
        issue_credentials("staging", "0123456789abcdef")
    assert sts.requests == []


# --- the route ------------------------------------------------------------------------------------------------


def test_a_node_key_gets_credentials_for_its_environment(sts: RecordingSts) -> None:
    status, body = _call({"key_id": "0123456789abcdef", "scope": "node", "environment": "default"})
    assert status == 200
    issued = NodeCredentials.model_validate(body)
    assert issued.environment == "default" and issued.session_token
    assert [request["RoleSessionName"] for request in sts.requests] == ["runly-node-0123456789abcdef"]


@pytest.mark.parametrize(
    ("context", "status", "code"),
    [
        (None, 401, "unauthorized"),  # no authorizer context: never trusted
        ({"key_id": "0123456789abcdef", "scope": "admin", "environment": ""}, 403, "forbidden"),
        ({"key_id": "0123456789abcdef", "scope": "write", "environment": ""}, 403, "forbidden"),
        ({"key_id": "0123456789abcdef", "scope": "node", "environment": ""}, 403, "forbidden"),
        ({"key_id": "0123456789abcdef", "scope": "node", "environment": "staging"}, 403, "forbidden"),
    ],
)
def test_anything_but_a_node_key_of_a_deployed_environment_is_refused(
    sts: RecordingSts, context: dict[str, str] | None, status: int, code: str
) -> None:
    assert _call(context)[0] == status
    assert _call(context)[1]["code"] == code
    assert sts.requests == []
