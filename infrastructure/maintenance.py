"""Maintenance: nothing lost, nothing stuck.

- Per environment, a dead-letter handler consumes that environment's DLQ and marks the runs of poison messages
  Failed with the reason (`functions.maintenance.dlq`).
- One reaper, every minute, re-queues or ends runs whose lease expired with no live owner
  (`functions.maintenance.reaper`).

Both read the table and the run queues only (`functions.maintenance.settings.ReaperSettings` and
`DeadLetterSettings`, environment from `infrastructure.function_environment.maintenance_function_environment`).
"""

from __future__ import annotations

from collections.abc import Mapping

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infrastructure.environment_queues import EnvironmentQueues
from infrastructure.lambda_function import RunlyFunction
from infrastructure.run_store import RunStore
from runly_core.resources import RUNS_BY_LEASE

DEAD_LETTER_HANDLER = "functions.maintenance.dlq.lambda_handler"
REAPER_HANDLER = "functions.maintenance.reaper.lambda_handler"
DEAD_LETTER_BATCH_SIZE = 10
# Read by functions.maintenance.settings.DeadLetterSettings.dead_letter_environment.
DEAD_LETTER_ENVIRONMENT = "RUNLY_DEAD_LETTER_ENVIRONMENT"
REAPER_RATE = cdk.Duration.minutes(1)
# What Lambda's SQS poller calls (AWSLambdaSQSQueueExecutionRole holds the same three).
DEAD_LETTER_ACTIONS = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]


class Maintenance(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: lambda_.Code,
        environment: Mapping[str, str],
        store: RunStore,
        queues: EnvironmentQueues,
    ) -> None:
        super().__init__(scope, construct_id)

        self.dead_letter_handlers: dict[str, RunlyFunction] = {}
        for name, dead_letter_queue in queues.dead_letter_queues.items():
            handler = RunlyFunction(
                self,
                f"DeadLetters-{name}",
                handler=DEAD_LETTER_HANDLER,
                code=code,
                description=f"runly: fails the runs of poison messages of environment {name}",
                environment={**environment, DEAD_LETTER_ENVIRONMENT: name, "POWERTOOLS_SERVICE_NAME": "runly-dlq"},
            )
            # The mapping, without the grant SqsEventSource would add (it also allows ChangeMessageVisibility and
            # GetQueueUrl, which the poller does not use): exactly three actions on this DLQ.
            handler.add_to_policy(actions=DEAD_LETTER_ACTIONS, resources=[dead_letter_queue.queue_arn])
            lambda_.EventSourceMapping(
                self,
                f"DeadLettersSource-{name}",
                target=handler.function,
                event_source_arn=dead_letter_queue.queue_arn,
                batch_size=DEAD_LETTER_BATCH_SIZE,
                report_batch_item_failures=True,
            )
            store.grant_items(handler.role, "GetItem", "UpdateItem")
            self.dead_letter_handlers[name] = handler

        self.reaper = RunlyFunction(
            self,
            "Reaper",
            handler=REAPER_HANDLER,
            code=code,
            description="runly: re-queues or ends runs whose lease expired with no live owner",
            environment={**environment, "POWERTOOLS_SERVICE_NAME": "runly-reaper"},
        )
        store.grant_query(self.reaper.role, RUNS_BY_LEASE)
        # BatchGetItem: the lease index is KEYS_ONLY, candidates are read from the table; GetItem and UpdateItem
        # also keep the reaper's position item (functions.dal.maintenance.REAPER_POSITION_KEY).
        store.grant_items(self.reaper.role, "GetItem", "BatchGetItem", "UpdateItem")
        queues.grant_send(self.reaper.role)
        self.schedule = events.Rule(
            self,
            "ReaperSchedule",
            description="runly: run the reaper every minute",
            schedule=events.Schedule.rate(REAPER_RATE),
            # A missed tick is not worth a retry: the next one comes within the minute.
            targets=[targets.LambdaFunction(self.reaper.function, retry_attempts=0, max_event_age=REAPER_RATE)],
        )

    @property
    def functions(self) -> list[RunlyFunction]:
        return [*self.dead_letter_handlers.values(), self.reaper]
