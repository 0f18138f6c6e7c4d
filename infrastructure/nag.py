"""Acknowledging cdk-nag findings (cdk-nag 3: `Validations.of(scope).acknowledge`) where ids need resolving."""

from __future__ import annotations

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
