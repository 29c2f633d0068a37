"""The web UI's serving rules: where the static assets are answered and what `/` does.

Owns, for `ui_config` (read when the app is built; not reloadable, as the routes are fixed then):
- enabled by `ui_config.enabled` (`-ui`, on in `-dev`) or by `ui_config.dir`, which serves that
  directory instead of the assets shipped in `proconsul.ui`;
- the assets under `ui_config.content_path` (default `/ui/`); the bare path without its slash
  answers 301 to it; any other path under it that is not a file answers index.html, so the
  client-side router's deep links (`/ui/dc1/nodes/web-1/health-checks`) work from a bookmark;
  a missing file under `assets/` is a 404 (a broken asset link must not look like a page);
- `GET /`: 301 to the content path when enabled, else a plain "UI disabled" text, as Consul;
- everything under the content path is a 404 when disabled (the route is not registered).
index.html's `__CONTENT_PATH__` placeholder becomes the content path (its `<base href>`).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web

import proconsul.ui

SHIPPED_DIR = Path(proconsul.ui.__file__).resolve().parent
_PLACEHOLDER = b"__CONTENT_PATH__"
_DISABLED = (
    "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart."
)
_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}


class UIFiles:
    """The directory the UI is served from and its index page with the content path filled in."""

    def __init__(self, root: Path, content_path: str, cache: bool) -> None:
        self.root = root.resolve()
        self.content_path = content_path
        # The shipped index never changes under a running agent; a custom directory may be
        # replaced by a new build at any time, so its index is read each time.
        self.cache = cache
        self._index: bytes | None = None

    def index(self) -> bytes:
        if self._index is not None:
            return self._index
        raw = (self.root / "index.html").read_bytes().replace(_PLACEHOLDER, self.content_path.encode())
        if self.cache:
            self._index = raw
        return raw

    def lookup(self, tail: str) -> Path | None:
        """The file `tail` names inside the root, or None (also for anything escaping it)."""
        if not tail or tail.endswith("/"):
            return None
        candidate = (self.root / tail).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate if candidate.is_file() else None


def _index_response(files: UIFiles) -> web.Response:
    # The index names the current assets; never let a browser keep a stale one.
    return web.Response(body=files.index(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


def _handler(files: UIFiles) -> Any:
    async def serve(request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        if tail in ("", "index.html"):
            return _index_response(files)
        found = files.lookup(tail)
        if found is not None:
            kind = _TYPES.get(found.suffix) or mimetypes.guess_type(found.name)[0] or "application/octet-stream"
            return web.FileResponse(found, headers={"Content-Type": kind, "Cache-Control": "no-cache"})
        if tail.startswith(("assets/", "v1/")):
            raise web.HTTPNotFound()
        return _index_response(files)

    return serve


def _redirect(to: str) -> Any:
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": to}, text=f"Moved Permanently: {to}")

    return redirect


async def _disabled_index(request: web.Request) -> web.Response:
    return web.Response(text=_DISABLED)


def enabled(ui_config: Any) -> bool:
    return bool(ui_config.enabled or ui_config.dir)


def add_routes(app: web.Application, ui_config: Any) -> None:
    """Register `/` and, when the UI is enabled, the content path. Call after the /v1 routes:
    with content path `/` the UI's catch-all must not shadow them."""
    if not enabled(ui_config):
        app.router.add_get("/", _disabled_index)
        return
    content_path = ui_config.content_path  # normalised "/x/" (or "/") by config/build.py
    root = Path(ui_config.dir) if ui_config.dir else SHIPPED_DIR
    files = UIFiles(root, content_path, cache=not ui_config.dir)
    serve = _handler(files)
    if content_path != "/":
        app.router.add_get("/", _redirect(content_path))
        app.router.add_get(content_path.rstrip("/"), _redirect(content_path))
    app.router.add_get(content_path + "{tail:.*}", serve)
