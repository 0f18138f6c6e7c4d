"""The environments' variables and secrets: SSM Parameter Store parameters under the deployment's values path.

Nothing is created per value at deploy time: the API creates each parameter when a value is set
(``PUT /environments/{environment}/variables|secrets/{name}``; functions/dal/values.py). What the stack holds is the
path and who may do what under it:

- the API function writes, reads, lists and deletes the parameters under ``{values_path}/*`` (it never asks SSM to
  decrypt a secret: it lists secrets by their metadata);
- a node reads (``ssm:GetParameters``) only its own environment's ``{values_path}/{environment}/*``: that grant is
  part of the node policy (functions.nodes.policy), with the rest of what a node may do.

Secrets are SecureStrings encrypted with the AWS-managed key ``aws/ssm`` (docs/api.md says why not a customer-managed
key): no key to create, pay for or rotate, and no kms statement in the node's session policy, which is at STS's limit.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from constructs import Construct

from functions.nodes.policy import parameters_arn
from infrastructure.nag import acknowledge_wildcard_arn
from runly_core.resources import ResourceNames

VALUES_PATH = "RUNLY_VALUES_PATH"  # functions.settings.ApiSettings.values_path, node_agent.settings.AgentSettings
PARAMETERS_ARN = "RUNLY_PARAMETERS_ARN"  # functions.nodes.credentials.CredentialsSettings.parameters_arn
API_ACTIONS = ("ssm:PutParameter", "ssm:GetParameter", "ssm:GetParametersByPath", "ssm:DeleteParameter")


class JobValues(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, names: ResourceNames) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.values_path = names.values_path
        self.parameters_arn = parameters_arn(
            partition=stack.partition, region=stack.region, account=stack.account, values_path=names.values_path
        )

    def grant_manage(self, grantee: iam.IGrantable) -> None:
        """What the API does with values: set, read a variable, list, delete (functions/dal/values.py)."""
        resource = f"{self.parameters_arn}/*"
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(sid="ManageValues", actions=list(API_ACTIONS), resources=[resource])
        )
        # DescribeParameters (a secret's metadata without its value) has no resource-level permissions in IAM.
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(sid="DescribeValues", actions=["ssm:DescribeParameters"], resources=["*"])
        )
        principal = grantee.grant_principal
        assert isinstance(principal, Construct)
        acknowledge_wildcard_arn(
            principal,
            arn=resource,
            reason="The API creates a parameter per variable or secret under the deployment's values path, named at "
            "run time (/runly-<stage>/<environment>/<kind>/<name>); it touches nothing outside that path.",
        )
        acknowledge_wildcard_arn(
            principal,
            arn="*",
            reason="ssm:DescribeParameters supports no resource-level permission; the API filters it to the "
            "deployment's values path and reads only metadata (never a value) with it.",
        )
