#!/usr/bin/env python3
"""CDK app: `cdk synth|deploy [-c stage=<name>] [-c bundle=false]`; stages are declared in cdk.json.

`python app.py` works too (default stage, full bundle), writing the assembly to ./cdk.out.
"""

import os

import aws_cdk as cdk

from infrastructure.deployment import cdk_json_context, compose

# Under the CLI, its context (CDK_CONTEXT_JSON) overrides these defaults and CDK_OUTDIR names the output.
app = cdk.App(context=cdk_json_context(), outdir=None if "CDK_OUTDIR" in os.environ else "cdk.out")
compose(app)
app.synth()
