"""Run queues: per environment, one SQS queue that nodes long-poll and its dead-letter queue."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from runly_core.resources import (
    QUEUE_MAX_RECEIVE_COUNT,
    QUEUE_RECEIVE_WAIT_SECONDS,
    QUEUE_RETENTION_SECONDS,
    QUEUE_VISIBILITY_TIMEOUT_SECONDS,
    ResourceNames,
)


class EnvironmentQueues(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, names: ResourceNames) -> None:
        super().__init__(scope, construct_id)
        self.queues: dict[str, sqs.Queue] = {}
        self.dead_letter_queues: dict[str, sqs.Queue] = {}
        retention = cdk.Duration.seconds(QUEUE_RETENTION_SECONDS)
        for environment in names.environments:
            queue_names = names.queues(environment)
            dead_letter_queue = sqs.Queue(
                self,
                f"{environment}-dlq",
                queue_name=queue_names.dead_letter_queue,
                retention_period=retention,
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
            )
            self.dead_letter_queues[environment] = dead_letter_queue
            self.queues[environment] = sqs.Queue(
                self,
                environment,
                queue_name=queue_names.queue,
                visibility_timeout=cdk.Duration.seconds(QUEUE_VISIBILITY_TIMEOUT_SECONDS),
                receive_message_wait_time=cdk.Duration.seconds(QUEUE_RECEIVE_WAIT_SECONDS),
                retention_period=retention,
                dead_letter_queue=sqs.DeadLetterQueue(
                    queue=dead_letter_queue, max_receive_count=QUEUE_MAX_RECEIVE_COUNT
                ),
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
            )

    def queue_urls(self) -> dict[str, str]:
        return {environment: queue.queue_url for environment, queue in self.queues.items()}

    def grant_send(self, grantee: iam.IGrantable) -> None:
        """SendMessage to every environment's run queue; not to the dead-letter queues, no other action."""
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["sqs:SendMessage"],
            resource_arns=[queue.queue_arn for queue in self.queues.values()],
        )
