// Runs: the list (filters, live refresh, a stacked progress bar per row) and one run (progress by category,
// attempts, output, error, a live log tail, cancel and requeue).

import { api, query } from "./api.js";
import {
  RUN_STATES,
  definitionList,
  errorBanner,
  h,
  isTerminal,
  jsonBlock,
  plural,
  progressBar,
  progressCell,
  progressOf,
  replaceContent,
  runDuration,
  setText,
  showError,
  stateBadge,
  timeElement,
} from "./dom.js";

const PAGE_SIZES = [50, 100, 200]; // the API's largest page is 200 runs
const FILTERS = ["state", "package", "job", "environment", "tag"];
const REFRESH_MS = 2500;
const LOG_REFRESH_MS = 1500;
const MAX_LOG_CHARS = 1_000_000; // the page keeps the newest megabyte of a long log

// A run's tags, each a link to the runs with that tag (null when it has none).
function tagList(tags) {
  const pairs = Object.entries(tags || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!pairs.length) return null;
  return h(
    "span",
    { class: "tags" },
    pairs.map(([key, value]) => h("a", { class: "tag mono", href: `#/runs${query({ tag: `${key}:${value}` })}`, title: "Runs with this tag" }, `${key}:${value}`)),
  );
}

// ------------------------------------------------------------------ the list

export function runsView(main, ctx) {
  const filters = Object.fromEntries(FILTERS.map((name) => [name, ctx.params.get(name) || ""]));
  let pageSize = PAGE_SIZES[0];
  let runs = [];

  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const banner = errorBanner();
  const results = h("div", { class: "table-wrap" });
  const more = h("div", { class: "more" });
  const packageList = h("datalist", { id: "package-options" });
  const jobList = h("datalist", { id: "job-options" });
  const environmentList = h("datalist", { id: "environment-options" });

  const filterForm = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter runs", onsubmit: applyFilters },
    filterSelect("state", "State", filters.state),
    filterInput("package", "Package", filters.package, "package-options"),
    filterInput("job", "Job", filters.job, "job-options"),
    filterInput("environment", "Environment", filters.environment, "environment-options"),
    filterInput("tag", "Tag", filters.tag, null, "key:value, …"),
    h(
      "div",
      { class: "filter-actions" },
      h("button", { type: "submit" }, "Apply"),
      h("button", { type: "button", class: "secondary", onclick: clearFilters }, "Clear"),
    ),
    packageList,
    jobList,
    environmentList,
  );

  main.append(
    h(
      "div",
      { class: "view-head" },
      h("h1", { tabindex: -1 }, "Runs"),
      ctx.canWrite ? h("a", { class: "button", href: "#/packages" }, "New run") : null,
    ),
    filterForm,
    summary,
    banner,
    results,
    more,
  );

  function filterSelect(name, label, value) {
    return h(
      "div",
      { class: "field" },
      h("label", { for: `filter-${name}` }, label),
      h(
        "select",
        { id: `filter-${name}`, name, onchange: applyFilters },
        h("option", { value: "" }, "Any"),
        RUN_STATES.map((state) => h("option", { value: state, selected: state === value }, state)),
      ),
    );
  }

  function filterInput(name, label, value, list, placeholder = "Any") {
    return h(
      "div",
      { class: "field" },
      h("label", { for: `filter-${name}` }, label),
      h("input", { id: `filter-${name}`, name, value, list, autocomplete: "off", spellcheck: "false", placeholder }),
    );
  }

  function applyFilters(event) {
    event?.preventDefault();
    const data = new FormData(filterForm);
    const params = Object.fromEntries(FILTERS.map((name) => [name, String(data.get(name) || "").trim()]));
    ctx.navigate(`#/runs${query(params)}`);
  }

  function clearFilters() {
    ctx.navigate("#/runs");
  }

  function fillOptions(list, values) {
    const sorted = [...new Set(values.filter(Boolean))].sort();
    if (list.dataset.values === sorted.join("\n")) return;
    list.dataset.values = sorted.join("\n");
    list.replaceChildren(...sorted.map((value) => h("option", { value })));
  }

  async function refresh() {
    try {
      const page = await api(`/runs${query({ ...filters, limit: pageSize })}`);
      runs = page.items;
      showError(banner, null);
      render(page.next_cursor);
    } catch (error) {
      showError(banner, error, "Could not load the runs: ");
      ctx.handleError(error);
    }
  }

  function render(nextCursor) {
    const active = runs.filter((run) => !isTerminal(run.state));
    const filtered = FILTERS.some((name) => filters[name]);
    setText(
      summary,
      runs.length
        ? `${plural(runs.length, "run")}${filtered ? " matching the filters" : ""}, newest first` +
            ["Running", "Queued", "Cancelling"]
              .map((state) => [state, active.filter((run) => run.state === state).length])
              .filter(([, count]) => count)
              .map(([state, count]) => ` · ${count} ${state.toLowerCase()}`)
              .join("")
        : "",
    );
    fillOptions(jobList, runs.map((run) => run.job));
    fillOptions(environmentList, [...runs.map((run) => run.environment), ...ctx.knownEnvironments()]);
    fillOptions(packageList, [...runs.map((run) => run.package), ...ctx.knownPackages()]);
    replaceContent(results, runs.length ? runsTable(runs) : emptyState(filtered));
    replaceContent(
      more,
      nextCursor && pageSize < PAGE_SIZES[PAGE_SIZES.length - 1]
        ? h("button", { type: "button", class: "secondary", "data-focus-key": "more", onclick: showMore }, "Show more runs")
        : nextCursor
          ? h("p", { class: "muted" }, "Older runs are not shown: narrow the filters to find them.")
          : null,
    );
  }

  function showMore() {
    pageSize = PAGE_SIZES[PAGE_SIZES.indexOf(pageSize) + 1] || pageSize;
    refresh();
  }

  function emptyState(filtered) {
    if (filtered) return h("p", { class: "empty" }, "Nothing matches. ", h("a", { href: "#/runs" }, "Clear the filters"), ".");
    return h(
      "p",
      { class: "empty" },
      "No run has been enqueued yet. ",
      ctx.canWrite ? h("a", { href: "#/packages" }, "Pick a package and a job to run") : "Runs appear here as they are enqueued.",
    );
  }

  function runsTable(items) {
    return h(
      "table",
      { class: "table cards runs-table" },
      h("caption", { class: "visually-hidden" }, "Runs, newest first. Open a run for its details and logs."),
      h(
        "thead",
        null,
        h("tr", null, ["Run", "Job", "Environment", "State", "Progress", "Created", "Duration"].map((title) => h("th", { scope: "col" }, title))),
      ),
      h("tbody", null, items.map(runRow)),
    );
  }

  function runRow(run) {
    const href = `#/runs/${encodeURIComponent(run.id)}`;
    return h(
      "tr",
      {
        class: "clickable",
        dataset: { runId: run.id, state: run.state },
        // The link in the first cell is the keyboard's way in; a click anywhere on the row does the same.
        onclick: (event) => {
          if (!event.target.closest("a, button") && !window.getSelection().toString()) ctx.navigate(href);
        },
      },
      h("td", { "data-label": "Run" }, h("a", { href, class: "run-link mono", "data-focus-key": `run-${run.id}` }, run.id)),
      h(
        "td",
        { "data-label": "Job" },
        h("span", { class: "job" }, run.job),
        h("span", { class: "muted small" }, ` ${run.package} ${run.version}`),
        tagList(run.tags),
      ),
      h("td", { "data-label": "Environment" }, run.environment),
      h("td", { "data-label": "State" }, stateBadge(run.state)),
      h("td", { "data-label": "Progress", class: "progress-col" }, progressCell(run, `Progress of run ${run.id}`)),
      h(
        "td",
        { "data-label": "Created" },
        timeElement(run.created_at),
        // A delayed run: when it may start (shown until it has started).
        run.not_before && !run.started_at ? h("span", { class: "muted small not-before" }, " not before ", timeElement(run.not_before)) : null,
      ),
      h("td", { "data-label": "Duration" }, runDuration(run)),
    );
  }

  // The filters' suggestions: every package of the feed, not only those of the runs shown.
  api("/packages")
    .then(({ items }) => {
      ctx.rememberPackages(items.map((item) => item.name));
      fillOptions(packageList, [...runs.map((run) => run.package), ...ctx.knownPackages()]);
    })
    .catch(() => {}); // suggestions only: the list works without them
  ctx.poll(refresh, REFRESH_MS);
}

// ------------------------------------------------------------------ one run

export function runView(main, ctx, runId) {
  let run = null;
  let busy = false;
  const log = { attempt: null, shown: null, cursor: null, complete: false, text: "" };

  const heading = h("h1", { tabindex: -1, class: "run-title" }, "Run ", h("span", { class: "mono" }, runId));
  const stateLine = h("div", { class: "state-line", "aria-live": "polite" });
  const actions = h("div", { class: "actions" });
  const banner = errorBanner();
  const body = h("div", { class: "run-main-dynamic" });
  const side = h("div", { class: "run-side" });
  const logPre = h("pre", { class: "log", tabindex: 0, "aria-label": "Run output" });
  const logStatus = h("p", { class: "muted small log-status" });
  const attemptPicker = h("div", { class: "log-controls" });

  main.append(
    h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: "#/runs" }, "Runs"), " / ", h("span", { class: "mono" }, runId)),
    heading,
    h("div", { class: "run-head" }, stateLine, actions),
    banner,
    h(
      "div",
      { class: "run-layout" },
      h(
        "div",
        { class: "run-main" },
        body,
        h(
          "section",
          { class: "panel", "aria-labelledby": "logs-heading" },
          h("div", { class: "panel-head" }, h("h2", { id: "logs-heading" }, "Logs"), attemptPicker),
          logStatus,
          logPre,
        ),
      ),
      side,
    ),
  );

  async function refresh() {
    try {
      run = await api(`/runs/${encodeURIComponent(runId)}`);
      showError(banner, null);
      render();
      await refreshLogs();
    } catch (error) {
      if (error.status === 404) {
        replaceContent(body, h("p", { class: "empty" }, "There is no run with this id. ", h("a", { href: "#/runs" }, "Back to the runs"), "."));
        return false;
      }
      showError(banner, error, "Could not load the run: ");
      ctx.handleError(error);
    }
    // Nothing changes a finished run: stop asking once its output has been read whole.
    return !(run && isTerminal(run.state) && (log.complete || log.shown === 0));
  }

  function render() {
    document.title = `${run.job} ${run.id} · runly`;
    if (!heading.dataset.job) {
      heading.dataset.job = run.job;
      heading.replaceChildren(run.job, " ", h("span", { class: "mono" }, run.id));
    }
    replaceContent(stateLine, stateBadge(run.state), h("span", { class: "muted" }, stateWords(run)));
    renderActions();
    replaceContent(
      body,
      run.state === "Queued" && run.queued_reason
        ? h("div", { class: "banner banner-info", role: "note" }, h("strong", null, "Why is it queued? "), run.queued_reason)
        : null,
      progressPanel(),
      run.error ? errorPanel() : null,
      attemptsPanel(),
    );
    replaceContent(
      side,
      factsPanel(),
      run.output !== null && run.output !== undefined
        ? h("section", { class: "panel", "aria-labelledby": "output-heading" }, h("h2", { id: "output-heading" }, "Output"), jsonBlock(run.output, "Output"))
        : null,
      h("section", { class: "panel", "aria-labelledby": "config-heading" }, h("h2", { id: "config-heading" }, "Config"), jsonBlock(run.config, "Config")),
    );
    renderAttemptPicker();
  }

  function stateWords(current) {
    if (current.state === "Cancelling") return "the node stops the job on its next heartbeat";
    if (current.finished_at) return `finished ${new Date(current.finished_at).toLocaleString()} after ${runDuration(current)}`;
    if (current.started_at) return `running for ${runDuration(current)}`;
    if (current.not_before && new Date(current.not_before) > new Date()) return `delayed until ${new Date(current.not_before).toLocaleString()}`;
    return `queued since ${new Date(current.created_at).toLocaleString()}`;
  }

  function renderActions() {
    if (!ctx.canWrite) {
      replaceContent(actions, h("p", { class: "muted small" }, "Read-only key: cancelling and requeueing need a write key."));
      return;
    }
    const cancellable = run.state === "Queued" || run.state === "Running";
    const resume = h("input", { type: "checkbox", id: "requeue-resume", checked: Boolean(run.checkpoint), "data-focus-key": "resume" });
    replaceContent(
      actions,
      cancellable
        ? h("button", { type: "button", class: "danger", disabled: busy, "data-focus-key": "cancel", onclick: cancel }, "Cancel run")
        : null,
      isTerminal(run.state)
        ? h(
            "div",
            { class: "requeue" },
            h("button", { type: "button", disabled: busy, "data-focus-key": "requeue", onclick: () => requeue(resume.checked) }, "Requeue"),
            h(
              "span",
              { class: "checkbox" },
              resume,
              h("label", { for: "requeue-resume" }, run.checkpoint ? "resume from the last checkpoint" : "resume (no checkpoint: starts over)"),
            ),
          )
        : null,
    );
  }

  async function cancel() {
    busy = true;
    renderActions();
    try {
      run = await api(`/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" });
      ctx.announce(`Run ${run.state === "Cancelled" ? "cancelled" : "cancelling"}.`);
      showError(banner, null);
    } catch (error) {
      showError(banner, error, "Could not cancel: ");
    } finally {
      busy = false;
      if (run) render();
    }
  }

  async function requeue(resume) {
    busy = true;
    renderActions();
    try {
      const created = await api(`/runs/${encodeURIComponent(runId)}/requeue`, { method: "POST", body: { resume } });
      ctx.announce(`Requeued as run ${created.id}.`);
      ctx.navigate(`#/runs/${encodeURIComponent(created.id)}`);
    } catch (error) {
      busy = false;
      renderActions();
      showError(banner, error, "Could not requeue: ");
    }
  }

  function progressPanel() {
    const progress = run.progress || {};
    const categories = Object.entries(progress.failed_by_category || {}).sort((a, b) => b[1] - a[1]);
    const shown = progressOf(run);
    return h(
      "section",
      { class: "panel", "aria-labelledby": "progress-heading" },
      h("h2", { id: "progress-heading" }, "Progress"),
      progressBar(run, { label: "Run progress", large: true }),
      h("p", { class: "bar-text" }, shown.text, progress.message ? ` · ${progress.message}` : ""),
      run.progress
        ? h(
            "table",
            { class: "table compact categories" },
            h("caption", { class: "visually-hidden" }, "Items by result"),
            h("thead", null, h("tr", null, h("th", { scope: "col" }, "Result"), h("th", { scope: "col", class: "num" }, "Items"))),
            h(
              "tbody",
              null,
              progress.total != null ? h("tr", null, h("th", { scope: "row" }, "Total"), h("td", { class: "num" }, progress.total)) : null,
              h("tr", null, h("th", { scope: "row" }, h("span", { class: "swatch swatch-ok" }), "Succeeded"), h("td", { class: "num" }, progress.succeeded || 0)),
              h("tr", null, h("th", { scope: "row" }, h("span", { class: "swatch swatch-failed" }), "Failed"), h("td", { class: "num" }, progress.failed || 0)),
              categories.map(([category, count]) =>
                h("tr", { class: "category" }, h("th", { scope: "row" }, h("span", { class: "mono" }, category)), h("td", { class: "num" }, count)),
              ),
            ),
          )
        : null,
    );
  }

  function factsPanel() {
    return h(
      "section",
      { class: "panel", "aria-labelledby": "facts-heading" },
      h("h2", { id: "facts-heading", class: "visually-hidden" }, "Details"),
      definitionList([
        ["Package", h("a", { href: `#/packages/${encodeURIComponent(run.package)}${query({ version: run.version, job: run.job })}` }, `${run.package} ${run.version}`)],
        ["Job", run.job],
        ["Environment", run.environment],
        ["Created", timeElement(run.created_at)],
        ["Not before", run.not_before ? timeElement(run.not_before) : null],
        ["Started", run.started_at ? timeElement(run.started_at) : null],
        ["Finished", run.finished_at ? timeElement(run.finished_at) : null],
        ["Duration", runDuration(run)],
        ["Attempts", `${run.attempts.length} of at most ${run.max_attempts}`],
        ["Timeout", `${run.timeout_seconds} s`],
        ["Checkpoint", run.checkpoint ? checkpointWords(run.checkpoint) : null],
        ["Tags", tagList(run.tags)],
        ["Schedule", run.schedule_id ? h("span", { class: "mono" }, run.schedule_id) : null],
        ["Requeued from", run.requeued_from ? h("a", { href: `#/runs/${encodeURIComponent(run.requeued_from)}`, class: "mono" }, run.requeued_from) : null],
      ]),
    );
  }

  function checkpointWords(checkpoint) {
    const what = checkpoint.watermark != null ? `${checkpoint.watermark} items done` : "job state saved";
    return [`${what} (attempt ${checkpoint.attempt}, `, timeElement(checkpoint.written_at), ")"];
  }

  function attemptsPanel() {
    return h(
      "section",
      { class: "panel", "aria-labelledby": "attempts-heading" },
      h("h2", { id: "attempts-heading" }, "Attempts"),
      run.attempts.length
        ? h(
            "ol",
            { class: "timeline" },
            run.attempts.map((attempt) =>
              h(
                "li",
                { class: `attempt outcome-${(attempt.outcome || "running").toLowerCase()}` },
                h(
                  "div",
                  { class: "attempt-head" },
                  h("strong", null, `Attempt ${attempt.number}`),
                  attempt.outcome ? stateBadge(attempt.outcome) : stateBadge(run.state === "Cancelling" ? "Cancelling" : "Running"),
                  attempt.reason ? h("span", { class: "reason" }, attempt.reason.replaceAll("_", " ")) : null,
                ),
                h(
                  "p",
                  { class: "muted small" },
                  "on node ",
                  h("span", { class: "mono" }, attempt.node_id),
                  " · started ",
                  timeElement(attempt.started_at),
                  attempt.ended_at ? [" · ended after ", runDuration({ started_at: attempt.started_at, finished_at: attempt.ended_at })] : null,
                ),
                attempt.error ? h("p", { class: "attempt-error" }, attempt.error) : null,
              ),
            ),
          )
        : h("p", { class: "muted" }, "No attempt yet."),
    );
  }

  function errorPanel() {
    const error = run.error;
    return h(
      "section",
      { class: "panel panel-error", "aria-labelledby": "error-heading" },
      h("h2", { id: "error-heading" }, "Error"),
      h("p", null, h("span", { class: "reason" }, error.reason.replaceAll("_", " ")), error.type ? h("span", { class: "mono" }, ` ${error.type}: `) : " ", error.message),
      error.traceback ? h("details", null, h("summary", null, "Traceback"), h("pre", { class: "traceback", tabindex: 0 }, error.traceback)) : null,
    );
  }

  function renderAttemptPicker() {
    const numbers = run.attempts.map((attempt) => attempt.number);
    if (numbers.length < 2) {
      replaceContent(attemptPicker);
      return;
    }
    replaceContent(
      attemptPicker,
      h("label", { for: "log-attempt" }, "Attempt"),
      h(
        "select",
        {
          id: "log-attempt",
          "data-focus-key": "log-attempt",
          onchange: (event) => {
            log.attempt = event.target.value ? Number(event.target.value) : null;
            refreshLogs();
          },
        },
        h("option", { value: "", selected: log.attempt === null }, `Latest (${numbers[numbers.length - 1]})`),
        numbers.map((number) => h("option", { value: number, selected: log.attempt === number }, `Attempt ${number}`)),
      ),
    );
  }

  async function refreshLogs() {
    const latest = run.attempts.length ? run.attempts[run.attempts.length - 1].number : 0;
    const wanted = log.attempt ?? latest;
    if (wanted !== log.shown) {
      Object.assign(log, { shown: wanted, cursor: null, complete: false, text: "" });
      logPre.textContent = "";
    }
    if (wanted === 0) {
      setText(logStatus, "No output yet: the run has not started.");
      return;
    }
    if (log.complete) return;
    const atBottom = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 24;
    // Follow the cursor until a page brings nothing new (a few pages at most per refresh).
    for (let pages = 0; pages < 8; pages += 1) {
      const page = await api(`/runs/${encodeURIComponent(runId)}/logs${query({ attempt: wanted, cursor: log.cursor })}`);
      if (page.text) appendLog(page.text);
      log.complete = page.complete;
      log.cursor = page.next_cursor;
      if (!page.text || !page.next_cursor) break;
    }
    if (atBottom) logPre.scrollTop = logPre.scrollHeight;
    setText(
      logStatus,
      log.complete
        ? `Attempt ${wanted}: the whole output${log.text ? "" : " (empty)"}.`
        : `Attempt ${wanted}: following the output as it is written…`,
    );
  }

  function appendLog(text) {
    log.text += text;
    if (log.text.length > MAX_LOG_CHARS) {
      log.text = `[…older output not shown…]\n${log.text.slice(-MAX_LOG_CHARS)}`;
      logPre.textContent = log.text;
    } else {
      logPre.append(text);
    }
  }

  ctx.poll(refresh, LOG_REFRESH_MS);
}
