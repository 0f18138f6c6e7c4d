"""The AWS permissions of a node agent of one environment, as one IAM policy document.

The same document is the inline policy of the EC2 fleet's instance role, the policy of the on-premises
``NodeRole`` of the environment (both built by the CDK stack) and the session policy the credentials function
passes to STS AssumeRole, so the three cannot drift apart. It holds exactly what ``node_agent.aws`` calls, and
only for the node's own environment (docs/store.md):

- the environment's run queue: receive, delete, change visibility (the heartbeat), and send (a run's message is
  replaced before SQS's 12-hour in-flight cap: node_agent.run_messages);
- the feed: get packages (``packages/*``, shared by every environment), put run logs under the environment's own
  prefix (``runs/{environment}/*``: its logs and its outputs beyond their inline size, runly_core.run_objects);
- the table, by partition key (``dynamodb:LeadingKeys``): read (GetItem, and ConditionCheckItem for the checkpoint
  transaction) the environment's runs, checkpoints and nodes (``ENV#{environment}#RUN#*``,
  ``ENV#{environment}#NODE#*``); update them naming only the attributes a node writes (``dynamodb:Attributes``,
  asking for no values back, ReturnValues NONE: the DynamoDB guide requires ReturnValues that return no other
  attributes of attribute-level conditions); delete node registrations. No PutItem (a put replaces every attribute,
  those a node may not write included). So the API alone writes a run's definition (package, entry point, config,
  environment, ``api_created``) and its search index keys, and a node writes nothing under its environment's own
  ``ENV#{environment}`` partition (its pins), no API key, package or schedule, and no other environment's items;
- the environment's variables and secrets: ``ssm:GetParameters`` on ``{values_path}/{environment}/*`` (SSM
  Parameter Store; runly_core.resources.environment_values_path). Secrets are SecureStrings under the AWS-managed key
  ``aws/ssm``, whose key policy lets every principal of the account decrypt through SSM: the parameter path in
  this statement is the whole bound, so no kms statement is needed (nor would one fit: below).

STS refuses a session policy over 2,048 characters (tests/infrastructure/test_node_policy_cases.py measures it at the
longest names). To make room for the values, four spellings are shorter than they were, each granting exactly what
it did: the queue's actions are ``sqs:*Message`` and ``sqs:Change*`` (IAM's SQS actions of those forms are exactly
ReceiveMessage, DeleteMessage, SendMessage and ChangeMessageVisibility; the batch calls are authorized as these);
the write statements' ReturnValues condition is a string, not a one-element list; the reads name the environment's
prefix ``ENV#{environment}#*`` (whose only partitions are its runs and nodes: its pins are ``ENV#{environment}``,
without the "#"); and the values' grant shares the packages' statement (an action of one service never matches a
resource of the other, so the pairs across are void).
"""

from __future__ import annotations

from typing import Any

from runly_core.records import NODE_PARTITION, environment_prefix, environment_runs_prefix
from runly_core.resources import ITEMS_BY_KIND, PACKAGES_PREFIX, PARTITION_KEY, RUNS_BY_LEASE, SORT_KEY
from runly_core.run_store import MESSAGE_HANDOFF, RUN_PARTITION

# ReceiveMessage, DeleteMessage and SendMessage (the only SQS actions ending "Message"), and the heartbeat's
# ChangeMessageVisibility (the only one starting "Change"). SQS's batch calls are authorized as their single forms.
QUEUE_ACTIONS = ("sqs:*Message", "sqs:Change*")
VALUE_ACTIONS = ("ssm:GetParameters",)
READ_ACTIONS = ("dynamodb:GetItem", "dynamodb:ConditionCheckItem")
# What node_agent.aws names in the updates of a run item and of its checkpoint item (in the same partition): the
# lease, attempts, progress, outcome, a retry's time, a handed-over message, the checkpoint, and the lease index's
# keys (a claim puts its run in its environment's lease partition). The table's keys are named too, as DynamoDB
# requires of an attribute list. Every other attribute of a run is the API's.
RUN_ATTRIBUTES = (
    PARTITION_KEY,
    SORT_KEY,
    "state",
    "attempt",
    "attempts",
    "lease_owner",
    "lease_until_ms",
    RUNS_BY_LEASE.partition_key,
    RUNS_BY_LEASE.sort_key,
    "started_at",
    "finished_at",
    "progress_json",
    "output_json",
    "output_ref",
    "error_json",
    "retry_at",
    MESSAGE_HANDOFF,
    "checkpoint_json",
)
# What node_agent.aws.put_node names in a node's registration (runly_core.records.NodeRecord, its items-by-kind keys
# included; drain_requested is the API's, but the heartbeat's condition reads it). Not its environment: the API
# reads that from the item's key (functions.dal.nodes).
NODE_ATTRIBUTES = (
    PARTITION_KEY,
    SORT_KEY,
    "host",
    "capacity",
    "running",
    "agent_version",
    "state",
    "started_at",
    "last_seen",
    "expires_at",
    "drain_requested",
    ITEMS_BY_KIND.partition_key,
    ITEMS_BY_KIND.sort_key,
)
# The attribute-level conditions hold only if a write returns no other attributes (DynamoDB developer guide, "Using
# IAM policy conditions for fine-grained access control": NONE, UPDATED_OLD or UPDATED_NEW); the agent asks for none.
# IfExists: a transaction's Update has no ReturnValues.
WRITE_RETURN_VALUE = "NONE"


def run_partitions(environment: str) -> str:
    """The pattern of the environment's run partitions (its runs and their checkpoints)."""
    return f"{environment_prefix(environment)}{RUN_PARTITION}*"


def node_partitions(environment: str) -> str:
    return f"{environment_prefix(environment)}{NODE_PARTITION}*"


def _writes(
    sid: str, actions: str | list[str], table_arn: str, partitions: str, attributes: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": table_arn,
        "Condition": {
            # One operator for both keys (the attribute names hold no wildcard: StringLike is StringEquals on them),
            # so the session policy fits STS's 2,048 characters.
            "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [partitions], "dynamodb:Attributes": list(attributes)},
            "StringEqualsIfExists": {"dynamodb:ReturnValues": WRITE_RETURN_VALUE},
        },
    }


def values_arn(parameters_arn: str, environment: str) -> str:
    """The ARN pattern of the environment's variables and secrets; ``parameters_arn`` names the deployment's values
    path (``arn:aws:ssm:{region}:{account}:parameter/runly-{stage}``:
    runly_core.resources.ResourceNames.values_path)."""
    return f"{parameters_arn}/{environment}/*"


def parameters_arn(*, partition: str, region: str, account: str, values_path: str) -> str:
    # A hierarchical parameter's ARN is "parameter" followed by its name, whose leading "/" it keeps.
    return f"arn:{partition}:ssm:{region}:{account}:parameter{values_path}"


def node_policy_document(
    *, environment: str, queue_arn: str, feed_bucket_arn: str, table_arn: str, parameters_arn: str
) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                # One statement for three services, to spare the session policy's characters (STS: 2,048):
                # an action applies only to resources of its own service, so this cross product grants nothing
                # beyond its parts: the queue actions on the queue, the value reads on the environment's values,
                # s3:GetObject and s3:PutObject on the environment's runs (logs, outputs, checkpoints).
                "Sid": "QueueValuesAndRuns",
                "Effect": "Allow",
                "Action": [*QUEUE_ACTIONS, *VALUE_ACTIONS, "s3:GetObject", "s3:PutObject"],
                "Resource": [
                    queue_arn,
                    values_arn(parameters_arn, environment),
                    f"{feed_bucket_arn}/{environment_runs_prefix(environment)}*",
                ],
            },
            # Read only: a node never writes a package.
            {
                "Sid": "ReadPackages",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"{feed_bucket_arn}/{PACKAGES_PREFIX}*",
            },
            {
                "Sid": "ReadItems",
                "Effect": "Allow",
                "Action": list(READ_ACTIONS),
                "Resource": table_arn,
                # Its runs and nodes: the only partitions under the prefix (see the module's docstring).
                "Condition": {
                    "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{environment_prefix(environment)}*"]}
                },
            },
            _writes("WriteRuns", "dynamodb:UpdateItem", table_arn, run_partitions(environment), RUN_ATTRIBUTES),
            _writes(
                "WriteNodes",
                ["dynamodb:UpdateItem", "dynamodb:DeleteItem"],
                table_arn,
                node_partitions(environment),
                NODE_ATTRIBUTES,
            ),
        ],
    }


def without_sids(document: dict[str, Any]) -> dict[str, Any]:
    """The document without its statement ids (names for a reader of the role), as the session policy: STS counts
    its characters."""
    return {**document, "Statement": [{k: v for k, v in s.items() if k != "Sid"} for s in document["Statement"]]}
