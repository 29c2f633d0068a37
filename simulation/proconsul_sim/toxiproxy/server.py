"""The toxiproxy v2 HTTP API (aiohttp) over the proxies it owns: `ToxiproxyServer`.

Routes, methods, status codes and JSON shapes follow toxiproxy's api.go (v2.12): proxies are
created with 201, toxics with 200 (toxiproxy writes no status there), deletes and /reset answer
204; a missing proxy or toxic is 404, a duplicate name 409, a malformed body 400, a listen address
that cannot be bound 500; every error body is `{"error": <message>, "status": <code>}`. Requests
whose User-Agent starts with "Mozilla/" get 403, as toxiproxy refuses browsers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import errors
from .proxy import Proxy
from .toxics import new_toxic, parse_update

log = logging.getLogger(__name__)

# The toxiproxy release whose API this server speaks, marked so a client can tell it apart.
VERSION = "2.12.0-proconsul"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise errors.BAD_REQUEST_BODY.with_detail("EOF")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BAD_REQUEST_BODY.with_detail(str(exc)) from exc


def _optional(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """A field of a proxy body; null or absent keeps `default`, a wrong JSON type is a 400."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise errors.BAD_REQUEST_BODY.with_detail(
            f"{key} must be a {'boolean' if kind is bool else 'string'}"
        )
    return value


class ToxiproxyServer:
    """A toxiproxy-compatible server: the HTTP API on `host:port` and the proxies it creates.

    `port` 0 binds a free port; `api_port` reports the bound one after `start()`. `rng` (seedable)
    decides toxicity rolls, jitter and slice sizes.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8474, *, rng: random.Random | None = None
    ) -> None:
        self.host = host
        self.api_port = port
        self.rng = rng if rng is not None else random.Random()
        self.proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()  # one API change at a time, as toxiproxy's collection lock does
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.api_port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._refuse_browsers, self._api_errors])
        app.add_routes(
            [
                web.post("/reset", self._reset),
                web.get("/proxies", self._proxy_index),
                web.post("/proxies", self._proxy_create),
                web.post("/populate", self._populate),
                web.get("/proxies/{proxy}", self._proxy_show),
                web.post("/proxies/{proxy}", self._proxy_update),
                web.patch("/proxies/{proxy}", self._proxy_update),
                web.delete("/proxies/{proxy}", self._proxy_delete),
                web.get("/proxies/{proxy}/toxics", self._toxic_index),
                web.post("/proxies/{proxy}/toxics", self._toxic_create),
                web.get("/proxies/{proxy}/toxics/{toxic}", self._toxic_show),
                web.post("/proxies/{proxy}/toxics/{toxic}", self._toxic_update),
                web.patch("/proxies/{proxy}/toxics/{toxic}", self._toxic_update),
                web.delete("/proxies/{proxy}/toxics/{toxic}", self._toxic_delete),
                web.get("/version", self._version),
            ]
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.api_port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.api_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        async with self._lock:
            for proxy in list(self.proxies.values()):
                await proxy.stop()
            self.proxies.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ToxiproxyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- operations shared by the handlers and by in-process users ------------------------------

    def get_proxy(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise errors.PROXY_NOT_FOUND
        return proxy

    async def populate(self, body: Any) -> tuple[list[Proxy], errors.ApiError | None]:
        """Create or replace each listed proxy (toxiproxy's PopulateJson): every entry is checked
        before any is touched; an entry equal in listen and upstream to an existing proxy keeps it
        (toxics and all); a different one replaces it. Returns the proxies done and the first error."""
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            return [], errors.BAD_REQUEST_BODY.with_detail("expected a JSON array of proxy objects")
        entries = []
        try:
            for number, item in enumerate(body, start=1):
                name = _optional(item, "name", str, "")
                upstream = _optional(item, "upstream", str, "")
                if not name:
                    raise errors.MISSING_FIELD.with_detail(f"name at proxy {number}")
                if not upstream:
                    raise errors.MISSING_FIELD.with_detail(f"upstream at proxy {number}")
                entries.append(
                    (
                        name,
                        _optional(item, "listen", str, ""),
                        upstream,
                        _optional(item, "enabled", bool, True),
                    )
                )
        except errors.ApiError as exc:
            return [], exc
        async with self._lock:
            return await self._populate_checked(entries)

    async def _populate_checked(
        self, entries: list[tuple[str, str, str, bool]]
    ) -> tuple[list[Proxy], errors.ApiError | None]:
        done: list[Proxy] = []
        try:
            for name, listen, upstream, enabled in entries:
                existing = self.proxies.get(name)
                if existing is not None:
                    if not await existing.differs(listen, upstream):
                        done.append(existing)
                        continue
                    await existing.stop()
                proxy = Proxy(name, listen, upstream, self.rng)
                if enabled:
                    await proxy.start()
                self.proxies[name] = proxy
                done.append(proxy)
        except errors.ApiError as exc:
            return done, exc
        return done, None

    # -- middlewares ----------------------------------------------------------------------------

    @web.middleware
    async def _refuse_browsers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("User-Agent", "").startswith("Mozilla/"):
            return web.Response(text="User agent not allowed\n", status=403)
        return await handler(request)

    @web.middleware
    async def _api_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors.ApiError as exc:
            return _json_response(exc.to_json(), exc.status)

    # -- handlers -------------------------------------------------------------------------------

    async def _proxy_index(self, request: web.Request) -> web.Response:
        return _json_response({name: self.proxies[name].to_json() for name in sorted(self.proxies)})

    async def _proxy_create(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise errors.BAD_REQUEST_BODY.with_detail("expected a JSON object")
        name = _optional(body, "name", str, "")
        listen = _optional(body, "listen", str, "")
        upstream = _optional(body, "upstream", str, "")
        enabled = _optional(body, "enabled", bool, True)
        if not name:
            raise errors.MISSING_FIELD.with_detail("name")
        if not upstream:
            raise errors.MISSING_FIELD.with_detail("upstream")
        async with self._lock:
            if name in self.proxies:
                raise errors.PROXY_ALREADY_EXISTS
            proxy = Proxy(name, listen, upstream, self.rng)
            if enabled:
                await proxy.start()
            self.proxies[name] = proxy
            return _json_response(proxy.to_json(), 201)

    async def _populate(self, request: web.Request) -> web.Response:
        try:
            body: Any = await _read_json(request)
        except errors.ApiError as exc:
            return _json_response({**exc.to_json(), "proxies": None}, exc.status)
        proxies, error = await self.populate(body)
        # toxiproxy marshals an empty Go slice of proxies here as null.
        listed = [proxy.to_json() for proxy in proxies] or None
        if error is not None:
            return _json_response({**error.to_json(), "proxies": listed}, error.status)
        return _json_response({"proxies": listed}, 201)

    async def _proxy_show(self, request: web.Request) -> web.Response:
        return _json_response(self.get_proxy(request.match_info["proxy"]).to_json())

    async def _proxy_update(self, request: web.Request) -> web.Response:
        async with self._lock:
            proxy = self.get_proxy(request.match_info["proxy"])
            body = await _read_json(request)
            if not isinstance(body, dict):
                raise errors.BAD_REQUEST_BODY.with_detail("expected a JSON object")
            listen = _optional(body, "listen", str, proxy.listen)
            upstream = _optional(body, "upstream", str, proxy.upstream)
            enabled = _optional(body, "enabled", bool, proxy.enabled)
            if await proxy.differs(listen, upstream):
                # A new address drops the open connections, and re-listens if it stays enabled.
                await proxy.stop()
                proxy.listen, proxy.upstream = listen, upstream
            if enabled and not proxy.enabled:
                await proxy.start()
            elif not enabled:
                await proxy.stop()
            return _json_response(proxy.to_json())

    async def _proxy_delete(self, request: web.Request) -> web.Response:
        async with self._lock:
            proxy = self.get_proxy(request.match_info["proxy"])
            await proxy.stop()
            del self.proxies[proxy.name]
        return web.Response(status=204)

    async def _toxic_index(self, request: web.Request) -> web.Response:
        proxy = self.get_proxy(request.match_info["proxy"])
        return _json_response([toxic.to_json() for toxic in proxy.toxics()])

    async def _toxic_create(self, request: web.Request) -> web.Response:
        async with self._lock:
            proxy = self.get_proxy(request.match_info["proxy"])
            toxic = new_toxic(await _read_json(request), {toxic.name for toxic in proxy.toxics()})
            proxy.add_toxic(toxic)
            return _json_response(toxic.to_json())

    async def _toxic_show(self, request: web.Request) -> web.Response:
        proxy = self.get_proxy(request.match_info["proxy"])
        toxic = proxy.find_toxic(request.match_info["toxic"])
        if toxic is None:
            raise errors.TOXIC_NOT_FOUND
        return _json_response(toxic.to_json())

    async def _toxic_update(self, request: web.Request) -> web.Response:
        async with self._lock:
            proxy = self.get_proxy(request.match_info["proxy"])
            toxic = proxy.find_toxic(request.match_info["toxic"])
            if toxic is None:
                raise errors.TOXIC_NOT_FOUND
            toxicity, attributes = parse_update(toxic, await _read_json(request))
            await proxy.update_toxic(toxic, toxicity, attributes)
            return _json_response(toxic.to_json())

    async def _toxic_delete(self, request: web.Request) -> web.Response:
        async with self._lock:
            proxy = self.get_proxy(request.match_info["proxy"])
            toxic = proxy.find_toxic(request.match_info["toxic"])
            if toxic is None:
                raise errors.TOXIC_NOT_FOUND
            await proxy.remove_toxic(toxic)
        return web.Response(status=204)

    async def _reset(self, request: web.Request) -> web.Response:
        async with self._lock:
            for name in sorted(self.proxies):
                proxy = self.proxies[name]
                await proxy.start()  # a proxy that cannot listen again fails the reset (500)
                await proxy.remove_all_toxics()
        return web.Response(status=204)

    async def _version(self, request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps({"version": VERSION}) + "\n",
            headers={"Content-Type": "application/json;charset=utf-8"},
        )
