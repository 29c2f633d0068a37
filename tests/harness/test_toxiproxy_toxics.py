"""The toxiproxy-compatible server's data plane, in-process: a `ToxiproxyServer` on a free loopback
port driven over raw HTTP (aiohttp), real TCP clients through its proxies to an echo server.

Timing assertions are lower bounds only (a toxic must delay at least this much); the machines are
small and shared, so nothing asserts that something was fast.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from proconsul_sim.toxiproxy import ToxiproxyServer
from proconsul_sim.toxiproxy.toxics import slice_bounds

HOST = "127.0.0.1"
DEADLINE_S = 30.0  # generous: a read that should succeed may be slow on a loaded machine


@dataclass
class Harness:
    server: ToxiproxyServer
    http: aiohttp.ClientSession
    echo_address: str

    async def create_proxy(self, name: str, upstream: str | None = None) -> tuple[str, int]:
        body = {"name": name, "listen": f"{HOST}:0", "upstream": upstream or self.echo_address}
        async with self.http.post(f"{self.server.url}/proxies", json=body) as response:
            assert response.status == 201, await response.text()
            listen = (await response.json())["listen"]
        host, port = listen.rsplit(":", 1)
        return host, int(port)

    async def add_toxic(self, proxy: str, body: dict[str, object]) -> dict[str, object]:
        async with self.http.post(f"{self.server.url}/proxies/{proxy}/toxics", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def update_toxic(self, proxy: str, toxic: str, body: dict[str, object]) -> None:
        async with self.http.patch(
            f"{self.server.url}/proxies/{proxy}/toxics/{toxic}", json=body
        ) as response:
            assert response.status == 200, await response.text()

    async def remove_toxic(self, proxy: str, toxic: str) -> None:
        async with self.http.delete(f"{self.server.url}/proxies/{proxy}/toxics/{toxic}") as response:
            assert response.status == 204, await response.text()

    async def set_enabled(self, proxy: str, enabled: bool) -> None:
        async with self.http.post(
            f"{self.server.url}/proxies/{proxy}", json={"enabled": enabled}
        ) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["enabled"] is enabled


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    echo = await asyncio.start_server(_echo, HOST, 0)
    echo_port = echo.sockets[0].getsockname()[1]
    server = ToxiproxyServer(HOST, 0, rng=random.Random(1234))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Harness(server, http, f"{HOST}:{echo_port}")
    finally:
        await server.stop()
        echo.close()


async def _connect(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(*address), DEADLINE_S)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), DEADLINE_S)


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), DEADLINE_S)


async def test_plain_proxy_passes_bytes_both_ways(harness: Harness) -> None:
    address = await harness.create_proxy("plain")
    reader, writer = await _connect(address)
    payload = random.Random(1).randbytes(300_000)  # several chunks, both directions
    assert await _round_trip(reader, writer, payload) == payload
    writer.close()


async def test_latency_delays_each_direction(harness: Harness) -> None:
    address = await harness.create_proxy("slow")
    await harness.add_toxic("slow", {"type": "latency", "attributes": {"latency": 300, "jitter": 20}})
    await harness.add_toxic("slow", {"type": "latency", "stream": "upstream", "attributes": {"latency": 200}})
    reader, writer = await _connect(address)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _round_trip(reader, writer, b"ping") == b"ping"
    assert loop.time() - started >= 0.2 + 0.3 - 0.02 - 0.01  # both toxics, jitter may shave 20 ms
    writer.close()


async def test_toxic_changes_reach_an_open_connection(harness: Harness) -> None:
    address = await harness.create_proxy("live")
    reader, writer = await _connect(address)
    assert await _round_trip(reader, writer, b"before") == b"before"
    loop = asyncio.get_running_loop()

    await harness.add_toxic("live", {"name": "lag", "type": "latency", "attributes": {"latency": 300}})
    started = loop.time()
    assert await _round_trip(reader, writer, b"added") == b"added"
    assert loop.time() - started >= 0.29

    await harness.update_toxic("live", "lag", {"attributes": {"latency": 600}})
    started = loop.time()
    assert await _round_trip(reader, writer, b"updated") == b"updated"
    assert loop.time() - started >= 0.59

    await harness.remove_toxic("live", "lag")
    assert await _round_trip(reader, writer, b"removed") == b"removed"
    writer.close()


async def test_timeout_zero_black_holes_until_removed(harness: Harness) -> None:
    address = await harness.create_proxy("hole")
    await harness.add_toxic("hole", {"type": "timeout", "attributes": {"timeout": 0}})
    reader, writer = await _connect(address)
    writer.write(b"into the void")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 1.0)  # nothing comes back, and the link stays open
    # Removing a timeout toxic closes the connections it was on, as toxiproxy does.
    await harness.remove_toxic("hole", "timeout_downstream")
    assert await _read_to_eof(reader) == b""
    writer.close()
    reader, writer = await _connect(address)
    assert await _round_trip(reader, writer, b"back") == b"back"
    writer.close()


async def test_timeout_closes_an_idle_connection_after_its_delay(harness: Harness) -> None:
    address = await harness.create_proxy("timeout")
    await harness.add_toxic(
        "timeout", {"type": "timeout", "stream": "upstream", "attributes": {"timeout": 400}}
    )
    reader, writer = await _connect(address)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"dropped")
    await writer.drain()
    assert await _read_to_eof(reader) == b""  # the echo never saw the data; the proxy closed
    assert loop.time() - started >= 0.39
    writer.close()


async def test_limit_data_closes_after_the_limit(harness: Harness) -> None:
    address = await harness.create_proxy("limited")
    await harness.add_toxic("limited", {"type": "limit_data", "attributes": {"bytes": 10}})
    reader, writer = await _connect(address)
    writer.write(b"0123456789abcdefghij" * 5)
    await writer.drain()
    assert await _read_to_eof(reader) == b"0123456789"
    writer.close()


async def test_reset_peer_resets_the_client(harness: Harness) -> None:
    address = await harness.create_proxy("reset")
    await harness.add_toxic("reset", {"type": "reset_peer", "attributes": {"timeout": 200}})
    reader, writer = await _connect(address)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"hello")
    await writer.drain()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), DEADLINE_S)
    assert loop.time() - started >= 0.19
    writer.close()


async def test_bandwidth_limits_throughput(harness: Harness) -> None:
    address = await harness.create_proxy("narrow")
    await harness.add_toxic("narrow", {"type": "bandwidth", "attributes": {"rate": 20}})  # 20 KB/s
    reader, writer = await _connect(address)
    payload = random.Random(2).randbytes(30_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _round_trip(reader, writer, payload) == payload
    assert loop.time() - started >= 1.3  # 30 KB at 20 KB/s is 1.5 s
    writer.close()


async def test_slicer_delivers_every_byte_in_order(harness: Harness) -> None:
    address = await harness.create_proxy("sliced")
    attributes = {"average_size": 64, "size_variation": 32, "delay": 50}
    await harness.add_toxic("sliced", {"type": "slicer", "attributes": attributes})
    await harness.add_toxic("sliced", {"type": "slicer", "stream": "upstream", "attributes": attributes})
    reader, writer = await _connect(address)
    payload = random.Random(3).randbytes(20_000)
    assert await _round_trip(reader, writer, payload) == payload
    writer.close()


def test_slice_bounds_cover_the_chunk_in_pieces_near_the_average() -> None:
    rng = random.Random(4)
    for size in (1, 7, 100, 999, 65536):
        bounds = slice_bounds(size, 100, 40, rng)
        pieces = [end - start for start, end in zip(bounds, bounds[1:])]
        assert bounds[0] == 0 and bounds[-1] == size
        assert all(piece > 0 for piece in pieces)
        assert all(piece <= 140 for piece in pieces), pieces


async def test_slow_close_holds_the_close_back(harness: Harness) -> None:
    async def greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    greeter = await asyncio.start_server(greet_and_close, HOST, 0)
    greeter_port = greeter.sockets[0].getsockname()[1]
    try:
        address = await harness.create_proxy("lingering", f"{HOST}:{greeter_port}")
        await harness.add_toxic("lingering", {"type": "slow_close", "attributes": {"delay": 400}})
        reader, writer = await _connect(address)
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(reader.readexactly(3), DEADLINE_S) == b"bye"
        got_bye = loop.time()
        assert await _read_to_eof(reader) == b""
        assert loop.time() - got_bye >= 0.35
        writer.close()
    finally:
        greeter.close()


async def test_toxicity_decides_per_connection(harness: Harness) -> None:
    address = await harness.create_proxy("sometimes")
    # limit_data 0 ends a connection on its first chunk: cheap to tell apart from an echo.
    toxic = await harness.add_toxic(
        "sometimes", {"type": "limit_data", "toxicity": 0.0, "attributes": {"bytes": 0}}
    )
    assert toxic["toxicity"] == 0.0

    async def echoed() -> bool:
        reader, writer = await _connect(address)
        writer.write(b"x")
        await writer.drain()
        answer = await _read_to_eof_or_byte(reader)
        writer.close()
        return answer == b"x"

    assert all([await echoed() for _ in range(10)]), "toxicity 0 must never apply"
    await harness.update_toxic("sometimes", "limit_data_downstream", {"toxicity": 0.5})
    outcomes = [await echoed() for _ in range(30)]
    assert any(outcomes) and not all(outcomes), outcomes
    await harness.update_toxic("sometimes", "limit_data_downstream", {"toxicity": 1.0})
    assert not any([await echoed() for _ in range(5)]), "toxicity 1 must always apply"


async def _read_to_eof_or_byte(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(1), DEADLINE_S)


async def test_disabled_proxy_refuses_then_listens_again_on_the_same_port(harness: Harness) -> None:
    address = await harness.create_proxy("switch")
    reader, writer = await _connect(address)
    assert await _round_trip(reader, writer, b"up") == b"up"

    await harness.set_enabled("switch", False)
    assert await _read_to_eof_or_error(reader) == b""  # the open connection was closed
    with pytest.raises(ConnectionRefusedError):
        await _connect(address)

    await harness.set_enabled("switch", True)
    reader, writer = await _connect(address)
    assert await _round_trip(reader, writer, b"again") == b"again"
    writer.close()


async def _read_to_eof_or_error(reader: asyncio.StreamReader) -> bytes:
    try:
        return await _read_to_eof(reader)
    except ConnectionResetError:
        return b""


async def test_unreachable_upstream_closes_the_client(harness: Harness) -> None:
    with socketless_port() as dead_port:
        address = await harness.create_proxy("nowhere", f"{HOST}:{dead_port}")
        reader, writer = await _connect(address)
        assert await _read_to_eof_or_error(reader) == b""
        writer.close()


class socketless_port:
    """A loopback port with nothing listening on it, held by a bound (not listening) socket."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()
