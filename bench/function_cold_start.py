"""Cold starts of the Lambda functions: import time and first invocation, each in a fresh interpreter.

    .venv/bin/python -m bench.function_cold_start                # 5 interpreters per function; merges into
                                                                 # bench/results.json, writes bench/REPORT.md
    .venv/bin/python -m bench.function_cold_start --reps 3 --no-write   # print the table only

What a Lambda cold start pays before its first answer, beside the runtime's own start: importing the handler's
module (the init phase) and the first invocation (clients built, first AWS calls). Each function is measured in
a new interpreter per repetition (``python -c``, nothing imported before the clock starts but the standard
library), with the environment variables the stack gives it in Lambda (RUNLY_*, POWERTOOLS_*; tracing off, as
Powertools turns it off outside Lambda), against a moto server on 127.0.0.1 holding the deployment's resources,
with a realistic event: an authenticated ``POST /runs`` and ``GET /runs/{id}``, an authorizer request with a
valid key, a reaper tick, a dead letter, a node's credentials request, a schedule fire, a stream batch.

Both wall time and the interpreter's CPU time are kept: on a loaded machine wall time swells, CPU time much
less. Bytecode: the interpreters compile into a cache directory of their own (PYTHONPYCACHEPREFIX), filled
by one warm-up import, so the figures are those of a deployment whose asset carries its .pyc files. A second,
smaller measurement imports the API and authorizer modules with no bytecode cache for the project and its
dependencies (the standard library keeps its .pyc), which is what an asset without bytecode would pay: /var/task
is read-only, so every cold start would compile them. The asset ships unchecked-hash .pyc files compiled for the
runtime's Python (infrastructure/lambda_asset.compile_bytecode), so the first figures are the deployed ones.

``bench/function_cold_start_before.json`` holds the figures measured before issue 15's changes (the report's
"before" column); ``--save`` writes a run's figures in that form.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
REPS = 5
FROM_SOURCE_REPS = 3
FROM_SOURCE_FUNCTIONS = ("api", "authorizer")
BEFORE_PATH = BENCH_DIR / "function_cold_start_before.json"

# The figures (issue 15, measured before this bench existed): the "previous" column of the report.
PREVIOUS_IMPORT_S = {"api": 1.47, "authorizer": 0.50}
# Issue 15's targets, on this machine: the minimum of the import times, and the first invocation's extra.
TARGET_IMPORT_S = {"api": 0.400, "authorizer": 0.150}
TARGET_FIRST_INVOCATION_S = 0.100

# Runs in each fresh interpreter: the clock starts before the handler's module is imported.
_CHILD = r"""
import importlib, json, sys, time
spec = json.loads(sys.stdin.read())
wall, cpu = time.perf_counter(), time.process_time()
module = importlib.import_module(spec["module"])
imported_wall, imported_cpu = time.perf_counter(), time.process_time()
handler = getattr(module, spec["handler"])

class Context:
    function_name = spec["function_name"]
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + spec["function_name"]
    memory_limit_in_mb = 512
    aws_request_id = "00000000-0000-0000-0000-000000000001"
    log_group_name = "/aws/lambda/" + spec["function_name"]
    log_stream_name = "cold"
    def get_remaining_time_in_millis(self):
        return 29000

result = handler(spec["event"], Context())
done_wall, done_cpu = time.perf_counter(), time.process_time()
with open(spec["out"], "w") as out:
    json.dump({
        "import_s": imported_wall - wall, "import_cpu_s": imported_cpu - cpu,
        "first_s": done_wall - imported_wall, "first_cpu_s": done_cpu - imported_cpu,
        "result": result, "modules": len(sys.modules),
    }, out, default=str)
"""


# Where an import's time goes: the modules a function's import pulls in, imported one after another in a fresh
# interpreter, each stage's CPU time what it adds to the ones before it.
_STAGES_CHILD = r"""
import importlib, json, sys, time
stages = json.loads(sys.stdin.read())
spent = []
for module in stages:
    cpu = time.process_time()
    importlib.import_module(module)
    spent.append(time.process_time() - cpu)
print(json.dumps(spent))
"""
STAGES: dict[str, list[tuple[str, str]]] = {
    "api": [
        ("pydantic.main", "pydantic (models, validation)"),
        ("aws_lambda_powertools.logging", "Powertools (Logger, Metrics)"),
        ("aws_lambda_powertools.event_handler", "Powertools' HTTP resolvers"),
        ("aws_lambda_powertools.event_handler.middlewares.openapi_validation", "their request validation"),
        ("boto3", "boto3 and botocore"),
        ("runly_core.contracts", "runly_core.contracts (its models built at import)"),
        ("runly_core.records", "runly_core.records"),
        ("functions.settings", "the settings models (functions.settings)"),
        ("functions.api.app", "the function's own modules (routers, logic, data access)"),
    ],
    "authorizer": [
        ("pydantic.main", "pydantic (models, validation)"),
        ("aws_lambda_powertools.logging", "Powertools (Logger, Metrics)"),
        ("boto3", "boto3 and botocore"),
        ("runly_core.contracts", "runly_core.contracts (its models built at import)"),
        ("runly_core.records", "runly_core.records"),
        ("functions.settings", "the settings models (functions.settings)"),
        ("functions.authorizer.app", "the function's own modules"),
    ],
}
STAGE_REPS = 3


def import_stages(name: str, pycache: Path, reps: int = STAGE_REPS) -> list[dict[str, Any]]:
    """Each stage of STAGES[name]: the least CPU time it added over ``reps`` fresh interpreters."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RUNLY_", "PYTHON"))}
    env.update({"PYTHONPATH": str(REPO), "PYTHONPYCACHEPREFIX": str(pycache)})
    modules = [module for module, _ in STAGES[name]]
    runs = []
    for _ in range(reps):
        completed = subprocess.run(
            [sys.executable, "-c", _STAGES_CHILD], input=json.dumps(modules), cwd=REPO, env=env, text=True,
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        runs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    return [
        {"module": module, "what": what, "cpu_s": min(run[index] for run in runs)}
        for index, (module, what) in enumerate(STAGES[name])
    ]


@dataclass(frozen=True)
class Function:
    name: str
    module: str
    handler: str
    env: dict[str, str]
    event: dict[str, Any]
    expect: str  # what a correct first answer looks like, checked on every repetition


@contextmanager
def moto_server(scratch: Path) -> Iterator[str]:
    """The embedded stack's moto server (runly_cli.embedded.moto_server) on a free port of 127.0.0.1."""
    from runly_cli.embedded.stack import _http_ok, free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (scratch / "moto.log").open("wb")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
    process = subprocess.Popen(
        [sys.executable, "-m", "runly_cli.embedded.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _http_ok(f"{endpoint}/moto-api/"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start; see {scratch / 'moto.log'}")
            time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _aws_env(endpoint: str) -> dict[str, str]:
    from runly_core import resources

    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": resources.LOCAL_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def provision(endpoint: str, scratch: Path) -> list[Function]:
    """The deployment's resources on the moto server, a package, a run, a schedule and keys; the functions with
    the environment the stack gives each and a first event."""
    import boto3

    from runly_cli.commands.keys import bootstrap_admin_key
    from runly_cli.embedded.aws import create_resources, schedule_settings
    from runly_cli.embedded.gateway import LocalLambdaContext, build_authorizer_event, build_event
    from runly_core import resources
    from runly_core.contracts import Scope
    from runly_core.keys import new_key

    names = resources.ResourceNames(
        stage="cold", account=resources.LOCAL_ACCOUNT, region=resources.LOCAL_REGION, environments=("default",)
    )
    session = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name=resources.LOCAL_REGION
    )
    queue_urls = create_resources(names, session, endpoint)
    dynamodb = session.resource("dynamodb", endpoint_url=endpoint)
    admin, admin_secret = bootstrap_admin_key(names.table, dynamodb=dynamodb, name="cold start bench")
    node, _ = new_key(name="cold start node", scope=Scope.NODE, environment="default", created_by="bench")
    dynamodb.Table(names.table).put_item(Item=node.to_item())
    session.client("events", endpoint_url=endpoint).create_event_bus(Name=names.event_bus)

    common = {"POWERTOOLS_LOG_LEVEL": "INFO"}
    api_env = {
        "RUNLY_TABLE_NAME": names.table,
        "RUNLY_FEED_BUCKET": names.feed_bucket,
        "RUNLY_QUEUE_URLS": json.dumps(queue_urls),
        **schedule_settings(names),
        "POWERTOOLS_SERVICE_NAME": "runly-api",
        **common,
    }

    # As infrastructure.function_environment.maintenance_function_environment gives them.
    maintenance_env = {"RUNLY_TABLE_NAME": names.table, "RUNLY_QUEUE_URLS": json.dumps(queue_urls), **common}

    def caller(event: dict[str, Any], key_id: str, scope: str, environment: str = "") -> dict[str, Any]:
        event["requestContext"]["authorizer"] = {
            "lambda": {"key_id": key_id, "scope": scope, "environment": environment}
        }
        return event

    def api_event(method: str, path: str, body: Any = None) -> dict[str, Any]:
        raw = b"" if body is None else json.dumps(body).encode()
        headers = [("content-type", "application/json"), ("authorization", f"Bearer {admin_secret}")]
        event = build_event(method=method, raw_path=path, raw_query="", headers=headers, body=raw,
                            source_ip="127.0.0.1")  # fmt: skip
        return caller(event, admin.key_id, "admin")

    # A package, a run and a schedule, made through the API function in this process.
    saved = dict(os.environ)
    os.environ.update({**_aws_env(endpoint), **api_env, "POWERTOOLS_LOG_LEVEL": "WARNING"})
    try:
        from functions.api.app import lambda_handler as api
        from tests.support.bundles import make_bundle

        def call(method: str, path: str, body: Any = None) -> Any:
            context = LocalLambdaContext(aws_request_id="setup", function_name="runly-api", memory_limit_in_mb=512,
                                         timeout_seconds=29)  # fmt: skip
            answer = api(api_event(method, path, body), context)  # type: ignore[arg-type]
            if answer["statusCode"] >= 300:
                raise RuntimeError(f"{method} {path}: {answer['statusCode']} {answer.get('body')}")
            return json.loads(answer["body"]) if answer.get("body") else None

        bundle = make_bundle(scratch, "greeter", "1.0.0")
        stated = {"name": "greeter", "version": "1.0.0", "size": bundle.stat().st_size,
                  "sha256": __import__("hashlib").sha256(bundle.read_bytes()).hexdigest()}  # fmt: skip
        ticket = call("POST", "/packages/uploads", stated)
        session.client("s3", endpoint_url=endpoint).put_object(
            Bucket=names.feed_bucket, Key=ticket["key"], Body=bundle.read_bytes()
        )
        call("POST", "/packages", stated)
        run_request = {"package": "greeter", "job": "greet", "config": {"name": "Ada"}}
        run = call("POST", "/runs", run_request)
        schedule = call("POST", "/schedules", {**run_request, "name": "nightly", "expression": "rate(1 hour)"})
    finally:
        os.environ.clear()
        os.environ.update(saved)
    message = session.client("sqs", endpoint_url=endpoint).receive_message(QueueUrl=queue_urls["default"])
    dead_letter_body = message["Messages"][0]["Body"]

    authorizer_request = build_event(
        method="POST", raw_path="/runs", raw_query="", headers=[("authorization", f"Bearer {admin_secret}")],
        body=b"{}", source_ip="127.0.0.1",
    )  # fmt: skip
    stream_batch = json.loads((REPO / "tests" / "events" / "run_lifecycle.json").read_text())
    table_arn = f"arn:aws:dynamodb:{names.region}:{names.account}:table/{names.table}"
    return [
        Function("api", "functions.api.app", "lambda_handler", api_env,
                 api_event("POST", "/runs", run_request), "201"),
        Function("api (GET /runs/{id})", "functions.api.app", "lambda_handler", api_env,
                 api_event("GET", f"/runs/{run['id']}"), "200"),
        Function("authorizer", "functions.authorizer.app", "lambda_handler",
                 {"RUNLY_TABLE_NAME": names.table, "POWERTOOLS_SERVICE_NAME": "runly-authorizer", **common},
                 build_authorizer_event(authorizer_request, [f"Bearer {admin_secret}"]), "\"isAuthorized\": true"),
        Function("reaper", "functions.maintenance.reaper", "lambda_handler",
                 {**maintenance_env, "POWERTOOLS_SERVICE_NAME": "runly-reaper"}, _scheduled_event(), "{"),
        Function("dead letters", "functions.maintenance.dlq", "lambda_handler",
                 {**maintenance_env, "RUNLY_DEAD_LETTER_ENVIRONMENT": "default",
                  "POWERTOOLS_SERVICE_NAME": "runly-dlq"},
                 _sqs_event(dead_letter_body), "batchItemFailures"),
        Function("node credentials", "functions.nodes.credentials", "lambda_handler",
                 {"RUNLY_TABLE_ARN": table_arn, "RUNLY_FEED_BUCKET_ARN": f"arn:aws:s3:::{names.feed_bucket}",
                  "RUNLY_NODE_ROLES": json.dumps({"default": {
                      "role_arn": f"arn:aws:iam::{names.account}:role/{names.prefix}-node-default",
                      "queue_arn": f"arn:aws:sqs:{names.region}:{names.account}:{names.queues('default').queue}"}}),
                  "POWERTOOLS_SERVICE_NAME": "runly-node-credentials", **common},
                 caller(build_event(method="POST", raw_path="/nodes/credentials", raw_query="", headers=[],
                                    body=b"", source_ip="127.0.0.1"), node.key_id, "node", "default"),
                 "200"),
        Function("schedule fire", "functions.schedules.fire", "lambda_handler",
                 {"RUNLY_TABLE_NAME": names.table, "RUNLY_QUEUE_URLS": json.dumps(queue_urls),
                  "POWERTOOLS_SERVICE_NAME": "runly-schedules", **common},
                 {"schedule_id": schedule["id"], "scheduled_time": "2026-01-01T00:00:00Z"}, "\"run_id\": \"run_"),
        Function("events publisher", "functions.events.publisher", "lambda_handler",
                 {"RUNLY_EVENT_BUS_NAME": names.event_bus, "POWERTOOLS_SERVICE_NAME": "runly-events", **common},
                 stream_batch, "batchItemFailures"),
    ]  # fmt: skip


def _scheduled_event() -> dict[str, Any]:
    return {
        "version": "0", "id": "00000000-0000-0000-0000-000000000002", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/runly-reaper"], "detail": {},
    }  # fmt: skip


def _sqs_event(body: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": "00000000-0000-0000-0000-000000000003",
                "receiptHandle": base64.b64encode(b"receipt").decode(),
                "body": body,
                "attributes": {"ApproximateReceiveCount": "5", "SentTimestamp": "1767225600000",
                               "SenderId": "123456789012", "ApproximateFirstReceiveTimestamp": "1767225600000"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:runly-cold-default-dlq",
                "awsRegion": "us-east-1",
            }
        ]
    }  # fmt: skip


def measure_one(function: Function, endpoint: str, scratch: Path, pycache: Path | None) -> dict[str, Any]:
    """One fresh interpreter: import the handler's module, invoke it once. ``pycache`` None: no bytecode is
    written, so what has no .pyc beside its source (the venv's packages, the project) is compiled on import."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "RUNLY_", "POWERTOOLS_", "PYTHON"))
    }
    env.update({**_aws_env(endpoint), **function.env, "PYTHONPATH": str(REPO)})
    env.update({"PYTHONPYCACHEPREFIX": str(pycache)} if pycache else {"PYTHONDONTWRITEBYTECODE": "1"})
    out = Path(tempfile.mkstemp(dir=scratch, suffix=".json")[1])
    spec = {"module": function.module, "handler": function.handler, "event": function.event, "out": str(out),
            "function_name": f"runly-{function.name.split()[0]}"}  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD], input=json.dumps(spec), cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, timeout=120,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"{function.name}: the interpreter failed:\n{completed.stdout[-3000:]}")
    measured: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    answer = json.dumps(measured.pop("result"))
    if function.expect not in answer:
        raise RuntimeError(f"{function.name}: unexpected first answer (wanted {function.expect!r}): {answer[:500]}")
    return measured


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def measure(reps: int = REPS, scratch: Path | None = None) -> dict[str, Any]:
    """Every function, ``reps`` fresh interpreters each: min/median/max of import and first invocation."""
    scratch = scratch or Path(tempfile.mkdtemp(prefix="cold-start-"))
    scratch.mkdir(parents=True, exist_ok=True)
    pycache = scratch / "pycache"
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load = os.getloadavg()[0]
    with moto_server(scratch) as endpoint:
        functions = provision(endpoint, scratch)
        warmed: set[str] = set()
        for function in functions:  # one warm-up per module: fills the bytecode cache; not counted
            if function.module not in warmed:
                measure_one(function, endpoint, scratch, pycache)
                warmed.add(function.module)
        figures: dict[str, Any] = {}
        for function in functions:
            reps_measured = [measure_one(function, endpoint, scratch, pycache) for _ in range(reps)]
            figures[function.name] = {
                "module": function.module,
                "reps": reps_measured,
                **{key: _summary([rep[key] for rep in reps_measured])
                   for key in ("import_s", "import_cpu_s", "first_s", "first_cpu_s")},
                "modules": reps_measured[0]["modules"],
            }  # fmt: skip
        stages = {name: import_stages(name, pycache) for name in STAGES}
        from_source: dict[str, Any] = {}
        for function in functions:
            if function.name in FROM_SOURCE_FUNCTIONS:
                reps_measured = [measure_one(function, endpoint, scratch, None) for _ in range(FROM_SOURCE_REPS)]
                from_source[function.name] = {
                    key: _summary([rep[key] for rep in reps_measured]) for key in ("import_s", "import_cpu_s")
                }
    return {
        "started": started,
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "reps": reps,
        "python": sys.version.split()[0],
        "functions": figures,
        "from_source": from_source,
        "import_stages": stages,
        "previous_import_s": PREVIOUS_IMPORT_S,
        "targets": {"import_s": TARGET_IMPORT_S, "first_invocation_s": TARGET_FIRST_INVOCATION_S},
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def load_before() -> dict[str, Any] | None:
    return json.loads(BEFORE_PATH.read_text()) if BEFORE_PATH.exists() else None


def summary_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the report's "every figure beside its target" table (bench.derive.figures' shape)."""
    measured = figures.get("function_cold_start") or {}
    functions = measured.get("functions") or {}
    rows: list[dict[str, Any]] = []
    for name, label in (("api", "API"), ("authorizer", "authorizer")):
        figure = functions.get(name)
        if figure is None:
            continue
        target = TARGET_IMPORT_S[name]
        imported, first = figure["import_s"]["min"], figure["first_s"]["min"]
        rows.append({"figure": f"10. Lambda cold start, {label}: import (min of {measured['reps']} interpreters)",
                     "value": imported, "unit": "s", "target": f"≤ {target * 1000:.0f} ms", "pass": imported <= target,
                     "runs": measured["reps"]})  # fmt: skip
        rows.append({"figure": f"10. Lambda cold start, {label}: first invocation after import (min)",
                     "value": first, "unit": "s", "target": f"≤ {TARGET_FIRST_INVOCATION_S * 1000:.0f} ms more",
                     "pass": first <= TARGET_FIRST_INVOCATION_S, "runs": measured["reps"]})  # fmt: skip
    return rows


def section(measured: dict[str, Any], before: dict[str, Any] | None = None) -> list[str]:
    """The report's section: each function's figures, beside the issue's and (``before``) an earlier run's."""
    before = before if before is not None else load_before()
    targets = measured["targets"]
    lines = [
        "## Lambda cold starts: import and first invocation",
        "",
        f"`python -m bench.function_cold_start` ({measured['started']}, {measured['reps']} fresh interpreters per "
        f"function, Python {measured['python']}, load average {measured['load_average'][0]} at the start and "
        f"{measured['load_average'][1]} at the end on 2 cores): importing the handler's module, then its first "
        "invocation against a moto server, with the function's Lambda environment variables. Wall time, min / "
        "median, and CPU time (min), which a loaded machine inflates less. Targets (issue 15): import at most "
        f"{_ms(targets['import_s']['api'])} (API) and {_ms(targets['import_s']['authorizer'])} (authorizer), "
        f"minimum of the interpreters; first invocation at most {_ms(targets['first_invocation_s'])} more.",
        "",
        "| function | import (min / median) | import CPU | first invocation (min / median) | first CPU | "
        + ("before: import min / first min | " if before else "")
        + "issue 15's import | modules loaded |",
        "| --- | --- | --- | --- | --- | " + ("--- | " if before else "") + "--- | --- |",
    ]
    for name, figure in measured["functions"].items():
        earlier = (before or {}).get("functions", {}).get(name)
        row = [
            f"`{figure['module']}`" + (f" {name.split(' ', 1)[1]}" if " " in name and name.startswith("api") else ""),
            f"{_ms(figure['import_s']['min'])} / {_ms(figure['import_s']['median'])}",
            _ms(figure["import_cpu_s"]["min"]),
            f"{_ms(figure['first_s']['min'])} / {_ms(figure['first_s']['median'])}",
            _ms(figure["first_cpu_s"]["min"]),
        ]
        if before:
            row.append(f"{_ms(earlier['import_s']['min'])} / {_ms(earlier['first_s']['min'])}" if earlier else "-")
        previous = measured["previous_import_s"].get(name)
        row += [_ms(previous) if previous else "-", str(figure["modules"])]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if measured.get("from_source"):
        lines += [
            "Without bytecode, as the Lambda asset ships today (no .pyc in it, and /var/task is read-only, so each "
            "cold start compiles the project and its dependencies; here the standard library keeps its .pyc, "
            "boto3 and botocore do not, unlike Lambda's runtime): import, min / median wall and CPU min, "
            f"{FROM_SOURCE_REPS} interpreters: "
            + "; ".join(
                f"`{functions_module(measured, name)}` {_ms(figure['import_s']['min'])} / "
                f"{_ms(figure['import_s']['median'])}, CPU {_ms(figure['import_cpu_s']['min'])}"
                for name, figure in measured["from_source"].items()
            )
            + ".",
            "",
        ]
    return lines + stages_lines(measured)


def stages_lines(measured: dict[str, Any]) -> list[str]:
    stages = measured.get("import_stages") or {}
    if not stages:
        return []
    lines = [
        f"Where the import goes (CPU time each stage adds, least of {STAGE_REPS} fresh interpreters, modules imported "
        "in this order so each stage counts only what the ones before did not bring):",
        "",
        "| function | " + " | ".join(f"stage {index}" for index in range(1, max(map(len, stages.values())) + 1)) + " |",
        "| --- | " + " | ".join("---" for _ in range(max(map(len, stages.values())))) + " |",
    ]
    for name, rows in stages.items():
        cells = [f"{row['what']}: {_ms(row['cpu_s'])}" for row in rows]
        cells += [""] * (max(map(len, stages.values())) - len(cells))
        lines.append(f"| {name} (total {_ms(sum(row['cpu_s'] for row in rows))}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "What is left is what the first request uses: pydantic, Powertools' resolver and its validation, botocore, "
        "the API's models. Below the targets only by removing work, not moving it: runly_core.contracts building its "
        "models on first use (pydantic `defer_build`) instead of at import, a DynamoDB client rather than a boto3 "
        "resource in the authorizer, and .pyc files in the Lambda asset (the figures without bytecode above).",
    ]
    return [*lines, ""]


def functions_module(measured: dict[str, Any], name: str) -> str:
    return str(measured["functions"][name]["module"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.function_cold_start", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument(
        "--results",
        type=Path,
        default=BENCH_DIR / "results.json",
        help="the results file this run's figures go into (figures.function_cold_start)",
    )
    parser.add_argument("--save", type=Path, help="also write this run's figures alone to this JSON file")
    parser.add_argument("--before", type=Path, default=BEFORE_PATH,
                        help="a file --save wrote earlier: the 'before' column (default: %(default)s)")  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="print the section; write no file")
    args = parser.parse_args(argv)
    measured = measure(args.reps)
    before = json.loads(args.before.read_text()) if args.before and args.before.exists() else None
    print("\n".join(section(measured, before)))
    if args.save:
        args.save.write_text(json.dumps(measured, indent=1) + "\n")
    if not args.no_write:
        from bench.__main__ import publish

        results = json.loads(args.results.read_text())
        results["figures"]["function_cold_start"] = measured
        publish(results, args.results.parent, chart=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
