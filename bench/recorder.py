"""A recording HTTP proxy in front of the embedded stack's moto server: every AWS request of every process.

The embedded stack points every component (the gateway with the API function and the authorizer, the agents,
the CLI) at one endpoint (AWS_ENDPOINT_URL). Started with ``EmbeddedStack(aws_front=...)``, that endpoint is this
proxy, which forwards each request to moto unchanged and records what it cost (bench.billing). Why a proxy rather
than botocore hooks in each process (bench/hooks/sitecustomize.py): a write's index entries and billed size
depend on the item before and after it, which no client sees (an UpdateItem says what changes, not what the item
holds). The proxy reads both images from moto around the write, with writes serialised through it, so the images
are exact whichever process wrote; and it needs nothing in the processes it records.

Each record (one per request, JSON-able)::

    {"t0": ..., "t1": ..., "service": "dynamodb", "operation": "UpdateItem", "status": 200, "error": null,
     "principal": "local", "charges": [Charge.as_dict(), ...]}                          # DynamoDB
    {"service": "sqs", "operation": "ReceiveMessage", "queue": "runly-local-default", "entries": 1,
     "payload_bytes": 812, "requests": 1, "messages": 1, ...}                          # SQS
    {"service": "s3", "operation": "GetObject", "bucket": "...", ...}                   # S3 (and other services)
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench import billing

log = logging.getLogger("bench.recorder")

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)
Headers = list[tuple[str, str]]
Response = tuple[int, Headers, bytes]  # status, headers, body


class Upstream:
    """Connections to moto, one per thread (http.client connections are not thread-safe)."""

    def __init__(self, endpoint: str) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self._local = threading.local()

    def request(self, method: str, path: str, body: bytes, headers: Headers) -> Response:
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                # Long polls hold a request 20 s; a minute leaves room.
                connection = self._local.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    connection.putheader(name, value)
                connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body)
                response = connection.getresponse()
                data = response.read()
                return response.status, list(response.getheaders()), data
            except (http.client.HTTPException, ConnectionError, OSError):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def dynamodb(self, operation: str, params: Mapping[str, Any], authorization: str | None) -> dict[str, Any]:
        """A DynamoDB call of the proxy's own (item images, table definitions): not recorded."""
        headers = [
            ("Host", f"{self.host}:{self.port}"),
            ("Content-Type", "application/x-amz-json-1.0"),
            ("X-Amz-Target", f"DynamoDB_20120810.{operation}"),
        ]
        if authorization:
            headers.append(("Authorization", authorization))
        status, _, data = self.request("POST", "/", json.dumps(params).encode(), headers)
        answer: dict[str, Any] = json.loads(data or b"{}")
        if status >= 300:
            raise RuntimeError(f"{operation} for the recorder failed ({status}): {answer}")
        return answer


def _principal(authorization: str | None) -> str:
    # "AWS4-HMAC-SHA256 Credential=local/20261202/us-east-1/dynamodb/aws4_request, ...": the access key id.
    if authorization and "Credential=" in authorization:
        return authorization.split("Credential=", 1)[1].split("/", 1)[0]
    return ""


def _form(body: bytes) -> dict[str, Any]:
    return {key: values[-1] for key, values in urllib.parse.parse_qs(body.decode(errors="replace")).items()}


class Recorder:
    """The proxy's state: moto's endpoint, the tables' definitions, the records."""

    def __init__(self, upstream: str, *, on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.upstream = Upstream(upstream)
        self.records: list[dict[str, Any]] = []
        self._tables: dict[str, billing.TableDef] = {}
        self._records_lock = threading.Lock()
        # Writes to one item go one at a time (a lock per item), so that the images read around a write are the
        # ones it changed; writes to different items go on side by side.
        self._item_locks: dict[str, threading.Lock] = {}
        self._item_locks_lock = threading.Lock()
        # The image of each item after its last write through here: the image before its next write (every write
        # passes through the recorder, one at a time per item), so only the image after a write is read from moto.
        self._mirror: dict[str, dict[str, Any] | None] = {}
        self._on_record = on_record
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ the server
    def start(self) -> str:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
                try:
                    status, response_headers, data = recorder.forward(self.command, self.path, body, headers)
                except ConnectionError as exc:  # moto stopped before its clients (the stack's shutdown)
                    log.warning("recorder: forwarding %s %s failed: %s", self.command, self.path, exc)
                    status, response_headers, data = 502, [("Content-Type", "text/plain")], str(exc).encode()
                except Exception as exc:
                    log.exception("recorder: forwarding %s %s failed", self.command, self.path)
                    status, response_headers, data = 502, [("Content-Type", "text/plain")], str(exc).encode()
                try:
                    self.send_response(status)
                    length = str(len(data))
                    for name, value in response_headers:
                        if name.lower() == "content-length" and self.command == "HEAD":
                            length = value  # a HEAD answers the length of what a GET would return
                        elif name.lower() not in _HOP_BY_HOP:
                            self.send_header(name, value)
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (an agent stopped mid-poll)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="aws-recorder", daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------ records
    def _keep(self, record: dict[str, Any]) -> None:
        with self._records_lock:
            self.records.append(record)
        if self._on_record is not None:
            self._on_record(record)

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        with self._records_lock:
            return [r for r in self.records if start <= r["t0"] < end]

    def table(self, name: str, authorization: str | None = None) -> billing.TableDef:
        """The table's definition as it was created (DescribeTable): keys, each index's keys and projection."""
        if name not in self._tables:
            described = self.upstream.dynamodb("DescribeTable", {"TableName": name}, authorization)
            self._tables[name] = billing.TableDef.from_description(described["Table"])
        return self._tables[name]

    def tables(self) -> dict[str, billing.TableDef]:
        return dict(self._tables)

    # ------------------------------------------------------------ forwarding
    def forward(self, method: str, path: str, body: bytes, headers: Headers) -> Response:
        header = {name.lower(): value for name, value in headers}
        target = header.get("x-amz-target", "")
        authorization = header.get("authorization")
        if target.startswith("DynamoDB_"):
            return self._dynamodb(target.split(".", 1)[1], method, path, body, headers, authorization)
        t0 = time.time()
        status, response_headers, data = self.upstream.request(method, path, body, headers)
        record: dict[str, Any] = {"t0": t0, "t1": time.time(), "status": status, "principal": _principal(authorization)}
        if target.startswith("AmazonSQS."):
            record.update(self._sqs(target.split(".", 1)[1], json.loads(body or b"{}"), data, json_protocol=True))
        elif method == "POST" and (body[:7] == b"Action=" or b"&Action=" in body[:4000]):
            form = _form(body)  # the query protocol (form-encoded): SQS of older clients, STS, ...
            record.update({"service": _service_of(authorization) or "query", "operation": form.get("Action", "")})
            if record["service"] == "sqs":
                record.update(self._sqs(form.get("Action", ""), form, data, json_protocol=False))
        else:
            record.update(_s3_like(method, path, authorization, len(body), len(data)))
        if status >= 300:
            record["error"] = _error_code(data)
        self._keep(record)
        return status, response_headers, data

    def _sqs(self, operation: str, params: Mapping[str, Any], data: bytes, *, json_protocol: bool) -> dict[str, Any]:
        response: dict[str, Any] = {}
        if json_protocol:
            try:
                response = json.loads(data or b"{}")
            except ValueError:
                response = {}
        queue = str(params.get("QueueUrl") or params.get("QueueName") or "").rstrip("/").rsplit("/", 1)[-1]
        payload = billing.sqs_payload_bytes(operation, params, response)
        return {
            "service": "sqs",
            "operation": operation,
            "queue": queue,
            "entries": len(params.get("Entries") or []) or 1,
            "messages": len(response.get("Messages") or []) if operation == "ReceiveMessage" else None,
            "payload_bytes": payload,
            "requests": billing.sqs_requests(payload),
        }

    def _dynamodb(
        self,
        operation: str,
        method: str,
        path: str,
        body: bytes,
        headers: list[tuple[str, str]],
        authorization: str | None,
    ) -> Response:
        params: dict[str, Any] = json.loads(body or b"{}")
        record: dict[str, Any] = {"service": "dynamodb", "operation": operation, "principal": _principal(authorization)}
        arrived = time.time()
        if operation in billing.WRITE_OPERATIONS:
            tables = self._tables_of(operation, params, authorization)
            targets = billing.write_targets(operation, params, tables)
            with ExitStack() as held_locks:
                for name in sorted({_item_name(t) for t in targets}):  # in one order: no two writes deadlock
                    held_locks.enter_context(self._item_lock(name))
                befores = [self._before(t, authorization) for t in targets]
                t0 = time.time()
                status, response_headers, data = self.upstream.request(method, path, body, headers)
                t1 = time.time()
                afters = [self._image(t, authorization) for t in targets] if status < 300 else befores
                for target, after in zip(targets, afters, strict=True):
                    self._mirror[_item_name(target)] = after
            response = _json(data)
            error = _error_code(data) if status >= 300 else None
            charges = billing.dynamodb_write_charges(
                operation, targets, befores, afters, tables, status=status, error=error, response=response
            )
            record["items"] = len(targets)
        else:
            t0 = time.time()
            status, response_headers, data = self.upstream.request(method, path, body, headers)
            t1 = time.time()
            error = _error_code(data) if status >= 300 else None
            charges = []
            if operation in billing.READ_OPERATIONS:
                tables = self._tables_of(operation, params, authorization)
                charges = billing.dynamodb_read_charges(operation, params, _json(data), tables, status=status)
        # What the recorder added to the request's time (waiting for the write lock, reading the images): taken off
        # the time of the function that made it when its duration is billed (bench.capacity._handler_ms).
        held = (time.time() - arrived) - (t1 - t0)
        record.update(
            {
                "t0": t0,
                "t1": t1,
                "held": held,
                "status": status,
                "error": error,
                "charges": [c.as_dict() for c in charges],
            }
        )
        names = {c.table for c in charges} or ({params["TableName"]} if "TableName" in params else set())
        record["table"] = ",".join(sorted(names))
        self._keep(record)
        return status, response_headers, data

    def _tables_of(
        self, operation: str, params: Mapping[str, Any], authorization: str | None
    ) -> dict[str, billing.TableDef]:
        names: set[str] = set()
        if "TableName" in params:
            names.add(params["TableName"])
        names |= set((params.get("RequestItems") or {}).keys())
        for entry in params.get("TransactItems") or []:
            for body in entry.values():
                names.add(body["TableName"])
        return {name: self.table(name, authorization) for name in names}

    def _item_lock(self, name: str) -> threading.Lock:
        with self._item_locks_lock:
            return self._item_locks.setdefault(name, threading.Lock())

    def _before(self, target: billing.WriteTarget, authorization: str | None) -> dict[str, Any] | None:
        name = _item_name(target)
        return self._mirror[name] if name in self._mirror else self._image(target, authorization)

    def _image(self, target: billing.WriteTarget, authorization: str | None) -> dict[str, Any] | None:
        answer = self.upstream.dynamodb(
            "GetItem", {"TableName": target.table, "Key": target.key, "ConsistentRead": True}, authorization
        )
        item = answer.get("Item")
        return dict(item) if item else None


def _item_name(target: billing.WriteTarget) -> str:
    return target.table + "\0" + json.dumps(target.key, sort_keys=True)


def _json(data: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(data or b"{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error_code(data: bytes) -> str | None:
    parsed = _json(data)
    code = parsed.get("__type") or parsed.get("code") or (parsed.get("Error") or {}).get("Code")
    if code:
        return str(code).rsplit("#", 1)[-1]
    text = data[:2000].decode(errors="replace")
    if "<Code>" in text:
        return text.split("<Code>", 1)[1].split("</Code>", 1)[0]
    return "error"


def _service_of(authorization: str | None, path: str = "") -> str | None:
    """The service a request was signed for: Credential=key/date/region/SERVICE/aws4_request, in the Authorization
    header or (a presigned URL) in the query string."""
    scope = ""
    if authorization and "Credential=" in authorization:
        scope = authorization.split("Credential=", 1)[1].split(",", 1)[0]
    elif "X-Amz-Credential=" in path:
        scope = urllib.parse.unquote(path.split("X-Amz-Credential=", 1)[1].split("&", 1)[0])
    parts = scope.split("/")
    return parts[3] if len(parts) >= 4 else None


# S3 (path-style, as boto3 addresses a custom endpoint): the operation from the method, path and query.
_S3_POST = (("uploads", "CreateMultipartUpload"), ("uploadId", "CompleteMultipartUpload"), ("delete", "DeleteObjects"))


def _s3_like(method: str, path: str, authorization: str | None, sent: int, received: int) -> dict[str, Any]:
    """An S3 request (or any other REST service's, by method and path)."""
    service = _service_of(authorization, path) or "s3"
    parsed = urllib.parse.urlsplit(path)
    if service != "s3":
        return {"service": service, "operation": f"{method} {parsed.path}", "bytes_in": sent, "bytes_out": received}
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    parts = [p for p in parsed.path.split("/") if p]
    bucket, key = (parts[0] if parts else ""), "/".join(parts[1:])
    operation = method
    if method == "GET":
        operation = "GetObject" if key else ("ListObjectsV2" if "list-type" in query else "ListObjects")
    elif method == "HEAD":
        operation = "HeadObject" if key else "HeadBucket"
    elif method == "PUT":  # a copy is a PUT too, billed as one
        operation = ("UploadPart" if "partNumber" in query else "PutObject") if key else "PutBucket"
    elif method == "POST":
        operation = next((name for flag, name in _S3_POST if flag in query), "PostObject")
    elif method == "DELETE":
        operation = "DeleteObject" if key else "DeleteBucket"
    return {"service": "s3", "operation": operation, "bucket": bucket, "bytes_in": sent, "bytes_out": received}
