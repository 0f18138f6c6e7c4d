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
