"""The run store: one DynamoDB table for runs, checkpoints, nodes, packages and keys."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from infrastructure.nag import acknowledge_scoped_wildcard
from runly.resources import PARTITION_KEY, SORT_KEY, TABLE_INDEXES, TTL_ATTRIBUTE


def _string(name: str) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=name, type=dynamodb.AttributeType.STRING)


class RunStore(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, table_name: str) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=table_name,
            partition_key=_string(PARTITION_KEY),
            sort_key=_string(SORT_KEY),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TTL_ATTRIBUTE,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            # The table is the system of record (runs, checkpoints, keys): never lose it to a stack update.
            deletion_protection=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        for index in TABLE_INDEXES:
            self.table.add_global_secondary_index(
                index_name=index.name,
                partition_key=_string(index.partition_key),
                sort_key=_string(index.sort_key),
                projection_type=dynamodb.ProjectionType.ALL,
            )

    def grant_read_write(self, grantee: iam.IGrantable) -> None:
        """Item reads and writes on the table and its indexes (no table management)."""
        self.table.grant_read_write_data(grantee)
        acknowledge_scoped_wildcard(
            grantee,
            resource=self.table.node.default_child,  # type: ignore[arg-type]
            suffix="/index/*",
            reason="IAM names a table's indexes <table ARN>/index/<name>; the wildcard covers only this table's "
            "GSIs (runly.resources.TABLE_INDEXES), which the grantee queries.",
        )
