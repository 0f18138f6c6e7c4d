// Schedules (job templates enqueued on a cron or rate expression), read-only. The page offers this view only
// when the API it talks to documents GET /schedules (see app.js): older deployments have no schedules.

import { api } from "./api.js";
import { errorBanner, h, plural, replaceContent, setText, showError, timeElement } from "./dom.js";

const REFRESH_MS = 5000;

export function schedulesView(main, ctx) {
  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const banner = errorBanner();
  const results = h("div", { class: "table-wrap" });
  main.append(h("div", { class: "view-head" }, h("h1", { tabindex: -1 }, "Schedules")), summary, banner, results);

  async function refresh() {
    try {
      const { items } = await api("/schedules");
      showError(banner, null);
      const enabled = items.filter((item) => item.enabled).length;
      setText(summary, items.length ? `${plural(items.length, "schedule")}, ${enabled} enabled` : "");
      replaceContent(results, items.length ? table(items) : h("p", { class: "empty" }, "No schedule yet. Create one with POST /schedules (see the API reference)."));
    } catch (error) {
      showError(banner, error, "Could not load the schedules: ");
      ctx.handleError(error);
    }
  }

  function table(items) {
    return h(
      "table",
      { class: "table cards schedules-table" },
      h("caption", { class: "visually-hidden" }, "Schedules"),
      h(
        "thead",
        null,
        h("tr", null, ["Schedule", "Job", "Environment", "When", "Next", "Last fire"].map((title) => h("th", { scope: "col" }, title))),
      ),
      h(
        "tbody",
        null,
        items.map((item) =>
          h(
            "tr",
            { dataset: { scheduleId: item.id } },
            h("td", { "data-label": "Schedule" }, h("span", { class: "job" }, item.name), h("span", { class: "muted small block mono" }, item.id)),
            h("td", { "data-label": "Job" }, h("span", { class: "job" }, item.job), h("span", { class: "muted small" }, ` ${item.package} ${item.version || "(newest)"}`)),
            h("td", { "data-label": "Environment" }, item.environment),
            h(
              "td",
              { "data-label": "When" },
              h("span", { class: "mono small" }, item.expression),
              h("span", { class: "muted small block" }, item.timezone),
              item.enabled ? null : h("span", { class: "badge state-cancelled" }, "Disabled"),
            ),
            h("td", { "data-label": "Next" }, item.enabled && item.next_fire_times.length ? timeElement(item.next_fire_times[0]) : h("span", { class: "muted" }, "—")),
            h(
              "td",
              { "data-label": "Last fire" },
              item.last_fired_at ? timeElement(item.last_fired_at) : h("span", { class: "muted" }, "never"),
              item.last_run_id ? h("a", { class: "mono small block", href: `#/runs/${encodeURIComponent(item.last_run_id)}` }, item.last_run_id) : null,
              item.last_error ? h("span", { class: "field-error block" }, item.last_error) : null,
            ),
          ),
        ),
      ),
    );
  }

  ctx.poll(refresh, REFRESH_MS);
}
