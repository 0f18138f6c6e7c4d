"""The peer baseline: Celery 5 on its SQS transport, against the embedded stack's moto server.

    bench/.venv-celery/bin/python -m bench.peer_celery --endpoint http://127.0.0.1:PORT --scratch DIR

Runs in the bench's own environment (Celery never enters the project's requirements) and prints one
JSON object: dispatch latency (apply_async -> first line of the task, one task at a time, one worker)
and throughput (N tasks sent at once from a thread pool while no worker runs; then 1 or 2 workers start;
tasks/s until every task has run), measured exactly as bench.ours measures runly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.observe import StampFile, children, cpu_seconds
from bench.stats import rate, summarize

ENQUEUE_THREADS = 8
QUEUE = "runly-bench-celery"


def versions() -> dict[str, str]:
    import boto3
    import celery
    import kombu
    import pycurl

    return {
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "pycurl": pycurl.version,
        "boto3": boto3.__version__,
        "python": sys.version.split()[0],
    }


class Peer:
    def __init__(
        self, endpoint: str, scratch: Path, queues: int, moto_pid: int | None = None, prefix: str = QUEUE
    ) -> None:
        import boto3

        self.endpoint = endpoint
        self.moto_pid = moto_pid
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self.sqs = boto3.client(
            "sqs", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="local", aws_secret_access_key="local",
        )  # fmt: skip
        # A fresh queue per measurement: a worker stopped in the middle of a long poll leaves the poll open on
        # the server, which would take (and hide) messages sent for the next measurement.
        self.queues = {
            name: self.sqs.create_queue(QueueName=name)["QueueUrl"]
            for name in [prefix, *(f"{prefix}-{index}" for index in range(queues))]
        }
        self.default_queue = prefix
        self._unused = [name for name in self.queues if name != prefix]
        os.environ.update(
            {
                "BENCH_SQS_ENDPOINT": endpoint,
                "BENCH_CELERY_QUEUES": json.dumps(self.queues),
                "BENCH_CELERY_QUEUE": prefix,
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        from bench import celery_tasks  # after the environment above: the app reads it at import

        self.tasks = celery_tasks
        self._workers = 0

    def start_worker(self, queue: str | None = None) -> subprocess.Popen[bytes]:
        queue = queue or self.default_queue
        self._workers += 1
        name = f"w{self._workers}"
        log = open(self.scratch / f"worker-{name}.log", "ab")
        return subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "bench.celery_tasks", "worker", "-Q", queue,
                "-n", f"{name}@%h", "--loglevel=WARNING",
                # Gossip, mingle and worker heartbeats need broadcast messaging, which SQS does not have.
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    @staticmethod
    def stop_worker(worker: subprocess.Popen[bytes]) -> None:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    def send(self, stamps: StampFile, tag: str, queue: str | None = None) -> None:
        self.tasks.stamp.apply_async(args=(str(stamps.path), tag), queue=queue or self.default_queue)

    def dispatch(self, runs: int, warmup: int) -> dict[str, Any]:
        stamps = StampFile(self.scratch / "dispatch.txt")
        worker = self.start_worker()
        try:
            latencies = []
            for index in range(warmup + runs):
                tag = f"d{index}"
                started = time.time()
                self.send(stamps, tag)
                stamp = stamps.wait_for(tag, timeout=120)
                if stamp is None:
                    raise RuntimeError(f"celery task {tag} never ran; see {self.scratch}/worker-*.log")
                if index >= warmup:
                    latencies.append(stamp.first_line - started)
        finally:
            self.stop_worker(worker)
        return {"samples": latencies, **summarize(latencies), "runs": len(latencies)}

    def throughput(self, workers: int, tasks: int, timeout: float = 600.0) -> dict[str, Any]:
        queue = self._unused.pop(0)
        stamps = StampFile(self.scratch / f"tput-{workers}-{time.time_ns()}.txt")
        enqueue_started = time.time()
        with ThreadPoolExecutor(ENQUEUE_THREADS) as pool:
            list(pool.map(lambda index: self.send(stamps, f"t{index}", queue), range(tasks)))
        enqueue_seconds = time.time() - enqueue_started
        started = time.time()
        running = [self.start_worker(queue) for _ in range(workers)]
        deadline = time.monotonic() + timeout
        moto_cpu = cpu_seconds(self.moto_pid) if self.moto_pid else None
        try:
            while stamps.poll() < tasks and time.monotonic() < deadline:
                time.sleep(0.1)
            # Where the CPU went: each worker's main process and its prefork children, and the moto server.
            workers_cpu = sum(cpu_seconds(pid) for worker in running for pid in [worker.pid, *children(worker.pid)])
            moto_used = cpu_seconds(self.moto_pid) - moto_cpu if self.moto_pid and moto_cpu is not None else None
        finally:
            for worker in running:
                self.stop_worker(worker)
        times = sorted(stamp.first_line for stamp in stamps.stamps.values())
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queues[queue],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return {
            "workers": workers,
            "runs": tasks,
            "completed": len(times),
            "finished": len(times) >= tasks,
            "enqueue_seconds": enqueue_seconds,
            "enqueue_per_second": rate(tasks, enqueue_seconds),
            "seconds_to_all_terminal": (times[-1] - started) if times else None,
            "runs_per_second": rate(len(times), (times[-1] - started) if times else None),
            "steady_runs_per_second": rate(len(times) - 1, times[-1] - times[0]) if len(times) > 1 else None,
            "first_job_started_after": (times[0] - started) if times else None,
            "left_in_queue": {name: int(value) for name, value in attributes.items()},
            "cpu_ms_per_run": {
                "workers (main + prefork children)": workers_cpu * 1000 / max(1, len(times)),
                **({"moto server": moto_used * 1000 / max(1, len(times))} if moto_used is not None else {}),
            },
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="the moto server's URL")
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--moto-pid", type=int, help="the moto server's process, to count its CPU time")
    parser.add_argument("--dispatch", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--throughput", type=int, default=1000, help="tasks per throughput measurement")
    parser.add_argument(
        "--throughput-more-workers", type=int, help="tasks per measurement with more than one worker (default: same)"
    )
    parser.add_argument("--workers", default="1,2", help="worker counts for throughput, comma-separated")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each throughput measurement")
    parser.add_argument(
        "--tuned", action="store_true", help="also measure one worker with polling_interval 0 (not a default)"
    )
    parser.add_argument("--tuned-only", action="store_true", help="only the polling_interval 0 measurement")
    args = parser.parse_args(argv)

    worker_counts = [] if args.tuned_only else [int(w) for w in args.workers.split(",")]
    prefix = f"runly-bench-celery-{time.time_ns()}" if args.tuned_only else QUEUE  # queue names must not repeat
    peer = Peer(
        args.endpoint, args.scratch, queues=args.reps * len(worker_counts) + 1, moto_pid=args.moto_pid, prefix=prefix
    )
    result: dict[str, Any] = {"versions": versions(), "concurrency": os.cpu_count()}
    if not args.tuned_only:
        result["dispatch"] = peer.dispatch(args.dispatch, args.warmup)
        print(f"celery dispatch p50 {result['dispatch']['median'] * 1000:.1f} ms", file=sys.stderr)
    throughput: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.reps):
        for workers in worker_counts:
            tasks = args.throughput if workers == 1 else (args.throughput_more_workers or args.throughput)
            measured = peer.throughput(workers, tasks)
            throughput.setdefault(str(workers), []).append(measured)
            print(f"celery throughput, {workers} worker(s): {measured['runs_per_second']} tasks/s", file=sys.stderr)
    result["throughput"] = throughput
    if args.tuned or args.tuned_only:
        os.environ["BENCH_CELERY_POLLING_INTERVAL"] = "0"  # read by the workers started from now on
        result["tuned_throughput"] = peer.throughput(1, args.throughput)
        result["tuned_throughput"]["setting"] = "broker_transport_options polling_interval=0"
        print(f"celery throughput tuned: {result['tuned_throughput']['runs_per_second']} tasks/s", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
