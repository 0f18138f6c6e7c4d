"""What keeps a node's runs apart from the node and from one another, set up once when the agent starts:
who jobs run as (node_agent.job_user), how a run's processes are owned and bounded (node_agent.process_tree),
and which of the agent's directories the job user may pass through.

Layout of the work directory (the agent's user owns all of it)::

    work_dir/        0711  others may pass through, not list
      runs/          0700  log spools of each attempt (the agent's alone)
      hosts/         0700  warm hosts' sockets and logs
      trees/         0700  each run's processes (pid, start time), for the next agent should this one die
      jobs/          0711  one directory per attempt, the job's working directory, owned by the job user
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from node_agent import job_user, process_tree
from node_agent.job_user import JobUser
from node_agent.process_tree import Mechanism, RunLimits, RunTree
from node_agent.settings import AgentSettings
from runly.wire import JobSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Isolation:
    user: JobUser
    mechanism: Mechanism
    records: Path
    jobs_dir: Path
    node_memory_bytes: int
    node_max_processes: int
    keeper: subprocess.Popen[bytes] | None = None  # ends the recorded runs' processes once the agent is gone

    @classmethod
    def prepare(cls, settings: AgentSettings, package_cache_dir: Path) -> Isolation:
        """Resolve the job user, choose how runs' processes are owned, lock the work directory down and end
        what a previous agent of it left running. Says loudly what is exposed when a job user cannot be used."""
        user, warning = job_user.resolve(settings.job_user)
        work_dir = settings.work_dir
        if user.separate:
            job_user.traversable_dir(work_dir)
        else:
            work_dir.mkdir(parents=True, exist_ok=True)
        for private in ("runs", "hosts", "trees"):
            job_user.private_dir(work_dir / private)
        jobs_dir = job_user.traversable_dir(work_dir / "jobs")
        try:
            job_user.open_the_way(jobs_dir, user)
            job_user.open_the_way(package_cache_dir, user)
            # Package environments run the interpreter they were made from (the agent's, or its base).
            base = Path(getattr(sys, "_base_executable", sys.executable))
            for interpreter in {Path(sys.executable).resolve(), base.resolve()}:
                job_user.open_the_way(interpreter.parent, user)
        except PermissionError as exc:
            user, warning = job_user.resolve("")[0], str(exc)
        if warning is not None:
            log.warning("!" * 100)
            log.warning("%s. %s.", warning, job_user.EXPOSED)
            log.warning("!" * 100)
        else:
            log.info("job processes run as %s (uid %d)", user.name, user.uid)
        mechanism = process_tree.detect()
        log.info("a run's processes are owned by: %s", mechanism.name)
        records = work_dir / "trees"
        killed = process_tree.sweep_leftovers(records, mechanism.cgroups)
        if killed:
            log.warning("killed %d process(es) left by a previous agent of %s", killed, work_dir)
        for leftover in jobs_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        keeper = process_tree.start_keeper(records, mechanism.cgroups)
        return cls(
            user=user,
            mechanism=mechanism,
            records=records,
            jobs_dir=jobs_dir,
            node_memory_bytes=settings.memory_limit_bytes,
            node_max_processes=settings.pids_limit,
            keeper=keeper,
        )

    def reach(self, python: Path) -> None:
        """Make sure the job user can reach an environment's interpreter (and the jobs' directory) now: something
        else may have taken the others' execute bit off a directory on the way since the agent started (pytest
        does, on its base temporary directory, at every session's start)."""
        for path in (python.parent, python.resolve().parent, self.jobs_dir):
            try:
                job_user.open_the_way(path, self.user)
            except PermissionError as exc:
                log.error("%s", exc)  # the job process then cannot start: its run fails and is retried

    def limits(self, job: JobSpec | None) -> RunLimits:
        return RunLimits.for_job(
            node_memory_bytes=self.node_memory_bytes,
            node_max_processes=self.node_max_processes,
            memory_limit_mb=job.memory_limit_mb if job is not None else None,
            max_processes=job.max_processes if job is not None else None,
        )

    @property
    def node_limits(self) -> RunLimits:
        return RunLimits(self.node_memory_bytes, self.node_max_processes)

    def tree(self, name: str, limits: RunLimits) -> RunTree:
        return self.mechanism.tree(name, limits, self.records)

    def job_dir(self, name: str) -> Path:
        """The attempt's working directory, the job user's (its spec.json is written there too)."""
        directory = self.jobs_dir / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700)
        self.user.give(directory)
        return directory
