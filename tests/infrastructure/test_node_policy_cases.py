"""A node's credentials reach only its own environment: every node policy document the stack and functions/nodes/
produce, evaluated against one table of allowed and denied (action, resource, keys, attributes) requests.

Evaluated with tests/support/iam_eval.py, not with moto: moto's IAM enforcement (``INITIAL_NO_AUTH_ACTION_COUNT``,
moto 5) checks a request's action and resource but ignores condition keys, so a policy whose only bound is
``dynamodb:LeadingKeys`` lets everything through there. ``test_moto_does_not_evaluate_leading_keys`` below keeps
that claim honest: if moto starts evaluating conditions, it fails, and these cases can move to moto.

The documents: each environment's NodeRole (its inline policy in the synthesized template), each EC2 fleet
instance role's node policy (the fleet stage), and the session policy the credentials function passes to STS
(functions.nodes.credentials.session_policy); a node key's session may do what both its role and its session policy
allow, so the cases are also run against the pair.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from functions.nodes.credentials import CredentialsSettings, NodeRoleTarget, session_policy
from infrastructure.settings import StageSettings
from infrastructure.stack import environment_output_id
from runly_core.records import environment_partition, key_key, node_key, package_key, pin_key, run_log_prefix
from runly_core.resources import PARTITION_KEY, ResourceNames
from runly_core.run_objects import checkpoint_object_key
from runly_core.run_store import checkpoint_key, run_key
from tests.infrastructure.cfn import render
from tests.infrastructure.iam import feed_bucket_id, logical_id
from tests.infrastructure.synth import TEST_ENVIRONMENTS
from tests.support.iam_eval import Request, allowed

A, B = TEST_ENVIRONMENTS  # production, staging
RUN_A, RUN_B = f"run_{A}_20250101000000_0123456789ab", f"run_{B}_20250101000000_0123456789ab"
NODE = "host-1-abcd1234"

# What node_agent.aws names in each of its writes (dynamodb:Attributes: the top-level attributes a request names).
CLAIM = ["state", "attempt", "attempts", "lease_owner", "lease_until_ms", "gsi2pk", "gsi2sk", "started_at"]
RENEW = ["attempt", "lease_owner", "state", "lease_until_ms", "gsi2sk", "progress_json", "message_handoff"]
END = [
    "attempt",
    "lease_owner",
    "state",
    "attempts",
    "retry_at",
    "progress_json",
    "finished_at",
    "output_json",
    "error_json",
    "lease_until_ms",
    "gsi2pk",
    "gsi2sk",
    "message_handoff",
]
CHECKPOINT = ["checkpoint_json"]
NODE_BEAT = [
    "host",
    "capacity",
    "running",
    "agent_version",
    "state",
    "started_at",
    "last_seen",
    "expires_at",
    "gsi3pk",
    "gsi3sk",
    "drain_requested",
]
# A run's definition, its marker and its search index keys: the API's alone.
API_ONLY = [
    "api_created",
    "config_json",
    "package",
    "version",
    "job",
    "entry_point",
    "environment",
    "bundle_key",
    "bundle_sha256",
    "timeout_seconds",
    "max_attempts",
    "created_at",
    "requeued_from",
    "schedule_id",
    "gsi1pk",
    "gsi1sk",
    "cancel_requested_at",
]


@dataclass(frozen=True)
class Arns:
    table: str
    queues: Mapping[str, str]
    dead_letter_queues: Mapping[str, str]
    bucket: str
    parameters: str  # the deployment's values path (functions.nodes.policy.parameters_arn)


@dataclass(frozen=True)
class Case:
    name: str
    allowed: bool
    request: Request


def item(
    action: str, arns: Arns, *keys: str, attributes: list[str] | None = None, returns: str | None = None
) -> Request:
    context: dict[str, Any] = {"dynamodb:LeadingKeys": list(keys)}
    if attributes is not None:
        context["dynamodb:Attributes"] = attributes
    if returns is not None:
        context["dynamodb:ReturnValues"] = returns
    return Request(f"dynamodb:{action}", arns.table, context)


def cases(arns: Arns) -> list[Case]:
    """A node of environment A: what it may do, and what it may not."""
    run_a, run_b = run_key(RUN_A)[PARTITION_KEY], run_key(RUN_B)[PARTITION_KEY]
    checkpoint_a, checkpoint_b = checkpoint_key(RUN_A)[PARTITION_KEY], checkpoint_key(RUN_B)[PARTITION_KEY]
    node_a, node_b = node_key(A, NODE)[PARTITION_KEY], node_key(B, NODE)[PARTITION_KEY]
    pins_a, pins_b = pin_key(A, "pkg")[PARTITION_KEY], pin_key(B, "pkg")[PARTITION_KEY]
    assert pins_a == environment_partition(A)
    log_a = f"{arns.bucket}/{run_log_prefix(RUN_A, 1)}00000000.log"
    secret_a, variable_a = f"{arns.parameters}/{A}/secrets/API_TOKEN", f"{arns.parameters}/{A}/variables/REGION"
    secret_b, variable_b = f"{arns.parameters}/{B}/secrets/API_TOKEN", f"{arns.parameters}/{B}/variables/REGION"
    log_b = f"{arns.bucket}/{run_log_prefix(RUN_B, 1)}00000000.log"
    state_a = f"{arns.bucket}/{checkpoint_object_key(RUN_A, 1, 0)}"
    state_b = f"{arns.bucket}/{checkpoint_object_key(RUN_B, 1, 1)}"
    allow = [
        Case("get its environment's run", True, item("GetItem", arns, run_a)),
        Case("get its environment's checkpoint", True, item("GetItem", arns, checkpoint_a)),
        Case("check the lease before a checkpoint", True, item("ConditionCheckItem", arns, run_a)),
        Case("claim a run", True, item("UpdateItem", arns, run_a, attributes=CLAIM, returns="NONE")),
        Case("renew a lease", True, item("UpdateItem", arns, run_a, attributes=RENEW, returns="NONE")),
        Case("end an attempt", True, item("UpdateItem", arns, run_a, attributes=END, returns="NONE")),
        Case("write a checkpoint (transaction)", True, item("UpdateItem", arns, checkpoint_a, attributes=CHECKPOINT)),
        Case(
            "register/heartbeat its node", True, item("UpdateItem", arns, node_a, attributes=NODE_BEAT, returns="NONE")
        ),
        Case("read its node", True, item("GetItem", arns, node_a)),
        Case("deregister its node", True, item("DeleteItem", arns, node_a)),
        Case("ship a log chunk", True, Request("s3:PutObject", log_a)),
        Case("download a package", True, Request("s3:GetObject", f"{arns.bucket}/packages/pkg/1.0/bundle.zip")),
        *(
            Case(f"{action} on its queue", True, Request(f"sqs:{action}", arns.queues[A]))
            for action in ("ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility")
        ),
        Case("send a run's replacement message to its queue", True, Request("sqs:SendMessage", arns.queues[A])),
        Case("read its environment's secret", True, Request("ssm:GetParameters", secret_a)),
        Case("read its environment's variable", True, Request("ssm:GetParameters", variable_a)),
    ]
    deny = [
        Case("get B's run", False, item("GetItem", arns, run_b)),
        Case("claim B's run", False, item("UpdateItem", arns, run_b, attributes=CLAIM, returns="NONE")),
        Case("get B's checkpoint", False, item("GetItem", arns, checkpoint_b)),
        Case("write B's checkpoint", False, item("UpdateItem", arns, checkpoint_b, attributes=CHECKPOINT)),
        Case("check B's run", False, item("ConditionCheckItem", arns, run_b)),
        Case("get B's node", False, item("GetItem", arns, node_b)),
        Case("write B's node", False, item("UpdateItem", arns, node_b, attributes=NODE_BEAT, returns="NONE")),
        Case("delete B's node", False, item("DeleteItem", arns, node_b)),
        Case("a request naming A's and B's runs", False, item("GetItem", arns, run_a, run_b)),
        Case("read A's pins", False, item("GetItem", arns, pins_a)),
        Case("write A's pins", False, item("UpdateItem", arns, pins_a, attributes=["specifier"], returns="NONE")),
        Case("write B's pins", False, item("UpdateItem", arns, pins_b, attributes=["specifier"], returns="NONE")),
        Case("read an API key", False, item("GetItem", arns, key_key("k1")[PARTITION_KEY])),
        Case(
            "revoke an API key",
            False,
            item("UpdateItem", arns, key_key("k1")[PARTITION_KEY], attributes=["revoked_at"]),
        ),
        Case("read a package version", False, item("GetItem", arns, package_key("pkg", "1.0")[PARTITION_KEY])),
        Case("write a schedule", False, item("UpdateItem", arns, "SCHEDULE#s1", attributes=["enabled"])),
        Case("put (replace) its environment's run", False, item("PutItem", arns, run_a, attributes=CLAIM)),
        Case("put a new run item", False, item("PutItem", arns, run_key(f"run_{A}_forged")[PARTITION_KEY])),
        Case("put its checkpoint", False, item("PutItem", arns, checkpoint_a, attributes=CHECKPOINT)),
        Case("delete its environment's run", False, item("DeleteItem", arns, run_a)),
        *(
            Case(
                f"write API-only {name} on its run", False, item("UpdateItem", arns, run_a, attributes=["state", name])
            )
            for name in API_ONLY
        ),
        Case(
            "forge an API-created run by update",
            False,
            item(
                "UpdateItem", arns, run_a, attributes=[*CLAIM, "api_created", "package", "entry_point", "config_json"]
            ),
        ),
        Case("index its node under the runs index", False, item("UpdateItem", arns, node_a, attributes=["gsi1pk"])),
        Case("write run attributes on its node", False, item("UpdateItem", arns, node_a, attributes=["config_json"])),
        Case("move its node to B by attribute", False, item("UpdateItem", arns, node_a, attributes=["environment"])),
        Case("set a TTL on its run", False, item("UpdateItem", arns, run_a, attributes=["expires_at"])),
        Case("a pattern-looking attribute name", False, item("UpdateItem", arns, run_a, attributes=["state*"])),
        Case(
            "renew returning the whole run", False, item("UpdateItem", arns, run_a, attributes=RENEW, returns="ALL_NEW")
        ),
        Case(
            "claim returning the old run", False, item("UpdateItem", arns, run_a, attributes=CLAIM, returns="ALL_OLD")
        ),
        Case(
            "node beat returning the whole node",
            False,
            item("UpdateItem", arns, node_a, attributes=NODE_BEAT, returns="ALL_NEW"),
        ),
        Case("query the table", False, item("Query", arns, run_a)),
        Case(
            "query an index",
            False,
            Request(
                "dynamodb:Query", f"{arns.table}/index/runs-by-lease", {"dynamodb:LeadingKeys": [f"ENV#{A}#LEASED"]}
            ),
        ),
        Case("scan the table", False, Request("dynamodb:Scan", arns.table)),
        Case("batch-write", False, item("BatchWriteItem", arns, run_a)),
        Case("batch-get", False, item("BatchGetItem", arns, run_a)),
        Case("ship a log chunk into B's prefix", False, Request("s3:PutObject", log_b)),
        Case(
            "write outside every environment's logs",
            False,
            Request("s3:PutObject", f"{arns.bucket}/runs/{RUN_A}/logs/0001/00000000.log"),
        ),
        # Its environment's runs, read and written (a resumed attempt reads the checkpoint state stored there)
        Case("read a log", True, Request("s3:GetObject", log_a)),
        Case("store a checkpoint state", True, Request("s3:PutObject", state_a)),
        Case("read a checkpoint state", True, Request("s3:GetObject", state_a)),
        Case("read B's checkpoint state", False, Request("s3:GetObject", state_b)),
        Case("write B's checkpoint state", False, Request("s3:PutObject", state_b)),
        Case("read outside every environment's runs", False, Request("s3:GetObject", f"{arns.bucket}/runs/x.json")),
        Case("overwrite a package", False, Request("s3:PutObject", f"{arns.bucket}/packages/pkg/1.0/bundle.zip")),
        Case("delete a log", False, Request("s3:DeleteObject", log_a)),
        Case("list the feed", False, Request("s3:ListBucket", arns.bucket)),
        Case("send to B's queue", False, Request("sqs:SendMessage", arns.queues[B])),
        Case("receive from B's queue", False, Request("sqs:ReceiveMessage", arns.queues[B])),
        Case("change visibility on B's queue", False, Request("sqs:ChangeMessageVisibility", arns.queues[B])),
        Case("send to its dead-letter queue", False, Request("sqs:SendMessage", arns.dead_letter_queues[A])),
        Case("purge its queue", False, Request("sqs:PurgeQueue", arns.queues[A])),
        Case("assume another node role", False, Request("sts:AssumeRole", "arn:aws:iam::123456789012:role/any")),
        Case("read B's secret", False, Request("ssm:GetParameters", secret_b)),
        Case("read B's variable", False, Request("ssm:GetParameters", variable_b)),
        Case("read B's secret one at a time", False, Request("ssm:GetParameter", secret_b)),
        Case("read its secret one at a time (it calls GetParameters)", False, Request("ssm:GetParameter", secret_a)),
        Case("list B's values by path", False, Request("ssm:GetParametersByPath", f"{arns.parameters}/{B}/secrets")),
        Case("list its values by path", False, Request("ssm:GetParametersByPath", f"{arns.parameters}/{A}/secrets")),
        Case("read a value outside every environment", False, Request("ssm:GetParameters", f"{arns.parameters}/x")),
        Case("read another deployment's value", False, Request("ssm:GetParameters", f"{arns.parameters}-x/{A}/s/n")),
        Case("overwrite its environment's secret", False, Request("ssm:PutParameter", secret_a)),
        Case("delete its environment's secret", False, Request("ssm:DeleteParameter", secret_a)),
        Case("describe the parameters", False, Request("ssm:DescribeParameters", "*")),
        Case("decrypt with KMS directly", False, Request("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/k")),
        *(
            Case(f"{action} on its queue", False, Request(f"sqs:{action}", arns.queues[A]))
            for action in ("GetQueueAttributes", "SetQueueAttributes", "StartMessageMoveTask", "ListMessageMoveTasks")
        ),
    ]
    return allow + deny


def assert_cases(documents: list[dict[str, Any]], arns: Arns) -> int:
    wrong = [
        f"{'allowed' if not case.allowed else 'denied'}: {case.name}"
        for case in cases(arns)
        if allowed(documents, case.request) != case.allowed
    ]
    assert not wrong, wrong
    return len(cases(arns))


# ---------------------------------------------------------------- the stack's documents


def _rendered(document: Any) -> Any:
    """A synthesized policy document with its intrinsics rendered (``<Table.Arn>``), as the cases name them."""
    if isinstance(document, dict) and set(document) & {"Ref", "Fn::GetAtt", "Fn::Join"}:
        return render(document)
    if isinstance(document, dict):
        return {key: _rendered(value) for key, value in document.items()}
    if isinstance(document, list):
        return [_rendered(value) for value in document]
    return document


def _template_arns(template_json: dict[str, Any], names: ResourceNames) -> Arns:
    def queue(name: str) -> str:
        return f"<{logical_id(template_json, 'AWS::SQS::Queue', QueueName=name)}.Arn>"

    return Arns(
        table=f"<{logical_id(template_json, 'AWS::DynamoDB::Table')}.Arn>",
        queues={e: queue(names.queues(e).queue) for e in TEST_ENVIRONMENTS},
        dead_letter_queues={e: queue(names.queues(e).dead_letter_queue) for e in TEST_ENVIRONMENTS},
        bucket=f"<{feed_bucket_id(template_json)}.Arn>",
        parameters=f"arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:parameter{names.values_path}",
    )


def _node_policy(template_json: dict[str, Any], role_id: str) -> dict[str, Any]:
    [policy] = [p for p in template_json["Resources"][role_id]["Properties"]["Policies"] if p["PolicyName"] == "node"]
    return dict(_rendered(policy["PolicyDocument"]))


def _other(environment: str) -> str:
    return B if environment == A else A


def _swap(arns: Arns, environment: str) -> Arns:
    """The same cases seen from ``environment``: its queue is "A"'s in the table (the cases name A and B)."""
    if environment == A:
        return arns
    return Arns(
        table=arns.table,
        queues={A: arns.queues[B], B: arns.queues[A]},
        dead_letter_queues={A: arns.dead_letter_queues[B], B: arns.dead_letter_queues[A]},
        bucket=arns.bucket,
        parameters=arns.parameters,
    )


def test_each_node_role_allows_exactly_the_case_table(
    template_json: dict[str, Any], stage_settings: StageSettings
) -> None:
    arns = _template_arns(template_json, stage_settings.resource_names(account="any", region="any"))
    outputs = template_json["Outputs"]
    role_id = outputs[environment_output_id("NodeRoleArn", A)]["Value"]["Fn::GetAtt"][0]
    assert assert_cases([_node_policy(template_json, role_id)], arns) >= 70
    # The other environment's role, against the same table seen from there: B's node may not touch A's items.
    other_id = outputs[environment_output_id("NodeRoleArn", B)]["Value"]["Fn::GetAtt"][0]
    mirrored = [_mirror(case) for case in cases(_swap(arns, B))]
    assert not [c.name for c in mirrored if allowed([_node_policy(template_json, other_id)], c.request) != c.allowed]


def test_each_fleet_instance_role_allows_exactly_the_case_table(
    fleet_template_json: dict[str, Any], fleet_settings: StageSettings
) -> None:
    arns = _template_arns(fleet_template_json, fleet_settings.resource_names(account="any", region="any"))
    roles = [
        role_id
        for role_id, resource in fleet_template_json["Resources"].items()
        if resource["Type"] == "AWS::IAM::Role"
        and "ec2.amazonaws.com" in json.dumps(resource["Properties"]["AssumeRolePolicyDocument"])
    ]
    assert len(roles) == len(TEST_ENVIRONMENTS)
    by_environment = {
        environment: role_id
        for role_id in roles
        for environment in TEST_ENVIRONMENTS
        if f"nodes of environment {environment} "
        in fleet_template_json["Resources"][role_id]["Properties"]["Description"]
    }
    assert assert_cases([_node_policy(fleet_template_json, by_environment[A])], arns) >= 70
    mirrored = [_mirror(case) for case in cases(_swap(arns, B))]
    policy_b = _node_policy(fleet_template_json, by_environment[B])
    assert not [c.name for c in mirrored if allowed([policy_b], c.request) != c.allowed]


def _mirror(case: Case) -> Case:
    """A case of A's node rewritten for B's node: every A in its keys and resources becomes B and back."""

    def swap(value: str) -> str:
        return value.replace(A, "\0").replace(B, A).replace("\0", B)

    context = {
        key: [swap(v) for v in value] if isinstance(value, list) and key == "dynamodb:LeadingKeys" else value
        for key, value in case.request.context.items()
    }
    resource = case.request.resource
    if ":sqs:" not in resource and "Queue" not in resource:
        resource = swap(resource)
    return Case(case.name, case.allowed, Request(case.request.action, resource, context))


# ---------------------------------------------------------------- the credentials function's session policy

# Real ARNs at their longest: a 21-character stage, a 31-character environment name (runly_core.resources).
LONGEST_STAGE = "s" * 21
LONGEST_ENVIRONMENT = "e" + "-" * 29 + "e"
ACCOUNT, REGION = "123456789012", "ap-southeast-2"


def _session_arns(environment: str, other: str) -> Arns:
    names = ResourceNames(stage=LONGEST_STAGE, account=ACCOUNT, region=REGION, environments=(environment, other))

    def queue(name: str) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"

    return Arns(
        table=f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{names.table}",
        queues={e: queue(names.queues(e).queue) for e in (environment, other)},
        dead_letter_queues={e: queue(names.queues(e).dead_letter_queue) for e in (environment, other)},
        bucket=f"arn:aws:s3:::{names.feed_bucket}",
        parameters=f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{names.values_path}",
    )


def _session_settings(arns: Arns, environments: tuple[str, ...]) -> CredentialsSettings:
    return CredentialsSettings(
        table_arn=arns.table,
        feed_bucket_arn=arns.bucket,
        parameters_arn=arns.parameters,
        node_roles={
            e: NodeRoleTarget(role_arn=f"arn:aws:iam::{ACCOUNT}:role/node-{e}", queue_arn=arns.queues[e])
            for e in environments
        },
    )


def test_the_session_policy_allows_exactly_the_case_table_alone_and_with_its_role(
    template_json: dict[str, Any], stage_settings: StageSettings
) -> None:
    arns = _session_arns(A, B)
    policy = json.loads(session_policy(A, _session_settings(arns, (A, B))))
    assert assert_cases([policy], arns) >= 70
    # The session may do what its role and its policy both allow: the role's document, with the same ARNs.
    role = _node_policy(
        template_json, template_json["Outputs"][environment_output_id("NodeRoleArn", A)]["Value"]["Fn::GetAtt"][0]
    )
    template = _template_arns(template_json, stage_settings.resource_names(account="any", region="any"))
    role_real = json.loads(
        json.dumps(role)
        .replace(template.table, arns.table)
        .replace(template.bucket, arns.bucket)
        .replace(template.queues[A], arns.queues[A])
        .replace(template.parameters, arns.parameters)
    )
    for case in cases(arns):
        assert (allowed([role_real], case.request) and allowed([policy], case.request)) == case.allowed, case.name


def test_environment_names_that_prefix_one_another_stay_apart() -> None:
    # "prod" is a prefix of "prod-eu": "ENV#prod#" is not a prefix of "ENV#prod-eu#", and "run_prod_" is not one of
    # "run_prod-eu_" (names hold no "#" nor "_": runly_core.resources.ENVIRONMENT_NAME).
    arns = _session_arns("prod", "prod-eu")
    policy = json.loads(session_policy("prod", _session_settings(arns, ("prod", "prod-eu"))))
    other_run = run_key("run_prod-eu_20250101000000_0123456789ab")[PARTITION_KEY]
    assert not allowed([policy], item("GetItem", arns, other_run))
    assert not allowed([policy], item("UpdateItem", arns, other_run, attributes=CLAIM, returns="NONE"))
    assert not allowed([policy], item("GetItem", arns, node_key("prod-eu", NODE)[PARTITION_KEY]))
    assert not allowed([policy], Request("s3:PutObject", f"{arns.bucket}/runs/prod-eu/run_prod-eu_x/logs/0001/0.log"))
    assert not allowed([policy], Request("ssm:GetParameters", f"{arns.parameters}/prod-eu/secrets/API_TOKEN"))
    assert allowed([policy], Request("ssm:GetParameters", f"{arns.parameters}/prod/secrets/API_TOKEN"))
    assert allowed([policy], item("GetItem", arns, run_key("run_prod_20250101000000_0123456789ab")[PARTITION_KEY]))


def test_the_session_policy_fits_sts_limit_at_the_longest_names() -> None:
    """STS takes a session policy of at most 2,048 characters of plain text (and refuses one whose packed form
    exceeds its limit); measured here with a 31-character environment name, a 21-character stage and real ARNs."""
    arns = _session_arns(LONGEST_ENVIRONMENT, "other")
    policy = session_policy(LONGEST_ENVIRONMENT, _session_settings(arns, (LONGEST_ENVIRONMENT, "other")))
    print(f"session policy: {len(policy)} characters at the longest names")
    assert len(policy.encode()) == len(policy)  # IAM documents hold ASCII here
    assert len(policy) <= 2048, len(policy)


# ---------------------------------------------------------------- why not moto


@set_initial_no_auth_action_count(4)
@mock_aws
def test_moto_does_not_evaluate_leading_keys() -> None:
    # Given a user whose only permission is PutItem on items under ENV#a#RUN#
    iam = boto3.client("iam", region_name="us-east-1")
    iam.create_user(UserName="node")
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["dynamodb:PutItem"],
                "Resource": "*",
                "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["ENV#a#RUN#*"]}},
            }
        ],
    }
    iam.put_user_policy(UserName="node", PolicyName="node", PolicyDocument=json.dumps(document))
    secret = iam.create_access_key(UserName="node")["AccessKey"]
    boto3.client("dynamodb", region_name="us-east-1").create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    node = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        aws_access_key_id=secret["AccessKeyId"],
        aws_secret_access_key=secret["SecretAccessKey"],
    )
    # When it puts an item under another environment's key, and reads (an action it lacks)
    node.put_item(TableName="t", Item={"pk": {"S": "ENV#b#RUN#x"}})
    with pytest.raises(node.exceptions.ClientError, match=r"AccessDenied|not authorized"):
        node.get_item(TableName="t", Key={"pk": {"S": "ENV#b#RUN#x"}})
    # Then moto checked the action but not the condition: it cannot prove the cases above.
