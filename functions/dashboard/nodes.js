// Nodes: online or offline, environment, what they run, capacity, last heartbeat; admins may drain one.

import { api } from "./api.js";
import { errorBanner, h, plural, replaceContent, setText, showError, timeElement } from "./dom.js";

const REFRESH_MS = 2500;

// A node that leaves on purpose deletes its record; the page remembers the nodes it saw (for as long as it is
// open), so a node that left shows as offline instead of vanishing from under the reader.
const seen = new Map();

export function nodesView(main, ctx) {
  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const banner = errorBanner();
  const results = h("div", { class: "table-wrap" });
  const pending = new Set();

  main.append(h("div", { class: "view-head" }, h("h1", { tabindex: -1 }, "Nodes")), summary, banner, results);

  async function refresh() {
    try {
      const { items } = await api("/nodes");
      const listed = new Set(items.map((node) => node.id));
      for (const node of items) seen.set(node.id, { ...node, left: false });
      for (const [id, node] of seen) {
        if (!listed.has(id) && !node.left) seen.set(id, { ...node, status: "offline", left: true, running: [] });
      }
      ctx.rememberEnvironments(items.map((node) => node.environment));
      showError(banner, null);
      render();
    } catch (error) {
      showError(banner, error, "Could not load the nodes: ");
      ctx.handleError(error);
    }
  }

  function render() {
    const nodes = [...seen.values()].sort(
      (a, b) => (a.status === b.status ? a.id.localeCompare(b.id) : a.status === "online" ? -1 : 1),
    );
    const online = nodes.filter((node) => node.status === "online").length;
    setText(
      summary,
      nodes.length
        ? `${plural(nodes.length, "node")}: ${online} online, ${nodes.length - online} offline`
        : "No node has joined yet. Start an agent (python -m node_agent) and it appears here.",
    );
    replaceContent(results, nodes.length ? table(nodes) : null);
  }

  function table(nodes) {
    return h(
      "table",
      { class: "table cards nodes-table" },
      h("caption", { class: "visually-hidden" }, "Nodes, online first"),
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          ["Node", "Status", "Environment", "Running", "Capacity", "Last heartbeat", "Agent", ctx.isAdmin ? "Drain" : null]
            .filter(Boolean)
            .map((title) => h("th", { scope: "col" }, title)),
        ),
      ),
      h("tbody", null, nodes.map(row)),
    );
  }

  function row(node) {
    const status = node.status === "online" ? (node.drain_requested || node.state === "draining" ? "draining" : "online") : "offline";
    return h(
      "tr",
      { dataset: { nodeId: node.id, status: node.status } },
      h("td", { "data-label": "Node" }, h("span", { class: "mono" }, node.id), h("span", { class: "muted small block" }, node.host)),
      h(
        "td",
        { "data-label": "Status" },
        h("span", { class: `badge node-${status}` }, status === "draining" ? "Online, draining" : status === "online" ? "Online" : "Offline"),
        h("span", { class: "muted small block" }, node.left ? "left (deregistered)" : node.status === "online" ? node.state : "heartbeats stopped"),
      ),
      h("td", { "data-label": "Environment" }, node.environment),
      h(
        "td",
        { "data-label": "Running" },
        node.running.length
          ? h("ul", { class: "plain" }, node.running.map((id) => h("li", null, h("a", { href: `#/runs/${encodeURIComponent(id)}`, class: "mono" }, id))))
          : h("span", { class: "muted" }, "nothing"),
      ),
      h("td", { "data-label": "Capacity" }, `${node.running.length} / ${node.capacity}`),
      h("td", { "data-label": "Last heartbeat" }, timeElement(node.last_seen)),
      h("td", { "data-label": "Agent" }, node.agent_version),
      ctx.isAdmin
        ? h(
            "td",
            { "data-label": "Drain" },
            node.status === "online" && !node.drain_requested
              ? h(
                  "button",
                  {
                    type: "button",
                    class: "secondary small",
                    disabled: pending.has(node.id),
                    "data-focus-key": `drain-${node.id}`,
                    "aria-label": `Drain node ${node.id}`,
                    onclick: () => drain(node),
                  },
                  "Drain",
                )
              : h("span", { class: "muted small" }, node.drain_requested ? "drain requested" : "—"),
          )
        : null,
    );
  }

  async function drain(node) {
    // Not undone from here: the agent stops once its runs end, and joins again only when restarted.
    if (!window.confirm(`Drain ${node.id}? It takes no new runs and stops once its running ones end.`)) return;
    pending.add(node.id);
    render();
    try {
      const drained = await api(`/nodes/${encodeURIComponent(node.id)}/drain`, { method: "POST" });
      seen.set(drained.id, { ...drained, left: false });
      ctx.announce(`Node ${node.id} drains: it takes no new runs and stops once its running ones end.`);
    } catch (error) {
      showError(banner, error, `Could not drain ${node.id}: `);
    } finally {
      pending.delete(node.id);
      render();
    }
  }

  ctx.poll(refresh, REFRESH_MS);
}
