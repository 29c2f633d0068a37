// Nodes: the list (health, address, services, leader badge) from /v1/internal/ui/nodes, and one
// node's health checks, services and lock sessions (/v1/health/node, /v1/catalog/node-services,
// /v1/session/node), each tab live through its own blocking query.

import { request, watch } from "../api.js";
import { badge, h, message, replace, table, tags, worst } from "../dom.js";
import { checkItem } from "./services.js";

// The leader's RPC address is "ip:port"; the node whose address is that ip leads. It is read
// again each time the node list changes (elections change membership-visible state too), and
// only for this agent's own datacenter (/v1/status/leader answers for the local one).
async function leaderAddress(ctx) {
  try {
    const self = (await request("/v1/agent/self", { signal: ctx.signal })).data;
    if (self.Config.Datacenter !== ctx.dc) return "";
    const leader = (await request("/v1/status/leader", { signal: ctx.signal })).data;
    return leader ? leader.replace(/:\d+$/, "").replace(/^\[|\]$/g, "") : "";
  } catch (err) {
    return "";
  }
}

export function nodesPage(ctx) {
  document.title = `Nodes - ${ctx.dc} - proconsul`;
  const search = h("input", { type: "search", id: "node-search", placeholder: "name or address" });
  const count = h("p", { class: "muted", "aria-live": "polite" });
  const body = h("div", { id: "nodes-table" }, h("p", { class: "muted" }, "Loading..."));
  ctx.main.append(h("h1", {}, "Nodes"),
    h("div", { class: "toolbar", role: "search" }, h("label", { for: "node-search" }, "Search", search)),
    count, body);
  let nodes = null;
  let leader = "";

  function draw() {
    if (!nodes) return;
    const text = search.value.trim().toLowerCase();
    const shown = nodes.filter((n) => !text || n.Node.toLowerCase().includes(text) || n.Address.includes(text));
    count.textContent = `${shown.length} of ${nodes.length} nodes`;
    const rows = shown.map((n) => {
      const status = worst(n.Checks);
      const isLeader = leader && n.Address === leader;
      return h("tr", { class: status, "data-node": n.Node, "data-health": status },
        h("td", {}, h("a", { href: ctx.href(`${encodeURIComponent(ctx.dc)}/nodes/${encodeURIComponent(n.Node)}/health-checks`) }, n.Node),
          isLeader ? [" ", badge("leader", "Leader")] : null),
        h("td", {}, badge(status)),
        h("td", {}, n.Address),
        h("td", {}, `${n.Services.length} service${n.Services.length === 1 ? "" : "s"}`),
        h("td", { class: "hide-narrow" }, `${n.Checks.length} check${n.Checks.length === 1 ? "" : "s"}`));
    });
    replace(body, rows.length ? table(["Node", "Health", "Address", "Services", "Checks"], rows)
      : h("p", { class: "muted" }, "No node matches."));
    const ths = body.querySelectorAll("th");
    if (ths.length) ths[ths.length - 1].classList.add("hide-narrow");
  }

  search.addEventListener("input", draw);
  watch(ctx.query("/v1/internal/ui/nodes"), ctx.signal,
    async ({ data }) => {
      ctx.status("");
      nodes = data;
      leader = await leaderAddress(ctx);
      draw();
    },
    (err) => ctx.fail(`Nodes`, err));
}

const TABS = [["health-checks", "Health Checks"], ["services", "Service Instances"], ["lock-sessions", "Lock Sessions"]];

export function nodePage(ctx, { node, tab }) {
  document.title = `${node} - Nodes - proconsul`;
  const base = `${encodeURIComponent(ctx.dc)}/nodes/${encodeURIComponent(node)}`;
  const body = h("div", { id: "node-tab" }, h("p", { class: "muted" }, "Loading..."));
  ctx.main.append(
    h("div", { class: "breadcrumbs" }, h("a", { href: ctx.href(`${encodeURIComponent(ctx.dc)}/nodes`) }, "All nodes")),
    h("h1", {}, node),
    h("ul", { class: "tabs", "aria-label": "Node views" },
      TABS.map(([id, label]) => h("li", {}, h("a", { href: ctx.href(`${base}/${id}`), "aria-current": id === tab ? "page" : null }, label)))),
    body);
  const fail = (err) => ctx.fail(node, err);
  if (tab === "services") {
    watch(ctx.query(`/v1/catalog/node-services/${encodeURIComponent(node)}`), ctx.signal, ({ data }) => {
      ctx.status("");
      const services = (data && data.Services) || [];
      replace(body, services.length ? table(["Service", "ID", "Port", "Tags"], services.map((s) =>
        h("tr", { "data-service": s.Service },
          h("td", {}, h("a", { href: ctx.href(`${encodeURIComponent(ctx.dc)}/services/${encodeURIComponent(s.Service)}/instances`) }, s.Service)),
          h("td", {}, s.ID), h("td", {}, s.Port || ""), h("td", {}, tags(s.Tags)))))
        : h("p", { class: "muted" }, "No services on this node."));
    }, fail);
  } else if (tab === "lock-sessions") {
    watch(ctx.query(`/v1/session/node/${encodeURIComponent(node)}`), ctx.signal, ({ data }) => {
      ctx.status("");
      replace(body, data.length ? table(["ID", "Name", "Behavior", "TTL", "Lock delay"], data.map((s) =>
        h("tr", { "data-session": s.ID },
          h("td", {}, h("code", {}, s.ID)), h("td", {}, s.Name || ""), h("td", {}, s.Behavior),
          h("td", {}, s.TTL || "none"), h("td", {}, `${(s.LockDelay || 0) / 1e9}s`))))
        : h("p", { class: "muted" }, "No lock sessions on this node."));
    }, fail);
  } else {
    watch(ctx.query(`/v1/health/node/${encodeURIComponent(node)}`), ctx.signal, ({ data }) => {
      ctx.status("");
      replace(body, data.length
        ? [h("p", {}, "Node health: ", badge(worst(data))), h("ul", { class: "checks" }, data.map(checkItem))]
        : message("warn", `No checks for ${node} (is it in ${ctx.dc}?).`));
    }, fail);
  }
}
