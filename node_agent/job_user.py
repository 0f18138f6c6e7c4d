"""The unprivileged user that job processes (and warm hosts) run as: ``RUNLY_JOB_USER``, default ``runly-job``.

A job running as the agent's own user could read ``/proc/<agent>/environ`` (the node key, AWS credentials),
the agent's files and spools, and write into every cached package environment. As a user of its own it cannot:
the agent's work directory is traversable but not listable, its spools, sockets and records are private to the
agent's user, and package environments belong to the agent's user with no write bit for anyone else.

Switching users needs root or CAP_SETUID + CAP_SETGID (+ CAP_KILL to stop the jobs, CAP_CHOWN for their
directories): the systemd unit grants exactly those. Without them, or without the user, jobs run as the agent's
user and the agent says so loudly at start (docs/agent.md lists what is then exposed).
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CAP_CHOWN = 0
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
NEEDED_CAPABILITIES = (CAP_CHOWN, CAP_KILL, CAP_SETGID, CAP_SETUID)


@dataclass(frozen=True)
class JobUser:
    """Who job processes run as; ``separate`` False: the agent's own user (nothing is switched)."""

    name: str
    uid: int
    gid: int
    separate: bool

    @property
    def popen_uid(self) -> int | None:
        """subprocess.Popen's ``user``, ``group`` and ``extra_groups`` (none) for a process of this user."""
        return self.uid if self.separate else None

    @property
    def popen_gid(self) -> int | None:
        return self.gid if self.separate else None

    @property
    def popen_groups(self) -> list[int] | None:
        return [] if self.separate else None

    def give(self, path: Path) -> None:
        """Hand a directory or file the job needs to write to the job user."""
        if self.separate:
            os.chown(path, self.uid, self.gid)


def effective_capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def can_switch_users() -> bool:
    if os.geteuid() == 0:
        return True
    capabilities = effective_capabilities()
    return all(capabilities & (1 << cap) for cap in NEEDED_CAPABILITIES)


def resolve(name: str) -> tuple[JobUser, str | None]:
    """The job user by name, and a warning to say loudly when jobs will run as the agent's own user instead."""
    own = JobUser(name=pwd.getpwuid(os.getuid()).pw_name, uid=os.getuid(), gid=os.getgid(), separate=False)
    if not name:
        return own, "RUNLY_JOB_USER is empty: jobs run as the agent's own user"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return own, f"job user {name!r} does not exist (create it: `make job-user` or useradd --system {name})"
    if entry.pw_uid == os.getuid():
        return own, f"job user {name!r} is the agent's own user"
    if entry.pw_uid == 0:
        return own, f"job user {name!r} is root: refused"
    if not can_switch_users():
        return own, (
            f"the agent (uid {os.getuid()}) may not switch to job user {name!r}: it needs root or CAP_SETUID, "
            "CAP_SETGID, CAP_KILL and CAP_CHOWN (deploy/systemd/runly-node.service grants them)"
        )
    return JobUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid, separate=True), None


EXPOSED = (
    "JOBS RUN AS THE AGENT'S OWN USER: a job can read /proc/<agent pid>/environ (the node key, AWS credentials), "
    "the agent's spools and work directory, and write into other packages' cached environments"
)


def private_dir(path: Path) -> Path:
    """A directory of the agent's alone (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def traversable_dir(path: Path) -> Path:
    """A directory others may pass through but not list (0711): the way to what is shared with the job user."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o711)
    return path


def unreachable_ancestors(path: Path, uid: int, gid: int) -> list[Path]:
    """The directories on the way to ``path`` (itself included) that ``uid`` may not pass through."""
    blocked = []
    current = Path(path).resolve()
    for directory in [*reversed(current.parents), current]:
        try:
            info = directory.stat()
        except OSError:
            break
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            blocked.append(directory)
    return blocked


def open_the_way(path: Path, user: JobUser) -> None:
    """Let the job user reach ``path`` (a package cache, the job directories): directories of the agent's on the
    way get the others' execute bit (pass through, not list); one the agent does not own is an error to fix."""
    if not user.separate:
        return
    for directory in unreachable_ancestors(path, user.uid, user.gid):
        if directory.stat().st_uid != os.getuid():
            raise PermissionError(f"job user {user.name} cannot reach {path}: {directory} is not traversable")
        directory.chmod(directory.stat().st_mode | stat.S_IXOTH)
        log.warning("made %s traversable (not listable) for the job user %s", directory, user.name)
