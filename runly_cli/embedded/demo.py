"""What ``make run`` does: the embedded stack, the example job packed, pushed and run over HTTP."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from runly_cli.embedded.stack import EmbeddedStack, print_tail
from runly_client.client import RunlyClient
from runly_core.contracts import EnqueueRunRequest, RunState


def _interruptible() -> threading.Event:
    """SIGINT/SIGTERM set an event instead of raising mid-way, so shutdown is always orderly."""
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def run_demo(project: Path, job: str, config: dict[str, Any], console: Console) -> int:
    from runly_cli.pack import pack_project

    _interruptible()
    stack = EmbeddedStack()
    try:
        with console.status("starting the embedded stack (moto server, gateway, node agent)"):
            stack.start(agents=1)
        console.print(f"API: {stack.api_url}   AWS (moto): {stack.endpoint}   state: {stack.run_dir}")
        console.print(
            f"dashboard: {stack.api_url}/ (admin key {stack.admin_key}; up while the demo runs, `make up` keeps it)",
            soft_wrap=True,
        )
        client = RunlyClient(stack.api_url, api_key=stack.admin_key)
        with console.status(f"packing {project}"):
            started = time.monotonic()
            bundle = pack_project(project, stack.state_dir / "dist")
        console.print(f"packed {bundle.name} in {time.monotonic() - started:.1f} s")
        package = client.push(bundle)
        console.print(f"pushed {package.name} {package.version} to the feed")
        run = client.enqueue(EnqueueRunRequest(package=package.name, job=job, config=config, version=package.version))
        console.print(f"enqueued run {run.id}")
        with console.status(f"waiting for run {run.id}"):
            run = client.wait(run.id, timeout=300)
        from runly_cli.main import print_run

        print_run(run)
        if run.state is not RunState.SUCCEEDED:
            for child in stack.children:
                print_tail(child)
            return 1
        return 0
    except KeyboardInterrupt:
        console.print("interrupted: stopping every process the stack started")
        return 130
    finally:
        stack.stop()


def serve(agents: int, console: Console) -> int:
    stop = _interruptible()
    stack = EmbeddedStack()
    try:
        stack.start(agents=agents)
        console.print(
            f"API: {stack.api_url}\ndashboard: {stack.api_url}/ (sign in with the admin key)\n"
            f"AWS (moto): {stack.endpoint}\nlogs: {stack.run_dir / 'logs'}\n"
            f"admin key: {stack.admin_key}\n(use it: export RUNLY_API_KEY={stack.admin_key})\nCtrl-C stops it.",
            soft_wrap=True,
        )
        while not stop.is_set():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0
