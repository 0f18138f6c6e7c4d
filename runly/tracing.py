"""One trace from an application's request to a job's work: W3C trace context, and OpenTelemetry where it is
installed.

A run carries a W3C ``traceparent`` (https://www.w3.org/TR/trace-context/) from the API that enqueued it to the
agent that runs it and the job process (``runly.wire.TRACEPARENT_ENV``). Parsing and making one is plain Python:
every run has one, whether or not anything records spans. Spans are OpenTelemetry's, and OpenTelemetry is optional
(``runly[otel]``, ``runly-agent[otel]``): every import of it is in this module, inside a function, so that the SDK
depends on pydantic alone and a job process, the agent or the API without it pays nothing. Without it, :func:`span`
records nothing and hands on the parent's trace context, so the chain stays one trace wherever spans are recorded.

Export follows OpenTelemetry's variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``), the OTLP
exporter's ``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``. Unlike OpenTelemetry's
default, nothing is exported unless asked: with ``OTEL_TRACES_EXPORTER`` unset, spans go over OTLP only when an
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), so a node or a job
never tries a collector that is not there. A process that set its own tracer provider keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TRACEPARENT_HEADER",
    "InvalidTraceParent",
    "TraceParent",
    "Traced",
    "configure",
    "record_span",
    "span",
]

log = logging.getLogger(__name__)

TRACEPARENT_HEADER = "traceparent"  # the W3C header, as HTTP/2 and API Gateway spell it (lower case)

# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex only (W3C Trace Context, section 3.2).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_VERSION_00_LENGTH = 55
# A later version may append fields; a header longer than this is no trace context anyone sends.
MAX_TRACEPARENT_LENGTH = 512
SAMPLED = 0x01
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class InvalidTraceParent(ValueError):
    """A ``traceparent`` that is not W3C trace context (the message says which rule it breaks)."""


@dataclass(frozen=True)
class TraceParent:
    """A W3C trace context: the trace, the span that is the parent of whatever continues it, and the flags."""

    trace_id: str  # 32 lower-case hex digits, not all zero
    parent_id: str  # 16 lower-case hex digits, not all zero
    flags: int = SAMPLED

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{32}", self.trace_id) or self.trace_id == _ZERO_TRACE:
            raise InvalidTraceParent("the trace id must be 32 lower-case hex digits, not all zero")
        if not re.fullmatch(r"[0-9a-f]{16}", self.parent_id) or self.parent_id == _ZERO_SPAN:
            raise InvalidTraceParent("the parent id must be 16 lower-case hex digits, not all zero")
        if not 0 <= self.flags <= 0xFF:
            raise InvalidTraceParent("the trace flags are one byte")

    @classmethod
    def parse(cls, text: str) -> TraceParent:
        """A ``traceparent`` header's value, checked as the W3C processing model checks it: version 00 is exactly
        55 characters; a later version (not ff) is read by its first four fields, and may go on only after a
        dash; ids are lower-case hex and not all zero. Whitespace around the value (HTTP's optional whitespace)
        is not part of it."""
        value = text.strip(" \t")
        if len(value) > MAX_TRACEPARENT_LENGTH:
            raise InvalidTraceParent(f"longer than {MAX_TRACEPARENT_LENGTH} characters")
        match = _TRACEPARENT.match(value)
        if match is None:
            raise InvalidTraceParent(
                "not version-traceid-parentid-flags (2, 32, 16 and 2 lower-case hex digits, joined by dashes)"
            )
        version, trace_id, parent_id, flags = match.groups()
        if version == "ff":
            raise InvalidTraceParent("version ff is forbidden")
        if version == "00" and len(value) != _VERSION_00_LENGTH:
            raise InvalidTraceParent(f"version 00 is exactly {_VERSION_00_LENGTH} characters")
        if len(value) > _VERSION_00_LENGTH and value[_VERSION_00_LENGTH] != "-":
            raise InvalidTraceParent("a later version's further fields must follow a dash")
        return cls(trace_id=trace_id, parent_id=parent_id, flags=int(flags, 16))

    @classmethod
    def new(cls) -> TraceParent:
        """The root of a new trace (sampled: whoever records spans decides what to keep)."""
        return cls(trace_id=_random_hex(16), parent_id=_random_hex(8))

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags:02x}"


def _random_hex(size: int) -> str:
    while True:
        value = secrets.token_hex(size)
        if value.strip("0"):  # all zero is invalid: one chance in 2**64 or 2**128, but never sent
            return value


# ---------------------------------------------------------------- OpenTelemetry, where it is installed


@dataclass
class Traced:
    """What :func:`span` yields: the span (None when nothing is recorded) and the trace context to hand on."""

    traceparent: TraceParent | None  # this span's context; the parent's when no span is recorded
    span: Any = None  # an opentelemetry.trace.Span

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        if self.span is not None:
            self.span.set_attribute(key, value)

    def fail(self, description: str, exception: BaseException | None = None) -> None:
        """Mark the span as failed (OpenTelemetry status ERROR), with why (and the exception, as an event)."""
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            if exception is not None:
                self.span.record_exception(exception)
            self.span.set_status(Status(StatusCode.ERROR, description))


def available() -> bool:
    """Whether spans are worth starting here: OpenTelemetry is already imported (the process, a job's code or a
    test set up tracing), or exporting is configured (:func:`configure`) and OpenTelemetry can be imported. Importing
    it costs about 0.1 s: a process that exports nothing never pays it."""
    if "opentelemetry.trace" in sys.modules:
        return True
    if not _exporter_names(os.environ):
        return False
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def in_span() -> bool:
    """Whether this thread's context has a span (a span started on another thread is not current here)."""
    if "opentelemetry.trace" not in sys.modules:
        return False
    from opentelemetry import trace

    return bool(trace.get_current_span().get_span_context().is_valid)


def current_traceparent() -> TraceParent | None:
    """The trace context of the span current on this thread, if OpenTelemetry is in use here (an application's
    request handler): what a client hands on when the caller gives none."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    return traceparent_of(trace.get_current_span())


def _parent_context(parent: TraceParent | None) -> Any:
    """An OpenTelemetry context whose current span is ``parent`` (remote), or the current context."""
    if parent is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    remote = SpanContext(
        trace_id=int(parent.trace_id, 16),
        span_id=int(parent.parent_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(parent.flags),
    )
    return trace.set_span_in_context(NonRecordingSpan(remote))


def traceparent_of(otel_span: Any) -> TraceParent | None:
    """The W3C trace context of an OpenTelemetry span, or None for one with no valid context (a no-op tracer's)."""
    context = otel_span.get_span_context()
    if not context.is_valid:
        return None
    return TraceParent(
        trace_id=f"{context.trace_id:032x}", parent_id=f"{context.span_id:016x}", flags=int(context.trace_flags)
    )


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: TraceParent | None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    tracer_name: str = "runly",
    start_time_ns: int | None = None,
) -> Iterator[Traced]:
    """A span named ``name``, child of ``parent`` (None: of the current span), while the block runs; it is current
    inside it, so spans started there are its children. An exception leaving the block is recorded on it.

    Without OpenTelemetry (or with a tracer that records nothing) it yields ``parent`` to hand on, and costs
    nothing more."""
    if not available():
        yield Traced(traceparent=parent)
        return
    from opentelemetry import trace

    tracer = trace.get_tracer(tracer_name)
    with tracer.start_as_current_span(
        name, context=_parent_context(parent), attributes=dict(attributes or {}), start_time=start_time_ns
    ) as otel_span:
        yield Traced(traceparent=traceparent_of(otel_span) or parent, span=otel_span)


def record_span(
    name: str,
    *,
    parent: TraceParent | None,
    start_time_ns: int,
    end_time_ns: int,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    tracer_name: str = "runly",
) -> None:
    """A span of something that already happened (e.g. the time a run waited in its queue); nothing without
    OpenTelemetry."""
    if not available():
        return
    from opentelemetry import trace

    tracer = trace.get_tracer(tracer_name)
    otel_span = tracer.start_span(
        name, context=_parent_context(parent), attributes=dict(attributes or {}), start_time=start_time_ns
    )
    otel_span.end(end_time=max(start_time_ns, end_time_ns))


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    """The span exporters asked for: ``OTEL_TRACES_EXPORTER`` (comma-separated), else ``otlp`` when an OTLP
    endpoint is set, else none."""
    configured = env.get("OTEL_TRACES_EXPORTER")
    if configured is not None:
        names = [name.strip().lower() for name in configured.split(",") if name.strip()]
        return [] if "none" in names else names
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One JSON line per span: a job's spans in its log, where a line is what the agent ships and shows.
        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda finished: finished.to_json(indent=None) + "\n")
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol == "grpc":
            # Only where installed (opentelemetry-exporter-otlp-proto-grpc): runly's extra brings HTTP alone.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            return GrpcExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout, compression: from OTEL_EXPORTER_OTLP_*
    raise ValueError(f"OTEL_TRACES_EXPORTER names {name!r}; runly exports with otlp, console or none")


def configure(service_name: str, *, env: Mapping[str, str] | None = None, batch: bool = True) -> Callable[[], None]:
    """Set this process's tracer provider (OpenTelemetry's SDK) to export as the environment asks; return what
    flushes it at the process's end.

    Nothing is set when OpenTelemetry's SDK is not installed, when nothing is to be exported, or when the process
    already has a tracer provider (an application that configured its own, ``opentelemetry-instrument``): then the
    returned function flushes that one, if it can. ``service_name`` is the default of ``service.name``
    (``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` win). ``batch=False``: each span is exported when it
    ends (a short process that may end abruptly)."""
    environment = os.environ if env is None else env
    names = _exporter_names(environment)
    if "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        current = trace.get_tracer_provider()
        if not isinstance(current, trace.ProxyTracerProvider):
            return _flusher(current)
    if not names:
        return _nothing
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER or an OTLP endpoint is set, but OpenTelemetry is not installed")
        return _nothing
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER or an OTLP endpoint is set, but opentelemetry-sdk is not installed")
        return _nothing
    try:
        exporters = [_exporter(name, environment) for name in names]
    except (ImportError, ValueError) as exc:
        log.warning("spans are not exported: %s", exc)
        return _nothing
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _flusher(provider: Any) -> Callable[[], None]:
    flush = getattr(provider, "force_flush", None)
    if flush is None:
        return _nothing

    def flush_quietly() -> None:
        flush()

    return flush_quietly


def _nothing() -> None:
    pass
