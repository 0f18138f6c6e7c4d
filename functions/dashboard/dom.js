// Building the page: elements from plain data (never HTML strings: the text is the API's, the key is in
// localStorage), formatting, and the pieces every view shares (state badges, stacked progress bars).

/** An element: h("a", {href: "#/runs", class: "x", onclick: fn}, "text", child, [more]). */
export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "style") Object.assign(element.style, value); // the CSSOM: allowed by the page's CSP
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : String(child));
  }
}

/** Replace what ``container`` shows, keeping keyboard focus on the element with the same data-focus key. A live
 * refresh waits while the reader has text selected in it (to copy a run id, say): replacing would drop it. */
export function replaceContent(container, ...children) {
  const selection = window.getSelection();
  if (selection && !selection.isCollapsed && selection.rangeCount && container.contains(selection.getRangeAt(0).commonAncestorContainer)) {
    return false;
  }
  const focused = document.activeElement;
  const key = focused && container.contains(focused) ? focused.dataset.focusKey : undefined;
  container.replaceChildren();
  append(container, children);
  if (key) {
    const again = [...container.querySelectorAll("[data-focus-key]")].find((el) => el.dataset.focusKey === key);
    if (again) again.focus({ preventScroll: true });
  }
  return true;
}

/** Set an element's text only when it changes, so a live region announces changes, not refreshes. */
export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

// ------------------------------------------------------------------ formatting

export function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

export function formatDuration(milliseconds) {
  if (milliseconds === null || milliseconds === undefined || Number.isNaN(milliseconds)) return "";
  const seconds = Math.max(0, Math.round(milliseconds / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(seconds % 60).padStart(2, "0")} s`;
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${String(minutes % 60).padStart(2, "0")} min`;
}

export function relativeTime(iso, now = Date.now()) {
  if (!iso) return "";
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (seconds < -5) return `in ${formatDuration(-seconds * 1000)}`;
  if (seconds < 5) return "just now";
  if (seconds < 3600) return `${formatDuration(seconds * 1000)} ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export function absoluteTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

/** <time> with a relative text and the exact moment as a tooltip and machine-readable value. */
export function timeElement(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: absoluteTime(iso) }, relativeTime(iso));
}

export function runDuration(run, now = Date.now()) {
  if (!run.started_at) return "";
  const end = run.finished_at ? Date.parse(run.finished_at) : now;
  return formatDuration(end - Date.parse(run.started_at));
}

// ------------------------------------------------------------------ runs

export const RUN_STATES = ["Queued", "Running", "Cancelling", "Succeeded", "Failed", "Cancelled", "TimedOut"];
const TERMINAL = new Set(["Succeeded", "Failed", "Cancelled", "TimedOut"]);
const STATE_LABELS = { TimedOut: "Timed out" };

export function isTerminal(state) {
  return TERMINAL.has(state);
}

export function stateBadge(state) {
  return h("span", { class: `badge state-${state.toLowerCase()}` }, STATE_LABELS[state] || state);
}

/** What a run's progress bar shows: segments as fractions of the total, and the words for it. */
export function progressOf(run) {
  const progress = run.progress || {};
  const succeeded = progress.succeeded || 0;
  const failed = progress.failed || 0;
  const total = progress.total;
  if (total) {
    const done = succeeded + failed;
    const parts = [`${succeeded} succeeded`];
    if (failed) parts.push(`${failed} failed`);
    return {
      ok: Math.min(1, succeeded / total),
      failed: Math.min(1 - Math.min(1, succeeded / total), failed / total),
      indeterminate: false,
      text: `${done} of ${total}${failed ? ` · ${failed} failed` : ""}`,
      valueText: `${parts.join(", ")}, of ${total} items`,
      now: done,
      max: total,
    };
  }
  // No countable items (a single-action job, or items not counted yet): the bar tells the outcome.
  const counted = succeeded + failed;
  const countText = counted ? `${counted} done${failed ? ` · ${failed} failed` : ""}` : "";
  if (run.state === "Succeeded") return whole(1, 0, countText || "done", "Succeeded");
  if (run.state === "Failed" || run.state === "TimedOut") return whole(0, 1, countText || "failed", run.state);
  if (run.state === "Cancelled") return whole(0, 0, countText || "cancelled", "Cancelled");
  const running = run.state === "Running" || run.state === "Cancelling";
  return { ok: 0, failed: 0, indeterminate: running, text: countText || (running ? "running" : "not started"),
    valueText: countText || run.state, now: 0, max: 100 };
}

function whole(ok, failed, text, valueText) {
  return { ok, failed, indeterminate: false, text, valueText, now: 100 * (ok + failed), max: 100 };
}

/** A stacked bar of the total: succeeded, then failed, then what is left. */
export function progressBar(run, { label, large = false } = {}) {
  const shown = progressOf(run);
  return h(
    "div",
    {
      class: `bar${large ? " bar-large" : ""}${shown.indeterminate ? " bar-indeterminate" : ""}`,
      role: "progressbar",
      "aria-label": label || "Progress",
      "aria-valuemin": 0,
      "aria-valuemax": shown.max,
      "aria-valuenow": shown.indeterminate ? undefined : shown.now,
      "aria-valuetext": shown.valueText,
      dataset: { ok: shown.ok.toFixed(4), failed: shown.failed.toFixed(4) },
    },
    h("span", { class: "bar-ok", style: { width: `${(shown.ok * 100).toFixed(2)}%` } }),
    h("span", { class: "bar-failed", style: { width: `${(shown.failed * 100).toFixed(2)}%` } }),
  );
}

export function progressCell(run, label) {
  return h("div", { class: "progress-cell" }, progressBar(run, { label }), h("span", { class: "bar-text" }, progressOf(run).text));
}

export function errorBanner() {
  return h("div", { class: "banner banner-error", role: "alert", hidden: true });
}

export function showError(banner, error, prefix = "") {
  if (!error) {
    banner.hidden = true;
    setText(banner, "");
    return;
  }
  banner.hidden = false;
  setText(banner, `${prefix}${error.message || error}`);
}

export function definitionList(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs
      .filter(([, value]) => value !== undefined && value !== null && value !== "")
      .map(([term, value, wide]) => h("div", { class: wide ? "fact fact-wide" : "fact" }, h("dt", null, term), h("dd", null, value))),
  );
}

export function jsonBlock(value, label) {
  return h("pre", { class: "json", tabindex: 0, "aria-label": label }, JSON.stringify(value, null, 2));
}
