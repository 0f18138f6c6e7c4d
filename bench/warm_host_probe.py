"""What a warm job host would cost per run: run inside a package environment with ``python -I``.

    <env>/bin/python -I bench/warm_host_probe.py STAMPS RUNS

It imports the job host and the bench's jobs once (what a warm host does when a package version is
first used), then for each run forks a child that does what ``python -m runly.host run`` does after
its imports: build the run spec, load the job class, make the job, run it. The stamp job notes when its
first line ran; this prints one JSON object: the fork -> first line latencies, in seconds.

Standard library and the package environment only (``-I``: the bench itself is not importable here).
"""

from __future__ import annotations

import json
import os
import sys
import time

import benchjobs.jobs  # noqa: F401 - imported before forking, as a warm host would

from runly.contracts import RunSpec
from runly.host import Channel, run_job


def main(stamps: str, runs: int) -> None:
    latencies = []
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for index in range(runs):
            tag = f"warm-{os.getpid()}-{index}"
            started = time.time()
            pid = os.fork()
            if pid == 0:
                os.setsid()  # its own process group, as the agent gives every job
                spec = RunSpec(
                    run_id=tag, attempt=1, package="benchjobs", version="0", job="stamp",
                    entry_point="benchjobs.jobs:Stamp", config={"stamps": stamps},
                )  # fmt: skip
                os._exit(run_job(spec, Channel(sink)))
            os.waitpid(pid, 0)
            with open(stamps, encoding="utf-8") as handle:
                for line in handle:
                    parts = line.split()
                    if parts and parts[0] == tag:
                        latencies.append(float(parts[1]) - started)
    print(json.dumps({"fork_to_first_line": latencies}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
