"""The API function's Logger, Tracer and Metrics: one of each, shared by the app and every router.

Logs are JSON with the API Gateway request id as correlation id; metrics go out as CloudWatch embedded metric
format in the log (namespace ``runly``), published once per invocation by the handler; traces go to X-Ray when the
function runs with active tracing (Tracer turns itself off outside Lambda and with POWERTOOLS_TRACE_DISABLED=true).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "runly-api"
METRICS_NAMESPACE = "runly"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE)


def count(name: str, value: int = 1) -> None:
    """Add to a count metric of this invocation (published when the handler returns)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def publish_metrics() -> None:
    """Print this invocation's metrics (EMF), if it added any. Instead of Powertools' log_metrics, which warns on
    every invocation without metrics: most requests (reads) add none."""
    if metrics.metric_set:
        metrics.flush_metrics()
