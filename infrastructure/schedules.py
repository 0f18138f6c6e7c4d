"""Schedules: job templates that EventBridge Scheduler fires into a function that enqueues a normal run.

- A schedule group (``runly_core.resources.ResourceNames.scheduler_group``) holds one EventBridge schedule per runly
  schedule; the API function creates, updates and deletes them (``grant_manage_schedules``), and nothing else may.
- The fire function (``functions.schedules.fire``) enqueues the schedule's run, once per scheduled time.
- The same group holds delayed runs' timers (``functions.dal.schedules.RunTimers``): a one-time ``at(...)``
  schedule per run delayed beyond SQS's 15 minutes, named after the run, created (and deleted on cancel) by the API
  with the same grants, deleting itself after it fired (ActionAfterCompletion DELETE: EventBridge does that, no
  grant needed). It invokes the same fire function, which then sends the run's message: ``sqs:SendMessage`` and a
  read of the run item, both granted here already.
- The scheduler role is what EventBridge Scheduler assumes to invoke it: trusted by the scheduler service for this
  account's group only, allowed ``lambda:InvokeFunction`` on the fire function only. The API may pass that role,
  and only that role, only to EventBridge Scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from constructs import Construct

from infrastructure.environment_queues import EnvironmentQueues
from infrastructure.lambda_function import RunlyFunction
from infrastructure.nag import acknowledge_wildcard_arn
from infrastructure.run_store import RunStore
from runly_core.records import environment_partition, idempotency_key, package_partition, schedule_key
from runly_core.resources import ITEMS_BY_KIND, PARTITION_KEY, ResourceNames
from runly_core.run_store import run_key

FIRE_HANDLER = "functions.schedules.fire.lambda_handler"
SCHEDULER_SERVICE = "scheduler.amazonaws.com"
# What the API does with schedules; ListSchedules is not needed (the table lists them).
MANAGE_SCHEDULE_ACTIONS = [
    "scheduler:CreateSchedule",
    "scheduler:UpdateSchedule",
    "scheduler:DeleteSchedule",
    "scheduler:GetSchedule",
]
# The items a fire reads and writes, by partition key prefix: the schedule, the run it records (and its checkpoint
# partition), the fire's idempotency key, the package versions and the environment's pins it resolves a version with.
# A run's partition and the pins' both start with ENV# (runly_core.records): one prefix covers them.
FIRE_ITEM_PREFIXES = tuple(
    dict.fromkeys(
        f"{partition.split('#', 1)[0]}#*"
        for partition in (
            schedule_key("id")[PARTITION_KEY],
            run_key("run_name_id")[PARTITION_KEY],
            idempotency_key("owner", "key")[PARTITION_KEY],
            package_partition("name"),
            environment_partition("name"),
        )
    )
)
FIRE_ITEM_ACTIONS = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]


class Schedules(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        names: ResourceNames,
        code: lambda_.Code,
        environment: Mapping[str, str],
        store: RunStore,
        queues: EnvironmentQueues,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)

        self.group = scheduler.CfnScheduleGroup(self, "Group", name=names.scheduler_group)

        self.fire = RunlyFunction(
            self,
            "Fire",
            handler=FIRE_HANDLER,
            code=code,
            description="runly: enqueues a schedule's run when EventBridge Scheduler fires it",
            environment=environment,
        )
        # Items by partition key (dynamodb:LeadingKeys): what enqueue and the schedule's own record touch.
        self.fire.role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[*FIRE_ITEM_ACTIONS, "dynamodb:Query"],
                resources=[store.table.table_arn],
                conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(FIRE_ITEM_PREFIXES)}},
            )
        )
        # The new run's view says why it is queued: which nodes are online (nodes are listed by kind).
        store.grant_query(self.fire.role, ITEMS_BY_KIND)
        queues.grant_send(self.fire.role)

        # What EventBridge Scheduler assumes to invoke the fire function (and nothing else), for this account's
        # group only (confused-deputy protection).
        self.role = iam.Role(
            self,
            "SchedulerRole",
            assumed_by=iam.ServicePrincipal(
                SCHEDULER_SERVICE,
                conditions={"StringEquals": {"aws:SourceAccount": stack.account, "aws:SourceArn": self.group.attr_arn}},
            ),
            description="runly: EventBridge Scheduler invokes the schedule fire function",
        )
        # The function's own ARN, not `grant_invoke` (which adds every version and alias, `<arn>:*`).
        self.role.add_to_principal_policy(
            iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[self.fire.function.function_arn])
        )

    @property
    def schedules_arn(self) -> str:
        """Every schedule of the group (schedule ARNs are `schedule/<group>/<name>`; names are runly's ids)."""
        return cdk.Stack.of(self).format_arn(
            service="scheduler", resource="schedule", resource_name=f"{self.group.ref}/*"
        )

    def api_environment(self) -> dict[str, str]:
        """The API function's schedule settings (functions.settings.ApiSettings)."""
        return {
            "scheduler_group": self.group.ref,
            "scheduler_role_arn": self.role.role_arn,
            "schedule_fire_function_arn": self.fire.function.function_arn,
        }

    def grant_manage_schedules(self, grantee: iam.IGrantable) -> None:
        """Create, update, delete and read the group's schedules, passing them the scheduler role: nothing more."""
        principal = grantee.grant_principal
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=MANAGE_SCHEDULE_ACTIONS, resources=[self.schedules_arn])
        )
        principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": SCHEDULER_SERVICE}},
            )
        )
        if not isinstance(principal, Construct):
            raise TypeError(f"cannot acknowledge findings on {principal!r}: not a construct")
        acknowledge_wildcard_arn(
            principal,
            arn=self.schedules_arn,
            reason="The API creates a schedule per runly schedule, and a one-time timer per delayed run, each named by "
            "an id it makes; the wildcard covers only the schedules of this deployment's group, for the four actions "
            "the API uses.",
        )
