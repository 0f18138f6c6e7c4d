"""The stage the infrastructure tests synthesize."""

from __future__ import annotations

from typing import Any

from infrastructure.deployment import cdk_json_context

# Two environments, so that "one queue pair per environment" is told apart from "one queue pair".
TEST_STAGE = "test"
TEST_ENVIRONMENTS = ("production", "staging")


def synth_context() -> dict[str, Any]:
    """cdk.json's own context (feature flags included) with the test stage, as the CLI would pass for
    `cdk synth -c stage=test -c bundle=false` if cdk.json declared it."""
    return {
        **cdk_json_context(),
        "stage": TEST_STAGE,
        "stages": {TEST_STAGE: {"environments": list(TEST_ENVIRONMENTS)}},
        "bundle": False,
    }


# The second stage the suite synthesizes: everything optional switched on (every run state published). Staging's
# nodes never shrink to zero and run on Graviton, so both scaling shapes and both architectures are in one template.
FLEET_STAGE = "fleet"
AGENT_WHEELS = [
    "runly_agent-0.1.0-py3-none-any.whl",
    "runly_core-0.1.0-py3-none-any.whl",
    "runly-0.1.0-py3-none-any.whl",
]
ALARM_EMAIL = "ops@example.com"


def fleet_synth_context() -> dict[str, Any]:
    return {
        **cdk_json_context(),
        "stage": FLEET_STAGE,
        "stages": {
            FLEET_STAGE: {
                "environments": list(TEST_ENVIRONMENTS),
                "alarms": {"topic": True, "emails": [ALARM_EMAIL]},
                "run_events": "all",
                "fleet": {
                    "agent_wheels": AGENT_WHEELS,
                    "environments": {
                        "production": {"max_nodes": 8, "runs_per_node": 4},
                        "staging": {"instance_type": "t4g.small", "min_nodes": 1},
                    },
                },
            }
        },
        "bundle": False,
    }


# The third (and last): run events off, the default stage otherwise (test_run_events.py only).
NO_EVENTS_STAGE = "quiet"


def no_events_synth_context() -> dict[str, Any]:
    return {
        **cdk_json_context(),
        "stage": NO_EVENTS_STAGE,
        "stages": {NO_EVENTS_STAGE: {"environments": list(TEST_ENVIRONMENTS), "run_events": "off"}},
        "bundle": False,
    }
