// Services: the list (health summary, tags, instance counts; search and health filter) from
// /v1/internal/ui/services, and one service's instances with their checks from /v1/health/service.

import { watch } from "../api.js";
import { badge, h, message, replace, table, tags, worst } from "../dom.js";

function summaryHealth(s) {
  if (s.ChecksCritical > 0) return "critical";
  if (s.ChecksWarning > 0) return "warning";
  return "passing";
}

export function servicesPage(ctx) {
  document.title = `Services - ${ctx.dc} - proconsul`;
  const search = h("input", { type: "search", id: "service-search", placeholder: "name or tag" });
  const health = h("select", { id: "service-health" },
    h("option", { value: "" }, "All"),
    h("option", { value: "passing" }, "Passing"),
    h("option", { value: "warning" }, "Warning"),
    h("option", { value: "critical" }, "Critical"));
  const count = h("p", { class: "muted", "aria-live": "polite" });
  const body = h("div", { id: "services-table" }, h("p", { class: "muted" }, "Loading..."));
  ctx.main.append(
    h("h1", {}, "Services"),
    h("div", { class: "toolbar", role: "search" },
      h("label", { for: "service-search" }, "Search", search),
      h("label", { for: "service-health" }, "Health", health)),
    count, body);
  let services = null;

  function draw() {
    if (!services) return;
    const text = search.value.trim().toLowerCase();
    const wanted = health.value;
    const shown = services.filter((s) =>
      (!wanted || summaryHealth(s) === wanted) &&
      (!text || s.Name.toLowerCase().includes(text) || (s.Tags || []).some((t) => t.toLowerCase().includes(text))));
    count.textContent = `${shown.length} of ${services.length} services`;
    const rows = shown.map((s) => {
      const status = summaryHealth(s);
      return h("tr", { class: status, "data-service": s.Name, "data-health": status },
        h("td", {}, h("a", { href: ctx.href(`${encodeURIComponent(ctx.dc)}/services/${encodeURIComponent(s.Name)}/instances`) }, s.Name)),
        h("td", {}, badge(status)),
        h("td", {}, `${s.InstanceCount} instance${s.InstanceCount === 1 ? "" : "s"}`),
        h("td", { class: "hide-narrow" },
          `${s.ChecksPassing} passing, ${s.ChecksWarning} warning, ${s.ChecksCritical} critical`),
        h("td", {}, tags(s.Tags)));
    });
    replace(body, rows.length
      ? table(["Service", "Health", "Instances", h("span", { class: "hide-narrow" }, "Checks"), "Tags"], rows)
      : h("p", { class: "muted" }, services.length ? "No service matches." : "No services registered."));
    for (const th of body.querySelectorAll("th")) if (th.textContent === "Checks") th.classList.add("hide-narrow");
  }

  search.addEventListener("input", draw);
  health.addEventListener("change", draw);
  watch(ctx.query("/v1/internal/ui/services"), ctx.signal,
    ({ data }) => { ctx.status(""); services = data; draw(); },
    (err) => ctx.fail(`Services`, err));
}

function checkItem(c) {
  return h("li", { "data-check": c.CheckID, "data-status": c.Status },
    badge(c.Status), " ", h("strong", {}, c.Name || c.CheckID),
    c.ServiceID ? null : h("span", { class: "muted" }, " (node check)"),
    c.Output ? h("pre", { class: "output" }, c.Output) : null);
}

export function instancesPage(ctx, { name }) {
  document.title = `${name} - Services - proconsul`;
  const body = h("div", { id: "instances" }, h("p", { class: "muted" }, "Loading..."));
  ctx.main.append(
    h("div", { class: "breadcrumbs" }, h("a", { href: ctx.href(`${encodeURIComponent(ctx.dc)}/services`) }, "All services")),
    h("h1", {}, name),
    h("ul", { class: "tabs", "aria-label": "Service views" },
      h("li", {}, h("a", { href: location.pathname, "aria-current": "page" }, "Instances"))),
    body);
  watch(ctx.query(`/v1/health/service/${encodeURIComponent(name)}`), ctx.signal,
    ({ data }) => {
      ctx.status("");
      if (!data.length) {
        replace(body, message("warn", `No instances of ${name} in ${ctx.dc}.`));
        return;
      }
      const rows = data.map((entry) => {
        const svc = entry.Service;
        const status = worst(entry.Checks);
        const addr = svc.Address || entry.Node.Address;
        return h("tr", { class: status, "data-instance": svc.ID, "data-health": status },
          h("td", {}, h("strong", {}, svc.ID), h("div", {}, tags(svc.Tags))),
          h("td", {}, badge(status)),
          h("td", {}, h("a", { href: ctx.href(`${encodeURIComponent(ctx.dc)}/nodes/${encodeURIComponent(entry.Node.Node)}/health-checks`) }, entry.Node.Node),
            h("div", { class: "muted" }, svc.Port ? `${addr}:${svc.Port}` : addr)),
          h("td", {}, entry.Checks.length ? h("ul", { class: "checks" }, entry.Checks.map(checkItem)) : h("span", { class: "muted" }, "no checks")));
      });
      replace(body, table(["Instance", "Health", "Node", "Checks"], rows));
    },
    (err) => ctx.fail(`Instances`, err));
}

export { checkItem };
