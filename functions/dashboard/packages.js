// Packages: the feed (latest version, versions), one package (versions, jobs, config schemas) and a form
// generated from a job's schema to enqueue a run.

import { api, query } from "./api.js";
import { definitionList, errorBanner, h, jsonBlock, plural, replaceContent, setText, showError, timeElement } from "./dom.js";
import { configFields } from "./schema-form.js";

export function packagesView(main, ctx) {
  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const banner = errorBanner();
  const results = h("div", { class: "table-wrap" });
  main.append(h("div", { class: "view-head" }, h("h1", { tabindex: -1 }, "Packages")), summary, banner, results);

  async function refresh() {
    try {
      const { items } = await api("/packages");
      ctx.rememberPackages(items.map((item) => item.name));
      showError(banner, null);
      setText(summary, items.length ? `${plural(items.length, "package")} in the feed` : "");
      replaceContent(
        results,
        items.length
          ? h(
              "table",
              { class: "table cards packages-table" },
              h("caption", { class: "visually-hidden" }, "Packages of the feed"),
              h("thead", null, h("tr", null, ["Package", "Latest version", "Versions", "Last pushed"].map((title) => h("th", { scope: "col" }, title)))),
              h(
                "tbody",
                null,
                items.map((item) =>
                  h(
                    "tr",
                    { dataset: { package: item.name } },
                    h("td", { "data-label": "Package" }, h("a", { href: `#/packages/${encodeURIComponent(item.name)}`, "data-focus-key": `pkg-${item.name}` }, item.name)),
                    h("td", { "data-label": "Latest version" }, item.latest_version),
                    h("td", { "data-label": "Versions" }, item.version_count),
                    h("td", { "data-label": "Last pushed" }, timeElement(item.updated_at)),
                  ),
                ),
              ),
            )
          : h("p", { class: "empty" }, "The feed is empty. Push a package: ", h("code", null, "runly pack . && runly push dist/NAME-VERSION.runly")),
      );
    } catch (error) {
      showError(banner, error, "Could not load the packages: ");
      ctx.handleError(error);
    }
  }

  ctx.poll(refresh, 10_000);
}

export function packageView(main, ctx, name) {
  const banner = errorBanner();
  const content = h("div", { class: "package-body" });
  main.append(
    h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: "#/packages" }, "Packages"), " / ", name),
    h("div", { class: "view-head" }, h("h1", { tabindex: -1 }, name)),
    banner,
    content,
  );

  load();

  async function load() {
    let versions;
    try {
      versions = (await api(`/packages/${encodeURIComponent(name)}/versions`)).items;
    } catch (error) {
      showError(banner, error, "Could not load the package: ");
      ctx.handleError(error);
      return;
    }
    const version = versions.find((item) => item.version === ctx.params.get("version")) || versions[0];
    const job = version.jobs.find((item) => item.name === ctx.params.get("job")) || version.jobs[0];
    const link = (params) => `#/packages/${encodeURIComponent(name)}${query({ version: version.version, job: job.name, ...params })}`;

    content.append(
      h(
        "div",
        { class: "package-picker" },
        h("label", { for: "version" }, "Version"),
        h(
          "select",
          { id: "version", onchange: (event) => ctx.navigate(link({ version: event.target.value, job: undefined })) },
          versions.map((item, index) =>
            h("option", { value: item.version, selected: item === version }, `${item.version}${index === 0 ? " (newest)" : ""}`),
          ),
        ),
      ),
      definitionList([
        ["Pushed", timeElement(version.created_at)],
        ["Size", `${(version.size / 1024 / 1024).toFixed(1)} MB`],
        ["Python", version.requires_python || "any"],
        ["SHA-256", h("span", { class: "mono small break" }, version.sha256), "wide"],
      ]),
      h(
        "section",
        { class: "panel", "aria-labelledby": "jobs-heading" },
        h("h2", { id: "jobs-heading" }, "Jobs"),
        h(
          "ul",
          { class: "job-list" },
          version.jobs.map((item) =>
            h(
              "li",
              null,
              h(
                "a",
                { href: link({ job: item.name }), "aria-current": item === job ? "true" : undefined, class: item === job ? "current" : "" },
                h("span", { class: "job" }, item.name),
                h("span", { class: "muted small block mono" }, item.entry_point),
              ),
            ),
          ),
        ),
      ),
      jobPanel(version, job),
    );
  }

  function jobPanel(version, job) {
    const form = configFields(job.config_schema, job.default_config, { idPrefix: `config-${job.name}` });
    const formBanner = errorBanner();
    const environment = h("input", {
      id: "run-environment",
      name: "environment",
      value: ctx.identity.environment || "default",
      list: "run-environment-options",
      required: true,
      autocomplete: "off",
      spellcheck: "false",
      "aria-describedby": "run-environment-error",
    });
    const maxAttempts = h("input", { id: "run-max-attempts", name: "max_attempts", type: "number", min: 1, max: 10, step: 1, value: 3, "aria-describedby": "run-max_attempts-error" });
    const timeout = h("input", { id: "run-timeout", name: "timeout_seconds", type: "number", min: 1, max: 604800, step: 1, value: 3600, "aria-describedby": "run-timeout_seconds-error" });
    const submit = h("button", { type: "submit" }, "Enqueue run");
    const extraErrors = Object.fromEntries(
      ["environment", "max_attempts", "timeout_seconds", "version"].map((field) => [field, h("p", { class: "field-error", id: `run-${field}-error`, hidden: true })]),
    );

    const fieldset = h(
      "fieldset",
      { disabled: !ctx.canWrite },
      h("legend", null, "Config"),
      form.element,
      h(
        "div",
        { class: "field field-environment" },
        h("label", { for: "run-environment" }, "Environment"),
        environment,
        h("datalist", { id: "run-environment-options" }, ctx.knownEnvironments().map((value) => h("option", { value }))),
        extraErrors.environment,
      ),
      h(
        "details",
        { class: "advanced" },
        h("summary", null, "Attempts and timeout"),
        h("div", { class: "field" }, h("label", { for: "run-max-attempts" }, "Max attempts"), maxAttempts, extraErrors.max_attempts),
        h("div", { class: "field" }, h("label", { for: "run-timeout" }, "Timeout (seconds)"), timeout, extraErrors.timeout_seconds),
      ),
      extraErrors.version,
    );

    const formElement = h(
      "form",
      {
        class: "run-form",
        novalidate: true,
        "aria-labelledby": "run-form-heading",
        onsubmit: enqueue,
        oninput: () => showError(formBanner, null),
      },
      fieldset,
      formBanner,
      ctx.canWrite
        ? h("div", { class: "form-actions" }, submit, h("span", { class: "muted small" }, `runs ${name} ${version.version}, job ${job.name}`))
        : h("p", { class: "muted" }, "Read-only key: enqueueing a run needs a write key."),
    );

    async function enqueue(event) {
      event.preventDefault();
      Object.values(extraErrors).forEach((element) => {
        element.hidden = true;
        element.textContent = "";
      });
      const { config, errors, focus } = form.read();
      if (errors.length) {
        showError(formBanner, `${plural(errors.length, "field")} to fix before enqueueing.`);
        focus();
        return;
      }
      showError(formBanner, null);
      submit.disabled = true;
      try {
        const run = await api("/runs", {
          method: "POST",
          // A retried click must not enqueue twice: the API returns the first run for the same key and body.
          headers: { "Idempotency-Key": crypto.randomUUID() },
          body: {
            package: name,
            version: version.version,
            job: job.name,
            config,
            environment: environment.value.trim(),
            max_attempts: Number(maxAttempts.value || 3),
            timeout_seconds: Number(timeout.value || 3600),
          },
        });
        ctx.announce(`Enqueued run ${run.id}.`);
        ctx.navigate(`#/runs/${encodeURIComponent(run.id)}`);
      } catch (error) {
        submit.disabled = false;
        const field = error.field || "";
        const shown = field.startsWith("config.") ? form.showError(field.split(".")[1], error.message) : false;
        if (!shown && extraErrors[field]) {
          extraErrors[field].hidden = false;
          extraErrors[field].textContent = error.message;
        }
        showError(formBanner, error, "Not enqueued: ");
        ctx.handleError(error);
      }
    }

    return h(
      "section",
      { class: "panel job-panel", "aria-labelledby": "run-form-heading" },
      h("h2", { id: "run-form-heading" }, ctx.canWrite ? `Run ${job.name}` : `Job ${job.name}`),
      formElement,
      h(
        "details",
        { class: "schema" },
        h("summary", null, "Config schema (JSON)"),
        jsonBlock(job.config_schema, `Config schema of ${job.name}`),
      ),
      h(
        "details",
        { class: "schema" },
        h("summary", null, "Default config"),
        job.default_config ? jsonBlock(job.default_config, `Default config of ${job.name}`) : h("p", { class: "muted" }, "None: some field is required."),
      ),
    );
  }
}
