"""``python -m node_agent``: run a node agent with settings from RUNLY_* environment variables."""

from __future__ import annotations

import logging
import sys

from node_agent.agent import Agent
from node_agent.aws import AgentAws
from node_agent.package_cache import PackageCache
from node_agent.settings import AgentSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    settings = AgentSettings()  # type: ignore[call-arg]  # filled from the environment
    aws = AgentAws(queue_url=settings.queue_url, table_name=settings.table_name, bucket=settings.feed_bucket)
    cache = PackageCache(
        settings.package_cache_dir or settings.work_dir / "packages", budget_bytes=settings.cache_budget_bytes
    )
    agent = Agent(settings, aws, cache)
    agent.install_signal_handlers()
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
