"""The dashboard in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against
the embedded stack (moto server, the local gateway calling the API function, a node agent), as a user would use it.

Each view is saved as a screenshot: under docs/screenshots/ (what the README shows) with RUNLY_SCREENSHOTS=docs
(`make screenshots`), elsewhere in a temporary directory, so a test run leaves the checkout as it found it.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runly_cli.embedded.stack import EmbeddedStack, print_tail
from runly_cli.pack import pack_project
from runly_client.client import RunlyClient
from runly_core.contracts import CreateKeyRequest, CreateScheduleRequest, EnqueueRunRequest, RunState, Scope
from tests.e2e.conftest import CHROMIUM, FAST_AGENT, REPO

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000  # the longest any step waits: runs take seconds on the embedded stack

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium; make test installs it as root)"
)


@pytest.fixture(scope="module")
def dashboard_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(state_dir=tmp_path_factory.mktemp("dashboard"), agent_env=FAST_AGENT)
    stack.start(agents=1)
    yield stack
    # Agents this module kills on purpose end with a signal; anything else failing is worth its log.
    if any(child.process.poll() not in (None, 0, -signal.SIGKILL) for child in stack.children):
        for child in stack.children:
            print_tail(child)
    stack.stop()


@pytest.fixture(scope="module")
def admin(dashboard_stack: EmbeddedStack) -> RunlyClient:
    return RunlyClient(dashboard_stack.api_url, api_key=dashboard_stack.admin_key)


@pytest.fixture(scope="module")
def feed(admin: RunlyClient, e2ejobs_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """hello, checksums (items failing by category) and the e2e jobs (sleep, fail, ledger) pushed; a checksums run
    and a failing run enqueued at once, so that the runs view has real rows by the time it is looked at."""
    dist = tmp_path_factory.mktemp("dist")
    with ThreadPoolExecutor(max_workers=2) as pool:
        bundles = list(pool.map(lambda name: pack_project(REPO / "examples" / name, dist), ["hello", "checksums"]))
    for bundle in [*bundles, e2ejobs_bundle]:
        admin.push(bundle)
    checksums = admin.enqueue(EnqueueRunRequest(package="checksums", job="checksums", config={"count": 240}))
    failing = admin.enqueue(EnqueueRunRequest(package="e2ejobs", job="fail", config={}, max_attempts=1))
    return {"checksums": checksums.id, "fail": failing.id}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait as long as any step may take (Playwright's default is 5 s: too short for an agent to start
    # on a loaded machine).
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any, dashboard_stack: EmbeddedStack) -> Iterator[Callable[..., Any]]:
    """Opens a fresh browser context (its own local storage) on the dashboard; fails the test on any script
    error or Content-Security-Policy violation the page reports."""
    contexts: list[Any] = []
    problems: list[str] = []

    def open_(viewport: dict[str, int] = LAPTOP) -> Any:
        context = browser.new_context(viewport=viewport, base_url=dashboard_stack.api_url)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        # Refused requests (a wrong key on purpose) are logged by Chromium as "Failed to load resource": expected.
        page.on(
            "console",
            lambda message: (
                problems.append(f"console: {message.text}")
                if message.type == "error" and not message.text.startswith("Failed to load resource")
                else None
            ),
        )
        page.goto("/")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not problems, problems


def sign_in(page: Any, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Runs", level=1).wait_for()


def go_to(page: Any, view: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=view).click()


@functools.cache
def screenshots_dir() -> Path:
    if os.environ.get("RUNLY_SCREENSHOTS") == "docs":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return Path(tempfile.mkdtemp(prefix="runly-screenshots-"))


def screenshot(page: Any, name: str) -> None:
    page.screenshot(path=screenshots_dir() / f"{name}.png", full_page=True, animations="disabled")


def wait_for_state(page: Any, state: str) -> None:
    page.locator(".state-line .badge").filter(has_text=re.compile(f"^{state}$")).wait_for()


def test_a_key_is_entered_once_kept_in_the_browser_and_removed_by_sign_out(
    open_page: Callable[..., Any], dashboard_stack: EmbeddedStack
) -> None:
    from playwright.sync_api import expect

    page = open_page()
    # Given no key yet: the sign-in form, and nothing else of the dashboard
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    screenshot(page, "key-entry")

    # When a wrong key is entered, then it is refused with a message and nothing is stored
    page.get_by_label("API key").fill("rly_0123456789abcdef_" + "x" * 43)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#api-key-error")).to_contain_text("refused")
    assert page.evaluate("localStorage.getItem('runly.apiKey')") is None

    # When the admin key is entered, then the runs show, with the key's scope, and the key survives a reload
    sign_in(page, dashboard_stack.admin_key)
    expect(page.locator("#identity")).to_contain_text("admin key")
    page.reload()
    expect(page.get_by_role("heading", name="Runs", level=1)).to_be_visible()

    # When the user signs out, then the key is gone from the browser
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("localStorage.getItem('runly.apiKey')") is None


def test_a_run_enqueued_from_the_generated_form_fills_its_bar_to_succeeded_and_shows_its_logs(
    open_page: Callable[..., Any], dashboard_stack: EmbeddedStack, admin: RunlyClient, feed: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    page = open_page()
    sign_in(page, dashboard_stack.admin_key)
    go_to(page, "Packages")
    page.get_by_role("link", name="hello", exact=True).click()

    # Given the form generated from hello's config schema, prefilled with its default config
    name, times = page.get_by_label("name", exact=True), page.get_by_label("times", exact=True)
    expect(name).to_have_value("world")
    expect(times).to_have_value("1")
    assert (times.get_attribute("min"), times.get_attribute("max"), times.get_attribute("step")) == ("1", "100", "1")

    # When a value outside the schema's bounds is entered, then the field says so and nothing is enqueued
    times.fill("0")
    page.get_by_role("button", name="Enqueue run").click()
    expect(page.locator("#config-hello-times-error")).to_be_visible()
    expect(times).to_have_attribute("aria-invalid", "true")
    assert admin.list_runs(job="hello").items == []

    # When valid values are entered and the run enqueued
    name.fill("dashboard")
    times.fill("3")
    screenshot(page, "packages-form")
    page.get_by_role("button", name="Enqueue run").click()

    # Then its page shows it run to Succeeded, its bar full
    page.wait_for_url(re.compile(r".*#/runs/run_[^/]+$"))
    wait_for_state(page, "Succeeded")
    bar = page.get_by_role("progressbar", name="Run progress")
    expect(bar).to_have_attribute("data-ok", "1.0000")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    # And its logs show what it printed, and the run has the config the form made
    expect(page.locator("pre.log")).to_contain_text("Hello, dashboard!\nHello, dashboard!\nHello, dashboard!")
    run_id = page.url.rsplit("/", 1)[-1]
    run = admin.get_run(run_id)
    assert run.config == {"name": "dashboard", "times": 3} and run.state is RunState.SUCCEEDED

    # And in the list, its row's bar is full too
    go_to(page, "Runs")
    row_bar = page.get_by_role("progressbar", name=f"Progress of run {run_id}")
    expect(row_bar).to_have_attribute("data-ok", "1.0000")

    # And the keyboard alone opens it: its link, Enter, and the focus lands on the run's heading
    page.get_by_role("link", name=run_id).focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(f".*#/runs/{run_id}$"))
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    expect(page.locator(".state-line")).to_have_attribute("aria-live", "polite")


def test_a_long_run_is_cancelled_from_its_page(
    open_page: Callable[..., Any], dashboard_stack: EmbeddedStack, admin: RunlyClient, feed: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    page = open_page()
    sign_in(page, dashboard_stack.admin_key)
    # Given a sleep run of a minute, enqueued from its form and running
    page.goto("/#/packages/e2ejobs?job=sleep")
    page.get_by_label("seconds", exact=True).fill("60")
    page.get_by_role("button", name="Enqueue run").click()
    page.wait_for_url(re.compile(r".*#/runs/run_[^/]+$"))
    wait_for_state(page, "Running")
    expect(page.locator(".attempt")).to_contain_text("local-node-1")

    # When the user cancels it
    page.get_by_role("button", name="Cancel run").click()

    # Then it ends Cancelled within a few heartbeats, not after its minute
    wait_for_state(page, "Cancelled")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    expect(page.get_by_role("button", name="Requeue")).to_be_visible()
    assert admin.get_run(page.url.rsplit("/", 1)[-1]).state is RunState.CANCELLED


def test_the_runs_view_shows_stacked_bars_filters_and_fits_a_phone(
    open_page: Callable[..., Any],
    dashboard_stack: EmbeddedStack,
    admin: RunlyClient,
    feed: dict[str, Any],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    admin.wait(feed["checksums"], timeout=60)
    admin.wait(feed["fail"], timeout=60)
    # An item job still running when the list is looked at: its bar part filled.
    ledger = admin.enqueue(
        EnqueueRunRequest(
            package="e2ejobs",
            job="ledger",
            config={"items": 120, "item_seconds": 0.1, "parallelism": 1, "ledger": str(tmp_path / "ledger.txt")},
            tags={"tenant": "acme"},
        )
    )
    page = open_page()
    sign_in(page, dashboard_stack.admin_key)

    # The checksums run: a stacked bar of its total, succeeded then failed (its items fail by category)
    checksums = page.get_by_role("progressbar", name=f"Progress of run {feed['checksums']}")
    expect(checksums).to_have_attribute("aria-valuenow", "240")
    ok, failed = float(checksums.get_attribute("data-ok")), float(checksums.get_attribute("data-failed"))
    assert 0 < failed < ok and abs(ok + failed - 1) < 1e-3
    expect(page.locator(f"tr[data-run-id='{feed['fail']}'] .badge")).to_have_text("Failed")

    # The ledger run, live: its bar grows while the page refreshes itself
    ledger_bar = page.get_by_role("progressbar", name=f"Progress of run {ledger.id}")
    expect(ledger_bar).to_have_attribute("aria-valuenow", re.compile(r"^([1-9]\d*)$"))
    first = int(ledger_bar.get_attribute("aria-valuenow"))
    expect(ledger_bar).not_to_have_attribute("aria-valuenow", str(first))
    assert int(ledger_bar.get_attribute("aria-valuenow")) > first
    screenshot(page, "runs")

    # Filtering by state keeps only those runs, and the filter is in the address (shareable)
    page.get_by_label("State").select_option("Failed")
    page.wait_for_url(re.compile(r".*#/runs\?state=Failed$"))
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr .badge")).to_have_text("Failed")

    # A run's tags are on its row, each a link to the runs with that tag: the filter then holds it
    page.goto("/#/runs")
    page.locator(f"tr[data-run-id='{ledger.id}'] a.tag").click()
    page.wait_for_url(re.compile(r".*#/runs\?tag=tenant%3Aacme$"))
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator(f"tr[data-run-id='{ledger.id}']")).to_be_visible()
    expect(page.get_by_label("Tag")).to_have_value("tenant:acme")

    # The run detail of the checksums run: progress by category
    page.goto(f"/#/runs/{feed['checksums']}")
    wait_for_state(page, "Succeeded")
    categories = page.locator("table.categories")
    expect(categories).to_contain_text("TooLarge")
    expect(categories).to_contain_text("FileNotFoundError")
    expect(page.locator("pre.log")).to_contain_text("failed (TooLarge)")
    screenshot(page, "run-detail")

    # On a phone, the rows become cards that fit the screen's width
    phone = open_page(PHONE)
    sign_in(phone, dashboard_stack.admin_key)
    expect(phone.get_by_role("progressbar", name=f"Progress of run {feed['checksums']}")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(phone, "runs-phone")
    admin.cancel_run(ledger.id)


def test_a_read_key_sees_everything_but_cannot_act(
    open_page: Callable[..., Any], dashboard_stack: EmbeddedStack, admin: RunlyClient, feed: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    read_key = admin.create_key(CreateKeyRequest(name="dashboard reader", scope=Scope.READ)).secret
    running = admin.enqueue(EnqueueRunRequest(package="e2ejobs", job="sleep", config={"seconds": 30}))
    page = open_page()
    sign_in(page, read_key)
    expect(page.locator("#identity")).to_contain_text("read key")
    expect(page.get_by_role("link", name="New run")).to_have_count(0)

    # A run that could be cancelled: shown, without the cancel or requeue buttons
    page.goto(f"/#/runs/{running.id}")
    page.locator(".state-line .badge").filter(has_text=re.compile("^(Queued|Running)$")).wait_for()
    expect(page.get_by_text("Read-only key")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    expect(page.get_by_role("button", name="Requeue")).to_have_count(0)

    # A job's form: shown read-only, without the enqueue button
    page.goto("/#/packages/hello")
    expect(page.get_by_label("name", exact=True)).to_be_disabled()
    expect(page.get_by_role("button", name="Enqueue run")).to_have_count(0)

    # The nodes: no drain
    go_to(page, "Nodes")
    expect(page.locator("tr[data-node-id='local-node-1']")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Drain"))).to_have_count(0)
    admin.cancel_run(running.id)


def test_nodes_show_online_and_go_offline_when_drained_or_lost(
    open_page: Callable[..., Any], dashboard_stack: EmbeddedStack
) -> None:
    from playwright.sync_api import expect

    drained = dashboard_stack.start_agent()  # local-node-2: the admin drains it; it finishes and leaves
    lost = dashboard_stack.start_agent()  # local-node-3: killed outright; its record expires
    page = open_page()
    sign_in(page, dashboard_stack.admin_key)
    go_to(page, "Nodes")
    status = {
        node: page.locator(f"tr[data-node-id='{node}'] td[data-label='Status']")
        for node in ("local-node-1", "local-node-2", "local-node-3")
    }
    for cell in status.values():
        expect(cell).to_contain_text("Online")
    expect(page.locator("tr[data-node-id='local-node-1'] td[data-label='Environment']")).to_have_text("default")
    expect(page.locator("tr[data-node-id='local-node-1'] td[data-label='Capacity']")).to_have_text(
        re.compile(r"^\d+ / \d+$")
    )

    # When the admin drains node 2 and node 3 dies without a word
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Drain node local-node-2").click()
    os.killpg(lost.process.pid, signal.SIGKILL)

    # Then both show offline: node 2 once it has left, node 3 once its heartbeats stop (2 x heartbeat + 1 s)
    expect(status["local-node-2"]).to_contain_text("Offline")
    expect(status["local-node-2"]).to_contain_text("left")
    expect(status["local-node-3"]).to_contain_text("Offline")
    expect(status["local-node-3"]).to_contain_text("heartbeats stopped")
    expect(status["local-node-1"]).to_contain_text("Online")
    expect(page.locator(".summary")).to_have_text("3 nodes: 1 online, 2 offline")
    drained.process.wait(timeout=WAIT_MS / 1000)
    assert drained.process.returncode == 0
    screenshot(page, "nodes")


def test_the_packages_view_lists_the_feed(
    open_page: Callable[..., Any], dashboard_stack: EmbeddedStack, feed: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    page = open_page()
    sign_in(page, dashboard_stack.admin_key)
    go_to(page, "Packages")
    for name in ("checksums", "e2ejobs", "hello"):
        expect(page.locator(f"tr[data-package='{name}']")).to_contain_text("1.0.0")
    screenshot(page, "packages")


def test_schedules_show_only_where_the_api_has_them(
    open_page: Callable[..., Any], dashboard_stack: EmbeddedStack, admin: RunlyClient, feed: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    documented = "/schedules" in admin.openapi()["paths"]
    page = open_page()
    sign_in(page, dashboard_stack.admin_key)
    link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules")
    if not documented:
        expect(link).to_have_count(0)
        return
    schedule = admin.create_schedule(
        CreateScheduleRequest(name="nightly hello", package="hello", job="hello", expression="cron(0 2 * * ? *)")
    )
    link.click()
    expect(page.get_by_role("heading", name="Schedules", level=1)).to_be_visible()
    row = page.locator(f"tr[data-schedule-id='{schedule.id}']")
    expect(row).to_contain_text("nightly hello")
    expect(row).to_contain_text("cron(0 2 * * ? *)")
    expect(page.locator(".banner-error")).to_be_hidden()
    screenshot(page, "schedules")


def test_the_form_generator_covers_every_kind_of_field(open_page: Callable[..., Any]) -> None:
    """Enums, booleans, nested objects and arrays (JSON), nullable and $ref'd fields, read back as typed JSON."""
    page = open_page()
    result = page.evaluate(
        """async () => {
          const { configFields } = await import('/dashboard/schema-form.js');
          const schema = {
            type: 'object', required: ['mode'],
            $defs: {
              Mode: { enum: ['fast', 'slow'], type: 'string' },
              Inner: { type: 'object', properties: { a: { type: 'integer' } } },
            },
            properties: {
              mode: { $ref: '#/$defs/Mode' },
              ratio: { type: 'number', minimum: 0, maximum: 1, default: 0.5 },
              verbose: { type: 'boolean', default: false },
              label: { anyOf: [{ type: 'string' }, { type: 'null' }], default: null },
              inner: { $ref: '#/$defs/Inner' },
              tags: { type: 'array', items: { type: 'string' }, default: ['x'] },
            },
          };
          const form = configFields(schema, null, { idPrefix: 't' });
          document.body.append(form.element);
          const kinds = Object.fromEntries([...form.element.querySelectorAll('input, select, textarea')].map(
            (el) => [el.name, el.tagName.toLowerCase() + (el.type && el.tagName === 'INPUT' ? ':' + el.type : '')]));
          const before = form.read();
          form.control('mode').value = '"slow"';
          form.control('verbose').checked = true;
          form.control('inner').value = '{"a": 2}';
          form.control('label').value = 'hi';
          const after = form.read();
          form.control('inner').value = '{nope';
          const broken = form.read();
          return { kinds, before: before.config, beforeErrors: before.errors.length, after: after.config,
                   broken: broken.errors.map((e) => e.name) };
        }"""
    )
    assert result["kinds"] == {
        "mode": "select",
        "ratio": "input:number",
        "verbose": "input:checkbox",
        "label": "input:text",
        "inner": "textarea",
        "tags": "textarea",
    }
    assert result["before"] == {"ratio": 0.5, "verbose": False, "label": None, "tags": ["x"]}
    assert result["beforeErrors"] == 1  # mode: required, no default, nothing chosen for the user
    assert result["after"] == {
        "mode": "slow",
        "ratio": 0.5,
        "verbose": True,
        "label": "hi",
        "inner": {"a": 2},
        "tags": ["x"],
    }
    assert result["broken"] == ["inner"]


def test_a_delayed_run_shows_its_not_before_on_its_page_and_in_the_list(
    open_page: Callable[..., Any], dashboard_stack: EmbeddedStack, admin: RunlyClient, feed: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    # Given a run delayed by an hour (waiting on its timer)
    run = admin.enqueue(EnqueueRunRequest(package="e2ejobs", job="echo", config={}, delay_seconds=3600))
    assert run.not_before is not None
    page = open_page()
    sign_in(page, dashboard_stack.admin_key)
    try:
        # Then its row in the list says when it may start
        row = page.locator(f'tr[data-run-id="{run.id}"]')
        expect(row.locator(".not-before time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
        expect(row.locator(".not-before")).to_contain_text("not before in ")

        # And its page shows it, and why it is still queued
        row.get_by_role("link", name=run.id).click()
        wait_for_state(page, "Queued")
        expect(page.locator(".state-line")).to_contain_text("delayed until")
        expect(page.locator(".banner-info")).to_contain_text("delayed until ")
        expect(page.locator("dt", has_text="Not before")).to_be_visible()
        screenshot(page, "run-delayed")
    finally:
        admin.cancel_run(run.id)
