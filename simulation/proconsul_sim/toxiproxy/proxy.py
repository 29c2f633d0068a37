"""One proxy: its listen socket, its open connections, and its two toxic chains.

Follows toxiproxy's proxy.go and toxic_collection.go: a proxy listens on `listen` (port 0 picks a
free port, which `listen` then reports, and which a later re-enable binds again); every accepted
client gets a fresh upstream connection and a `link.Connection`; disabling (or deleting) the proxy
closes the listener and every open connection; toxic changes reach the open connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from typing import Any

from . import errors
from .link import Connection
from .toxics import DIRECTIONS, Toxic

log = logging.getLogger(__name__)


def split_host_port(address: str, verb: str) -> tuple[str, str]:
    """("host", "port") of "host:port" or "[v6]:port", with Go's complaint when it is malformed."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0 or not address[end + 1 :].startswith(":"):
            raise errors.internal(f"{verb} tcp: address {address}: missing port in address")
        return address[1:end], address[end + 2 :]
    host, colon, port = address.rpartition(":")
    if not colon:
        raise errors.internal(f"{verb} tcp: address {address}: missing port in address")
    if ":" in host:
        raise errors.internal(f"{verb} tcp: address {address}: too many colons in address")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve_listen(address: str) -> tuple[str, int]:
    """The IP and port a listen address means; an empty host means every interface (IPv4), and an
    empty address a free port on every interface, as Go's net.Listen reads them."""
    host, port = split_host_port(address or ":0", "listen")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host or None, port or "0", type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise errors.internal(f"listen tcp: lookup {address}: {exc}") from exc
    # IPv4 first, as Go's resolver prefers it for "localhost".
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


class Proxy:
    """A named TCP proxy from `listen` to `upstream` with its toxics."""

    def __init__(self, name: str, listen: str, upstream: str, rng: random.Random) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.rng = rng
        self.chains: dict[str, list[Toxic]] = {direction: [] for direction in DIRECTIONS}
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [toxic.to_json() for toxic in self.toxics()],
        }

    # -- listening ------------------------------------------------------------------------------

    async def differs(self, listen: str, upstream: str) -> bool:
        """Whether an update to (listen, upstream) must restart the proxy (toxiproxy's Differs:
        the new listen address is compared once resolved, so "localhost:0" always differs)."""
        host, port = await resolve_listen(listen)
        return self.listen != format_address(host, port) or self.upstream != upstream

    async def start(self) -> None:
        if self.enabled:
            return
        host, port = await resolve_listen(self.listen)
        try:
            server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise errors.internal(f"listen tcp {format_address(host, port)}: bind: {reason}") from exc
        bound = server.sockets[0].getsockname()
        self.listen = format_address(str(bound[0]), int(bound[1]))
        self._server = server
        self.enabled = True
        log.info("proxy %s listening on %s, upstream %s", self.name, self.listen, self.upstream)

    async def stop(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers)
        if server is not None:
            await server.wait_closed()
        log.info("proxy %s stopped", self.name)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(client_reader, client_writer)
        except asyncio.CancelledError:
            # Only `stop()` cancels this task. It ends normally, not cancelled: Python 3.11's
            # start_server callback would log a cancelled client task as an error.
            client_writer.transport.abort()
        except Exception:
            log.exception("proxy %s: connection failed", self.name)
            client_writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            host, port = split_host_port(self.upstream, "dial")
            upstream = await asyncio.open_connection(host or "127.0.0.1", port)
        except (OSError, errors.ApiError) as exc:
            log.warning("proxy %s: cannot connect to upstream %s: %s", self.name, self.upstream, exc)
            client_writer.transport.abort()
            return
        # The chains are copied and the connection registered with no await in between, so a toxic
        # added meanwhile is either in the copy or reaches the connection through `connections`.
        connection = Connection((client_reader, client_writer), upstream, self.chains, self.rng)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)

    # -- toxics ---------------------------------------------------------------------------------

    def toxics(self) -> list[Toxic]:
        """Upstream toxics first, then downstream ones, each in the order they were added."""
        return [toxic for direction in DIRECTIONS for toxic in self.chains[direction]]

    def find_toxic(self, name: str) -> Toxic | None:
        return next((toxic for toxic in self.toxics() if toxic.name == name), None)

    def add_toxic(self, toxic: Toxic) -> None:
        self.chains[toxic.direction].append(toxic)
        for connection in list(self.connections):
            connection.links[toxic.direction].add_toxic(toxic)

    async def update_toxic(self, toxic: Toxic, toxicity: float, attributes: dict[str, int]) -> None:
        toxic.toxicity = toxicity
        toxic.attributes = attributes
        for connection in list(self.connections):
            await connection.links[toxic.direction].update_toxic(toxic)

    async def remove_toxic(self, toxic: Toxic) -> None:
        self.chains[toxic.direction].remove(toxic)
        for connection in list(self.connections):
            await connection.links[toxic.direction].remove_toxic(toxic)

    async def remove_all_toxics(self) -> None:
        for toxic in self.toxics():
            await self.remove_toxic(toxic)
