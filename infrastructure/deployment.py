"""What `app.py` builds, in functions the tests call too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infrastructure.settings import StageSettings
from infrastructure.stack import RunlyStack

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"
CONTEXT_KEYS = ("stage", "stages", "bundle")


def cdk_json_context() -> dict[str, Any]:
    """The `context` of cdk.json. The CDK CLI passes it (plus any `-c`) itself; `python app.py` and the
    tests read it here, so all three synthesize the same stages with the same feature flags."""
    context: dict[str, Any] = json.loads(CDK_JSON.read_text())["context"]
    return context


def compose(app: cdk.App) -> RunlyStack:
    """The stage selected by the app's context (`-c stage=...`), checked by cdk-nag's AwsSolutions pack.

    cdk-nag 3 is a policy-validation plugin: an unacknowledged finding fails the synth.
    """
    settings = StageSettings.from_context({key: app.node.try_get_context(key) for key in CONTEXT_KEYS})
    stack = RunlyStack(
        app,
        f"runly-{settings.stage}",
        settings=settings,
        description=f"runly control plane, stage {settings.stage}",
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stack
