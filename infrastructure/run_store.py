"""The run store: one DynamoDB table for runs, checkpoints, nodes, packages and keys, and its stream."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from infrastructure.nag import acknowledge_scoped_wildcard
from runly_core.resources import TTL_ATTRIBUTE, IndexSpec, table_definition

# Lambda's stream poller calls these (AWSLambdaDynamoDBExecutionRole holds the same four).
STREAM_READ_ACTIONS = ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"]


def _string(name: str) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=name, type=dynamodb.AttributeType.STRING)


def _key(schema: list[dict[str, str]], kind: str) -> dynamodb.Attribute:
    # Every key attribute of the table is a string (runly_core.resources.table_definition).
    return _string(next(key["AttributeName"] for key in schema if key["KeyType"] == kind))


class RunStore(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, table_name: str) -> None:
        super().__init__(scope, construct_id)
        # Keys, indexes, projections and billing from the one definition the embedded stack creates its table from.
        definition = table_definition(table_name)
        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=definition["TableName"],
            partition_key=_key(definition["KeySchema"], "HASH"),
            sort_key=_key(definition["KeySchema"], "RANGE"),
            billing_mode=dynamodb.BillingMode(definition["BillingMode"]),
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TTL_ATTRIBUTE,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            # Every write, with the item before and after it: run events compare a run's old and new state.
            stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES,
            # The table is the system of record (runs, checkpoints, keys): never lose it to a stack update.
            deletion_protection=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        for index in definition["GlobalSecondaryIndexes"]:
            projection = index["Projection"]
            self.table.add_global_secondary_index(
                index_name=index["IndexName"],
                partition_key=_key(index["KeySchema"], "HASH"),
                sort_key=_key(index["KeySchema"], "RANGE"),
                projection_type=dynamodb.ProjectionType(projection["ProjectionType"]),
                non_key_attributes=projection.get("NonKeyAttributes"),
            )

    def grant_read_write(self, grantee: iam.IGrantable) -> None:
        """Item reads and writes on the table and its indexes (no table management)."""
        self.table.grant_read_write_data(grantee)
        acknowledge_scoped_wildcard(
            grantee,
            resource=self.table.node.default_child,  # type: ignore[arg-type]
            suffix="/index/*",
            reason="IAM names a table's indexes <table ARN>/index/<name>; the wildcard covers only this table's "
            "GSIs (runly_core.resources.TABLE_INDEXES), which the grantee queries.",
        )

    @property
    def stream_arn(self) -> str:
        arn = self.table.table_stream_arn
        assert arn is not None, "the table has a stream"
        return arn

    def index_arn(self, index: IndexSpec) -> str:
        return f"{self.table.table_arn}/index/{index.name}"

    def grant_items(self, grantee: iam.IGrantable, *actions: str) -> None:
        """The named item actions (e.g. "GetItem") on the table's items only: no index, no table management."""
        iam.Grant.add_to_principal(
            grantee=grantee, actions=[f"dynamodb:{action}" for action in actions], resource_arns=[self.table.table_arn]
        )

    def grant_query(self, grantee: iam.IGrantable, index: IndexSpec) -> None:
        """Query one index (no wildcard over the table's indexes)."""
        iam.Grant.add_to_principal(grantee=grantee, actions=["dynamodb:Query"], resource_arns=[self.index_arn(index)])

    def grant_stream_read(self, grantee: iam.IGrantable) -> None:
        """What a Lambda event source mapping on the table's stream needs: reading this stream, and listing
        streams, which IAM cannot scope to a resource."""
        iam.Grant.add_to_principal(grantee=grantee, actions=STREAM_READ_ACTIONS, resource_arns=[self.stream_arn])
        iam.Grant.add_to_principal(grantee=grantee, actions=["dynamodb:ListStreams"], resource_arns=["*"])
        principal = grantee.grant_principal
        if not isinstance(principal, Construct):
            raise TypeError(f"cannot acknowledge findings on {principal!r}: not a construct")
        cdk.Validations.of(principal).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="dynamodb:ListStreams has no resource-level permission (it lists stream ARNs, no data); "
                "the records themselves are read only from this table's stream.",
            )
        )
