"""Create the deployment's AWS resources on the embedded AWS (moto server), with the same
names and attributes that the CDK stack gives them (both read runly_core.resources)."""

from __future__ import annotations

import json
from typing import Any

import boto3

from runly_core import resources as r


def create_resources(
    names: r.ResourceNames, session: boto3.session.Session, endpoint_url: str | None = None
) -> dict[str, str]:
    """Create table, queues and bucket; returns environment name -> queue URL."""
    dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)
    dynamodb.create_table(**r.table_definition(names.table), SSESpecification={"Enabled": True})
    dynamodb.update_time_to_live(
        TableName=names.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": r.TTL_ATTRIBUTE}
    )
    dynamodb.update_continuous_backups(
        TableName=names.table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
    )

    sqs = session.client("sqs", endpoint_url=endpoint_url)
    urls: dict[str, str] = {}
    for environment in names.environments:
        queue_names = names.queues(environment)
        common: dict[str, Any] = {
            "MessageRetentionPeriod": str(r.QUEUE_RETENTION_SECONDS),
            "SqsManagedSseEnabled": "true",
        }
        dlq_url = sqs.create_queue(QueueName=queue_names.dead_letter_queue, Attributes=common)["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        urls[environment] = sqs.create_queue(
            QueueName=queue_names.queue,
            Attributes={
                **common,
                "VisibilityTimeout": str(r.QUEUE_VISIBILITY_TIMEOUT_SECONDS),
                "ReceiveMessageWaitTimeSeconds": str(r.QUEUE_RECEIVE_WAIT_SECONDS),
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": r.QUEUE_MAX_RECEIVE_COUNT}
                ),
            },
        )["QueueUrl"]

    s3 = session.client("s3", endpoint_url=endpoint_url)
    s3.create_bucket(Bucket=names.feed_bucket)
    s3.put_bucket_versioning(Bucket=names.feed_bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket=names.feed_bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=names.feed_bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    # Schedules: moto keeps them (the API creates them in this group) but never fires one;
    # runly_cli.embedded.scheduler does.
    session.client("scheduler", endpoint_url=endpoint_url).create_schedule_group(Name=names.scheduler_group)
    return urls


def schedule_settings(names: r.ResourceNames) -> dict[str, str]:
    """The API's schedule settings (functions.settings.ApiSettings) on the embedded AWS: the group create_resources
    makes, and the ARNs of a role and a function that exist only by name (moto's scheduler invokes nothing;
    runly_cli.embedded.scheduler invokes the fire handler for schedules that target this ARN)."""
    return {
        "RUNLY_SCHEDULER_GROUP": names.scheduler_group,
        "RUNLY_SCHEDULER_ROLE_ARN": f"arn:aws:iam::{names.account}:role/{names.prefix}-scheduler",
        "RUNLY_SCHEDULE_FIRE_FUNCTION_ARN": (
            f"arn:aws:lambda:{names.region}:{names.account}:function:{names.prefix}-schedule-fire"
        ),
    }
