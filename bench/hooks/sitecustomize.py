"""Counts every AWS API call of a benchmarked process (loaded by Python at start from PYTHONPATH).

``make bench`` puts this directory on the PYTHONPATH of the embedded stack's gateway (which runs the
API function and the authorizer) and of its node agents, with BENCH_COUNT_DIR set. In those processes
only, it registers botocore handlers on every session (so on every client made from it later) and
writes one JSON line per API call to ``$BENCH_COUNT_DIR/{role}-{pid}.jsonl`` (format: bench.counting).
Job processes run with ``python -I`` and never see it; nor does any process without BENCH_COUNT_DIR.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def _role() -> str | None:
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return None
    if b"runly_cli.embedded.gateway" in argv:
        return "gateway"
    if b"node_agent" in argv:
        return "agent"
    return None


def _install(directory: str, role: str) -> None:
    import json

    import botocore.session

    from bench.counting import describe_call, describe_result

    path = os.path.join(directory, f"{role}-{os.getpid()}.jsonl")
    lock = threading.Lock()
    stream = open(path, "a", encoding="utf-8")

    def names(event_name: str) -> tuple[str, str]:
        # "before-call.dynamodb.GetItem": the service id (hyphenized, lower case) and the operation.
        _, service, operation = event_name.split(".", 2)
        return service, operation

    def before_call(event_name: str, params: Any, context: Any, **kwargs: Any) -> None:
        context["bench_t0"] = time.time()
        context["bench_attempts"] = 0
        try:
            service, operation = names(event_name)
            # ``params`` is the serialized request; DynamoDB's body is its parameters as JSON (wire format).
            body = params.get("body") if service == "dynamodb" else None
            api_params = json.loads(body) if isinstance(body, bytes | str) and body else {}
            context["bench_detail"] = describe_call(service, operation, api_params)
        except Exception:  # noqa: BLE001 - counting must never break the call it counts
            context["bench_detail"] = {}

    def request_created(request: Any, **kwargs: Any) -> None:
        context = getattr(request, "context", None)
        if isinstance(context, dict) and "bench_t0" in context:
            context["bench_attempts"] = context.get("bench_attempts", 0) + 1

    def after_call(event_name: str, context: Any, parsed: Any = None, **kwargs: Any) -> None:
        service, operation = names(event_name)
        record: dict[str, Any] = {
            "t0": context.get("bench_t0", time.time()),
            "t1": time.time(),
            "svc": service,
            "op": operation,
            "attempts": max(1, context.get("bench_attempts", 1)),
            **context.get("bench_detail", {}),
        }
        try:
            record.update(describe_result(service, operation, parsed))
        except Exception:  # noqa: BLE001 - counting must never break the call it counts
            pass
        if "exception" in kwargs:
            record["error"] = type(kwargs["exception"]).__name__
        line = json.dumps(record, default=str) + "\n"
        with lock:
            stream.write(line)
            stream.flush()

    original_init = botocore.session.Session.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.register("before-call", before_call)
        self.register("request-created", request_created)
        self.register("after-call", after_call)
        self.register("after-call-error", after_call)

    botocore.session.Session.__init__ = counting_init  # type: ignore[method-assign]


def _maybe_install() -> None:
    directory = os.environ.get("BENCH_COUNT_DIR")
    role = _role() if directory else None
    if directory and role:
        os.makedirs(directory, exist_ok=True)
        _install(directory, role)


_maybe_install()
