"""A schedule on the embedded stack: created over HTTP (the API creates its twin in moto's EventBridge Scheduler),
fired as EventBridge Scheduler fires it, and its run executed by the node agent.

EventBridge fires at most once a minute, and a test should not wait for a minute: the schedule here fires next in
2199, and the test fires it with the embedded scheduler's `--fire` (``EmbeddedStack.fire_schedule``), which sends
the fire function the very event the scheduler loop sends at a due time: the schedule's target input, read back from
moto, with the scheduled time filled in. When the loop fires what is due is tested on a fake clock
(tests/unit/test_local_scheduler.py)."""

from __future__ import annotations

from runly_cli.embedded.stack import EmbeddedStack
from runly_client.client import RunlyClient
from runly_core.contracts import CreateScheduleRequest, PackageVersionView, RunState


def test_a_fired_schedule_runs_its_job_on_a_node_once_per_scheduled_time(
    stack: EmbeddedStack, client: RunlyClient, hello: PackageVersionView
) -> None:
    # Given a schedule of the hello job, and the embedded scheduler running beside the gateway
    [scheduler] = [child for child in stack.children if child.name == "scheduler"]
    assert scheduler.process.poll() is None, scheduler.tail()
    schedule = client.create_schedule(
        CreateScheduleRequest(
            name="e2e greeting",
            package="hello",
            job="hello",
            config={"name": "Cron"},
            expression="cron(0 0 1 1 ? 2199)",
        )
    )
    assert [t.year for t in schedule.next_fire_times] == [2199]
    twin = stack.client("scheduler").get_schedule(GroupName=stack.names.scheduler_group, Name=schedule.id)
    assert twin["ScheduleExpression"] == "cron(0 0 1 1 ? 2199)"

    # When EventBridge Scheduler fires it (and then retries that same fire)
    fired = stack.fire_schedule(schedule.id, at="2199-01-01T00:00:00+00:00")
    retried = stack.fire_schedule(schedule.id, at="2199-01-01T00:00:00+00:00")

    # Then one run was enqueued, marked with the schedule, and it succeeded on the node
    assert fired["status"] == "enqueued" and retried == {**fired, "status": "duplicate"}, (fired, retried)
    run = client.wait(str(fired["run_id"]), timeout=120)
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.schedule_id == schedule.id and run.output["greetings"] == ["Hello, Cron!"]
    assert [r.id for r in client.list_runs(schedule_id=schedule.id).items] == [run.id]
    assert client.get_schedule(schedule.id).last_run_id == run.id

    # And once deleted it is gone from EventBridge Scheduler too
    client.delete_schedule(schedule.id)
    assert schedule.id not in {s.id for s in client.list_schedules()}
    listed = stack.client("scheduler").list_schedules(GroupName=stack.names.scheduler_group)["Schedules"]
    assert schedule.id not in {s["Name"] for s in listed}
