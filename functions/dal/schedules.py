"""Schedules: their items in DynamoDB (SCHEDULE#{id} / SCHEDULE, listed through the items-by-kind index) and their
twins in EventBridge Scheduler (a schedule named after the id in the deployment's group), which fire them.

The item holds the definition (the job template, the expression) and what the last fire did; EventBridge Scheduler
holds when to fire and invokes the fire function with the schedule's id and the scheduled time. A change of the
definition is conditional on the revision it was read at; the fire function writes only its own fields, with
updates that never touch the definition.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Any

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from runly_core.contracts import RunTimerFire, ScheduleFire
from runly_core.records import SCHEDULE_KIND, ScheduleRecord, schedule_key, schedule_kind_sort_key
from runly_core.resources import ITEMS_BY_KIND, PARTITION_KEY
from runly_core.table import condition_failed, error_code, refused_as

# EventBridge Scheduler retries a failed invocation for this long (and this often); the fire function is idempotent
# per scheduled time for 24 h (runly_core.records.IDEMPOTENCY_TTL_SECONDS), well beyond it.
FIRE_RETRY_MAX_AGE_SECONDS = 3600
FIRE_RETRY_ATTEMPTS = 20


class ScheduleExists(Exception):
    pass


class ScheduleChanged(Exception):
    """The schedule changed (or went) since it was read: read it again."""


class SchedulerRefused(Exception):
    """EventBridge Scheduler refused the schedule as invalid (ValidationException)."""


class ScheduleStore:
    item_is_new = f"attribute_not_exists({PARTITION_KEY})"
    item_exists = f"attribute_exists({PARTITION_KEY})"

    def __init__(self, table_name: str, *, resource: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)

    def put_new(self, record: ScheduleRecord) -> None:
        with refused_as(lambda: ScheduleExists(record.schedule_id)):
            self._table.put_item(Item=record.to_item(), ConditionExpression=self.item_is_new)

    def get(self, schedule_id: str) -> ScheduleRecord | None:
        item = self._table.get_item(Key=schedule_key(schedule_id), ConsistentRead=True).get("Item")
        return ScheduleRecord.from_item(item) if item else None

    def list(self, environment: str | None = None) -> list[ScheduleRecord]:
        """Every schedule (of one environment, when given): by environment, oldest first within one."""
        condition = Key(ITEMS_BY_KIND.partition_key).eq(SCHEDULE_KIND)
        if environment is not None:
            condition &= Key(ITEMS_BY_KIND.sort_key).begins_with(schedule_kind_sort_key(environment))
        query: dict[str, Any] = {"IndexName": ITEMS_BY_KIND.name, "KeyConditionExpression": condition}
        records: list[ScheduleRecord] = []
        while True:
            page = self._table.query(**query)
            records.extend(ScheduleRecord.from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return records
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def replace_definition(self, record: ScheduleRecord, *, expected_revision: int) -> None:
        """Write ``record``'s definition over the stored one if it is still at ``expected_revision`` (else
        ScheduleChanged); what the fire function wrote (last_*) is left as it is."""
        item = record.to_item()
        names: dict[str, str] = {}
        values: dict[str, Any] = {":expected": expected_revision}
        sets: list[str] = []
        removes: list[str] = []
        for index, field in enumerate(sorted(ScheduleRecord.model_fields)):
            if field in ScheduleRecord.FIRE_FIELDS or field == "schedule_id":
                continue
            names[f"#f{index}"] = field
            if field in item:
                values[f":v{index}"] = item[field]
                sets.append(f"#f{index} = :v{index}")
            else:
                removes.append(f"#f{index}")
        for index, attribute in enumerate((ITEMS_BY_KIND.partition_key, ITEMS_BY_KIND.sort_key)):
            names[f"#k{index}"] = attribute
            values[f":k{index}"] = item[attribute]
            sets.append(f"#k{index} = :k{index}")
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        names["#revision"] = "revision"
        with refused_as(lambda: ScheduleChanged(record.schedule_id)):
            self._table.update_item(
                Key=schedule_key(record.schedule_id),
                UpdateExpression=update,
                ConditionExpression=f"{self.item_exists} AND #revision = :expected",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )

    def delete(self, schedule_id: str) -> bool:
        """Whether there was one to delete."""
        try:
            self._table.delete_item(Key=schedule_key(schedule_id), ConditionExpression=self.item_exists)
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def record_fired(self, schedule_id: str, *, scheduled_time: str, run_id: str) -> None:
        """A fire enqueued ``run_id``: note it and clear the last error (an older fire, retried late, does not
        overwrite a newer one's; a schedule deleted meanwhile is not brought back)."""
        self._update_fire_fields(
            schedule_id,
            update="SET last_fired_at = :at, last_run_id = :run REMOVE last_error, last_error_at",
            condition=f"{self.item_exists} AND (attribute_not_exists(last_fired_at) OR last_fired_at <= :at)",
            values={":at": scheduled_time, ":run": run_id},
        )

    def record_error(self, schedule_id: str, *, message: str, at: str) -> None:
        self._update_fire_fields(
            schedule_id,
            update="SET last_error = :message, last_error_at = :at",
            condition=self.item_exists,
            values={":message": message, ":at": at},
        )

    def _update_fire_fields(self, schedule_id: str, *, update: str, condition: str, values: dict[str, Any]) -> None:
        try:
            self._table.update_item(
                Key=schedule_key(schedule_id),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise


class Scheduler:
    """The schedules' twins in EventBridge Scheduler: each invokes the fire function (with ``role_arn``, which may
    invoke nothing else) with its id and the scheduled time."""

    def __init__(self, *, group: str, role_arn: str, target_arn: str, client: Any = None) -> None:
        self.group = group
        self._role_arn = role_arn
        self._target_arn = target_arn
        self._client = client or boto3.client("scheduler")

    def create(self, record: ScheduleRecord) -> None:
        self._call(self._client.create_schedule, record)

    def update(self, record: ScheduleRecord) -> None:
        """Replace the schedule's definition; one that is missing (its creation was cut short after the item was
        written) is created, so a change repairs it."""
        try:
            self._call(self._client.update_schedule, record)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            self._call(self._client.create_schedule, record)

    def delete(self, schedule_id: str) -> None:
        """Delete it; one that is already gone is not an error (a retried DELETE)."""
        try:
            self._client.delete_schedule(GroupName=self.group, Name=schedule_id)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise

    def get(self, schedule_id: str) -> dict[str, Any] | None:
        try:
            return dict(self._client.get_schedule(GroupName=self.group, Name=schedule_id))
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return None
            raise

    def _call(self, operation: Any, record: ScheduleRecord) -> None:
        parameters: dict[str, Any] = {
            "GroupName": self.group,
            "Name": record.schedule_id,
            "Description": record.name,
            "ScheduleExpression": record.expression,
            "ScheduleExpressionTimezone": record.timezone,
            "State": "ENABLED" if record.enabled else "DISABLED",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": {
                "Arn": self._target_arn,
                "RoleArn": self._role_arn,
                "Input": ScheduleFire.input_template(record.schedule_id),
                "RetryPolicy": {
                    "MaximumEventAgeInSeconds": FIRE_RETRY_MAX_AGE_SECONDS,
                    "MaximumRetryAttempts": FIRE_RETRY_ATTEMPTS,
                },
            },
        }
        if record.start_at is not None:
            parameters["StartDate"] = datetime.fromisoformat(record.start_at)
        try:
            operation(**parameters)
        except ClientError as exc:
            if error_code(exc) == "ValidationException":
                message = str(exc.response.get("Error", {}).get("Message", "")) or "invalid schedule"
                raise SchedulerRefused(message) from exc
            raise


class RunTimers:
    """Delayed runs' timers: a one-time EventBridge Scheduler schedule per run (``at(...)``, in UTC, named after
    the run, in the schedules' group) that invokes the fire function with the run's id once, then deletes itself
    (ActionAfterCompletion DELETE). A timer costs nothing while it waits (EventBridge Scheduler bills invocations).
    Quotas relied on, per account and Region, adjustable: at least 1,000,000 schedules (timers and schedules
    together), CreateSchedule and DeleteSchedule at least 250 requests/s (1,000 in the main Regions); a throttled
    create is an enqueue that fails with 503 and records nothing (``runs._dispatch``)."""

    def __init__(self, *, group: str, role_arn: str, target_arn: str, client: Any = None) -> None:
        self.group = group
        self._role_arn = role_arn
        self._target_arn = target_arn
        self._given_client = client

    @cached_property
    def _client(self) -> Any:
        # Built on first use: most enqueues are not delayed, and a client costs a cold start tens of milliseconds.
        return self._given_client or boto3.client("scheduler")

    def create(self, run_id: str, expression: str) -> None:
        """A timer that fires at ``expression`` (``at(yyyy-mm-ddThh:mm:ss)``, UTC:
        ``functions.logic.schedule_expression.at_expression``); one that already exists (a retried request that
        made it) is left as it is."""
        try:
            self._client.create_schedule(
                GroupName=self.group,
                Name=run_id,
                Description="runly: a delayed run's timer",
                ScheduleExpression=expression,
                ScheduleExpressionTimezone="UTC",
                State="ENABLED",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Target={
                    "Arn": self._target_arn,
                    "RoleArn": self._role_arn,
                    "Input": RunTimerFire.input_template(run_id),
                    "RetryPolicy": {
                        "MaximumEventAgeInSeconds": FIRE_RETRY_MAX_AGE_SECONDS,
                        "MaximumRetryAttempts": FIRE_RETRY_ATTEMPTS,
                    },
                },
            )
        except ClientError as exc:
            if error_code(exc) != "ConflictException":
                raise

    def delete(self, run_id: str) -> bool:
        """Delete the run's timer; whether there was one (a timer that fired has deleted itself)."""
        try:
            self._client.delete_schedule(GroupName=self.group, Name=run_id)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return False
            raise
        return True
