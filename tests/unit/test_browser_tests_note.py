"""Without Chromium, the browser tests are skipped and pytest's end says so in plain words, with the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_skipped_browser_tests_are_named_with_the_command_that_makes_them_run(tmp_path: Path) -> None:
    # Given a machine without Chromium (a path where there is none)
    env = {**os.environ, "RUNLY_TEST_CHROMIUM": str(tmp_path / "no-chromium")}

    # When the browser tests' module is run
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e/test_dashboard.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    # Then every test is skipped, and the last lines say which did not run and how to make them run
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert "skipped" in lines[-1]
    skipped = int(lines[-1].split(" skipped")[0].split()[-1])
    note = next(line for line in lines if "did not run" in line and "browser tests" in line and "==" not in line)
    assert note.startswith(f"{skipped} browser tests of the dashboard (tests/e2e/test_dashboard.py) did not run")
    command = "apt-get install -y chromium" if os.geteuid() == 0 else "sudo apt-get install -y chromium"
    assert note.endswith(command)
    assert lines.index(note) >= len(lines) - 4  # at the end, just before pytest's count
