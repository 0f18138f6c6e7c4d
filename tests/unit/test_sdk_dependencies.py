"""What a job bundle's runly needs: pydantic (and packaging), never the API client's httpx."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_httpx_is_an_extra_of_runly_not_a_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {Requirement(r).name for r in project["dependencies"]} == {"pydantic", "packaging"}
    assert "httpx" in {Requirement(r).name for r in project["optional-dependencies"]["client"]}
    assert "httpx" in {Requirement(r).name for r in project["optional-dependencies"]["cli"]}


def test_the_job_sdk_and_the_job_host_never_import_httpx() -> None:
    result = _python(
        "import sys, runly, runly.runner, runly.fork_server, runly.testing, runly.items, runly.function_jobs; "
        "runly.job, runly.item_job, runly.Job; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('httpx', 'httpcore', 'anyio')))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_client_without_httpx_says_which_extra_to_install() -> None:
    result = _python("import sys; sys.modules['httpx'] = None; import runly_client.client")
    assert result.returncode != 0
    assert "ImportError: runly's API clients need httpx: pip install 'runly[client]'" in result.stderr
