// DOM helpers: elements are built with text nodes only (never innerHTML), so values from the
// cluster (service names, check output, KV values) can never inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

const RANK = { passing: 0, warning: 1, critical: 2 };

// The worst status of a list of checks ("passing" for none), as Consul's UI aggregates health.
export function worst(checks) {
  let out = "passing";
  for (const c of checks || []) {
    const s = c.Status in RANK ? c.Status : "critical";
    if (RANK[s] > RANK[out]) out = s;
  }
  return out;
}

export function badge(status, text) {
  return h("span", { class: `badge ${status}` }, text || status);
}

export function tags(list) {
  return (list || []).map((t) => h("span", { class: "tag" }, t));
}

export function table(headers, rows, caption) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", { class: "muted", style: "text-align:left" }, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows)));
}

export function message(kind, text) {
  return h("div", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}
