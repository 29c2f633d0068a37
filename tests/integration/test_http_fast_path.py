"""The HTTP fast path (http/fast.py): the same answers as the normal path, driven by real clients.

1. An agent runs in this process with a second HTTP listener whose fast path is off; a table of
   requests goes to both over keep-alive raw sockets, and each answer (status line, every header
   but Date, body) must be the same. The table also says which requests the fast path must answer
   itself (counted), so a fast path that silently stops working fails too.
2. A real agent process: py-consul (requests keeps connections alive, so its calls take the fast
   path) mixed with requests that need the normal path on the same connection; a pipeline of fast
   and normal requests in one write, answered in order; PUT bodies and request heads split across
   TCP segments on a keep-alive connection. The api.http metric counts fast answers (part 1).
3. An HTTP worker (http/workers/) run in this process against a server agent with
   `http_workers = 2`: the same table through the worker's fast path (answered from its replica)
   equals the agent's normal path; default reads park on the barrier and see every write the
   agent acknowledged before them, in order on a pipelined connection; blocking reads still wake.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
from cluster_helpers import free_subnet
from helpers import AgentProcess, free_port, wait_for
from inprocess_agent import start_agent_with_normal_listener
from proconsul import config as configmod
from proconsul.agent.agent import Agent
from proconsul.http import fast as fast_module
from proconsul.http.appkeys import RESPONSE_HEADERS
from proconsul.http.fast import AgentReads
from proconsul.http.server import HTTPServer
from proconsul.http.workers.process import Worker
from proconsul.rpc_api import WriteMeta

# ------------------------------------------------------------------------------------ raw HTTP


class Conn:
    """One keep-alive HTTP/1.1 connection over a raw socket, reading Content-Length answers."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}"
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def request_bytes(self, method: str, path: str, body: bytes | None = None, headers: str = "") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{headers}"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + (body or b"")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed; buffered {self.buf!r}")
        self.buf += chunk

    def response(self) -> tuple[bytes, list[tuple[str, str]], bytes]:
        """(status line, headers in order, body) of the next answer on the connection."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        length = int(next(v for k, v in headers if k.lower() == "content-length"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return lines[0].encode(), headers, body

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: str = "") -> tuple[bytes, list[tuple[str, str]], bytes]:
        self.sock.sendall(self.request_bytes(method, path, body, headers))
        return self.response()


def _status(answer: tuple[bytes, list[tuple[str, str]], bytes]) -> int:
    return int(answer[0].split()[1])


# ---------------------------------------------------------- 1. fast and normal path side by side

# (method, path, body, extra headers, answered by the fast path?)
READS: list[tuple[str, str, bytes | None, str, bool]] = [
    ("GET", "/v1/kv/cmp/a", None, "", True),
    ("GET", "/v1/kv/cmp/a?raw", None, "", True),
    ("GET", "/v1/kv/cmp/a?raw=false", None, "", True),
    ("GET", "/v1/kv/cmp/a?stale", None, "", True),
    # ?consistent: a dev agent (one voter) answers at once; a Raft leader after ReadIndex (below).
    ("GET", "/v1/kv/cmp/a?consistent", None, "", True),
    ("GET", "/v1/kv/cmp/a?consistent&raw", None, "", True),
    ("GET", "/v1/kv/cmp/a?consistent=false", None, "", True),
    ("GET", "/v1/kv/cmp?recurse&consistent", None, "", True),
    ("GET", "/v1/kv/cmp/?keys&consistent=1", None, "", True),
    ("GET", "/v1/kv/cmp/missing?consistent", None, "", True),
    ("GET", "/v1/kv/cmp/a?dc=dc1", None, "", True),
    ("GET", "/v1/kv/cmp/empty?raw", None, "", True),
    ("GET", "/v1/kv/cmp/missing", None, "", True),
    ("GET", "/v1/kv/cmp?recurse", None, "", True),
    ("GET", "/v1/kv/cmp?recurse=0", None, "", True),
    ("GET", "/v1/kv/cmp/?keys", None, "", True),
    ("GET", "/v1/kv/cmp/?keys&separator=/", None, "", True),
    ("GET", "/v1/kv/cmp/?keys&recurse", None, "", True),
    ("GET", "/v1/kv/nothing/?keys", None, "", True),
    ("GET", "/v1/kv/nothing?recurse", None, "", True),
    ("GET", "/v1/kv/cmp//a", None, "", True),
    ("GET", "/v1/kv/cmp/a?", None, "", True),
    ("GET", "/v1/kv/cmp/a", None, "Connection: keep-alive\r\n", True),
    ("GET", "/v1/kv/cmp/a+b", None, "", True),
    ("GET", "/v1/kv/cmp/a;b", None, "", True),
    ("GET", "/v1/kv/cmp/a#frag", None, "", False),
    ("GET", "/v1/health/service/consul", None, "", True),
    ("GET", "/v1/health/service/consul?passing", None, "", True),
    ("GET", "/v1/health/service/consul?passing=false&stale", None, "", True),
    ("GET", "/v1/health/service/web?passing", None, "", True),
    ("GET", "/v1/health/service/web", None, "", True),
    ("GET", "/v1/health/service/consul?tag=nope", None, "", True),
    ("GET", "/v1/health/service/nothing", None, "", True),
    ("GET", "/v1/catalog/service/consul", None, "", True),
    ("GET", "/v1/catalog/service/web?tag=v1", None, "", True),
    ("GET", "/v1/catalog/service/web?tag=v1&tag=v2", None, "", True),
    ("GET", "/v1/catalog/service/nothing?stale", None, "", True),
    # The normal path's: parameters the fast path leaves alone, errors, tokens, odd paths.
    ("GET", "/v1/kv/cmp/a?pretty", None, "", False),
    ("GET", "/v1/kv/cmp/a?index=1", None, "", False),
    ("GET", "/v1/kv/cmp/a?stale&consistent", None, "", False),
    ("GET", "/v1/kv/cmp/a?consistent&index=1", None, "", False),
    ("GET", "/v1/health/service/consul?consistent", None, "", False),
    ("GET", "/v1/kv/cmp/a?dc=elsewhere", None, "", False),
    ("GET", "/v1/kv/cmp/a?index=x", None, "", False),
    ("GET", "/v1/kv/cmp/sp%20ace", None, "", False),
    ("GET", "/v1/kv/cmp/../cmp/a", None, "", False),
    ("GET", "/v1/kv/cmp/a", None, "X-Consul-Token: anything\r\n", False),
    ("GET", "/v1/kv/", None, "", False),
    ("GET", "/v1/health/service/consul?filter=Service.Port%20%3D%3D%208300", None, "", False),
    ("GET", "/v1/health/service/consul?near=_agent", None, "", False),
    ("GET", "/v1/catalog/service/consul?node-meta=a:b", None, "", False),
    ("GET", "/v1/catalog/service/", None, "", False),
    ("GET", "/v1/agent/self/../members", None, "", False),
]

# Writes change the index, so their X-Consul-Index is compared with the store's after each.
WRITES: list[tuple[str, str, bytes | None, str, bool]] = [
    ("PUT", "/v1/kv/{c}/w", b"plain", "", True),
    ("PUT", "/v1/kv/{c}/w?flags=42", b"with flags", "", True),
    ("PUT", "/v1/kv/{c}/w?flags=", b"empty flags", "", True),
    ("PUT", "/v1/kv/{c}/w?cas=1", b"cas that fails", "", True),
    ("PUT", "/v1/kv/{c}/new?cas=0", b"cas create", "", True),
    ("PUT", "/v1/kv/{c}/new?cas=0", b"cas create again", "", True),
    ("PUT", "/v1/kv/{c}/w?dc=dc1", b"", "", True),
    ("PUT", "/v1/kv/{c}/w", None, "", True),
    ("PUT", "/v1/kv/{c}/w?flags=x", b"v", "", False),
    ("PUT", "/v1/kv/{c}/w?flags=18446744073709551616", b"v", "", False),
    ("PUT", "/v1/kv/{c}/w?cas=-1", b"v", "", False),
    ("PUT", "/v1/kv/{c}/w?recurse", b"v", "", False),
    ("PUT", "/v1/kv/", b"v", "", False),
    ("PUT", "/v1/kv/{c}/w", b"x" * 65, "", False),  # over kv_max_value_size: 413
    ("PUT", "/v1/kv/{c}/w?acquire=nosuchsession", b"v", "", False),
    ("PUT", "/v1/kv/{c}/w?dc=elsewhere", b"v", "", False),
    ("PUT", "/v1/kv/{c}/w", b"v", "X-Consul-Token: anything\r\n", False),
    ("POST", "/v1/kv/{c}/w", b"v", "", False),
]


async def _start_agent(tmp: Path) -> tuple[Agent, HTTPServer]:
    return await start_agent_with_normal_listener(
        tmp, "fast-test",
        'http_config { response_headers = { "X-Extra" = "yes" } }\n'
        "limits { kv_max_value_size = 64 }\n"
        'services = [{ name = "web", port = 80, tags = ["v1", "v2"], checks = [{ ttl = "60s" }] }]\n',
    )


def _comparable(answer: tuple[bytes, list[tuple[str, str]], bytes]) -> tuple[bytes, list[tuple[str, str]], bytes]:
    status, headers, body = answer
    return status, [(k, v) for k, v in headers if k.lower() != "date"], body


def _check_pipeline(conn: Conn, steps: list[tuple[str, str, bytes | None]], key_path: str) -> None:
    """Send `steps` in one pipeline; every answer is a 200 in order, and every read of `key_path`
    (raw, or `?pretty` JSON) shows the write just before it in the pipeline, never an older one."""
    conn.sock.sendall(b"".join(conn.request_bytes(m, p, b) for m, p, b in steps))
    last = b""
    for method, path, body in steps:
        status, _, payload = conn.response()
        assert _status((status, [], b"")) == 200, (method, path, payload)
        if method == "PUT":
            assert payload == b"true"
            last = body or b""
        elif path.startswith(key_path) and path.endswith("?pretty"):
            assert base64.b64decode(eval_json(payload)[0]["Value"]) == last, (path, payload, last)
        elif path.startswith(key_path):
            assert payload == last, (path, payload, last)


def _put_comparison_keys(conn: Conn) -> None:
    """The keys the READS table reads, written through the normal path."""
    for key, value in (("cmp/a", b"hello"), ("cmp/b/c", b"nested"), ("cmp/empty", b"")):
        assert _status(conn.call("PUT", f"/v1/kv/{key}", value)) == 200


def _compare_writes(fast: Conn, slow: Conn, routes: Any, agent: Agent) -> None:
    """The WRITES table through both listeners: the same answers, X-Consul-Index the store's
    index at the write (between its readings before and after the call)."""
    for method, template, body, headers, expect_fast in WRITES:
        answers = []
        for conn, name in ((fast, "fast"), (slow, "slow")):
            path = template.format(c=name)
            before = routes.answered
            # The store's index around the call: other writes (a member's own registration,
            # the leader's housekeeping) may move it right after the answer, so the answer's
            # index is checked to lie between the two readings, not to equal the later one.
            index_before = max(agent.server.store.last_index, 1)
            status, hdrs, payload = conn.call(method, path, body, headers)
            index_after = max(agent.server.store.last_index, 1)
            assert (routes.answered - before == 1) == (expect_fast and name == "fast"), (method, path)
            index = dict(hdrs).get("X-Consul-Index")
            if index is not None:
                assert index_before <= int(index) <= index_after, (method, path, index, index_before, index_after)
            if payload == b"true":
                # What the PUT stored is what the normal path reads back, whole.
                key = path.split("?")[0]
                assert slow.call("GET", key + "?raw")[2] == (body or b""), path
            answers.append(_comparable((status, [(k, v) for k, v in hdrs if k != "X-Consul-Index"], payload)))
        assert answers[0] == answers[1], (method, template)


async def test_put_answers_built_from_the_cached_end_match_the_general_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A PUT's `true`/`false` answer comes from an end cached per Date and per refresh
    # (`FastRoutes.put_ok`): it must be `response`'s answer after a new second and after a
    # reload changed the configured response headers.
    agent, normal = await _start_agent(tmp_path)
    try:
        routes = agent.http.fast_routes
        assert routes is not None
        date = ["Fri, 04 Dec 2026 12:00:00 GMT"]
        monkeypatch.setattr(fast_module, "rfc822_formatted_time", lambda: date[0])

        def check(index: int) -> None:
            for ok, body in ((True, b"true"), (False, b"false")):
                expected = routes.response(200, f"X-Consul-Index: {index}\r\n".encode() + fast_module.JSON_HEADER, body)
                assert routes.put_ok(index, ok) == expected
                assert routes.put_answer(None, WriteMeta(index), ok, None) == expected  # type: ignore[arg-type]

        check(1)
        check(123456789)
        date[0] = "Fri, 04 Dec 2026 12:00:01 GMT"  # a new string: the end is rebuilt
        check(7)
        assert b"12:00:01" in routes.put_ok(7, True)
        headers = routes.app[RESPONSE_HEADERS]
        headers["X-Reloaded"] = "1"
        try:
            routes.refresh()
            assert b"X-Reloaded: 1\r\n" in routes.put_ok(8, False)
            check(8)
        finally:
            del headers["X-Reloaded"]
            routes.refresh()
    finally:
        await normal.stop()
        await agent.stop()


async def test_fast_path_answers_like_the_normal_path(tmp_path: Path) -> None:
    agent, normal = await _start_agent(tmp_path)
    try:
        fast_addr, normal_addr = agent.http.bound[0], normal.bound[0]
        routes = agent.http.fast_routes
        assert routes is not None and normal.fast_routes is None

        def run() -> None:
            fast, slow = Conn(*fast_addr), Conn(*normal_addr)
            try:
                _put_comparison_keys(slow)
                for method, path, body, headers, expect_fast in READS:
                    before = routes.answered
                    got_fast = _comparable(fast.call(method, path, body, headers))
                    assert (routes.answered - before == 1) == expect_fast, (method, path)
                    got_normal = _comparable(slow.call(method, path, body, headers))
                    assert got_fast == got_normal, (method, path)
                _compare_writes(fast, slow, routes, agent)
                # Fast answers are counted in the api.http timer under their route, as before.
                series = routes.metrics.route_series("GET", "/v1/kv/")._series
                before = series.count
                for _ in range(5):
                    assert _status(fast.call("GET", "/v1/kv/cmp/a")) == 200
                assert series.count == before + 5
            finally:
                fast.close()
                slow.close()

        await asyncio.to_thread(run)
    finally:
        await normal.stop()
        await agent.stop()


async def test_plain_puts_read_from_their_bytes_answer_like_the_normal_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a fresh connection each PUT of the table arrives as one chunk: the fast ones are read
    # from their bytes without aiohttp's parser (`plain_put`, `put_plain`), the others are
    # parsed and answered by the normal path; every answer is the normal path's.
    agent, normal = await _start_agent(tmp_path)
    taken: list[str] = []
    real = fast_module.FastRequestHandler.put_plain

    def spy(self: Any, target: str, body: bytes) -> bool:
        ok = real(self, target, body)
        if ok:
            taken.append(target)
        return ok

    monkeypatch.setattr(fast_module.FastRequestHandler, "put_plain", spy)
    try:
        fast_addr, normal_addr = agent.http.bound[0], normal.bound[0]
        routes = agent.http.fast_routes
        assert routes is not None

        def run() -> None:
            fast, slow = Conn(*fast_addr), Conn(*normal_addr)
            try:
                _compare_writes(fast, slow, routes, agent)
            finally:
                fast.close()
                slow.close()

        await asyncio.to_thread(run)
        plain = [t.format(c="fast") for m, t, _, h, f in WRITES if m == "PUT" and f and not h]
        assert taken == plain
    finally:
        await normal.stop()
        await agent.stop()


async def test_the_rest_of_a_head_that_looks_like_a_plain_put_is_never_read_as_one(tmp_path: Path) -> None:
    # A request head that arrives in two pieces leaves aiohttp's parser holding its first piece:
    # the second is the parser's, even when it is, byte for byte, a whole plain PUT.
    agent, normal = await _start_agent(tmp_path)
    try:
        addr = agent.http.bound[0]
        routes = agent.http.fast_routes
        assert routes is not None

        def run() -> None:
            conn = Conn(*addr)
            try:
                first = b"PUT /v1/kv/outer HTTP/1.1\r\nX-Note: "
                second = conn.request_bytes("PUT", "/v1/kv/smuggled", b"x")
                conn.sock.sendall(first)
                time.sleep(0.1)  # the two pieces arrive apart (not a timing assertion)
                conn.sock.sendall(second)
                status, _, payload = conn.response()
                assert (status, payload) == (b"HTTP/1.1 200 OK", b"true")
                assert conn.call("GET", "/v1/kv/outer?raw")[2] == b"x"
                assert _status(conn.call("GET", "/v1/kv/smuggled")) == 404
                before = routes.answered
                assert conn.call("PUT", "/v1/kv/after", b"v")[2] == b"true"
                assert routes.answered == before + 1  # the fast path, through the parser
            finally:
                conn.close()

        await asyncio.to_thread(run)
    finally:
        await normal.stop()
        await agent.stop()


async def test_a_closed_connection_is_freed_by_reference_counting(tmp_path: Path) -> None:
    """A fast-path connection that closes leaves no cycle behind: its handler is freed at once,
    without the cyclic collector (whose complete scans pause a big server; docs/PERFORMANCE.md)."""
    from proconsul.http.fast import FastRequestHandler

    def handlers() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, FastRequestHandler))

    agent, normal = await _start_agent(tmp_path)
    gc.collect()
    gc.disable()
    try:
        fast_addr = agent.http.bound[0]
        before = handlers()

        def run() -> None:
            conns = [Conn(*fast_addr) for _ in range(20)]
            for conn in conns:
                assert _status(conn.call("GET", "/v1/kv/nothing-here")) == 404
                assert _status(conn.call("PUT", "/v1/kv/freed", b"v")) == 200
            for conn in conns:
                conn.close()

        await asyncio.to_thread(run)
        deadline = asyncio.get_running_loop().time() + 30
        while handlers() > before:
            assert asyncio.get_running_loop().time() < deadline, f"{handlers() - before} handlers still alive"
            await asyncio.sleep(0.05)
    finally:
        gc.enable()
        await normal.stop()
        await agent.stop()


class HeldReadIndex:
    """A Raft leader's ReadIndex (`RaftLog.read_barrier`) given to the dev agent's fast path (whose
    single voter needs none): the reads' callbacks wait here until the test confirms or fails the
    round."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: list[Any] = []

    def read_barrier(self, done: Any) -> None:
        self.waiting.append(done)

    def finish(self, exc: BaseException | None) -> None:
        """From the test's thread: answer every read waiting now (on the agent's loop)."""
        def run() -> None:
            waiting, self.waiting = self.waiting, []
            for done in waiting:
                done(exc)

        self.loop.call_soon_threadsafe(run)


async def test_consistent_reads_park_on_read_index_and_are_answered_like_the_normal_path(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With a Raft leader's ReadIndex, a ?consistent read is parked on its connection (no task)
    until the round confirms, then answered from the store as the normal path answers it; the
    requests behind it on the connection wait, in order; a failed round sends the read to the
    normal path (which runs ReadIndex itself)."""
    agent, normal = await _start_agent(tmp_path)
    held = HeldReadIndex(asyncio.get_running_loop())
    try:
        fast_addr, normal_addr = agent.http.bound[0], normal.bound[0]
        routes = agent.http.fast_routes
        assert routes is not None and agent.rpc_server is not None
        routes.reads = AgentReads(agent.rpc_server, held)  # as the agent builds it on a Raft server

        def run() -> None:
            fast, slow = Conn(*fast_addr), Conn(*normal_addr)
            try:
                _put_comparison_keys(slow)
                for path in ("/v1/kv/cmp/a?consistent", "/v1/kv/cmp?recurse&consistent", "/v1/kv/cmp/missing?consistent"):
                    before = routes.answered
                    fast.sock.sendall(fast.request_bytes("GET", path) + fast.request_bytes("GET", "/v1/kv/cmp/a?raw"))
                    wait_for(lambda: len(held.waiting) == 1, what="the read parked on ReadIndex")
                    # A write acknowledged while the read waits: the read, answered later, sees it.
                    assert _status(slow.call("PUT", "/v1/kv/cmp/a", b"while-parked")) == 200
                    assert routes.answered == before  # neither the parked read nor the one behind it
                    held.finish(None)
                    got = _comparable(fast.response())
                    assert _comparable(fast.response())[2] == b"while-parked"
                    assert routes.answered == before + 2, path
                    assert got == _comparable(slow.call("GET", path)), path
                    assert ("X-Consul-Effective-Consistency", "consistent") in got[1]
                    assert _status(slow.call("PUT", "/v1/kv/cmp/a", b"hello")) == 200
                # A failed round: the normal path answers (the dev agent's own ReadIndex passes).
                before = routes.answered
                fast.sock.sendall(fast.request_bytes("GET", "/v1/kv/cmp/a?consistent&raw"))
                wait_for(lambda: len(held.waiting) == 1, what="the read parked on ReadIndex")
                held.finish(RuntimeError("leadership lost"))
                status, headers, body = fast.response()
                assert (_status((status, [], b"")), body) == (200, b"hello")
                assert routes.answered == before and ("X-Consul-Effective-Consistency", "consistent") in headers
                # A client that hangs up while its read is parked: the round's answer finds the
                # connection gone, and the agent goes on answering.
                gone = Conn(*fast_addr)
                gone.sock.sendall(gone.request_bytes("GET", "/v1/kv/cmp/a?consistent"))
                wait_for(lambda: len(held.waiting) == 1, what="the read parked on ReadIndex")
                gone.close()
                held.finish(None)
                wait_for(lambda: not held.waiting, what="the round answered")
                assert _status(fast.call("GET", "/v1/kv/cmp/a")) == 200
                assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
                # Pipelined ?consistent reads and writes: each read shows the write before it.
                steps: list[tuple[str, str, bytes | None]] = []
                for i in range(10):
                    steps += [("PUT", "/v1/kv/pipe/c", f"v{i}".encode()), ("GET", "/v1/kv/pipe/c?consistent&raw", None)]
                fast.sock.sendall(b"".join(fast.request_bytes(m, p, b) for m, p, b in steps))
                last = b""
                for method, _, body in steps:
                    if method == "GET":
                        wait_for(lambda: held.waiting, what="the next read parked")
                        held.finish(None)
                    status, _, payload = fast.response()
                    assert _status((status, [], b"")) == 200
                    if method == "PUT":
                        last = body or b""
                    else:
                        assert payload == last
            finally:
                fast.close()
                slow.close()

        await asyncio.to_thread(run)
    finally:
        await normal.stop()
        await agent.stop()


async def test_a_raft_leader_answers_consistent_reads_after_read_index(tmp_path: Path) -> None:
    """A (one-voter) Raft server: ?consistent reads go through the real ReadIndex barrier
    (`RaftLog.read_barrier`) and are answered by the fast path, as the normal path answers them;
    its PUTs are proposed without a task (`Server.write_now`) and answered as the normal path
    answers them (the WRITES table, with the same limits as the dev agent's)."""
    ip = f"{free_subnet(1)}.1"
    flags = configmod.agent_flagset().parse([
        "-server", "-bootstrap-expect=1", f"-data-dir={tmp_path / 'data'}", f"-http-port={free_port()}",
        f"-dns-port={free_port()}", f"-serf-lan-port={free_port()}", f"-serf-wan-port={free_port()}",
        f"-client={ip}", f"-bind={ip}", "-node=raft-fast", "-hcl=performance { raft_multiplier = 1 }",
        "-hcl=limits { kv_max_value_size = 64 }",
    ])  # fmt: skip
    agent = Agent(configmod.load_from(flags).config, flags)
    await agent.start()
    normal = HTTPServer(agent, [ip], free_port(), reads=agent.fast_reads)
    normal.fast_path = False
    try:
        await normal.start()
        async with asyncio.timeout(60):
            while not (agent.server.consensus.is_leader() and agent.server.consensus.ready_for_reads()):
                await asyncio.sleep(0.02)
        routes = agent.http.fast_routes
        assert routes is not None
        raft = agent.server.consensus.raft  # type: ignore[attr-defined]
        fast_addr, normal_addr = agent.http.bound[0], normal.bound[0]
        proposed_now: list[bool] = []
        write_now = agent.server.write_now

        def counted_write_now(command: Any, done: Any) -> bool:
            proposed_now.append(write_now(command, done))
            return proposed_now[-1]

        agent.server.write_now = counted_write_now  # type: ignore[method-assign]

        def run() -> None:
            fast, slow = Conn(*fast_addr), Conn(*normal_addr)
            try:
                _put_comparison_keys(slow)
                for path in ("/v1/kv/cmp/a?consistent", "/v1/kv/cmp/a?consistent&raw", "/v1/kv/cmp?recurse&consistent",
                             "/v1/kv/cmp/missing?consistent"):
                    before, rounds = routes.answered, raft._read_seq
                    got = _comparable(fast.call("GET", path))
                    assert routes.answered == before + 1 and raft._read_seq > rounds, path
                    assert got == _comparable(slow.call("GET", path)), path
                    assert ("X-Consul-Effective-Consistency", "consistent") in got[1]
                steps: list[tuple[str, str, bytes | None]] = []
                for i in range(20):
                    steps += [("PUT", "/v1/kv/pipe/c", f"v{i}".encode()), ("GET", "/v1/kv/pipe/c?consistent&raw", None)]
                _check_pipeline(fast, steps, "/v1/kv/pipe/c")
                assert proposed_now == [True] * 20
                proposed_now.clear()
                _compare_writes(fast, slow, routes, agent)
                # Every PUT the fast path took was proposed by write_now, none by a task.
                assert proposed_now == [True] * sum(1 for w in WRITES if w[4])
            finally:
                fast.close()
                slow.close()

        await asyncio.to_thread(run)
    finally:
        await normal.stop()
        await agent.stop()


async def test_a_raft_follower_forwards_fast_path_puts_and_answers_like_the_normal_path(tmp_path: Path) -> None:
    """Two Raft servers in this process: PUTs to the follower's fast path are forwarded
    without a task (`Server.write_now` -> `WriteForwarder.submit_now`) and answered as the
    follower's normal path answers them (the WRITES table; X-Consul-Index is the leader's)."""
    prefix = free_subnet(2)
    agents: list[Agent] = []
    for i in (1, 2):
        ip = f"{prefix}.{i}"
        flags = configmod.agent_flagset().parse([
            "-server", "-bootstrap-expect=2", f"-data-dir={tmp_path / f'data{i}'}", f"-http-port={free_port()}",
            "-dns-port=-1", f"-client={ip}", f"-bind={ip}", f"-node=fwd-{i}", f"-retry-join={prefix}.1",
            "-retry-interval=1s", "-hcl=performance { raft_multiplier = 1 }", "-hcl=limits { kv_max_value_size = 64 }",
        ])  # fmt: skip
        agents.append(Agent(configmod.load_from(flags).config, flags))
    normal: HTTPServer | None = None
    try:
        for a in agents:
            await a.start()
        async with asyncio.timeout(60):
            while True:
                leaders = [a for a in agents if a.server.consensus.is_leader() and a.server.consensus.ready_for_reads()]
                if leaders and all(a.server.consensus.leader_address() for a in agents):
                    break
                await asyncio.sleep(0.05)
        leader = leaders[0]
        follower = next(a for a in agents if a is not leader)
        normal = HTTPServer(follower, [follower.http.bound[0][0]], free_port(), reads=follower.fast_reads)
        normal.fast_path = False
        await normal.start()
        routes = follower.http.fast_routes
        assert routes is not None
        forwarded_now: list[bool] = []
        write_now = follower.server.write_now

        def counted_write_now(command: Any, done: Any) -> bool:
            forwarded_now.append(write_now(command, done))
            return forwarded_now[-1]

        follower.server.write_now = counted_write_now  # type: ignore[method-assign]

        def run() -> None:
            fast, slow = Conn(*follower.http.bound[0]), Conn(*normal.bound[0])
            try:
                # Pipelined PUTs, each answered in order (a default read on a follower takes the
                # normal path, and so would everything behind it: it comes last).
                steps: list[tuple[str, str, bytes | None]] = [("PUT", "/v1/kv/pipe/f", f"v{i}".encode()) for i in range(10)]
                _check_pipeline(fast, [*steps, ("GET", "/v1/kv/pipe/f?raw", None)], "/v1/kv/pipe/f")
                assert forwarded_now == [True] * 10
                forwarded_now.clear()
                _compare_writes(fast, slow, routes, leader)
                # Every PUT the fast path took was forwarded by write_now, none by a task.
                assert forwarded_now == [True] * sum(1 for w in WRITES if w[4])
            finally:
                fast.close()
                slow.close()

        await asyncio.to_thread(run)
    finally:
        if normal is not None:
            await normal.stop()
        for a in agents:
            await a.stop()


# ------------------------------------------------------------------- 2. a real agent process


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess(ip="127.0.0.1", node="fast-path")
    a.start()
    try:
        yield a
    finally:
        a.stop()


def _conn(agent: AgentProcess) -> Conn:
    host, port = agent.addr.rsplit(":", 1)
    return Conn(host, int(port))


def test_py_consul_on_keep_alive_connections(agent: AgentProcess) -> None:
    host, port = agent.addr.rsplit(":", 1)
    c = consul.Consul(host=host, port=int(port))
    assert c.kv.put("pc/a", "one", flags=7) is True
    index, entry = c.kv.get("pc/a")
    assert entry["Value"] == b"one" and entry["Flags"] == 7 and int(index) >= entry["ModifyIndex"]
    assert c.kv.put("pc/a", "two", cas=entry["ModifyIndex"]) is True
    assert c.kv.put("pc/a", "three", cas=entry["ModifyIndex"]) is False  # the index moved on
    assert c.kv.put("pc/b/c", "x" * 5000) is True
    _, entries = c.kv.get("pc", recurse=True)
    assert [(e["Key"], e["Value"]) for e in entries] == [("pc/a", b"two"), ("pc/b/c", b"x" * 5000)]
    _, keys = c.kv.get("pc/", keys=True, separator="/")
    assert keys == ["pc/a", "pc/b/"]
    # A normal-path request (a blocking query) on the same session, then fast ones again.
    index, entry = c.kv.get("pc/a")
    again, entry = c.kv.get("pc/a", index=int(index) - 1, wait="1s")
    assert again == index and entry["Value"] == b"two"
    assert c.kv.get("pc/missing")[1] is None
    _, nodes = c.health.service("consul", passing=True)
    assert [n["Service"]["Service"] for n in nodes] == ["consul"]
    _, nodes = c.catalog.service("consul")
    assert [n["ServiceName"] for n in nodes] == ["consul"]
    assert c.agent.self()["Config"]["NodeName"] == "fast-path"
    assert c.kv.get("pc/a")[1]["Value"] == b"two"


def test_pipelined_requests_are_answered_in_order(agent: AgentProcess) -> None:
    conn = _conn(agent)
    try:
        steps: list[tuple[str, str, bytes | None]] = []
        for i in range(20):
            steps += [("PUT", "/v1/kv/pipe/k", f"v{i}".encode()), ("GET", "/v1/kv/pipe/k?raw", None)]
            if i % 5 == 0:
                steps += [("GET", "/v1/agent/members", None), ("GET", "/v1/kv/pipe/k?pretty", None)]
            if i % 7 == 0:
                steps += [("DELETE", "/v1/kv/pipe/other", None), ("GET", "/v1/health/service/consul", None)]
        _check_pipeline(conn, steps, "/v1/kv/pipe/k")
    finally:
        conn.close()


@pytest.mark.parametrize("normal_every", [0, 20])
def test_long_pipelines_past_the_parser_queue_are_all_answered(agent: AgentProcess, normal_every: int) -> None:
    """aiohttp's parser hands out at most 32 unanswered messages and keeps the rest: once the fast
    path (and the normal path, when a pipeline mixes them) has answered those, it parses on."""
    conn = _conn(agent)
    try:
        paths = [("/v1/agent/members" if normal_every and i % normal_every == normal_every - 1 else f"/v1/kv/lp/{i}")
                 for i in range(100)]
        conn.sock.sendall(b"".join(conn.request_bytes("GET", p) for p in paths))
        statuses = [_status(conn.response()) for _ in paths]
        assert statuses == [200 if p == "/v1/agent/members" else 404 for p in paths]
    finally:
        conn.close()


def eval_json(body: bytes) -> list[dict[str, str]]:
    return json.loads(body)  # type: ignore[no-any-return]


def test_bodies_and_heads_split_across_segments_on_a_kept_connection(agent: AgentProcess) -> None:
    conn = _conn(agent)
    try:
        value = bytes(range(40, 120)) * 20
        for cut in (0, 1, len(value) // 2, len(value) - 1):
            request = conn.request_bytes("PUT", f"/v1/kv/split/{cut}", value)
            head_end = request.index(b"\r\n\r\n") + 4
            for piece in (request[:7], request[7:head_end + cut], request[head_end + cut:]):
                if piece:
                    conn.sock.sendall(piece)
                    time.sleep(0.02)  # each piece arrives on its own (not a timing assertion)
            status, _, payload = conn.response()
            assert (status, payload) == (b"HTTP/1.1 200 OK", b"true"), cut
            assert conn.call("GET", f"/v1/kv/split/{cut}?raw")[2] == value, cut
    finally:
        conn.close()


# ------------------------------------------------- 3. the same answers from an HTTP worker's replica


def _worker_comparable(answer: tuple[bytes, list[tuple[str, str]], bytes]) -> tuple[bytes, list[tuple[str, str]], bytes]:
    """Everything but Date and the worker's own X-Proconsul-Worker (tests tell processes apart by it)."""
    status, headers, body = _comparable(answer)
    return status, [(k, v) for k, v in headers if k != "X-Proconsul-Worker"], body


async def test_a_workers_fast_path_answers_like_the_agent(tmp_path: Path) -> None:
    ip = f"{free_subnet(1)}.1"
    conf = tmp_path / "worker.hcl"
    conf.write_text(
        'http_workers = 2\nperformance { raft_multiplier = 1 }\n'
        'http_config { response_headers = { "X-Extra" = "yes" } }\n'
        'services = [{ name = "web", port = 80, tags = ["v1", "v2"], checks = [{ ttl = "60s" }] }]\n'
    )
    flags = configmod.agent_flagset().parse([
        "-server", "-bootstrap-expect=1", f"-data-dir={tmp_path / 'data'}", f"-http-port={free_port()}",
        f"-dns-port={free_port()}", f"-serf-lan-port={free_port()}", f"-serf-wan-port={free_port()}",
        f"-client={ip}", f"-bind={ip}", "-node=worker-fast", f"-config-file={conf}",
    ])  # fmt: skip
    agent = Agent(configmod.load_from(flags).config, flags)
    assert agent.http_workers is not None
    agent.http_workers.count = 0  # no worker process: this test's own Worker is the worker
    await agent.start()
    normal = HTTPServer(agent, [ip], free_port(), reads=agent.fast_reads)
    normal.fast_path = False
    worker: Worker | None = None
    try:
        await normal.start()
        worker = Worker(agent.http_workers.control, agent.http_workers.forward)
        worker.follow(lambda: None)
        async with asyncio.timeout(60):
            await worker.replica.hello_seen.wait()
            listener = socket.create_server((ip, 0))
            await worker.listen([listener])
            while not (worker.replica.serving and worker.replica.leader and worker.replica.ready):
                await asyncio.sleep(0.02)
        routes = worker.routes
        assert routes is not None and routes.on
        worker_addr, normal_addr = listener.getsockname()[:2], normal.bound[0]
        replica = worker.replica

        def run() -> None:
            fast, slow = Conn(*worker_addr), Conn(*normal_addr)
            try:
                _put_comparison_keys(slow)
                # The table: what the worker's fast path answers equals the agent's normal path,
                # byte for byte but Date and the worker's name; the rest reaches its application
                # (answered there or forwarded to the agent) with the same status.
                for method, path, body, headers, expect_fast in READS:
                    # A worker forwards ?consistent reads to the agent, which runs ReadIndex.
                    expect_fast = expect_fast and "consistent" not in path.replace("consistent=false", "")
                    before, barriers = routes.answered, replica._seq
                    got_worker = fast.call(method, path, body, headers)
                    assert (routes.answered - before == 1) == expect_fast, (method, path)
                    got_normal = slow.call(method, path, body, headers)
                    if expect_fast:
                        assert _worker_comparable(got_worker) == _comparable(got_normal), (method, path)
                        # A default read passed a barrier first; a ?stale one did not.
                        assert (replica._seq > barriers) == ("stale" not in path), (method, path)
                    else:
                        assert got_worker[0] == got_normal[0] and got_worker[2] == got_normal[2], (method, path)
                # Read your writes: every write the agent acknowledged is in the worker's next
                # default read (and a ?stale read after the barrier'd one, which saw it too).
                for i in range(40):
                    assert slow.call("PUT", "/v1/kv/ryw/k", str(i).encode())[2] == b"true"
                    before = routes.answered
                    assert fast.call("GET", "/v1/kv/ryw/k?raw")[2] == str(i).encode(), i
                    assert fast.call("GET", "/v1/kv/ryw/k?raw&stale")[2] == str(i).encode(), i
                    assert routes.answered == before + 2
                # A pipeline of parked default reads, stale reads, forwarded requests and writes
                # (forwarded to the agent) is answered in order, each read after the write before it.
                steps: list[tuple[str, str, bytes | None]] = []
                for i in range(15):
                    steps += [("PUT", "/v1/kv/wpipe/k", f"v{i}".encode()), ("GET", "/v1/kv/wpipe/k?raw", None),
                              ("GET", "/v1/kv/wpipe/k?raw", None), ("GET", "/v1/health/service/web", None)]
                    if i % 4 == 0:
                        steps += [("GET", "/v1/agent/members", None), ("GET", "/v1/kv/wpipe/k?stale&raw", None)]
                _check_pipeline(fast, steps, "/v1/kv/wpipe/k")
            finally:
                fast.close()
                slow.close()

        await asyncio.to_thread(run)

        # A blocking read on a worker (its application's path, parked on the replica's watches)
        # wakes on a write made through the agent.
        def blocking() -> None:
            fast, slow = Conn(*worker_addr), Conn(*normal_addr)
            try:
                assert slow.call("PUT", "/v1/kv/wblock", b"0")[2] == b"true"
                index = int(dict(fast.call("GET", "/v1/kv/wblock")[1])["X-Consul-Index"])
                fast.sock.sendall(fast.request_bytes("GET", f"/v1/kv/wblock?index={index}&wait=60s&raw"))
                server = worker.agent.server
                assert server is not None
                wait_for(lambda: len(server._parked) > 0, timeout=30, what="the blocking read parked in the worker")
                assert slow.call("PUT", "/v1/kv/wblock", b"woken")[2] == b"true"
                status, headers, payload = fast.response()
                assert (status, payload) == (b"HTTP/1.1 200 OK", b"woken")
                assert int(dict(headers)["X-Consul-Index"]) > index
            finally:
                fast.close()
                slow.close()

        await asyncio.to_thread(blocking)
    finally:
        if worker is not None:
            await worker.close()
        await normal.stop()
        await agent.stop()
