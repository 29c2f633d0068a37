"""The blocking-read fast path (http/fast_blocking.py), driven over real sockets.

An agent runs in this process with a second HTTP listener whose fast path is off. Blocking reads
go to both: answered at once (the watcher's index is already stale), and parked then woken by a
write; every answer (status line, every header but Date, body) must be the same on both, with
and without `Accept-Encoding: gzip`, and the fast listener must have answered it itself (counted).
Then: a watcher that hangs up leaves the parked read at once (nothing stays parked); a wait that
runs out is answered at the unchanged index, on a connection parked past its keep-alive timeout; a request pipelined behind a parked read is answered
after it, in order; many watchers of one read woken by one write share one encoding; a parked
read and its connection hold no task and few objects for the collector.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from gc_store_objects import HOLDER_SCRIPT
from helpers import wait_until
from inprocess_agent import start_agent_with_normal_listener
from proconsul.agent.agent import Agent
from proconsul.http import common
from proconsul.http.server import HTTPServer
from proconsul.server.rpc import ParkedRead

Answer = tuple[bytes, list[tuple[str, str]], bytes]


class Conn:
    """One keep-alive HTTP/1.1 connection over a raw socket, reading Content-Length answers."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=60)
        self.host = f"{addr[0]}:{addr[1]}"
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, path: str, headers: str = "", method: str = "GET", body: bytes | None = None) -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{headers}"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        self.sock.sendall((head + "\r\n").encode() + (body or b""))

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed; buffered {self.buf!r}")
        self.buf += chunk

    def response(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        length = int(next(v for k, v in headers if k.lower() == "content-length"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return lines[0].encode(), [(k, v) for k, v in headers if k.lower() != "date"], body

    def call(self, path: str, headers: str = "", method: str = "GET", body: bytes | None = None) -> Answer:
        self.send(path, headers, method, body)
        return self.response()


async def acall(conn: Conn, path: str, headers: str = "", method: str = "GET", body: bytes | None = None) -> Answer:
    """`conn.call` off the event loop (the agent answers on this loop)."""
    return await asyncio.to_thread(conn.call, path, headers, method, body)


def _index(answer: Answer) -> int:
    return int(dict(answer[1])["X-Consul-Index"])


async def _start(tmp: Path) -> tuple[Agent, HTTPServer]:
    return await start_agent_with_normal_listener(
        tmp, "blocking-test",
        'http_config { response_headers = { "X-Extra" = "yes" } }\n'
        'services = [{ name = "web", port = 80, tags = ["v1"], checks = [{ ttl = "600s", status = "passing" }] }]\n',
    )


Write = tuple[str, str, bytes | None]
# Blocking reads (without ?index, which each case adds) and, for each of the two header variants,
# the write that changes the read's answer (its index at least).
CASES: list[tuple[str, tuple[Write, Write]]] = [
    ("/v1/kv/bq/a", (("PUT", "/v1/kv/bq/a", b"v1"), ("PUT", "/v1/kv/bq/a", b"v2"))),
    ("/v1/kv/bq/a?raw", (("PUT", "/v1/kv/bq/a", b"raw 1"), ("PUT", "/v1/kv/bq/a", b"raw 2"))),
    ("/v1/kv/bq/gone", (("DELETE", "/v1/kv/bq/gone", None),) * 2),  # woken to a 404 (put back before each)
    ("/v1/kv/bq?recurse", (("PUT", "/v1/kv/bq/b", b"w1"), ("PUT", "/v1/kv/bq/b", b"w2"))),
    ("/v1/kv/bq/?keys&separator=/", (("PUT", "/v1/kv/bq/c/d", b"x1"), ("PUT", "/v1/kv/bq/c/d", b"x2"))),
    ("/v1/kv/bq/?keys&stale", (("PUT", "/v1/kv/bq/e", b"y1"), ("PUT", "/v1/kv/bq/e", b"y2"))),
    ("/v1/health/service/web?passing", (("PUT", "/v1/agent/check/warn/service:web", b""),
                                        ("PUT", "/v1/agent/check/pass/service:web", b""))),
    ("/v1/health/service/web", (("PUT", "/v1/agent/check/warn/service:web", b""),
                                ("PUT", "/v1/agent/check/pass/service:web", b""))),
    ("/v1/health/service/web?tag=v1&dc=dc1", (("PUT", "/v1/agent/check/warn/service:web", b""),
                                              ("PUT", "/v1/agent/check/pass/service:web", b""))),
    ("/v1/catalog/service/web", (("PUT", "/v1/agent/service/register", b'{"Name":"web","ID":"web2","Port":81}'),
                                 ("PUT", "/v1/agent/service/register", b'{"Name":"web","ID":"web2","Port":82}'))),
    ("/v1/catalog/services", (("PUT", "/v1/agent/service/register", b'{"Name":"db","Port":5432}'),
                              ("PUT", "/v1/agent/service/register", b'{"Name":"db","Port":5432,"Tags":["x"]}'))),
]


async def test_blocking_reads_answer_like_the_normal_path(tmp_path: Path) -> None:
    agent, normal = await _start(tmp_path)
    try:
        fast_addr, normal_addr = agent.http.bound[0], normal.bound[0]
        blocking = agent.http.blocking_routes
        assert blocking is not None and blocking.enabled and normal.blocking_routes is None

        async def both(path: str, headers: str) -> tuple[Answer, Answer]:
            fast, slow = Conn(fast_addr), Conn(normal_addr)
            try:
                return await asyncio.to_thread(fast.call, path, headers), await asyncio.to_thread(slow.call, path, headers)
            finally:
                fast.close()
                slow.close()

        setup = Conn(normal_addr)
        for key in ("bq/a", "bq/gone", "bq/b"):
            assert (await acall(setup, f"/v1/kv/{key}", method="PUT", body=b"first"))[0].endswith(b"200 OK")
        await wait_until(lambda: len(agent.server.store.service_instances("web")) == 1, timeout=30)
        for path, writes in CASES:
            for headers, write in zip(("", "Accept-Encoding: gzip, deflate\r\n"), writes, strict=True):
                if write[0] == "DELETE":
                    await acall(setup, write[1], method="PUT", body=b"back")
                sep = "&" if "?" in path else "?"
                # 1. The watcher's index is already stale: answered at once, the same on both.
                before = blocking.answered
                got_fast, got_normal = await both(f"{path}{sep}index=1&wait=30s", headers)
                assert blocking.answered == before + 1, path
                assert got_fast == got_normal, (path, headers)
                # 2. Parked on both listeners, then woken by the same write.
                index = _index(got_fast)
                fast, slow = Conn(fast_addr), Conn(normal_addr)
                try:
                    parked = agent.server.blocking_reads()
                    fast.send(f"{path}{sep}index={index}&wait=60s", headers)
                    slow.send(f"{path}{sep}index={index}&wait=60s", headers)
                    await wait_until(lambda parked=parked: agent.server.blocking_reads() == parked + 2, timeout=30)
                    method, wpath, body = write
                    status = (await acall(setup, wpath, method=method, body=body))[0]
                    assert status.endswith(b"200 OK"), (wpath, status)
                    woken_fast = await asyncio.to_thread(fast.response)
                    woken_normal = await asyncio.to_thread(slow.response)
                finally:
                    fast.close()
                    slow.close()
                assert blocking.answered == before + 2, path
                assert _index(woken_fast) > index, path
                assert woken_fast == woken_normal, (path, headers)
        setup.close()
        await wait_until(lambda: agent.server.blocking_reads() == 0, timeout=30)
    finally:
        await normal.stop()
        await agent.stop()


async def test_hang_up_expiry_pipelining_and_one_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A short keep-alive: a parked watcher's connection is not idle, and must not be closed as such.
    monkeypatch.setattr("proconsul.http.server.IDLE_TIMEOUT_S", 0.3)
    agent, normal = await _start(tmp_path)
    try:
        addr = agent.http.bound[0]
        blocking = agent.http.blocking_routes
        assert blocking is not None

        async def setup_call(path: str, method: str = "GET", body: bytes | None = None) -> Answer:
            conn = Conn(normal.bound[0])  # a new one each time: idle ones are closed after 0.3 s
            try:
                return await acall(conn, path, method=method, body=body)
            finally:
                conn.close()

        assert (await setup_call("/v1/kv/hu/a", method="PUT", body=b"1"))[0].endswith(b"200 OK")
        index = _index(await setup_call("/v1/kv/hu?recurse"))

        # Watchers that hang up leave at once: nothing stays parked, and a write wakes nobody.
        quitters = [Conn(addr) for _ in range(20)]
        for conn in quitters:
            conn.send(f"/v1/kv/hu?recurse&index={index}&wait=600s")
        await wait_until(lambda: agent.server.blocking_reads() == 20, timeout=30)
        assert agent.server._parked  # one shared parked read
        for conn in quitters:
            conn.close()
        await wait_until(lambda: agent.server.blocking_reads() == 0 and not agent.server._parked, timeout=30)

        # A wait that runs out is answered at the unchanged index, with the unchanged answer
        # (and the connection outlived its keep-alive timeout meanwhile).
        conn = Conn(addr)
        before = blocking.answered
        expired = await asyncio.to_thread(conn.call, f"/v1/kv/hu?recurse&index={index}&wait=2s")
        assert expired[0].endswith(b"200 OK") and _index(expired) == index
        assert json.loads(expired[2])[0]["Key"] == "hu/a"
        assert blocking.answered == before + 1

        # A request pipelined behind a parked read waits for it and is answered after it.
        conn.send(f"/v1/kv/hu?recurse&index={index}&wait=60s")
        conn.send("/v1/kv/hu/a?raw")
        await wait_until(lambda: agent.server.blocking_reads() == 1, timeout=30)
        assert (await setup_call("/v1/kv/hu/a", method="PUT", body=b"2"))[0].endswith(b"200 OK")
        first = await asyncio.to_thread(conn.response)
        second = await asyncio.to_thread(conn.response)
        assert _index(first) > index and json.loads(first[2])[0]["Key"] == "hu/a"
        assert second[2] == b"2"
        conn.close()

        # Many watchers of one read, woken by one write: one encoding of the whole response.
        index = _index(first)
        built: list[Any] = []
        real = common.shared_response

        def counted(obj: Any, key: Any, build: Any) -> bytes:
            def b() -> bytes:
                built.append(key)
                return build()  # type: ignore[no-any-return]

            return real(obj, key, b)

        monkeypatch.setattr("proconsul.http.fast_blocking.shared_response", counted)
        watchers = [Conn(addr) for _ in range(30)]
        for w in watchers:
            w.send(f"/v1/kv/hu?recurse&index={index}&wait=60s")
        await wait_until(lambda: agent.server.blocking_reads() == 30, timeout=30)
        assert (await setup_call("/v1/kv/hu/b", method="PUT", body=b"3"))[0].endswith(b"200 OK")
        answers = [await asyncio.to_thread(w.response) for w in watchers]
        for w in watchers:
            w.close()
        assert len({a[2] for a in answers}) == 1 and all(_index(a) > index for a in answers)
        assert len(built) <= 2, built  # once (twice if the Date's second turned meanwhile)
    finally:
        await normal.stop()
        await agent.stop()


async def test_a_parked_read_whose_rerun_fails_is_answered_by_the_normal_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The re-run after a wake-up raises: the parked request goes to aiohttp's path, which runs
    it again and answers the error as the middleware maps it (a StoreError: 500 with its text);
    the connection then serves the next request."""
    from dataclasses import replace

    from proconsul.server import queries
    from proconsul.state.store import StoreError

    agent, normal = await _start(tmp_path)
    try:
        addr = agent.http.bound[0]
        blocking = agent.http.blocking_routes
        assert blocking is not None
        setup = Conn(normal.bound[0])
        assert (await acall(setup, "/v1/kv/fail/a", method="PUT", body=b"1"))[0].endswith(b"200 OK")
        index = _index(await acall(setup, "/v1/kv/fail?recurse"))
        spec = queries.READS["KVS.List"]
        broken = {"on": False}

        def run(store: Any, args: dict[str, Any]) -> tuple[int, Any]:
            if broken["on"]:
                raise StoreError("the read broke")
            return spec.run(store, args)

        monkeypatch.setitem(queries.READS, "KVS.List", replace(spec, run=run))
        conn = Conn(addr)
        conn.send(f"/v1/kv/fail?recurse&index={index}&wait=60s")
        await wait_until(lambda: agent.server.blocking_reads() == 1, timeout=30)
        (parked,) = agent.server._parked.values()
        assert [type(w) for w in parked.waiters] == [ParkedRead]  # parked by the fast path
        before = blocking.answered
        broken["on"] = True
        assert (await acall(setup, "/v1/kv/fail/a", method="PUT", body=b"2"))[0].endswith(b"200 OK")
        status, _, body = await asyncio.to_thread(conn.response)
        assert status.endswith(b"500 Internal Server Error") and body == b"the read broke", (status, body)
        assert blocking.answered == before  # answered by the normal path
        broken["on"] = False
        answer = await acall(conn, "/v1/kv/fail/a?raw")
        assert answer[2] == b"2"
        await wait_until(lambda: agent.server.blocking_reads() == 0 and not agent.server._parked, timeout=30)
        conn.close()
        setup.close()
    finally:
        await normal.stop()
        await agent.stop()


async def test_a_parked_read_and_its_connection_are_few_objects_for_the_collector(tmp_path: Path) -> None:
    """Every complete scan of the collector walks each parked watcher's objects (docs/PERFORMANCE.md,
    issue 16: 42 tracked objects per parked read, two thirds of a 10,000-watcher server's heap). A
    parked read and its connection keep no task (aiohttp's request task starts only for a message
    handed to aiohttp), no timer (their deadlines are entries in one table) and no bound method;
    the watchers are held by another process, so only the server's side is counted."""
    import gc
    import subprocess
    import sys

    agent, normal = await _start(tmp_path)
    n = 180  # (under the default http_max_conns_per_client, 200)
    holder = None
    try:
        addr = agent.http.bound[0]
        setup = Conn(normal.bound[0])
        assert (await acall(setup, "/v1/kv/few/a", method="PUT", body=b"1"))[0].endswith(b"200 OK")
        index = _index(await acall(setup, "/v1/kv/few/a"))
        setup.close()
        gc.collect()
        before = len(gc.get_objects())
        tasks_before = len(asyncio.all_tasks())
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, addr[0], str(addr[1]), str(n), f"/v1/kv/few/a?index={index}&wait=600s"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        await asyncio.to_thread(holder.stdout.readline)  # type: ignore[union-attr]
        await wait_until(lambda: agent.server.blocking_reads() == n, timeout=60)
        gc.collect()
        per_read = (len(gc.get_objects()) - before) / n
        tasks = len(asyncio.all_tasks()) - tasks_before
        assert tasks < n / 10, tasks  # no task per connection
        # 42 on main before (uvloop; a task and three timers per parked read), ~25 now on
        # asyncio's loop (20 on uvloop: bench/gc_store_objects.py --parked).
        assert per_read < 30, per_read
    finally:
        if holder is not None:
            holder.stdin.close()  # type: ignore[union-attr]
            holder.wait()
        await wait_until(lambda: agent.server.blocking_reads() == 0, timeout=60)
        await normal.stop()
        await agent.stop()
