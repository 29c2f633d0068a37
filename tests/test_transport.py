"""Transport: first-byte multiplexing, pipelined RPC over one connection, errors and disconnects."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from helpers import wait_until
from proconsul import transport
from proconsul.transport import ConnectionPool, Listener, RemoteError, dial, rpc_stream_handler
from proconsul.wire import ConnType


async def test_pipelined_calls_complete_out_of_order() -> None:
    release = asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        if method == "slow":
            await release.wait()
            return "slow-done"
        if method == "boom":
            raise ValueError("no such thing")
        return body * 2

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    try:
        slow = asyncio.ensure_future(pool.call(addr, "slow", None))
        # The fast call shares the connection and returns while the slow one is parked.
        assert await pool.call(addr, "double", 21) == 42
        assert not slow.done()
        release.set()
        assert await slow == "slow-done"
        with pytest.raises(RemoteError, match="no such thing"):
            await pool.call(addr, "boom", None)
        assert len(pool._conns) == 1
    finally:
        await pool.close()
        await listener.stop()


async def test_pending_calls_fail_when_the_server_goes_away() -> None:
    entered = asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()  # never answers

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    call = asyncio.ensure_future(pool.call(f"127.0.0.1:{listener.port}", "hang", None, timeout_s=60))
    await asyncio.wait_for(entered.wait(), 30)
    await listener.stop()
    with pytest.raises((ConnectionError, RemoteError)):
        await asyncio.wait_for(call, 30)
    await pool.close()


async def test_an_abandoned_call_is_cancelled_on_the_server() -> None:
    """A caller that stops waiting (its task cancelled, or its timeout run out) cancels the
    request's task on the server, and the connection keeps serving other calls."""
    started: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    ended: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    outcome: dict[str, str] = {}

    async def dispatch(method: str, body: Any) -> Any:
        if method == "echo":
            return body
        started[body].set()
        try:
            await asyncio.Event().wait()  # a blocking query that nothing wakes
        except asyncio.CancelledError:
            outcome[body] = "cancelled"
            raise
        finally:
            ended[body].set()

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    try:
        call = asyncio.ensure_future(pool.call(addr, "park", "a", timeout_s=600))
        await asyncio.wait_for(started["a"].wait(), 30)
        call.cancel()
        await asyncio.wait_for(ended["a"].wait(), 30)
        with pytest.raises(TimeoutError):
            await pool.call(addr, "park", "b", timeout_s=0.2)
        await asyncio.wait_for(ended["b"].wait(), 30)
        assert outcome == {"a": "cancelled", "b": "cancelled"}
        assert await pool.call(addr, "echo", 7) == 7
        assert len(pool._conns) == 1
    finally:
        await pool.close()
        await listener.stop()


async def test_unknown_connection_type_is_closed() -> None:
    listener = Listener("127.0.0.1", 0, {})
    await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"\x7f")
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
    finally:
        await listener.stop()


async def _send_and_wait_closed(port: int, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()


async def test_protocol_errors_on_the_raft_stream_are_one_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage from a peer closes its connection with one warning; no traceback (issue 13)."""
    from types import SimpleNamespace

    from proconsul.raft import codec
    from proconsul.raft.messages import Message, MsgType
    from proconsul.raft.node import RaftServer
    from proconsul.wire import encode_frame

    inbox: list[Message] = []
    # What the stream hands over (`RaftServer._deliver`): collected, nothing stepped.
    fake = SimpleNamespace(addresses=SimpleNamespace(learn=lambda *a: None), _inbox=inbox, _deliver=inbox.extend)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await RaftServer.serve_stream(fake, reader, writer)  # type: ignore[arg-type]

    listener = Listener("127.0.0.1", 0, {ConnType.RAFT: serve})
    await listener.start()
    caplog.set_level("DEBUG")
    try:
        raft = bytes([ConnType.RAFT])
        await _send_and_wait_closed(listener.port, raft + b"\xff\xff\xff\xff")  # frame over the limit
        await _send_and_wait_closed(listener.port, raft + b"\x00\x00\x00\x02\xc1\xc1")  # not msgpack
        # A hello that is not a map, then messages of the wrong shape: dropped, connection kept.
        frames = encode_frame([1, 2]) + encode_frame({"type": "bogus", "term": -1}) + encode_frame("x") + encode_frame(None)
        # The codec's version and message kind, with fields of the wrong types or out of range.
        good = codec.encode_message(Message(type=MsgType.HEARTBEAT, to="a", frm="b", term=1))
        for field, value in ((4, "x"), (4, -1), (2, 7), (7, [[1]]), (7, [[1, 1, 0, "text"]]), (11, [1, 2])):
            frames += encode_frame([*good[:field], value, *good[field + 1 :]])
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(raft + encode_frame([{"id": 1}]) + frames)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
    finally:
        await listener.stop()
    assert fake._inbox == []
    warnings = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert warnings, "each bad stream is reported"
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.name == "asyncio"], [r.getMessage() for r in caplog.records]


async def test_a_call_cancelled_as_its_answer_arrives_stays_cancelled() -> None:
    # The caller is cancelled in the same loop iteration as the answer lands (a stopping agent's
    # coordinate sync, under load): the cancellation must win, or the caller's loop goes on.
    release = asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        await release.wait()
        return "answer"

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    try:
        call = asyncio.ensure_future(pool.call(addr, "wait", None))
        while not (pool._conns.get(addr) and pool._conns[addr].pending):
            await asyncio.sleep(0.01)
        (fut,) = pool._conns[addr].pending.values()
        fut.set_result("answer")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        release.set()
        await pool.close()
        await listener.stop()


async def test_a_dial_cancelled_as_its_connection_opens_stays_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    # The dialling task is cancelled in the loop iteration its connection completes (a stopping
    # agent's pool connecting under load): the cancellation must reach the caller, not be traded
    # for the connection (asyncio.wait_for on 3.11), or the caller goes on with its RPC.
    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(lambda m, b: asyncio.sleep(0))})
    await listener.start()
    real_open = asyncio.open_connection
    opened: list[asyncio.StreamWriter] = []
    carried_on = False

    async def open_then_get_cancelled(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await real_open(host, port)
        opened.append(writer)
        caller.cancel()  # arrives with the result, before the caller resumes
        return reader, writer

    async def dialler() -> None:
        nonlocal carried_on
        await dial(f"127.0.0.1:{listener.port}", ConnType.RPC)
        await asyncio.sleep(0)
        carried_on = True

    monkeypatch.setattr(transport.asyncio, "open_connection", open_then_get_cancelled)
    caller = asyncio.ensure_future(dialler())
    try:
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert opened and not carried_on
    finally:
        for writer in opened:
            writer.close()
        await listener.stop()


async def test_a_connection_cancelled_as_its_first_byte_arrives_is_not_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The listener stops (cancelling its connections) in the loop iteration a connection's type
    # byte arrives: the connection must end there, not go on to its handler.
    served: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append("rpc")

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: handler})
    await listener.start()
    loop = asyncio.get_running_loop()
    real_recv = loop.sock_recv

    async def recv_then_get_cancelled(sock: Any, n: int) -> bytes:
        data = await real_recv(sock, n)
        for task in listener._conns:
            task.cancel()  # arrives with the byte, before the connection's task resumes
        return data

    monkeypatch.setattr(loop, "sock_recv", recv_then_get_cancelled)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(bytes([ConnType.RPC]))
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the listener
        writer.close()
        assert served == []
    finally:
        await listener.stop()


async def test_send_call_answers_through_its_callback_on_an_open_connection() -> None:
    """`send_call` writes at once on an open connection and hands the answer (or the error) to
    its callback from the connection's reader; with no connection open it sends nothing."""
    release = asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        if method == "boom":
            raise ValueError("no such thing")
        if method == "slow":
            await release.wait()
        return body * 2

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    got: dict[str, asyncio.Future[tuple[Any, BaseException | None]]] = {}

    def answer(name: str) -> Any:
        fut = got[name] = asyncio.get_running_loop().create_future()
        return lambda reply, error: fut.set_result((reply, error))

    try:
        assert pool.send_call(addr, "double", 1, answer("unopened")) is False
        assert not got["unopened"].done()
        assert await pool.call(addr, "double", 2) == 4  # dials
        assert pool.send_call(addr, "slow", 5, answer("slow")) is True
        assert pool.send_call(addr, "double", 21, answer("fast")) is True
        assert pool.send_call(addr, "boom", None, answer("boom")) is True
        assert await asyncio.wait_for(got["fast"], 30) == (42, None)
        reply, error = await asyncio.wait_for(got["boom"], 30)
        assert reply is None and isinstance(error, RemoteError) and "no such thing" in str(error)
        assert not got["slow"].done()  # pipelined: the slow one does not hold the others up
        release.set()
        assert await asyncio.wait_for(got["slow"], 30) == (10, None)
        assert not pool._conns[addr].pending and len(pool._conns) == 1
    finally:
        await pool.close()
        await listener.stop()


async def test_send_call_times_out_and_cancels_the_request_on_the_server() -> None:
    started, ended = asyncio.Event(), asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        if method == "echo":
            return body
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    calls: list[tuple[Any, BaseException | None]] = []
    done = asyncio.Event()

    def record(reply: Any, error: BaseException | None) -> None:
        calls.append((reply, error))
        done.set()

    try:
        assert await pool.call(addr, "echo", 1) == 1
        assert pool.send_call(addr, "park", None, record, timeout_s=0.2) is True
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.wait_for(ended.wait(), 30)  # the server stopped working on it
        assert len(calls) == 1 and calls[0][0] is None and isinstance(calls[0][1], TimeoutError)
        assert not pool._conns[addr].pending
        assert await pool.call(addr, "echo", 7) == 7  # the connection still serves
        assert len(calls) == 1  # called once
    finally:
        await pool.close()
        await listener.stop()


async def test_send_call_reports_a_lost_connection() -> None:
    entered = asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        if method == "echo":
            return body
        entered.set()
        await asyncio.Event().wait()

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    got: asyncio.Future[tuple[Any, BaseException | None]] = asyncio.get_running_loop().create_future()
    try:
        assert await pool.call(addr, "echo", 1) == 1
        assert pool.send_call(addr, "hang", None, lambda r, e: got.set_result((r, e)), timeout_s=60) is True
        await asyncio.wait_for(entered.wait(), 30)
        await listener.stop()
        reply, error = await asyncio.wait_for(got, 30)
        assert reply is None and isinstance(error, (ConnectionError, RemoteError))
    finally:
        await pool.close()
        await listener.stop()


async def test_dispatch_now_answers_requests_without_a_task() -> None:
    """`dispatch_now` is offered each request first: what it takes is answered through its
    callback (body or error), later, in the connection's order of completion; what it declines,
    and a server-only method from a peer that is not a server, go to `dispatch` in a task."""
    taken: dict[int, Any] = {}
    tasks: list[str] = []
    loop = asyncio.get_running_loop()

    def dispatch_now(method: str, body: Any, answer: Any) -> bool:
        if method in ("now", "server-only"):
            taken[body] = answer
            return True
        if method == "now-broken":
            raise RuntimeError("bug before taking it")
        return False

    async def dispatch(method: str, body: Any) -> Any:
        tasks.append(method)
        if method == "server-only":
            return "served"
        return body * 2

    class NotAServer:
        def server_refusal(self, cert: Any) -> str:
            return "not a server certificate"

    handler = rpc_stream_handler(dispatch, NotAServer(), ["server-only"], dispatch_now=dispatch_now)  # type: ignore[arg-type]
    listener = Listener("127.0.0.1", 0, {ConnType.RPC: handler})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    try:
        first = asyncio.ensure_future(pool.call(addr, "now", 1))
        second = asyncio.ensure_future(pool.call(addr, "now", 2))
        assert await pool.call(addr, "double", 21) == 42  # declined: a task answers it
        deadline = loop.time() + 30
        while len(taken) < 2:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        assert not first.done() and not second.done()
        taken[2](["two"], None)  # answered out of order, each to its own call
        assert await second == ["two"]
        taken[1](None, ValueError("refused"))
        with pytest.raises(RemoteError, match="refused"):
            await first
        with pytest.raises(RemoteError, match="bug before taking it"):
            await pool.call(addr, "now-broken", None)
        # A server-only method from a peer that is not a server is refused by the task path,
        # never offered to dispatch_now.
        with pytest.raises(RemoteError, match="servers only"):
            await pool.call(addr, "server-only", 99)
        assert tasks == ["double"] and 99 not in taken
    finally:
        await pool.close()
        await listener.stop()


async def test_answers_reach_a_send_call_callback_from_the_read_not_a_task() -> None:
    """The client hands each answer to its `send_call` callback (or its `call` future) inside
    the transport's read callback: no task is woken to read it."""
    loop = asyncio.get_running_loop()

    async def dispatch(method: str, body: Any) -> Any:
        return body * 3

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    got: asyncio.Future[Any] = loop.create_future()

    def answered(reply: Any, error: BaseException | None) -> None:
        got.set_result((reply, error, asyncio.current_task()))

    try:
        assert await pool.call(addr, "task", 7) == 21  # dials
        assert pool.send_call(addr, "now", 14, answered) is True
        reply, error, task = await asyncio.wait_for(got, 30)
        assert (reply, error) == (42, None)
        assert task is None, "the answer was handed over from a task, not the read callback"
        assert await pool.call(addr, "again", 5) == 15
    finally:
        await pool.close()
        await listener.stop()


async def test_a_server_answering_with_a_request_frame_fails_the_client_s_calls() -> None:
    from proconsul.wire import ProtocolError, Request, encode_request

    async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the call's first bytes
        writer.write(encode_request(Request(1, "nope", None)))
        await writer.drain()
        await reader.read()  # until the client hangs up

    server = Listener("127.0.0.1", 0, {ConnType.RPC: rogue})
    await server.start()
    pool = ConnectionPool()
    try:
        with pytest.raises(ProtocolError, match="request frame"):
            await pool.call(f"127.0.0.1:{server.port}", "anything", None, timeout_s=30)
        assert all(conn.closed for conn in pool._conns.values())
    finally:
        await pool.close()
        await server.stop()


class _RecordingCork:
    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []

    def write(self, data: bytes) -> None:
        self.frames.append(("corked", data))

    def write_now(self, data: bytes) -> None:
        self.frames.append(("now", data))


async def test_the_last_outstanding_task_less_answer_is_written_at_once() -> None:
    """`dispatch_now`'s answers wait for the cork's flush while another request it took is
    unanswered on the connection (answers of one Raft step leave in one write), and the last
    one is written at once, with them; a request it declines counts for nothing."""
    from proconsul.wire import FrameDecoder, Request, decode_message

    answers: dict[int, Any] = {}

    def dispatch_now(method: str, body: Any, answer: Any) -> bool:
        if method != "now":
            return False
        answers[body] = answer
        return True

    cork = _RecordingCork()
    taken = transport._Outstanding()
    offer = transport._offer
    assert offer(dispatch_now, Request(1, "now", 1), cork, taken) is True  # type: ignore[arg-type]
    assert offer(dispatch_now, Request(2, "now", 2), cork, taken) is True  # type: ignore[arg-type]
    assert offer(dispatch_now, Request(3, "task", 3), cork, taken) is False  # type: ignore[arg-type]
    assert taken.count == 2
    answers[2](20, None)
    answers[2](21, None)  # a second answer to one request is ignored
    answers[1](None, ValueError("no"))
    assert [how for how, _ in cork.frames] == ["corked", "now"]
    first, last = (decode_message(FrameDecoder().feed(data)[0]) for _, data in cork.frames)
    assert (first.seq, first.body, first.error) == (2, 20, None)
    assert (last.seq, last.error) == (1, "no")
    assert taken.count == 0
    assert offer(dispatch_now, Request(4, "now", 4), cork, taken) is True  # type: ignore[arg-type]
    answers[4](None, asyncio.CancelledError())  # cancelled: nothing is answered
    assert taken.count == 0 and len(cork.frames) == 2


class _RawClient:
    """A client writing request frames by hand (pipelining as many as it likes) on a served
    connection whose transport the test can look at."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from proconsul.wire import FrameDecoder

        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()

    def send(self, *requests: tuple[int, str, Any]) -> None:
        from proconsul.wire import Request, encode_request

        self.writer.write(b"".join(encode_request(Request(seq, method, body)) for seq, method, body in requests))

    async def answers(self, count: int) -> dict[int, Any]:
        from proconsul.wire import decode_message

        got: dict[int, Any] = {}
        while len(got) < count:
            data = await asyncio.wait_for(self.reader.read(65536), 30)
            assert data, f"connection closed after {len(got)} of {count} answers"
            for payload in self.decoder.feed(data):
                msg = decode_message(payload)
                got[msg.seq] = msg.body if msg.error is None else ("error", msg.error)
        return got


async def _serving(handler: Any) -> tuple[Listener, list[asyncio.Transport]]:
    """A listener serving RPC with `handler`; the list gets each served connection's transport."""
    transports: list[asyncio.Transport] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transports.append(writer.transport)  # type: ignore[arg-type]
        await handler(reader, writer)

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: recording})
    await listener.start()
    return listener, transports


async def _until(condition: Any, what: str) -> None:
    # A short poll: the bound tests wait on one condition per request they pipeline.
    await wait_until(condition, timeout=30, what=what, interval=0.005)


async def test_a_client_pipelining_past_the_bound_is_not_read_until_answers_fall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read back-pressure: with `bound` requests taken by `dispatch_now` and unanswered, the
    server reads no further request (`dispatch_now` sees no more, whatever the client pipelines);
    it reads again only once they have fallen to half the bound, and every request is answered."""
    bound = 4
    monkeypatch.setattr(transport, "_MAX_TAKEN", bound)
    taken: dict[int, Any] = {}
    answered: set[int] = set()

    def dispatch_now(method: str, body: Any, answer: Any) -> bool:
        taken[body] = answer
        return True

    async def dispatch(method: str, body: Any) -> Any:
        raise AssertionError("every request is taken by dispatch_now")

    def answer(n: int) -> None:
        taken[n](n * 10, None)
        answered.add(n)

    listener, transports = await _serving(rpc_stream_handler(dispatch, dispatch_now=dispatch_now))
    reader, writer = await dial(f"127.0.0.1:{listener.port}", ConnType.RPC)
    client = _RawClient(reader, writer)
    try:
        client.send(*((n, "now", n) for n in range(1, 21)))
        await _until(lambda: len(taken) == bound, f"{bound} requests taken")
        await asyncio.sleep(0.05)  # the rest of the pipeline stays unread meanwhile
        assert sorted(taken) == [1, 2, 3, 4]
        answer(1)  # 3 unanswered: above half the bound, still waiting
        await asyncio.sleep(0.05)
        assert sorted(taken) == [1, 2, 3, 4]
        answer(2)  # 2 unanswered: reading goes on, up to the bound again
        await _until(lambda: len(taken) == 6, "reading resumes at half the bound")
        await asyncio.sleep(0.05)
        assert sorted(taken) == [1, 2, 3, 4, 5, 6]
        while len(answered) < 20:
            for n in sorted(set(taken) - answered):
                answer(n)
            await _until(lambda: len(taken) > len(answered) or len(answered) == 20, "more requests are read")
            assert len(taken) - len(answered) <= bound
        assert await client.answers(20) == {n: n * 10 for n in range(1, 21)}
    finally:
        writer.close()
        await listener.stop()


async def test_requests_in_tasks_count_toward_the_bound_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task-served requests in flight have their own (looser) bound: at it, reading pauses;
    as tasks end, the rest is read and served."""
    monkeypatch.setattr(transport, "_MAX_TASKS", 3)
    started: list[int] = []
    release = asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        started.append(body)
        await release.wait()
        return -body

    listener, transports = await _serving(rpc_stream_handler(dispatch))
    reader, writer = await dial(f"127.0.0.1:{listener.port}", ConnType.RPC)
    client = _RawClient(reader, writer)
    try:
        client.send(*((n, "task", n) for n in range(1, 11)))
        await _until(lambda: len(started) == 3, "3 requests in flight")
        await asyncio.sleep(0.05)
        assert started == [1, 2, 3]
        release.set()
        assert await client.answers(10) == {n: -n for n in range(1, 11)}
        assert started == list(range(1, 11))
    finally:
        writer.close()
        await listener.stop()


@pytest.mark.parametrize("hang_up", ["eof", "reset"])
async def test_a_client_hanging_up_at_the_bound_has_its_parked_requests_cancelled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, hang_up: str,
) -> None:
    """At the task bound the serving task still watches the connection: a client that hangs up
    (EOF, or a reset) while its requests are parked there has them cancelled at once, not when
    they end (for a blocking query, minutes later), and the request it pipelined past the bound
    is never served."""
    monkeypatch.setattr(transport, "_MAX_TASKS", 2)
    started: list[int] = []
    cancelled: list[int] = []

    async def dispatch(method: str, body: Any) -> Any:
        started.append(body)
        try:
            await asyncio.Event().wait()  # parked, like a blocking query
        except asyncio.CancelledError:
            cancelled.append(body)
            raise

    listener, _ = await _serving(rpc_stream_handler(dispatch))
    reader, writer = await dial(f"127.0.0.1:{listener.port}", ConnType.RPC)
    try:
        client = _RawClient(reader, writer)
        client.send((1, "park", 1), (2, "park", 2))
        await _until(lambda: started == [1, 2], "two requests parked: the bound")
        client.send((3, "park", 3))
        await writer.drain()
        if hang_up == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        await _until(lambda: sorted(cancelled) == [1, 2], "the parked requests are cancelled")
        assert started == [1, 2]
        assert not [r for r in caplog.records if r.exc_info], "a hang-up is not an error to log"
    finally:
        writer.close()
        await listener.stop()


async def test_a_served_connection_ends_as_before(caplog: pytest.LogCaptureFixture) -> None:
    """EOF in the middle of a frame ends the service quietly; a response frame from the client
    closes the connection with one warning and no traceback; either way the requests in flight in
    tasks are cancelled. Stopping the listener cancels the serving and its tasks."""
    from proconsul.wire import Response, encode_response

    cancelled: list[Any] = []
    started: list[Any] = []

    async def dispatch(method: str, body: Any) -> Any:
        started.append(body)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(body)
            raise

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    addr = f"127.0.0.1:{listener.port}"
    caplog.set_level("DEBUG")
    try:
        reader, writer = await dial(addr, ConnType.RPC)
        client = _RawClient(reader, writer)
        client.send((1, "park", "eof"))
        await _until(lambda: "eof" in started, "the first request is served")
        writer.write(encode_response(Response(9, None, "x"))[:5])  # half a frame, then EOF
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 30) == b""
        await _until(lambda: "eof" in cancelled, "EOF cancels the request in flight")
        writer.close()

        reader, writer = await dial(addr, ConnType.RPC)
        client = _RawClient(reader, writer)
        client.send((1, "park", "rogue"))
        await _until(lambda: "rogue" in started, "the request before the bad frame is served")
        writer.write(encode_response(Response(2, None, "not a request")))
        assert await asyncio.wait_for(reader.read(), 30) == b""
        await _until(lambda: "rogue" in cancelled, "the protocol error cancels the request in flight")
        writer.close()
        assert "client sent a response frame" in caplog.text

        reader, writer = await dial(addr, ConnType.RPC)
        _RawClient(reader, writer).send((1, "park", "stop"))
        await _until(lambda: "stop" in started, "the request is served")
    finally:
        await listener.stop()
    assert "stop" in cancelled, "stopping the listener cancels the serving task's requests"
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.name == "asyncio"], [r.getMessage() for r in caplog.records]


async def test_a_client_pipelining_past_the_bound_fills_no_more_than_the_readers_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the serving task waits at the bound, the unread requests stay in its StreamReader,
    which stops reading the socket at its limit: the server's memory for one connection is
    bounded however much the client sends (the rest waits in the kernel and the client's buffer)."""
    monkeypatch.setattr(transport, "_MAX_TAKEN", 2)
    taken: dict[int, Any] = {}

    def dispatch_now(method: str, body: Any, answer: Any) -> bool:
        taken[body[0]] = answer
        return True

    async def dispatch(method: str, body: Any) -> Any:
        raise AssertionError("every request is taken by dispatch_now")

    listener, transports = await _serving(rpc_stream_handler(dispatch, dispatch_now=dispatch_now))
    reader, writer = await dial(f"127.0.0.1:{listener.port}", ConnType.RPC)
    client = _RawClient(reader, writer)
    filler = b"x" * 4096
    try:
        client.send(*((n, "now", [n, filler]) for n in range(1, 401)))  # ~1.6 MB pipelined
        await _until(lambda: len(taken) == 2 and transports and not transports[0].is_reading(),
                     "the server stops reading the socket")
        assert sorted(taken) == [1, 2]
        for n in range(1, 401):
            await _until(lambda n=n: n in taken, f"request {n} is read once room is made")
            taken[n](n, None)
        assert await client.answers(400) == {n: n for n in range(1, 401)}
        # The chunk read while waiting at the bound is decoded after the requests before it.
        assert list(taken) == list(range(1, 401))
    finally:
        writer.close()
        await listener.stop()
