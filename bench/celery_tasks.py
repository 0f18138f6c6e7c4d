"""The peer baseline's Celery app: the same trivial task as runly's stamp job, on Celery's SQS transport.

Imported by the Celery workers (``celery -A bench.celery_tasks worker``) and by ``bench.peer_celery``,
in the bench's own environment (bench/.venv-celery), never in the project's. Settings come from the
environment: BENCH_SQS_ENDPOINT (the embedded stack's moto server), BENCH_CELERY_QUEUES (name -> URL) and
BENCH_CELERY_QUEUE (the default one).
Everything else is Celery's default: prefork pool with one process per core, prefetch multiplier 4,
early acknowledgement (kombu deletes the SQS message when the worker takes the task).
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import urlsplit

from celery import Celery

IMPORTED_AT = time.time()
ENDPOINT = urlsplit(os.environ.get("BENCH_SQS_ENDPOINT", "http://127.0.0.1:5000"))
# Queue name -> URL, made beforehand by bench.peer_celery: one for dispatch, a fresh one per throughput measurement.
QUEUES: dict[str, str] = json.loads(os.environ.get("BENCH_CELERY_QUEUES", "{}"))
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "runly-bench-celery")

app = Celery("benchpeer", broker=f"sqs://local:local@{ENDPOINT.hostname}:{ENDPOINT.port}/")
app.conf.update(
    broker_transport_options={
        "region": "us-east-1",
        "is_secure": ENDPOINT.scheme == "https",  # kombu builds the endpoint URL from the broker URL's host
        # A queue made beforehand (as an operator would with CloudFormation): no list/create calls.
        "predefined_queues": {name: {"url": url} for name, url in QUEUES.items()},
    },
    task_default_queue=QUEUE,
    task_ignore_result=True,  # no result backend: the task notes when it ran, as runly's job does
    worker_enable_remote_control=False,  # SQS has no broadcast; with predefined queues there is no pidbox queue
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)
if "BENCH_CELERY_POLLING_INTERVAL" in os.environ:
    # Only for the "tuned" measurement: kombu's default waits 1 s whenever the worker's prefetch is full.
    app.conf.broker_transport_options["polling_interval"] = float(os.environ["BENCH_CELERY_POLLING_INTERVAL"])


@app.task(name="bench.stamp")
def stamp(path: str, tag: str) -> None:
    started = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {started:.6f} {IMPORTED_AT:.6f} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
