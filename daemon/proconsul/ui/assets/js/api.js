// The /v1 HTTP API as the UI uses it: the token header, `?dc`, and blocking-query loops.
//
// A page is live through `watch`: it long-polls with `?index=<last X-Consul-Index>`, so the agent
// answers only when something changed (or its wait runs out) and an idle page costs one parked
// request per list. On an error the loop backs off (1 s doubling to 30 s). Navigating away aborts
// the page's AbortController, which cancels the parked request (the agent drops its watch).

const TOKEN_KEY = "proconsul:token";

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

export class APIError extends Error {
  constructor(status, text) {
    super(text ? `${status}: ${text}` : `HTTP ${status}`);
    this.status = status;
  }
}

export function withParams(path, params) {
  const parts = [];
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === false) continue;
    parts.push(value === true ? encodeURIComponent(key) : `${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  }
  if (!parts.length) return path;
  return path + (path.includes("?") ? "&" : "?") + parts.join("&");
}

// One request. Resolves to {status, index, data}; `data` is parsed JSON (or text for non-JSON).
// Statuses in `ok` (default: 2xx only) resolve; others reject with APIError.
export async function request(path, { method = "GET", body, signal, ok = [] } = {}) {
  const headers = {};
  const token = getToken();
  if (token) headers["X-Consul-Token"] = token;
  const response = await fetch(path, { method, body, signal, headers, cache: "no-store" });
  const text = await response.text();
  if (!response.ok && !ok.includes(response.status)) throw new APIError(response.status, text.trim());
  let data = text;
  if ((response.headers.get("Content-Type") || "").includes("json") && text) data = JSON.parse(text);
  const index = parseInt(response.headers.get("X-Consul-Index") || "0", 10) || 0;
  return { status: response.status, index, data };
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// Calls onUpdate(result) for the first answer and for every change after it; onError(err) on a
// failure (the loop retries with backoff). Returns nothing; stop it through `signal`.
export function watch(path, signal, onUpdate, onError, { ok = [] } = {}) {
  (async () => {
    let index = 0;
    let backoff = 0;
    while (!signal.aborted) {
      try {
        const url = index ? withParams(path, { index, wait: "5m" }) : path;
        const result = await request(url, { signal, ok });
        if (signal.aborted) return;
        backoff = 0;
        // Consul's client rules: an index that went backwards (a restored snapshot, another
        // server) restarts from 0; one that did not move means the wait ran out, nothing changed.
        const changed = index === 0 || result.index !== index;
        index = result.index < index ? 0 : Math.max(result.index, 1);
        if (changed) onUpdate(result);
      } catch (err) {
        if (signal.aborted) return;
        onError(err);
        backoff = Math.min(backoff ? backoff * 2 : 1000, 30000);
        index = 0;
        await pause(backoff, signal);
      }
    }
  })();
}
