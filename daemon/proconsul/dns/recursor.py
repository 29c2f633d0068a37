"""Forwarding of names outside the Consul domain to the configured `recursors`.

Owns one forwarded exchange: the client's query bytes go unchanged to each upstream in turn
(`recursor_strategy` "sequential" keeps the configured order, "random" shuffles it with the
injected RNG), over the transport the client used, each attempt bounded by `recursor_timeout`.
As Consul, an upstream answer with an rcode other than NOERROR or NXDOMAIN moves on to the next
recursor; when none answers the caller replies SERVFAIL.

Concurrency: every exchange uses its own socket and runs inside the caller's per-query task, so
a slow or silent upstream only delays the query that is waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct

from dnslib import RCODE, DNSRecord

logger = logging.getLogger(__name__)

DEFAULT_PORT = 53


def parse_recursor(addr: str) -> tuple[str, int]:
    """`ip`, `ip:port`, `[v6]:port` or a bare IPv6 address -> (host, port)."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else DEFAULT_PORT
    if addr.count(":") == 1:
        host, port = addr.split(":")
        return host, int(port)
    return addr, DEFAULT_PORT


class _OneShot(asyncio.DatagramProtocol):
    """Receives the first datagram whose DNS ID matches the query."""

    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # A datagram with another ID is stale or spoofed: keep waiting for ours.
        if data[:2] == self.query_id and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _exchange_udp(query: bytes, host: str, port: int) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneShot(query[:2]), remote_addr=(host, port)
    )
    try:
        transport.sendto(query)
        return await proto.reply
    finally:
        transport.close()


async def _exchange_tcp(query: bytes, host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()


async def forward(
    query: bytes,
    recursors: list[str],
    tcp: bool,
    timeout_s: float,
    strategy: str,
    rng: random.Random,
) -> bytes | None:
    """The first acceptable upstream answer to `query`, or None when every recursor failed."""
    order = list(recursors)
    if strategy == "random":
        rng.shuffle(order)
    for addr in order:
        try:
            host, port = parse_recursor(addr)
            exchange = _exchange_tcp if tcp else _exchange_udp
            async with asyncio.timeout(timeout_s):  # not wait_for: it can lose a cancellation
                data = await exchange(query, host, port)
            reply = DNSRecord.parse(data)
        except Exception as exc:
            # Every failure of one upstream (timeout, refused, garbage) means "try the next".
            logger.debug("dns: recursor %s failed: %r", addr, exc)
            continue
        if reply.header.id != struct.unpack("!H", query[:2])[0]:
            continue
        if reply.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
            logger.debug("dns: recursor %s answered rcode %d", addr, reply.header.rcode)
            continue
        return data
    return None
