"""Tests whose jobs write files: jobs run as the node's job user (RUNLY_JOB_USER), not as the test's user."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def share_with_jobs(directory: Path) -> Path:
    """Let the node's job user write into ``directory``: jobs run as RUNLY_JOB_USER, not as the test's user, and
    the e2e jobs write where a test tells them (ledgers, pid files). Directories above it get the others' execute
    bit (pass through, not list), where they are ours."""
    directory.chmod(0o777)
    for parent in directory.resolve().parents:
        info = parent.stat()
        if info.st_uid == os.getuid() and not info.st_mode & stat.S_IXOTH:
            parent.chmod(info.st_mode | stat.S_IXOTH)
    return directory
