"""The API function traces to X-Ray where it runs with tracing on (in Lambda), and pays nothing for it elsewhere:
outside Lambda, or with POWERTOOLS_TRACE_DISABLED=true, the X-Ray SDK is not even imported.

Each case is a fresh interpreter: whether the Tracer exists is decided when functions.api.app is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = r"""
import json, sys
from functions.api import app, observability
from tests.support.api import FakeContext, api_event
answer = app.lambda_handler(api_event("GET", "/openapi.json"), FakeContext())
wrappers, handler = 0, app.lambda_handler
while hasattr(handler, "__wrapped__"):  # Logger's injection, then (where tracing) Tracer's capture
    wrappers, handler = wrappers + 1, handler.__wrapped__
print(json.dumps({
    "tracer": observability.tracer is not None,
    "xray_imported": "aws_xray_sdk.core" in sys.modules,
    "wrappers": wrappers,
    "status": answer["statusCode"],
}))
"""

_SETTINGS = {
    "RUNLY_TABLE_NAME": "runly-test",
    "RUNLY_FEED_BUCKET": "runly-test-feed",
    "RUNLY_QUEUE_URLS": '{"default": "http://127.0.0.1:9/123456789012/q"}',
    "RUNLY_SCHEDULER_GROUP": "runly-test",
    "RUNLY_SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/scheduler",
    "RUNLY_SCHEDULE_FIRE_FUNCTION_ARN": "arn:aws:lambda:us-east-1:123456789012:function:fire",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _probe(**env: str) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNLY_", "POWERTOOLS_", "LAMBDA_"))}
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**base, **_SETTINGS, "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def test_in_lambda_the_handler_is_traced() -> None:
    # As in Lambda with active tracing: the task root is set and the invocation carries a trace header.
    traced = _probe(
        LAMBDA_TASK_ROOT=str(REPO),
        _X_AMZN_TRACE_ID="Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR",
        AWS_XRAY_DAEMON_ADDRESS="127.0.0.1:9",  # nothing listens: segments are sent over UDP and lost
    )
    assert traced == {"tracer": True, "xray_imported": True, "wrappers": 2, "status": 200}


def test_outside_lambda_or_disabled_nothing_of_x_ray_is_imported() -> None:
    untraced = {"tracer": False, "xray_imported": False, "wrappers": 1, "status": 200}
    assert _probe() == untraced
    assert _probe(LAMBDA_TASK_ROOT=str(REPO), POWERTOOLS_TRACE_DISABLED="true") == untraced
