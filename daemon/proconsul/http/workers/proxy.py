"""Forwarding a request from an HTTP worker to the agent, unchanged, over its unix socket.

Owns the reverse proxy: method, raw path and query, headers and body go to the agent's private
forwarding socket, with the real client address in `http.server.FORWARDED_CLIENT` (believed there
only); the answer streams back as it comes (blocking queries, /v1/agent/monitor). Hop-by-hop
headers stay on their hop. Nothing is decompressed or re-encoded.
"""

from __future__ import annotations

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from proconsul.http.conn_guard import IDLE_TIMEOUT_S
from proconsul.http.server import FORWARDED_CLIENT

_HOP_BY_HOP = frozenset(
    h.lower() for h in (
        hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION, hdrs.TE,
        hdrs.TRAILER, hdrs.TRANSFER_ENCODING, hdrs.UPGRADE, FORWARDED_CLIENT,
        # Answered here (aiohttp says 100 Continue before the body is read), not passed on.
        hdrs.EXPECT,
    )
)
# The answer's length is set from the agent's (or left to chunking), never copied verbatim.
_NOT_COPIED_BACK = _HOP_BY_HOP | {hdrs.CONTENT_LENGTH.lower()}


class Forwarder:
    def __init__(self, path: str) -> None:
        self.path = path
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Idle connections are closed here well before the agent's own idle timeout, so a
                # request is never sent on one the agent is closing (it would not be retried).
                connector=aiohttp.UnixConnector(path=self.path, limit=0, keepalive_timeout=IDLE_TIMEOUT_S / 4),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
            )
            # aiohttp sends an "idempotent" request (PUT and DELETE included) again when a reused
            # connection drops before the answer; the agent may have applied the first one (a KV
            # set, a lock release), and applying it twice could undo a later write. The client
            # gets the error instead and decides, as it would talking to the agent directly.
            self._session._retry_connection = False
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        headers[FORWARDED_CLIENT] = request.remote or ""
        body = request.content if request.can_read_body else None
        # Encoded: the raw target as the client sent it (yarl would resolve dot segments and
        # re-quote escapes, and the agent answers those paths itself: a 404 or a redirect).
        url = URL("http://agent" + request.raw_path, encoded=True)
        async with self._client().request(
            request.method, url, headers=headers, data=body, allow_redirects=False, compress=None,
        ) as upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _NOT_COPIED_BACK:
                    resp.headers.add(name, value)
            if upstream.content_length is not None and hdrs.TRANSFER_ENCODING not in upstream.headers:
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            await resp.write_eof()
            return resp
