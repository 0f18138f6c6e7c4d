"""Acknowledging cdk-nag findings (cdk-nag 3: `Validations.of(scope).acknowledge`) where ids need resolving."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from constructs import Construct


def acknowledge_scoped_wildcard(
    grantee: iam.IGrantable, *, resource: cdk.CfnResource, suffix: str, reason: str
) -> None:
    """Acknowledge AwsSolutions-IAM5 for exactly `<resource ARN><suffix>` (e.g. `/index/*`) on the grantee's
    policy, so any other wildcard granted to it is still reported."""
    stack = cdk.Stack.of(resource)
    logical_id = stack.resolve(stack.get_logical_id(resource))
    principal = grantee.grant_principal
    if not isinstance(principal, Construct):
        raise TypeError(f"cannot acknowledge findings on {principal!r}: not a construct")
    cdk.Validations.of(principal).acknowledge(
        cdk.Acknowledgment(id=f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>{suffix}]", reason=reason)
    )


def acknowledge_wildcard_arn(construct: Construct, *, arn: str, reason: str) -> None:
    """Acknowledge AwsSolutions-IAM5 for exactly one ARN that holds a wildcard (e.g. a UUID known only once the
    resource exists), written as cdk-nag writes it in the finding: intrinsics as `<AWS::Region>`, `<Id.Arn>`."""
    rendered = _as_nag_renders(cdk.Stack.of(construct).resolve(arn))
    cdk.Validations.of(construct).acknowledge(
        cdk.Acknowledgment(id=f"AwsSolutions-IAM5[Resource::{rendered}]", reason=reason)
    )


def _as_nag_renders(value: Any) -> str:
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return "<" + ".".join(value["Fn::GetAtt"]) + ">"
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(_as_nag_renders(part) for part in parts)
    raise ValueError(f"cannot render {value!r} as cdk-nag does")


def acknowledge_wildcard_actions(construct: Construct, *, actions: Iterable[str], reason: str) -> None:
    """Acknowledge AwsSolutions-IAM5 for exactly these wildcard actions (e.g. ``sqs:*Message``)."""
    for action in actions:
        if "*" in action:
            cdk.Validations.of(construct).acknowledge(
                cdk.Acknowledgment(id=f"AwsSolutions-IAM5[Action::{action}]", reason=reason)
            )


# The node policy's queue actions (functions.nodes.policy.QUEUE_ACTIONS), spelt short to fit STS's session-policy limit.
NODE_QUEUE_ACTIONS_REASON = (
    "sqs:*Message and sqs:Change* match exactly ReceiveMessage, DeleteMessage, SendMessage and ChangeMessageVisibility "
    "among IAM's SQS actions (tests/infrastructure/test_node_access.py), on the node's own queue only; spelt short so "
    "that the node's session policy fits STS's 2,048 characters."
)
