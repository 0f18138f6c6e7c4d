"""Who job processes run as, and what the agent says when it cannot switch to that user."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from node_agent import job_user


def test_no_job_user_of_that_name_leaves_jobs_as_the_agents_user_and_says_so() -> None:
    user, warning = job_user.resolve("runly-no-such-user")
    assert not user.separate and user.uid == os.getuid()
    assert warning is not None and "does not exist" in warning and "make job-user" in warning
    assert (user.popen_uid, user.popen_gid, user.popen_groups) == (None, None, None)


def test_an_empty_job_user_is_the_agents_own_user_said_loudly() -> None:
    user, warning = job_user.resolve("")
    assert not user.separate and warning is not None and "RUNLY_JOB_USER is empty" in warning


def test_root_is_never_a_job_user() -> None:
    if os.getuid() == 0:
        pytest.skip("as root, root is the agent's own user (said so already)")
    user, warning = job_user.resolve("root")
    assert not user.separate and warning is not None and "root" in warning


def test_a_directory_without_the_others_execute_bit_blocks_the_way(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    inner = tmp_path / "private" / "cache"
    inner.mkdir(parents=True)
    (tmp_path / "private").chmod(0o700)
    blocked = job_user.unreachable_ancestors(inner, nobody.pw_uid, nobody.pw_gid)
    assert tmp_path / "private" in blocked
    (tmp_path / "private").chmod(0o711)
    assert tmp_path / "private" not in job_user.unreachable_ancestors(inner, nobody.pw_uid, nobody.pw_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_as_root_the_job_user_is_used_and_the_way_to_its_directories_opened(tmp_path: Path) -> None:
    user, warning = job_user.resolve("nobody")
    assert warning is None and user.separate and user.popen_groups == []
    private = tmp_path / "work"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    (private / "jobs").mkdir()
    job_user.open_the_way(private / "jobs", user)
    # Passable by others, still not listable
    assert private.stat().st_mode & 0o777 == 0o701
    assert not job_user.unreachable_ancestors(private / "jobs", user.uid, user.gid)
