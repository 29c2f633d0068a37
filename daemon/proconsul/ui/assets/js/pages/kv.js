// Key/Value: a folder's keys (live, `?keys&separator=/`), creating keys and folders
// (`?cas=0`: never overwrites), editing a key with `?cas=<ModifyIndex>` (a concurrent change
// shows a conflict instead of being overwritten) and deleting keys and folders (`?recurse`).

import { request, watch } from "../api.js";
import { h, message, replace, table } from "../dom.js";

const enc = (key) => key.split("/").map(encodeURIComponent).join("/");

function decodeValue(b64) {
  if (!b64) return "";
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function breadcrumbs(ctx, path) {
  const parts = path.split("/").filter((p) => p !== "");
  const links = [h("a", { href: ctx.href(`${encodeURIComponent(ctx.dc)}/kv/`) }, "Key/Value")];
  let acc = "";
  for (const part of parts.slice(0, -1)) {
    acc += part + "/";
    links.push(" / ", h("a", { href: ctx.href(`${encodeURIComponent(ctx.dc)}/kv/${enc(acc)}`) }, part));
  }
  return h("nav", { class: "breadcrumbs", "aria-label": "Breadcrumb" }, links);
}

function kvHref(ctx, rel) {
  return ctx.href(`${encodeURIComponent(ctx.dc)}/kv/${rel}`);
}

export function kvFolderPage(ctx, { folder }) {
  document.title = `${folder || "Key/Value"} - proconsul`;
  const body = h("div", { id: "kv-list" }, h("p", { class: "muted" }, "Loading..."));
  const notice = h("div");
  ctx.main.append(
    ...(folder ? [breadcrumbs(ctx, folder + "x")] : []),
    h("h1", {}, folder || "Key/Value"),
    h("div", { class: "actions" }, h("a", { href: kvHref(ctx, `${enc(folder)}create`), id: "kv-create" }, "Create key or folder")),
    notice, body);

  function row(key) {
    const isFolder = key.endsWith("/");
    const label = key.slice(folder.length);
    const link = isFolder ? kvHref(ctx, enc(key)) : kvHref(ctx, `${enc(key)}/edit`);
    const del = h("button", { class: "danger", type: "button", "aria-label": `Delete ${label}` }, "Delete");
    del.addEventListener("click", async () => {
      if (del.dataset.armed !== "1") {
        del.dataset.armed = "1";
        del.textContent = "Confirm delete";
        del.focus();
        return;
      }
      try {
        await request(ctx.query(`/v1/kv/${enc(key)}`, isFolder ? { recurse: "" } : {}), { method: "DELETE" });
        replace(notice, message("ok", `Deleted ${key}`));
      } catch (err) {
        replace(notice, message("error", `Delete failed: ${err.message}`));
      }
    });
    return h("tr", { "data-key": key },
      h("td", {}, h("a", { href: link }, isFolder ? `${label} (folder)` : label)),
      h("td", {}, isFolder ? "folder" : "key"),
      h("td", {}, del));
  }

  watch(ctx.query(`/v1/kv/${enc(folder)}`, { keys: "", separator: "/" }), ctx.signal, ({ status, data }) => {
    ctx.status("");
    const keys = status === 404 ? [] : data.filter((k) => k !== folder);
    replace(body, keys.length ? table(["Name", "Type", "Actions"], keys.map(row))
      : h("p", { class: "muted" }, "No keys here yet."));
  }, (err) => ctx.fail(`Key/Value`, err), { ok: [404] });
}

export function kvCreatePage(ctx, { folder }) {
  document.title = "Create key - proconsul";
  const name = h("input", { type: "text", id: "kv-name", required: true, autocomplete: "off" });
  const value = h("textarea", { id: "kv-value" });
  const notice = h("div");
  const form = h("form", { class: "form", id: "kv-create-form" },
    h("label", { for: "kv-name" }, `Key or folder name (under "${folder || "/"}"; end with / for a folder)`, name),
    h("label", { for: "kv-value" }, "Value", value),
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Save"),
      h("a", { href: kvHref(ctx, enc(folder)) }, "Cancel")),
    notice);
  ctx.main.append(breadcrumbs(ctx, folder + "x"), h("h1", {}, "Create key or folder"), form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const rel = name.value.trim().replace(/^\/+/, "");
    if (!rel) { replace(notice, message("error", "A name is required.")); return; }
    const key = folder + rel;
    const isFolder = key.endsWith("/");
    try {
      // cas=0: create only; an existing key is reported, never overwritten.
      const { data } = await request(ctx.query(`/v1/kv/${enc(key)}`, { cas: "0" }),
        { method: "PUT", body: isFolder ? "" : value.value });
      if (data !== true) {
        replace(notice, message("error", `${key} already exists; open it to edit it.`));
        return;
      }
      ctx.navigate(`${encodeURIComponent(ctx.dc)}/kv/${isFolder ? enc(key) : enc(folder)}`);
    } catch (err) {
      replace(notice, message("error", `Save failed: ${err.message}`));
    }
  });
  name.focus();
}

export async function kvEditPage(ctx, { key }) {
  document.title = `${key} - Key/Value - proconsul`;
  const parent = key.includes("/") ? key.slice(0, key.lastIndexOf("/") + 1) : "";
  ctx.main.append(breadcrumbs(ctx, key), h("h1", {}, key));
  const result = await request(ctx.query(`/v1/kv/${enc(key)}`), { signal: ctx.signal, ok: [404] });
  if (result.status === 404) {
    ctx.main.append(message("warn", `${key} does not exist.`),
      h("a", { href: kvHref(ctx, `${enc(parent)}create`) }, "Create a key"));
    return;
  }
  let entry = result.data[0];
  const value = h("textarea", { id: "kv-value" });
  value.value = decodeValue(entry.Value);
  const info = h("p", { class: "muted", id: "kv-info" });
  const notice = h("div", { id: "kv-notice" });
  const showInfo = () => { info.textContent = `ModifyIndex ${entry.ModifyIndex}, flags ${entry.Flags}${entry.Session ? `, locked by session ${entry.Session}` : ""}`; };
  showInfo();
  const save = h("button", { class: "primary", type: "submit" }, "Save");
  const del = h("button", { class: "danger", type: "button", id: "kv-delete" }, "Delete");
  const form = h("form", { class: "form", id: "kv-edit-form" },
    h("label", { for: "kv-value" }, "Value", value), info,
    h("div", { class: "actions" }, save, del), notice);
  ctx.main.append(form);

  async function reload() {
    const fresh = await request(ctx.query(`/v1/kv/${enc(key)}`), { ok: [404] });
    if (fresh.status === 404) {
      replace(notice, message("warn", `${key} was deleted.`));
      return;
    }
    entry = fresh.data[0];
    value.value = decodeValue(entry.Value);
    showInfo();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      // cas=<ModifyIndex>: only if nobody changed the key since it was loaded.
      const { data } = await request(ctx.query(`/v1/kv/${enc(key)}`, { cas: entry.ModifyIndex, flags: entry.Flags }),
        { method: "PUT", body: value.value });
      if (data !== true) {
        const reloadBtn = h("button", { type: "button", id: "kv-reload" }, "Load the current value");
        reloadBtn.addEventListener("click", async () => { await reload(); replace(notice); });
        replace(notice, h("div", { class: "message error", role: "alert", id: "kv-conflict" },
          "Conflict: this key was changed by someone else after you opened it, so your edit was not saved. ",
          "Your text is still in the editor. ", reloadBtn));
        return;
      }
      await reload();
      replace(notice, message("ok", "Saved."));
    } catch (err) {
      replace(notice, message("error", `Save failed: ${err.message}`));
    }
  });
  del.addEventListener("click", async () => {
    if (del.dataset.armed !== "1") {
      del.dataset.armed = "1";
      del.textContent = "Confirm delete";
      return;
    }
    try {
      await request(ctx.query(`/v1/kv/${enc(key)}`), { method: "DELETE" });
      ctx.navigate(`${encodeURIComponent(ctx.dc)}/kv/${enc(parent)}`);
    } catch (err) {
      replace(notice, message("error", `Delete failed: ${err.message}`));
    }
  });
}
