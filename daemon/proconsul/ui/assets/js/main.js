// The single-page app: Consul's UI URL scheme routed on the client, the header (datacenter
// switcher, section links) and the page lifecycle (each page gets an AbortController that
// navigation aborts, stopping its blocking queries).
//
// URLs, relative to the content path (default /ui/):
//   <dc>/services                     <dc>/services/<name>/instances
//   <dc>/nodes                        <dc>/nodes/<node>/{health-checks,services,lock-sessions}
//   <dc>/kv/  <dc>/kv/<folder>/       <dc>/kv/<key>/edit   <dc>/kv/create  <dc>/kv/<folder>/create
//   <dc>/members                      <dc>/acls/tokens (the token login)

import { request } from "./api.js";
import { h, message, replace } from "./dom.js";
import { servicesPage, instancesPage } from "./pages/services.js";
import { nodesPage, nodePage } from "./pages/nodes.js";
import { kvFolderPage, kvEditPage, kvCreatePage } from "./pages/kv.js";
import { membersPage } from "./pages/members.js";
import { tokenPage } from "./pages/token.js";

const contentPath = document.querySelector('meta[name="proconsul-content-path"]').content;
const main = document.getElementById("main");
const dcSelect = document.getElementById("dc-select");
let controller = null;
let localDc = "";

export function href(rel) {
  return contentPath + rel.replace(/^\//, "");
}

export function navigate(rel, { replaceState = false } = {}) {
  const url = href(rel);
  if (replaceState) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

function segments() {
  let path = location.pathname;
  if (path.startsWith(contentPath)) path = path.slice(contentPath.length);
  // Keep empty trailing segments: a KV folder is "kv/a/b/" and a key "kv/a/b/edit".
  return path.split("/").map(decodeURIComponent);
}

function route(parts) {
  const [dc, section, ...rest] = parts;
  if (section === "services") {
    if (!rest.length || (rest.length === 1 && rest[0] === "")) return [servicesPage, {}];
    const name = rest[0];
    return [instancesPage, { name }];
  }
  if (section === "nodes") {
    if (!rest.length || (rest.length === 1 && rest[0] === "")) return [nodesPage, {}];
    return [nodePage, { node: rest[0], tab: rest[1] || "health-checks" }];
  }
  if (section === "kv") {
    const last = rest[rest.length - 1];
    if (last === "edit" && rest.length >= 2) return [kvEditPage, { key: rest.slice(0, -1).join("/") }];
    if (last === "create") return [kvCreatePage, { folder: rest.slice(0, -1).map((p) => p + "/").join("") }];
    const folder = rest.filter((p, i) => p !== "" || i < rest.length - 1).map((p) => p + "/").join("");
    return [kvFolderPage, { folder }];
  }
  if (section === "members") return [membersPage, {}];
  if (section === "acls") return [tokenPage, {}];
  return [null, { dc }];
}

function markNav(dc, section) {
  for (const a of document.querySelectorAll("#nav a")) {
    const target = a.dataset.section === "acls" ? "acls/tokens" : a.dataset.section === "kv" ? "kv/" : a.dataset.section;
    a.href = href(`${encodeURIComponent(dc)}/${target}`);
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function loadDatacenters(current) {
  try {
    const { data } = await request("/v1/catalog/datacenters");
    const names = data.includes(current) ? data : [current, ...data];
    replace(dcSelect, names.map((dc) => h("option", { value: dc, selected: dc === current }, dc)));
  } catch (err) {
    replace(dcSelect, h("option", { value: current, selected: true }, current));
  }
}

async function render() {
  if (controller) controller.abort();
  controller = new AbortController();
  const parts = segments();
  if (!parts[0]) {
    if (!localDc) {
      try {
        localDc = (await request("/v1/agent/self")).data.Config.Datacenter;
      } catch (err) {
        localDc = "dc1";
      }
    }
    navigate(`${encodeURIComponent(localDc)}/services`, { replaceState: true });
    return;
  }
  const dc = parts[0];
  const [page, params] = route(parts);
  markNav(dc, parts[1]);
  if (dcSelect.value !== dc) loadDatacenters(dc);
  document.getElementById("status").replaceChildren();
  main.replaceChildren();
  if (!page) {
    document.title = "Not found - proconsul";
    main.append(h("h1", {}, "Page not found"), message("error", `No page at ${location.pathname}`));
    return;
  }
  const ctx = {
    dc, main, signal: controller.signal, href, navigate,
    query: (path, extra = {}) => withDc(path, dc, extra),
    status: (text) => replace(document.getElementById("status"), text || ""),
    // A failed live read: said in the status line while its loop retries; a 403 points to the
    // token page, since that is what an operator can do about it.
    fail: (what, err) => replace(document.getElementById("status"), err.status === 403
      ? [`${what}: permission denied. `, h("a", { href: href(`${encodeURIComponent(dc)}/acls/tokens`) }, "Log in with a token"),
         " that may read it."]
      : `${what}: ${err.message} (retrying)`),
  };
  try {
    await page(ctx, params);
  } catch (err) {
    if (!controller.signal.aborted) main.append(message("error", String(err.message || err)));
  }
}

function withDc(path, dc, extra) {
  const params = new URLSearchParams(extra);
  params.set("dc", dc);
  return path + (path.includes("?") ? "&" : "?") + params.toString().replace(/=(&|$)/g, "$1");
}

dcSelect.addEventListener("change", () => {
  const parts = segments();
  const section = parts[1] || "services";
  navigate(`${encodeURIComponent(dcSelect.value)}/${section === "kv" ? "kv/" : section === "acls" ? "acls/tokens" : section}`);
});

// Same-origin links under the content path are routed here instead of reloading the page.
document.addEventListener("click", (event) => {
  const a = event.target.closest("a");
  if (!a || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || a.target) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(contentPath)) return;
  event.preventDefault();
  history.pushState(null, "", url.pathname + url.search);
  // Keyboard users land in the new page, unless the page already focused its first field.
  render().then(() => { if (!main.contains(document.activeElement)) main.focus({ preventScroll: true }); });
});

window.addEventListener("popstate", render);
render();
