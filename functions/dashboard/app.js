// The runly dashboard: a single page served by the API itself, calling the API with the key its user enters.
// Hash routes: #/runs, #/runs/{id}, #/nodes, #/packages, #/packages/{name}, #/schedules (when the API has
// schedules). No build step, no dependencies.

import { ApiError, currentKey, signIn, signOut, whoAmI } from "./api.js";
import { h, setText } from "./dom.js";
import { nodesView } from "./nodes.js";
import { packageView, packagesView } from "./packages.js";
import { runView, runsView } from "./runs.js";
import { schedulesView } from "./schedules.js";

const ROUTES = [
  { pattern: /^\/runs\/?$/, view: runsView, section: "runs", title: "Runs" },
  { pattern: /^\/runs\/([^/]+)$/, view: runView, section: "runs", title: "Run" },
  { pattern: /^\/nodes\/?$/, view: nodesView, section: "nodes", title: "Nodes" },
  { pattern: /^\/packages\/?$/, view: packagesView, section: "packages", title: "Packages" },
  { pattern: /^\/packages\/([^/]+)$/, view: packageView, section: "packages", title: "Package" },
  { pattern: /^\/schedules\/?$/, view: schedulesView, section: "schedules", title: "Schedules", needs: "/schedules" },
];
const DEFAULT_ROUTE = "#/runs";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const session = document.getElementById("session");
const identityLabel = document.getElementById("identity");
const liveButton = document.getElementById("live-toggle");
const announcer = document.getElementById("announcer");

let identity = null; // {key_id, scope, environment} of the signed-in key (GET /me)
let generation = 0; // bumped on every navigation: pollers of an older view stop
let live = true;
let documented = new Set(); // the API's paths, from its OpenAPI document: what this deployment offers
const packages = new Set();
const environments = new Set();

function announce(message) {
  // Cleared first, so the same message twice is announced twice.
  announcer.textContent = "";
  window.setTimeout(() => setText(announcer, message), 50);
}

/** Call ``fn`` now and then every ``intervalMs`` while its view is shown; it stops when ``fn`` returns false. */
function poller(mine) {
  return (fn, intervalMs) => {
    let timer = null;
    const tick = async () => {
      timer = null;
      if (mine !== generation) return;
      let again = true;
      if (live && !document.hidden) again = (await fn()) !== false;
      if (again && mine === generation) timer = window.setTimeout(tick, intervalMs);
    };
    tick();
    // Back to a hidden tab or live updates turned back on: refresh at once instead of at the next tick.
    const wake = () => {
      if (mine !== generation) {
        document.removeEventListener("visibilitychange", wake);
        document.removeEventListener("runly:live", wake);
        return;
      }
      if (timer !== null && live && !document.hidden) {
        window.clearTimeout(timer);
        tick();
      }
    };
    document.addEventListener("visibilitychange", wake);
    document.addEventListener("runly:live", wake);
  };
}

function parseHash() {
  const raw = window.location.hash.replace(/^#/, "") || DEFAULT_ROUTE.slice(1);
  const [path, search = ""] = raw.split("?");
  return { path, params: new URLSearchParams(search) };
}

function navigate(hash) {
  if (window.location.hash === hash) route();
  else window.location.hash = hash;
}

async function handleError(error) {
  // A key that stopped working (revoked, deleted) is the one error every view shares: back to the sign-in.
  if (error instanceof ApiError && error.keyRefused) {
    try {
      await whoAmI();
    } catch (again) {
      if (again instanceof ApiError && again.keyRefused) {
        signOut();
        identity = null;
        showSignIn("This key is no longer accepted (revoked?). Enter another one.");
      }
    }
  }
}

function route() {
  if (!window.location.hash.startsWith("#/") && window.location.hash !== "") return; // e.g. the skip link
  generation += 1;
  if (!identity) return;
  const { path, params } = parseHash();
  const match = ROUTES.filter((candidate) => !candidate.needs || documented.has(candidate.needs))
    .map((candidate) => ({ candidate, found: candidate.pattern.exec(path) }))
    .find(({ found }) => found);
  if (!match) {
    navigate(DEFAULT_ROUTE);
    return;
  }
  const { candidate, found } = match;
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.section === candidate.section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${candidate.title} · runly`;
  main.replaceChildren();
  main.dataset.view = candidate.section;
  const ctx = {
    identity,
    canWrite: identity.scope === "write" || identity.scope === "admin",
    isAdmin: identity.scope === "admin",
    params,
    navigate,
    announce,
    handleError,
    poll: poller(generation),
    knownPackages: () => [...packages],
    knownEnvironments: () => [...environments],
    rememberPackages: (names) => names.forEach((name) => packages.add(name)),
    rememberEnvironments: (names) => names.forEach((name) => environments.add(name)),
  };
  candidate.view(main, ctx, ...found.slice(1).map(decodeURIComponent));
  // Keyboard and screen reader users land on the new view's heading, as after a page load.
  main.querySelector("h1")?.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

// ------------------------------------------------------------------ signing in and out

function showSignIn(message = "") {
  generation += 1;
  nav.hidden = true;
  session.hidden = true;
  document.title = "Sign in · runly";
  main.dataset.view = "sign-in";
  const input = h("input", {
    id: "api-key",
    name: "key",
    type: "password",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "rly_…",
    "aria-describedby": "api-key-hint api-key-error",
  });
  const error = h("p", { id: "api-key-error", class: "field-error", role: "alert" }, message);
  const button = h("button", { type: "submit" }, "Sign in");
  main.replaceChildren(
    h(
      "section",
      { class: "sign-in panel" },
      h("h1", { tabindex: -1 }, "Sign in"),
      h(
        "p",
        null,
        "Enter an API key. A ",
        h("strong", null, "read"),
        " key shows runs, nodes and packages; a ",
        h("strong", null, "write"),
        " or ",
        h("strong", null, "admin"),
        " key can also enqueue, cancel and requeue runs.",
      ),
      h(
        "form",
        {
          novalidate: true,
          onsubmit: async (event) => {
            event.preventDefault();
            const key = input.value.trim();
            if (!key) {
              error.textContent = "Enter a key.";
              input.setAttribute("aria-invalid", "true");
              input.focus();
              return;
            }
            button.disabled = true;
            error.textContent = "";
            try {
              identity = await whoAmI(key);
              signIn(key);
              signedIn();
            } catch (failure) {
              button.disabled = false;
              input.setAttribute("aria-invalid", "true");
              error.textContent =
                failure instanceof ApiError && failure.keyRefused
                  ? "This key was refused: check it, or ask an admin for a new one."
                  : `Could not sign in: ${failure.message}`;
              input.focus();
            }
          },
        },
        h("div", { class: "field" }, h("label", { for: "api-key" }, "API key"), input),
        h(
          "p",
          { id: "api-key-hint", class: "hint" },
          "Kept in this browser (local storage) until you sign out. On the embedded stack, ",
          h("code", null, "make up"),
          " prints an admin key.",
        ),
        error,
        h("div", { class: "form-actions" }, button),
      ),
    ),
  );
  (message ? input : main.querySelector("h1")).focus();
}

async function learnFeatures() {
  try {
    const response = await fetch("openapi.json", { cache: "no-store", credentials: "omit" });
    documented = new Set(Object.keys((await response.json()).paths || {}));
  } catch {
    documented = new Set(); // without the document, only the views every deployment has
  }
  for (const link of nav.querySelectorAll("a")) {
    const route = ROUTES.find((candidate) => candidate.section === link.dataset.section && candidate.needs);
    if (route) link.hidden = !documented.has(route.needs);
  }
}

async function signedIn() {
  await learnFeatures();
  nav.hidden = false;
  session.hidden = false;
  const where = identity.environment ? ` · ${identity.environment}` : "";
  identityLabel.replaceChildren(
    h("span", { class: `badge scope scope-${identity.scope}` }, `${identity.scope} key`),
    h("span", { class: "muted-on-dark mono small" }, ` ${identity.key_id}${where}`),
  );
  route();
}

document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  identity = null;
  showSignIn();
  announce("Signed out. The key was removed from this browser.");
});

liveButton.addEventListener("click", () => {
  live = !live;
  liveButton.textContent = live ? "Pause updates" : "Resume updates";
  document.body.classList.toggle("paused", !live);
  announce(live ? "Live updates resumed." : "Live updates paused.");
  document.dispatchEvent(new Event("runly:live"));
});

document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  (main.querySelector("h1") || main).focus();
});

window.addEventListener("hashchange", route);

async function start() {
  const key = currentKey();
  if (!key) {
    showSignIn();
    return;
  }
  try {
    identity = await whoAmI(key);
    signedIn();
  } catch (error) {
    if (error instanceof ApiError && error.keyRefused) {
      signOut();
      showSignIn("The saved key is no longer accepted. Enter another one.");
    } else {
      showSignIn(`Could not reach the API: ${error.message}`);
    }
  }
}

start();
