"""The inbound Raft connection as an asyncio protocol (`raft.node._InboundRaft`, `transport.adopt_stream`).

The frame parser is fed byte streams cut at every kind of boundary; real connections go
through the transport's own listener, plaintext and TLS, on asyncio's loop and on uvloop,
with bytes the listener's StreamReader had already read before the protocol took over.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from proconsul.raft import codec
from proconsul.raft.messages import Entry, EntryKind, Message, MsgType
from proconsul.raft.node import RaftServer, _InboundRaft, _Wake
from proconsul.tls import certs
from proconsul.transport import Listener, dial
from proconsul.wire import ConnType, encode_frame


class _Book:
    def __init__(self) -> None:
        self.learned: list[tuple[str, str]] = []

    def learn(self, node_id: str, addr: str) -> None:
        self.learned.append((node_id, addr))


class _CountingWake(_Wake):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def set(self) -> None:
        self.count += 1
        super().set()


class _Server:
    """What serve_stream and the protocol use of a RaftServer."""

    def __init__(self) -> None:
        self.addresses = _Book()
        self._inbox: list[Message] = []
        self._wake = _CountingWake()

    def _deliver(self, msgs: list[Message]) -> None:
        self._inbox.extend(msgs)
        self._wake.set()

    @property
    def wakes(self) -> int:
        return self._wake.count


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _messages(n: int) -> list[Message]:
    out = []
    for i in range(n):
        entries = tuple(Entry(i * 3 + k + 1, 2, EntryKind.NORMAL, bytes([k]) * (i * 37 % 300)) for k in range(i % 3))
        out.append(Message(type=MsgType.APP, to="a", frm="b", term=2, log_term=2, index=i * 3, entries=entries,
                           commit=i))
    return out


def _stream(msgs: list[Message]) -> bytes:
    hello = encode_frame({"id": "b", "addr": "127.0.0.1:8300"})
    return hello + b"".join(encode_frame(codec.encode_message(m)) for m in msgs)


def _protocol(server: _Server) -> tuple[_InboundRaft, _FakeTransport, asyncio.Future[None]]:
    loop = asyncio.new_event_loop()
    closed: asyncio.Future[None] = loop.create_future()
    def deliver(msgs: list[Message]) -> None:
        server._inbox.extend(msgs)
        server._wake.set()

    proto = _InboundRaft(server.addresses.learn, deliver, ("127.0.0.1", 1), closed)
    transport = _FakeTransport()
    proto.connection_made(transport)
    return proto, transport, closed


@pytest.mark.parametrize("seed", range(20))
def test_frames_cut_at_any_boundary_arrive_whole_and_in_order(seed: int) -> None:
    rng = random.Random(seed)
    msgs = _messages(25)
    data = _stream(msgs)
    server = _Server()
    proto, transport, _ = _protocol(server)
    pos = 0
    reads = 0
    while pos < len(data):
        # Single bytes, cuts inside a length prefix, and reads of many frames at once.
        step = rng.choice([1, 2, 3, 5, rng.randint(1, 64), rng.randint(1, 2000)])
        proto.data_received(data[pos : pos + step])
        pos += step
        reads += 1
    assert server._inbox == msgs
    assert server.addresses.learned == [("b", "127.0.0.1:8300")]
    assert not transport.closed
    assert 1 <= server.wakes <= reads  # at most one wake per read, none for a read of no whole message


def test_one_read_of_many_frames_wakes_the_loop_once() -> None:
    msgs = _messages(10)
    server = _Server()
    proto, _, _ = _protocol(server)
    proto.data_received(_stream(msgs))
    assert server._inbox == msgs
    assert server.wakes == 1


def test_a_message_of_the_wrong_shape_is_dropped_and_the_next_one_kept(caplog: pytest.LogCaptureFixture) -> None:
    good = _messages(2)
    bad = codec.encode_message(good[0])
    bad[4] = "not a term"
    server = _Server()
    proto, transport, _ = _protocol(server)
    proto.data_received(encode_frame({"id": "b", "addr": "x"}) + encode_frame(bad) + encode_frame(codec.encode_message(good[1])))
    assert server._inbox == [good[1]]
    assert not transport.closed
    assert any("dropping undecodable message" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x00\x00\x00\x02\xc1\xc1"], ids=["oversize", "not-msgpack"])
def test_a_frame_that_breaks_the_framing_closes_the_connection(garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
    msgs = _messages(1)
    server = _Server()
    proto, transport, closed = _protocol(server)
    proto.data_received(_stream(msgs) + garbage + encode_frame(codec.encode_message(msgs[0])))
    assert transport.closed
    assert server._inbox == msgs  # what came before the bad frame is kept, nothing after it
    assert any("closing connection" in r.getMessage() for r in caplog.records)
    proto.connection_lost(None)
    proto.connection_lost(None)  # a second report of the end is harmless
    assert closed.done()


# ----------------------------------------------------------------------- real connections


class _TLS:
    def __init__(self, root: Path) -> None:
        ca = certs.create_ca()
        made = certs.create_cert(certs.cert_spec("server", "dc1", "consul"), ca.certificate, ca.private_key)
        (root / "ca.pem").write_text(ca.certificate)
        (root / "s.pem").write_text(made.certificate)
        (root / "s-key.pem").write_text(made.private_key)
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.load_cert_chain(str(root / "s.pem"), str(root / "s-key.pem"))
        self.client = ssl.create_default_context(cafile=str(root / "ca.pem"))
        self.client.check_hostname = False

    # RPCSecurity
    def server_context(self) -> ssl.SSLContext:
        return self.server

    def require_tls(self) -> bool:
        return True

    def client_context(self, datacenter: str) -> tuple[ssl.SSLContext, str | None]:
        return self.client, None

    def server_refusal(self, peer_certificate: dict[str, Any] | None) -> str:
        return ""

    def handshake_timeout_s(self) -> float:
        return 30.0


async def _wait_for(cond: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not cond():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.005)


async def _exchange(security: _TLS | None, buffered_first: bool) -> None:
    server = _Server()
    msgs = _messages(40)
    data = _stream(msgs)
    handlers_done: list[bool] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if buffered_first:
            # Let the listener's StreamReader read the whole first burst before the protocol
            # takes over: adopt_stream must hand those bytes on.
            await _wait_for(lambda: len(reader._buffer) >= len(data) // 2, "the reader buffered the first burst")
        await RaftServer.serve_stream(server, reader, writer)  # type: ignore[arg-type]
        handlers_done.append(True)

    listener = Listener("127.0.0.1", 0, {ConnType.RAFT: serve}, security=security)
    await listener.start()
    try:
        _, writer = await dial(f"127.0.0.1:{listener.port}", ConnType.RAFT, security)  # type: ignore[arg-type]
        writer.write(data[: len(data) // 2])
        await writer.drain()
        await _wait_for(lambda: len(server._inbox) >= 1, "the first half's messages")
        writer.write(data[len(data) // 2 :])
        await writer.drain()
        await _wait_for(lambda: len(server._inbox) == len(msgs), "every message")
        assert server._inbox == msgs
        assert server.addresses.learned == [("b", "127.0.0.1:8300")]
        writer.close()
        await _wait_for(lambda: bool(handlers_done), "the handler ends when the peer closes")
    finally:
        await listener.stop()


def _run(loop_kind: str, coro: Coroutine[Any, Any, None]) -> None:
    if loop_kind == "uvloop":
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(coro)
        finally:
            loop.close()
    else:
        asyncio.run(coro)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("buffered_first", [False, True], ids=["direct", "buffered-before-takeover"])
@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_messages_arrive_over_a_real_connection(tmp_path: Path, loop_kind: str, buffered_first: bool, tls: bool) -> None:
    security = _TLS(tmp_path) if tls else None
    _run(loop_kind, _exchange(security, buffered_first))


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_peer_that_closes_before_the_takeover_ends_the_handler(loop_kind: str) -> None:
    async def main() -> None:
        server = _Server()
        data = _stream(_messages(3))
        done: list[bool] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _wait_for(lambda: reader.at_eof() or (reader._buffer and reader._eof), "the peer's end")  # type: ignore[attr-defined]
            await RaftServer.serve_stream(server, reader, writer)  # type: ignore[arg-type]
            done.append(True)

        listener = Listener("127.0.0.1", 0, {ConnType.RAFT: serve})
        await listener.start()
        try:
            _, writer = await dial(f"127.0.0.1:{listener.port}", ConnType.RAFT)
            writer.write(data)
            writer.write_eof()
            await _wait_for(lambda: bool(done), "the handler ends")
            assert len(server._inbox) == 3
            writer.close()
        finally:
            await listener.stop()

    _run(loop_kind, main())
