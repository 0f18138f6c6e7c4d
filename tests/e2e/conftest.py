"""The embedded stack as real processes (moto server, gateway, node agent), shared by the e2e tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runly_cli.embedded.stack import EmbeddedStack, print_tail
from runly_cli.pack import pack_project
from runly_client.client import RunlyClient
from runly_core.contracts import PackageVersionView
from tests.support.job_user import share_with_jobs

REPO = Path(__file__).resolve().parents[2]
E2E_PROJECT = Path(__file__).parent / "projects" / "e2ejobs"
# The browser tests (test_dashboard.py) drive Debian's Chromium; `make test` installs it where it can.
# (RUNLY_TEST_CHROMIUM names another path: a test of what pytest says when it is missing.)
CHROMIUM = Path(os.environ.get("RUNLY_TEST_CHROMIUM", "/usr/bin/chromium"))

# Short leases and polls so that faults show within seconds.
FAST_AGENT = {
    "RUNLY_LEASE_SECONDS": "6",
    "RUNLY_HEARTBEAT_SECONDS": "1",
    "RUNLY_POLL_WAIT_SECONDS": "1",
    "RUNLY_RETRY_BASE_SECONDS": "1",
    "RUNLY_KILL_GRACE_SECONDS": "2",
    "RUNLY_IDLE_REFRESH_SECONDS": "2",  # an idle node sees a drain and shows offline within seconds, too
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Browser tests skipped for want of Chromium are said in plain words, with the command that brings it (a
    bare "9 skipped" hides them: the reason shows only with -rs)."""
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if "test_dashboard.py" in report.nodeid]
    if not skipped or CHROMIUM.exists():
        return
    command = "apt-get install -y chromium" if os.geteuid() == 0 else "sudo apt-get install -y chromium"
    terminalreporter.write_sep("=", "browser tests did not run", yellow=True)
    terminalreporter.write_line(
        f"{len(skipped)} browser tests of the dashboard (tests/e2e/test_dashboard.py) did not run: Chromium is not "
        f"installed at {CHROMIUM}. To run them, install Debian's chromium: {command}"
    )


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's tmp_path, shared with the jobs the test runs (share_with_jobs)."""
    return share_with_jobs(tmp_path)


def stop_printing_failures(embedded: EmbeddedStack) -> None:
    """Stop a module's own stack, printing the output of each child that ended in failure first."""
    for child in embedded.children:
        if child.process.poll() not in (None, 0):
            print_tail(child)
    embedded.stop()


@contextmanager
def pushed_stack(
    state_dir: Path, bundle: Path, *, agents: int, agent_env: dict[str, str]
) -> Iterator[tuple[EmbeddedStack, RunlyClient]]:
    """A stack of a module's own, with ``bundle`` pushed; the output of any child that failed is printed at the end."""
    embedded = EmbeddedStack(state_dir=state_dir, agent_env=agent_env)
    embedded.start(agents=agents)
    client = RunlyClient(embedded.api_url, api_key=embedded.admin_key)
    client.push(bundle)
    try:
        yield embedded, client
    finally:
        stop_printing_failures(embedded)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    embedded = EmbeddedStack(state_dir=tmp_path_factory.mktemp("stack"), agent_env=FAST_AGENT)
    embedded.start(agents=1)
    yield embedded
    failed = embedded.children and any(c.process.poll() not in (None, 0) for c in embedded.children)
    if failed:
        for child in embedded.children:
            print_tail(child)
    embedded.stop()


@pytest.fixture(scope="session")
def client(stack: EmbeddedStack) -> RunlyClient:
    return RunlyClient(stack.api_url, api_key=stack.admin_key)


@pytest.fixture(scope="session")
def hello(client: RunlyClient, tmp_path_factory: pytest.TempPathFactory) -> PackageVersionView:
    return client.push(pack_project(REPO / "examples" / "hello", tmp_path_factory.mktemp("dist")))


@pytest.fixture(scope="session")
def e2ejobs_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The jobs that fail, crash and sleep on purpose, packed once per session."""
    return pack_project(E2E_PROJECT, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def e2ejobs(client: RunlyClient, e2ejobs_bundle: Path) -> PackageVersionView:
    return client.push(e2ejobs_bundle)


@pytest.fixture(scope="session")
def push_example(client: RunlyClient, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], PackageVersionView]:
    """Packs and pushes examples/<name>, once per session."""
    pushed: dict[str, PackageVersionView] = {}

    def push(name: str) -> PackageVersionView:
        if name not in pushed:
            pushed[name] = client.push(pack_project(REPO / "examples" / name, tmp_path_factory.mktemp("dist")))
        return pushed[name]

    return push
