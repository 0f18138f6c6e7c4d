from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3

from infrastructure.deployment import compose
from tests.infrastructure.synth import TEST_STAGE, synth_context


def test_the_app_is_the_context_stage_and_refuses_to_synthesize_a_nag_finding(tmp_path: Path) -> None:
    # Given the app as app.py composes it for the stage named in the context
    app = cdk.App(context=synth_context(), outdir=str(tmp_path))
    stack = compose(app)
    assert stack.stack_name == f"runly-{TEST_STAGE}"

    # When someone adds a bucket that allows plain HTTP and logs nothing
    s3.Bucket(stack, "CarelessBucket", block_public_access=s3.BlockPublicAccess.BLOCK_ALL)

    # Then the synthesis fails, and the report names the AwsSolutions findings
    with pytest.raises(RuntimeError, match="ValidationFailed") as failure:
        app.synth()
    report = (tmp_path / "validation-report.json").read_text()
    for finding in ("AwsSolutions-S1", "AwsSolutions-S10"):
        assert finding in str(failure.value) or finding in report
