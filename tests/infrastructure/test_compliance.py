from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from cdk_nag import AwsSolutionsChecks
from cfnlint.api import ManualArgs, lint_file

from infrastructure.stack import RunlyStack
from tests.infrastructure.synth import FLEET_STAGE, TEST_ENVIRONMENTS, TEST_STAGE

# Every acknowledged cdk-nag finding, with resource logical ids elided. A new acknowledgment must be added
# here on purpose (and reviewed), never slip in with a refactoring.
EXPECTED_ACKNOWLEDGMENTS = {
    "AwsSolutions-S1",  # the access-log bucket does not log itself
    "AwsSolutions-L1",  # Python 3.11 runtime
    "AwsSolutions-APIG4",  # the open routes only (OpenAPI document, Swagger UI); the others run the authorizer
    # X-Ray tracing actions and dynamodb:ListStreams (run events) have no resource-level permissions
    "AwsSolutions-IAM5[Resource::*]",
    "AwsSolutions-IAM5[Resource::<…>/index/*]",  # the table's indexes
    "AwsSolutions-IAM5[Resource::<…>/packages/*]",  # the feed's packages prefix (API, nodes)
    "AwsSolutions-IAM5[Resource::<…>/runs/*]",  # every run's objects (the API reads logs, out-of-line outputs)
    "AwsSolutions-IAM5[Resource::<…>/runs/production/*]",  # an environment's runs prefix (nodes: logs, outputs)
    "AwsSolutions-IAM5[Resource::<…>/runs/staging/*]",
    "AwsSolutions-SQS3",  # the run events' failure queue is itself a dead-letter destination
    "AwsSolutions-IAM5[Resource::arn:<…>:scheduler:<…>:<…>:schedule/<…>/*]",  # the API: its group's schedules
}
# With the EC2 fleet (the fleet stage): plus these. Session Manager's "*" is among the ones above.
FLEET_ACKNOWLEDGMENTS = {
    "AwsSolutions-AS3",  # no notification per launch/termination: the alarms watch the work itself
    # CompleteLifecycleAction on the node's own group, whose ARN holds a UUID known only once it exists
    *(
        "AwsSolutions-IAM5[Resource::arn:<…>:autoscaling:<…>:<…>:autoScalingGroup:*:autoScalingGroupName/"
        f"runly-{FLEET_STAGE}-nodes-{environment}]"
        for environment in TEST_ENVIRONMENTS
    ),
}


def values_acknowledgments(stage: str) -> set[str]:
    """Variables and secrets (infrastructure/job_values.py): the API's grant on the deployment's values path, each
    node's on its environment's, and the node policy's two queue wildcards (sqs:*Message, sqs:Change*: spelt short
    for STS's session-policy limit, matching exactly the four queue actions a node needs)."""
    return {
        f"AwsSolutions-IAM5[Resource::arn:<…>:ssm:<…>:<…>:parameter/runly-{stage}/*]",
        *(
            f"AwsSolutions-IAM5[Resource::arn:<…>:ssm:<…>:<…>:parameter/runly-{stage}/{environment}/*]"
            for environment in TEST_ENVIRONMENTS
        ),
        "AwsSolutions-IAM5[Action::sqs:*Message]",
        "AwsSolutions-IAM5[Action::sqs:Change*]",
    }


# cfn-lint warnings that are accepted, with the reason.
ACCEPTED_CFN_LINT_WARNINGS = {
    # CDK adds an explicit DependsOn from the function to its role next to the GetAtt of the role's ARN;
    # redundant, harmless, and not ours to change.
    "W3005",
}


def _acknowledgments(stack: RunlyStack) -> dict[str, list[str]]:
    """Rule id (logical ids elided) -> the reasons given for it, across the stack's construct tree."""
    found: dict[str, list[str]] = {}
    for construct in stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == cdk.Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                for rule_id, reason in entry.data.items():
                    rule_id = re.sub(r"^annotation::", "", rule_id, flags=re.IGNORECASE)
                    if rule_id.startswith("CloudFormation-Validate::"):
                        continue  # acknowledged by aws-cdk-lib itself (e.g. the VPC's flow log, literal AZs)
                    found.setdefault(re.sub(r"<[^>]+>", "<…>", rule_id), []).append(reason)
    return found


# Both synthesized stages: the default one and the one with every option on (EC2 fleet, alarm topic).
STACKS = {"default": ("runly_stack", "template_json"), "fleet": ("fleet_stack", "fleet_template_json")}
EXPECTED = {
    "default": EXPECTED_ACKNOWLEDGMENTS | values_acknowledgments(TEST_STAGE),
    "fleet": EXPECTED_ACKNOWLEDGMENTS | FLEET_ACKNOWLEDGMENTS | values_acknowledgments(FLEET_STAGE),
}


@pytest.fixture(params=sorted(STACKS))
def stage(request: pytest.FixtureRequest) -> tuple[str, RunlyStack, dict[str, Any]]:
    stack_fixture, template_fixture = STACKS[request.param]
    return request.param, request.getfixturevalue(stack_fixture), request.getfixturevalue(template_fixture)


def test_cdk_nag_aws_solutions_reports_nothing_unacknowledged(stage: tuple[str, RunlyStack, dict[str, Any]]) -> None:
    _, stack, _ = stage
    report = AwsSolutionsChecks().validate_scope(stack)
    findings = [
        f"{violation.rule_name} ({violation.severity}) at "
        + ", ".join(str(resource.construct_path) for resource in violation.violating_resources)
        for violation in report.violations
    ]
    assert findings == []
    assert report.success


def test_only_the_reviewed_findings_are_acknowledged_each_with_a_reason(
    stage: tuple[str, RunlyStack, dict[str, Any]],
) -> None:
    name, stack, _ = stage
    acknowledgments = _acknowledgments(stack)
    assert set(acknowledgments) == EXPECTED[name]
    for rule_id, reasons in acknowledgments.items():
        assert all(len(reason) >= 40 for reason in reasons), f"{rule_id}: say why, in a sentence"


def test_cfn_lint_finds_no_error(stage: tuple[str, RunlyStack, dict[str, Any]], tmp_path: Path) -> None:
    # Given the synthesized template on disk, when cfn-lint checks it, then it reports no error and no
    # warning beyond the accepted ones.
    _, _, template_json = stage
    template_file = tmp_path / "runly.template.json"
    template_file.write_text(json.dumps(template_json))
    matches = lint_file(template_file, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    problems = [
        f"{match.rule.id} {match.message} ({match.path_string})"
        for match in matches
        if match.rule.id.startswith("E")
        or (match.rule.id.startswith("W") and match.rule.id not in ACCEPTED_CFN_LINT_WARNINGS)
    ]
    assert problems == []
