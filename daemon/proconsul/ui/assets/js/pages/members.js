// Members (LAN and WAN gossip pools) and Raft peers. These endpoints are not blocking queries,
// so the page loads once and offers a Refresh button rather than polling.

import { request } from "../api.js";
import { badge, h, message, replace, table } from "../dom.js";

const STATUS = { 0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed" };
const TONE = { alive: "passing", leaving: "warning", left: "plain", failed: "critical", none: "plain" };

function membersTable(members) {
  return table(["Name", "Address", "Status", "Type", "Datacenter"], members
    .slice().sort((a, b) => a.Name.localeCompare(b.Name))
    .map((m) => {
      const status = STATUS[m.Status] || String(m.Status);
      const tags = m.Tags || {};
      return h("tr", { "data-member": m.Name, "data-status": status },
        h("td", {}, m.Name), h("td", {}, `${m.Addr}:${m.Port}`), h("td", {}, badge(TONE[status] || "plain", status)),
        h("td", {}, tags.role === "consul" ? "server" : "client"), h("td", {}, tags.dc || ""));
    }));
}

export function membersPage(ctx) {
  document.title = `Members - ${ctx.dc} - proconsul`;
  const lan = h("section", { id: "members-lan", "aria-labelledby": "lan-h" });
  const wan = h("section", { id: "members-wan", "aria-labelledby": "wan-h" });
  const raft = h("section", { id: "raft-peers", "aria-labelledby": "raft-h" });
  const refresh = h("button", { type: "button", id: "members-refresh" }, "Refresh");
  ctx.main.append(h("h1", {}, "Members and Raft peers"), h("div", { class: "actions" }, refresh),
    h("h2", { id: "lan-h" }, "LAN members (this agent's view)"), lan,
    h("h2", { id: "wan-h" }, "WAN members (servers)"), wan,
    h("h2", { id: "raft-h" }, `Raft peers of ${ctx.dc}`), raft);

  async function load() {
    const opts = { signal: ctx.signal };
    await Promise.all([
      request("/v1/agent/members", opts).then(({ data }) => replace(lan, membersTable(data)))
        .catch((err) => replace(lan, message("error", err.message))),
      request("/v1/agent/members?wan=1", opts).then(({ data }) => replace(wan, data.length ? membersTable(data)
        : h("p", { class: "muted" }, "This agent is not in the WAN pool (client agents never are).")))
        .catch((err) => replace(wan, message("error", err.message))),
      request(ctx.query("/v1/operator/raft/configuration"), opts).then(({ data }) => replace(raft,
        table(["Node", "Address", "State", "Voter"], data.Servers.map((s) =>
          h("tr", { "data-peer": s.Node },
            h("td", {}, s.Node), h("td", {}, s.Address),
            h("td", {}, s.Leader ? badge("leader", "Leader") : "follower"), h("td", {}, s.Voter ? "yes" : "no"))))))
        .catch((err) => replace(raft, message("error", err.message))),
    ]);
  }
  refresh.addEventListener("click", load);
  return load();
}
