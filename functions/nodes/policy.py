"""The AWS permissions of a node agent of one environment, as one IAM policy document.

The same document is the inline policy of the EC2 fleet's instance role, the policy of the on-premises
``NodeRole`` of the environment (both built by the CDK stack) and the session policy the credentials function
passes to STS AssumeRole, so the three cannot drift apart. It holds exactly what ``node_agent.aws`` calls:

- the environment's run queue: receive, delete, change visibility (the heartbeat), read attributes, and send
  (a run's message is replaced before SQS's 12-hour in-flight cap: node_agent.run_messages);
- the feed: get packages (``packages/*``), put run logs (``logs/*``);
- the table: get, put, update, delete and condition-check (the checkpoint transaction) items whose partition
  key is a run's or a node's (``dynamodb:LeadingKeys``), so a node can neither read API keys nor rewrite packages.
"""

from __future__ import annotations

from typing import Any

from runly.records import node_key, run_key
from runly.resources import LOGS_PREFIX, PACKAGES_PREFIX, PARTITION_KEY

QUEUE_ACTIONS = (
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:SendMessage",
)
ITEM_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
)
# Partition keys the node may touch: RUN#<id> (runs and their checkpoints) and NODE#<id> (its registration).
LEADING_KEYS = (f"{run_key('')[PARTITION_KEY]}*", f"{node_key('')[PARTITION_KEY]}*")


def node_policy_document(*, queue_arn: str, feed_bucket_arn: str, table_arn: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "RunQueue", "Effect": "Allow", "Action": list(QUEUE_ACTIONS), "Resource": queue_arn},
            {
                "Sid": "ReadPackages",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"{feed_bucket_arn}/{PACKAGES_PREFIX}*",
            },
            {
                "Sid": "WriteRunLogs",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"{feed_bucket_arn}/{LOGS_PREFIX}*",
            },
            {
                "Sid": "RunAndNodeItems",
                "Effect": "Allow",
                "Action": list(ITEM_ACTIONS),
                "Resource": table_arn,
                "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(LEADING_KEYS)}},
            },
        ],
    }
