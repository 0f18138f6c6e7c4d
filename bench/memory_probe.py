"""Where an agent's memory goes: RSS after each thing it loads, in the order it loads them.

    .venv/bin/python -m bench.memory_probe        # prints one JSON object: step -> RSS in MB

Makes no AWS call (clients are only built, as the agent builds them at start).
"""

from __future__ import annotations

import json
import sys


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    steps: dict[str, float] = {"interpreter": rss_mb()}
    import pydantic  # noqa: F401

    steps["+ pydantic"] = rss_mb()
    import boto3

    steps["+ boto3 (botocore)"] = rss_mb()
    import node_agent.agent
    import node_agent.aws
    import node_agent.package_cache  # noqa: F401

    steps["+ node_agent modules (and what they import)"] = rss_mb()
    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    session.client("sqs")
    steps["+ SQS client"] = rss_mb()
    session.resource("dynamodb").Table("t")
    steps["+ DynamoDB resource"] = rss_mb()
    session.client("s3")
    steps["+ S3 client (made on the first download or log upload: not in an idle agent that never ran)"] = rss_mb()
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
    sys.exit(0)
