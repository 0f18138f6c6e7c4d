"""The API function's Logger, Tracer and Metrics: one of each, shared by the app and every router.

Logs are JSON with the API Gateway request id as correlation id; metrics go out as CloudWatch embedded metric
format in the log (namespace ``runly``), published once per invocation by the handler; traces go to X-Ray when the
function runs with active tracing.

Beside X-Ray, each request that enqueues runs continues the caller's W3C trace (its ``traceparent`` header) in an
OpenTelemetry span where OpenTelemetry is installed and exporting is configured (runly.tracing; the function's
asset does not ship it: a layer brings it), and the runs record that trace for the agent and the job to continue.
The trace id is an annotation of the X-Ray segment too, so the two can be found from each other.

The Tracer is built only where it traces: Powertools' Tracer imports the X-Ray SDK (which builds botocore clients
for its sampler) even when it then turns itself off (outside Lambda, or POWERTOOLS_TRACE_DISABLED=true), a
third of the function's import time for nothing. Where it is off, ``capture_lambda_handler`` returns the handler
as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from runly import tracing
from runly.tracing import InvalidTraceParent, TraceParent

SERVICE = "runly-api"
METRICS_NAMESPACE = "runly"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE)

Handler = TypeVar("Handler", bound=Callable[..., Any])


def tracing_enabled() -> bool:
    """Whether Powertools' Tracer would trace here: in Lambda (not SAM local nor Chalice), unless
    POWERTOOLS_TRACE_DISABLED is true. Powertools' own rule, asked without building a Tracer."""
    return not Tracer._is_tracer_disabled()


# Built at import where it traces: the first request needs it (botocore patched before any client exists).
tracer: Tracer | None = Tracer(service=SERVICE) if tracing_enabled() else None


# OpenTelemetry's provider, set where exporting is configured (else nothing is imported); flushed after each
# invocation, since Lambda freezes the function between them.
flush_spans = tracing.configure(SERVICE)


def capture_lambda_handler(handler: Handler) -> Handler:
    """Powertools' ``tracer.capture_lambda_handler`` where tracing is on; the handler itself where it is off."""
    if tracer is None:
        return handler
    return tracer.capture_lambda_handler(handler)  # type: ignore[return-value]


def count(name: str, value: int = 1) -> None:
    """Add to a count metric of this invocation (published when the handler returns)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def publish_metrics() -> None:
    """Print this invocation's metrics (EMF), if it added any. Instead of Powertools' log_metrics, which warns on
    every invocation without metrics: most requests (reads) add none."""
    if metrics.metric_set:
        metrics.flush_metrics()


def incoming_trace(header: str | None) -> TraceParent | None:
    """The caller's trace context. A malformed ``traceparent`` is ignored, as the W3C processing model says (the run
    starts a new trace rather than a working enqueue failing over its tracing), with a warning that says why."""
    if header is None:
        return None
    try:
        return TraceParent.parse(header)
    except InvalidTraceParent as exc:
        logger.warning(f"traceparent ignored ({exc}): the run starts a new trace", extra={"traceparent": header[:64]})
        return None


@contextmanager
def enqueue_span(name: str, traceparent: str | None) -> Iterator[TraceParent]:
    """The span of a request that enqueues runs, child of the caller's ``traceparent``; yields the trace context
    its runs continue: the span's, else (nothing recorded here) the caller's, else a new trace's."""
    with tracing.span(name, parent=incoming_trace(traceparent), tracer_name=SERVICE) as traced:
        trace = traced.traceparent or TraceParent.new()
        if tracer is not None:
            tracer.put_annotation(key="trace_id", value=trace.trace_id)
        yield trace
