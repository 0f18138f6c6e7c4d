from __future__ import annotations

from typing import Any

from infrastructure.run_events import failures_queue_name
from infrastructure.settings import StageSettings
from runly_core import resources
from tests.infrastructure.cfn import resources_of_type
from tests.infrastructure.synth import TEST_ENVIRONMENTS


def _queues_by_name(template_json: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        queue["Properties"]["QueueName"]: (logical_id, queue["Properties"])
        for logical_id, queue in resources_of_type(template_json, "AWS::SQS::Queue").items()
    }


def test_two_environments_make_two_queue_pairs(template_json: dict[str, Any], stage_settings: StageSettings) -> None:
    # Given a stage with two environments (conftest), then there is one queue and one DLQ per environment (and,
    # apart from them, only the run events' failure queue: test_run_events).
    assert len(TEST_ENVIRONMENTS) == 2
    names = stage_settings.resource_names(account="any", region="any")
    pairs = {name for environment in TEST_ENVIRONMENTS for name in names.queues(environment).model_dump().values()}
    assert len(pairs) == 2 * len(TEST_ENVIRONMENTS)
    assert set(_queues_by_name(template_json)) == pairs | {failures_queue_name(names)}


def test_each_environment_queue_redrives_to_its_own_dead_letter_queue(
    template_json: dict[str, Any], stage_settings: StageSettings
) -> None:
    names = stage_settings.resource_names(account="any", region="any")
    queues = _queues_by_name(template_json)
    for environment in TEST_ENVIRONMENTS:
        queue_names = names.queues(environment)
        _, queue = queues[queue_names.queue]
        dead_letter_logical_id, dead_letter_queue = queues[queue_names.dead_letter_queue]

        assert queue["RedrivePolicy"] == {
            "deadLetterTargetArn": {"Fn::GetAtt": [dead_letter_logical_id, "Arn"]},
            "maxReceiveCount": resources.QUEUE_MAX_RECEIVE_COUNT,
        }
        assert queue["VisibilityTimeout"] == resources.QUEUE_VISIBILITY_TIMEOUT_SECONDS
        assert queue["ReceiveMessageWaitTimeSeconds"] == resources.QUEUE_RECEIVE_WAIT_SECONDS
        assert queue["MessageRetentionPeriod"] == resources.QUEUE_RETENTION_SECONDS
        assert dead_letter_queue["MessageRetentionPeriod"] == resources.QUEUE_RETENTION_SECONDS
        assert "RedrivePolicy" not in dead_letter_queue


def test_every_queue_is_encrypted_and_refuses_plain_http(template_json: dict[str, Any]) -> None:
    queues = resources_of_type(template_json, "AWS::SQS::Queue")
    for queue in queues.values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True

    tls_only = set()
    for policy in resources_of_type(template_json, "AWS::SQS::QueuePolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Deny" and statement.get("Condition") == {
                "Bool": {"aws:SecureTransport": "false"}
            }:
                tls_only.add(statement["Resource"]["Fn::GetAtt"][0])
    assert tls_only == set(queues)
