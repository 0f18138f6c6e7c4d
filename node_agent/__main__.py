"""``python -m node_agent``: run a node agent with settings from RUNLY_* environment variables."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import logging
import sys
from pathlib import Path

import boto3
from pydantic import ValidationError

from node_agent.agent import EXIT_CANNOT_RECEIVE, Agent
from node_agent.aws import AgentAws
from node_agent.credentials import node_key_session
from node_agent.fork_servers import WarmHosts
from node_agent.isolation import Isolation
from node_agent.job_process import job_environment
from node_agent.package_cache import PackageCache
from node_agent.settings import AgentSettings
from runly import tracing


def release_startup_memory() -> None:
    """Hand the C heap's free pages back to the system, once everything the agent keeps is built.

    Building the AWS clients parses megabytes of service models and endpoint data, then frees most of it;
    glibc keeps those pages for allocations an idle agent never makes (1.5 MB of its RSS, measured). Elsewhere
    (no glibc), nothing happens.
    """
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError):
        return
    gc.collect()
    trim(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node_agent", description="runly node agent")
    parser.add_argument(
        "--config", type=Path, help="a KEY=value file of RUNLY_* settings (environment variables win over it)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        settings = AgentSettings.load(env_file=args.config)
    except ValidationError as exc:
        print(f"invalid agent settings: {exc}", file=sys.stderr)
        return 2
    session = None
    if settings.node_key is not None and settings.api_url:
        # On-premises: no AWS keys on the node, only its node key.
        session = node_key_session(
            settings.api_url, settings.node_key.get_secret_value(), settings.region or "us-east-1"
        )
    elif settings.region:
        session = boto3.session.Session(region_name=settings.region)
    aws = AgentAws(
        queue_url=settings.queue_url, table_name=settings.table_name, bucket=settings.feed_bucket, session=session
    )
    cache_dir = settings.package_cache_dir or settings.work_dir / "packages"
    cache = PackageCache(cache_dir, budget_bytes=settings.cache_budget_bytes)
    # Before any job: who jobs run as, how their processes are owned, and the end of what a previous agent left.
    isolation = Isolation.prepare(settings, cache_dir)
    hosts = None
    if settings.warm_hosts:
        hosts = WarmHosts(
            settings.work_dir / "hosts",
            env=job_environment(),
            max_hosts=settings.max_warm_hosts,
            idle_seconds=settings.warm_host_idle_seconds,
            hold=cache.hold,
            user=isolation.user,
            limits=isolation.node_limits if isolation.mechanism.cgroups is None else None,
        )
    # The runs' spans (queued, claim, package ready, job run), exported where OTEL_* asks (runly.tracing).
    flush_spans = tracing.configure("runly-agent")
    agent = Agent(settings, aws, cache, hosts=hosts, isolation=isolation)
    agent.install_signal_handlers()
    release_startup_memory()
    try:
        agent.run()
    finally:
        flush_spans()
    if agent.fatal_error is not None:
        print(f"runly agent stopped: {agent.fatal_error}", file=sys.stderr)
        return EXIT_CANNOT_RECEIVE
    return 0


if __name__ == "__main__":
    sys.exit(main())
