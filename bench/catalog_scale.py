"""Blocking queries on a large catalog: do writes reach their watchers, and only theirs?

Run by hand (issue 16; figures in docs/PERFORMANCE.md):

    PYTHONPATH=daemon .venv/bin/python bench/catalog_scale.py                       # 10,000 nodes
    PYTHONPATH=daemon .venv/bin/python bench/catalog_scale.py --nodes 10000 --instances 50000 \\
        --services 500 --watchers 5000 --writes 400 --write-rate 20
    PYTHONPATH=daemon .venv/bin/python bench/catalog_scale.py --servers 127.61.5.1,127.61.5.2,127.61.5.3

Starts three `proconsul agent -server -bootstrap-expect=3` processes on 127.61.<n>.1-3 (or uses
`--servers`), then:
1. loads `--nodes` nodes and `--instances` service instances over `--services` names through
   `/v1/txn` (as agents' anti-entropy would register them: node, node check, each service and
   its check), one service (`svc-0000`) with `--big` instances, the rest spread evenly;
2. parks `--watchers` blocking queries spread over the three servers: `/v1/health/service/<name>
   ?passing` on services that get writes, `/v1/catalog/services`, and KV prefixes
   (`?recurse`), and waits until the servers report them all parked;
3. streams `--writes` writes at `--write-rate`/s, alternating a check-status change (passing <->
   warning, so the instance leaves and rejoins the ?passing answer) of a watched service and a KV
   write under a watched prefix, each carrying a unique token in its check output or value.

A watcher sees a write when an answer holding its token arrives. Reported:
- per write, acknowledgement -> the last affected watcher's answer: p50/p99/max (ms), twice: when
  the answer *arrived* (the kernel's receive timestamp of its last segment, `SO_TIMESTAMPNS`) and
  when the watcher process *read* it (its loop got round to that socket; the difference, also
  reported per answer, is the load generator's own backlog); and writes some affected watcher
  never saw (`missed`, should be 0);
- spurious wake-ups: answers identical to the watcher's previous one that came back before its
  `wait` ran out (should be 0; `/v1/catalog/services` watchers must not wake at all);
- the servers' CPU seconds during the stream and RSS after it, their worst loop lag and collector
  pause over the run, and the stalls of 100 ms or more they logged inside the stream (each with
  its kind and time: a complete scan of agent/gc_policy.py, another collection, a loop lag);
- `/v1/health/service/svc-0000` latency (the `--big`-instance service), p50/p99 of sequential reads.

The functions below are also what the reduced CI test (tests/integration/test_catalog_scale.py)
drives, at 1,000 nodes and 1,000 watchers. Processes started here are stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import hashlib
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Procs, python_exe  # noqa: E402

MAX_TXN_OPS = 128
WATCH_WAIT = "120s"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))] if s else float("nan")


# --------------------------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class Layout:
    """Which instance lives where: instance i is on node i % nodes; the first `big` instances
    are `svc-0000`, the others spread round-robin over the remaining names."""

    nodes: int
    instances: int
    services: int
    big: int

    def service_of(self, i: int) -> str:
        if i < self.big:
            return "svc-0000"
        return f"svc-{1 + (i - self.big) % (self.services - 1):04d}"

    def node_of(self, i: int) -> str:
        return f"node-{i % self.nodes:05d}"

    def address_of(self, node: str) -> str:
        n = int(node.rsplit("-", 1)[1])
        return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"

    def instances_of(self, service: str) -> list[int]:
        if service == "svc-0000":
            return list(range(min(self.big, self.instances)))
        k = int(service.rsplit("-", 1)[1]) - 1
        return list(range(self.big + k, self.instances, self.services - 1))


def check_op(layout: Layout, i: int, status: str, output: str) -> dict[str, Any]:
    return {"Check": {"Verb": "set", "Check": {
        "Node": layout.node_of(i), "CheckID": f"chk-{i}", "Name": "alive", "Status": status,
        "ServiceID": f"{layout.service_of(i)}-{i}", "Output": output,
    }}}


def load_batches(layout: Layout) -> list[list[dict[str, Any]]]:
    """Transactions of at most MAX_TXN_OPS operations registering the whole catalog, a node
    (its registration, node check, services and their checks) never split across two."""
    per_node: dict[int, list[int]] = {}
    for i in range(layout.instances):
        per_node.setdefault(i % layout.nodes, []).append(i)
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for n in range(layout.nodes):
        node = f"node-{n:05d}"
        ops: list[dict[str, Any]] = [
            {"Node": {"Verb": "set", "Node": {"Node": node, "Address": layout.address_of(node)}}},
            {"Check": {"Verb": "set", "Check": {"Node": node, "CheckID": "node-alive", "Name": "node alive",
                                                "Status": "passing"}}},
        ]
        for i in per_node.get(n, []):
            svc = layout.service_of(i)
            ops.append({"Service": {"Verb": "set", "Node": node, "Service": {
                "ID": f"{svc}-{i}", "Service": svc, "Tags": ["scale"], "Port": 20000 + i % 40000,
            }}})
            ops.append(check_op(layout, i, "passing", "ok"))
        if len(current) + len(ops) > MAX_TXN_OPS:
            batches.append(current)
            current = []
        current.extend(ops)
    if current:
        batches.append(current)
    return batches


async def load_catalog(session: aiohttp.ClientSession, bases: list[str], layout: Layout,
                       concurrency: int = 6) -> tuple[float, int]:
    """Register the catalog; (seconds, transactions)."""
    batches = load_batches(layout)
    queue = list(enumerate(batches))
    start = time.perf_counter()

    async def worker(w: int) -> None:
        while queue:
            k, ops = queue.pop()
            base = bases[(k + w) % len(bases)]
            for attempt in range(5):
                async with session.put(f"{base}/v1/txn", json=ops) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        break
                    if attempt == 4:
                        raise RuntimeError(f"txn answered {resp.status}: {body[:300]!r}")
                await asyncio.sleep(0.5)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return time.perf_counter() - start, len(batches)


# --------------------------------------------------------------------------------- watchers


@dataclass
class Watcher:
    kind: str  # "health", "services" or "kv"
    topic: str  # service name, "" or KV prefix
    base: str
    index: int = 0
    last_digest: bytes = b""
    answers: int = 0
    spurious: int = 0
    expired: int = 0
    errors: int = 0
    unstamped: int = 0  # answers without a kernel receive timestamp (their arrival is their read)
    seen: dict[str, float] = field(default_factory=dict)  # write token -> first answer holding it, read
    # write token -> when that answer arrived (the kernel's receive timestamp of its last segment)
    arrived: dict[str, float] = field(default_factory=dict)
    parked_once: bool = False
    # In a watcher process: the last answer and when it came (a write learnt after its answer
    # arrived is checked against it), and who hears of each write seen.
    last_body: bytes | None = None
    last_at: float = 0.0
    last_arrived: float = 0.0
    on_seen: Any = None

    stale: bool = False  # read with ?stale: answered by the server asked, never forwarded

    def path(self) -> str:
        extra = "&stale" if self.stale else ""
        if self.kind == "health":
            return f"/v1/health/service/{self.topic}?passing{extra}"
        if self.kind == "services":
            return f"/v1/catalog/services?{extra[1:]}"
        return f"/v1/kv/{self.topic}?recurse{extra}"


class Board:
    """The writes made so far by topic, so a watcher knows what shows it each one: a needle
    present in the answer (a token in a check's output or a KV value), or absent from it (an
    instance flipped to warning leaves the ?passing answer)."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[tuple[str, bytes, bool]]] = {}  # topic -> [(token, needle, present)]
        self.topic_of: dict[str, str] = {}
        self.stop = False
        self.listeners: list[Any] = []  # called with each write added (watcher processes learn it)

    def add(self, topic: str, token: str, needle: bytes, present: bool = True) -> None:
        for listener in self.listeners:
            listener(topic, token, needle, present)
        self.tokens.setdefault(topic, []).append((token, needle, present))
        self.topic_of[token] = topic


def _took_answer(w: Watcher, board: Board, body: bytes, index: int, sent: float, now: float, wait_s: float,
                 arrived: float) -> None:
    """Count one answer: spurious or expired, the writes it shows (each with when the answer
    arrived and when it was read, `now`), the index to wait on next."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    if w.index:
        w.answers += 1
        if digest == w.last_digest:
            if now - sent < wait_s * 0.9:
                w.spurious += 1
            else:
                w.expired += 1
    for token, needle, present in board.tokens.get(w.topic, ()):
        if token not in w.seen and (needle in body) == present:
            w.seen[token] = now
            w.arrived[token] = arrived
            if w.on_seen is not None:
                w.on_seen(w, token, now, arrived)
    if w.on_seen is not None:
        w.last_body, w.last_at, w.last_arrived = body, now, arrived
    w.last_digest = digest
    w.index = index if index >= w.index else 0


# Linux: SO_TIMESTAMPNS asks the kernel for the receive time of what each recvmsg returns (for
# TCP, of the last segment it read: tcp_recv_timestamp), as a struct timespec on CLOCK_REALTIME.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_STAMP_SPACE = socket.CMSG_SPACE(16)
# A receive buffer that holds any answer whole (the largest, svc-0000's 1,000 instances, is ~1 MB):
# with the default (~128 KB of window) the server can send the rest of a large answer only once
# the process has read the start, and the last segment's arrival would include the process's lag.
_RCVBUF = 4 << 20
_READ_INTO: list[memoryview] = []  # one buffer per process (one loop thread reads every socket)


def _read_view() -> memoryview:
    if not _READ_INTO:
        _READ_INTO.append(memoryview(bytearray(_RCVBUF * 2)))
    return _READ_INTO[0]


class _RawConnection:
    """One keep-alive HTTP/1.1 connection with just what a watcher needs: GET, status, the
    X-Consul-Index header, a Content-Length body. aiohttp's client cost the watcher processes
    more CPU than the servers spent answering (their loops lagged seconds at 5,000 watchers, and
    every latency reported included it); a watcher holds one connection, as Consul's clients do.

    It also tells when an answer *arrived*, not only when this process got round to reading it:
    a non-blocking socket read with `recvmsg` from the loop's reader callback, each read carrying
    the kernel's receive timestamp (`SO_TIMESTAMPNS`); `arrived` is the timestamp of the segment
    that completed the last answer, on the `time.perf_counter` clock. A watcher process holding
    2,500 connections that are answered within a few ms of each other reads them one after
    another: the read time of the last includes the process's own backlog (up to 1.85 s measured
    at 10,000 watchers), the arrival time does not."""

    def __init__(self, base: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port or 80)
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.eof = False
        self.waiter: asyncio.Future[tuple[int, int, bytes]] | None = None
        self.head: tuple[int, int, int, int] | None = None  # status, index, body start, length
        self.stamp = 0.0  # kernel receive time (CLOCK_REALTIME) of the last segment read
        self.arrived = 0.0  # the last answer's arrival, perf_counter clock
        self.stamped = False  # whether it came from the kernel (else: when it was parsed)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)  # before connect: the window scale
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, (self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock, self.buf, self.eof, self.head = sock, bytearray(), False, None
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        view = _read_view()
        try:
            n, anc, _, _ = sock.recvmsg_into([view], _STAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_reading(exc)
            return
        if n == 0:
            self._stop_reading(ConnectionResetError("connection closed by the server"))
            return
        self.buf += view[:n]
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = struct.unpack_from("qq", data)
                self.stamp = sec + nsec * 1e-9
        if self.waiter is not None and not self.waiter.done():
            self._answer_if_whole()

    def _stop_reading(self, exc: BaseException) -> None:
        self.eof = True
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _answer_if_whole(self) -> None:
        buf = self.buf
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            index = length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.lower()
                if name == "content-length":
                    length = int(value)
                elif name == "x-consul-index":
                    index = int(value)
            self.head = (status, index, end + 4, length)
        status, index, start, length = self.head
        if len(buf) < start + length:
            return
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        self.head = None
        # The kernel's clock is CLOCK_REALTIME; its offset from perf_counter's, read now.
        self.stamped = bool(self.stamp)
        self.arrived = self.stamp - (time.time() - time.perf_counter()) if self.stamp else time.perf_counter()
        assert self.waiter is not None
        self.waiter.set_result((status, index, body))

    async def get(self, path: str) -> tuple[int, int, bytes]:
        """(status, X-Consul-Index or 0, body); reconnects once if a kept-alive connection was
        closed. `arrived` then holds when the answer arrived."""
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, int, bytes]:
        """As `get`, any method (a PUT retried on a fresh connection must be idempotent: the
        writer's are, each sets a key of its own or a check's status)."""
        loop = asyncio.get_running_loop()
        length = f"Content-Length: {len(body)}\r\n" if body or method != "GET" else ""
        request = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{length}\r\n".encode() + body
        for attempt in (0, 1):
            if self.eof:
                self.close()
            fresh = self.sock is None
            if fresh:
                await self._connect()
            assert self.sock is not None
            self.waiter = loop.create_future()
            try:
                await loop.sock_sendall(self.sock, request)
                return await self.waiter
            except OSError:
                self.close()
                if fresh or attempt:
                    raise
            finally:
                self.waiter = None
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            if not self.eof:
                try:
                    asyncio.get_running_loop().remove_reader(self.sock.fileno())
                except RuntimeError:  # no loop (closed after it)
                    pass
            self.sock.close()
        self.sock, self.buf, self.eof, self.head = None, bytearray(), False, None


async def run_watcher_raw(w: Watcher, board: Board, wait: str) -> None:
    """One watcher's loop of blocking reads over one raw keep-alive connection, until `board.stop`."""
    conn = _RawConnection(w.base)
    wait_s = float(wait.rstrip("s"))
    try:
        while not board.stop:
            path = w.path()
            url = path + (("&" if path[-1] != "?" else "") + f"index={w.index}&wait={wait}" if w.index else "")
            sent = time.perf_counter()
            try:
                w.parked_once = w.parked_once or bool(w.index)
                status, index, body = await asyncio.wait_for(conn.get(url), wait_s * 2 + 60)
                now = time.perf_counter()
            except asyncio.CancelledError:
                raise
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                w.errors += 1
                _note_error(f"watch {w.path()}: {exc!r}")
                await asyncio.sleep(0.2)
                continue
            if status != 200:
                w.errors += 1
                _note_error(f"watch {w.path()}: {status} {body[:200]!r}")
                await asyncio.sleep(0.2)
                continue
            w.unstamped += not conn.stamped
            _took_answer(w, board, body, index, sent, now, wait_s, conn.arrived)
    finally:
        conn.close()


async def prime(session: aiohttp.ClientSession, watchers: list[Watcher]) -> None:
    """One plain read per watched topic gives every watcher of it its starting index (as if each
    had made it; the load generator's time goes to the blocking reads being measured)."""
    first: dict[tuple[str, str], tuple[int, bytes]] = {}
    for w in watchers:
        key = (w.kind, w.topic)
        if key not in first:
            async with session.get(w.base + w.path()) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{w.path()} answered {resp.status}: {body[:200]!r}")
                first[key] = (int(resp.headers["X-Consul-Index"]), hashlib.blake2b(body, digest_size=16).digest())
        w.index, w.last_digest = first[key]


async def parked_total(session: aiohttp.ClientSession, bases: list[str]) -> int:
    """Blocking queries parked on the servers (each counted where it is read: the leader for
    the default consistency mode)."""
    total = 0
    for base in bases:
        async with session.get(f"{base}/v1/agent/metrics") as resp:
            data = await resp.json()
        for g in data.get("Gauges", []):
            if g["Name"].endswith("rpc.queries_blocking"):
                total += int(g["Value"])
    return total


def plan_watchers(layout: Layout, bases: list[str], n: int, rng: random.Random,
                  kv_prefixes: int, health_services: int, stale: bool = False) -> list[Watcher]:
    """70 % health ?passing over `health_services` names (svc-0000 among them), 10 % catalog
    services, 20 % KV prefixes."""
    names = ["svc-0000"] + [f"svc-{k:04d}" for k in rng.sample(range(1, layout.services), health_services - 1)]
    out: list[Watcher] = []
    for i in range(n):
        base = bases[i % len(bases)]
        r = i % 10
        if r < 7:
            out.append(Watcher("health", names[i % len(names)], base, stale=stale))
        elif r == 7:
            out.append(Watcher("services", "", base, stale=stale))
        else:
            out.append(Watcher("kv", f"scale/p{i % kv_prefixes:03d}/", base, stale=stale))
    return out


class WatcherProcesses:
    """The watchers spread over `n` processes (one Python process cannot hold thousands of
    blocking queries and answer each at once: its own loop lags by seconds). The writer stays
    here; each write's token reaches every process through its pipe before the write is sent,
    and each process reports the first answer holding it (its clock is the same monotonic one),
    so `Watcher.seen` here fills as with one process."""

    def __init__(self, plan: list[Watcher], n: int, wait: str, board: Board) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.children: list[tuple[Any, Any, list[int]]] = []
        self.threads: list[threading.Thread] = []
        self.finals = 0
        self.lags: list[list[float]] = []  # per watcher process: its loop lag p50, p99, max (ms)
        for k in range(n):
            ids = list(range(k, len(plan), n))
            specs = [(i, plan[i].kind, plan[i].topic, plan[i].base, plan[i].index, plan[i].last_digest, plan[i].stale)
                     for i in ids]
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_watcher_process, args=(specs, wait, theirs), daemon=True)
            proc.start()
            theirs.close()
            self.children.append((proc, ours, ids))
            t = threading.Thread(target=self._listen, args=(ours, ids), daemon=True)
            t.start()
            self.threads.append(t)
        board.listeners.append(self._tell)

    def _tell(self, topic: str, token: str, needle: bytes, present: bool) -> None:
        for _, conn, _ in self.children:
            conn.send(("write", topic, token, needle, present, time.perf_counter()))

    def _listen(self, conn: Any, ids: list[int]) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            self.loop.call_soon_threadsafe(self._handle, msg, ids)
            if msg[0] == "final":
                return

    def _handle(self, msg: tuple[Any, ...], ids: list[int]) -> None:
        kind = msg[0]
        if kind == "seen":
            _, i, token, t, arrived = msg
            self.plan[i].seen.setdefault(token, t)
            self.plan[i].arrived.setdefault(token, arrived)
        elif kind == "parked":
            for i in ids:
                self.plan[i].parked_once = True
        elif kind == "error":
            _note_error(msg[1])
        elif kind == "lag":
            self.lags.append(list(msg[1:]))
        elif kind == "final":
            for i, answers, spurious, expired, errors, index, unstamped in msg[1]:
                w = self.plan[i]
                w.answers, w.spurious, w.expired, w.errors, w.index = answers, spurious, expired, errors, index
                w.unstamped = unstamped
            self.finals += 1

    async def stop(self) -> None:
        for _, conn, _ in self.children:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        deadline = time.perf_counter() + 60
        while self.finals < len(self.children) and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        for proc, conn, _ in self.children:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
            conn.close()


def _watcher_process(specs: list[tuple[Any, ...]], wait: str, conn: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # the agent's own loop; a third of asyncio's per-callback cost
    except ImportError:
        asyncio.run(_watch_in_process(specs, wait, conn))
    else:
        uvloop.run(_watch_in_process(specs, wait, conn))


async def _watch_in_process(specs: list[tuple[Any, ...]], wait: str, conn: Any) -> None:
    loop = asyncio.get_running_loop()
    board = Board()
    ids: dict[int, Watcher] = {}
    by_topic: dict[str, list[Watcher]] = {}
    done = asyncio.Event()

    def on_seen(w: Watcher, token: str, t: float, arrived: float) -> None:
        conn.send(("seen", ids_of[id(w)], token, t, arrived))

    ids_of: dict[int, int] = {}
    for i, kind, topic, base, index, digest, stale in specs:
        w = Watcher(kind, topic, base, index=index, last_digest=digest, stale=stale, on_seen=on_seen)
        ids[i] = w
        ids_of[id(w)] = i
        by_topic.setdefault(topic, []).append(w)

    def handle(msg: tuple[Any, ...]) -> None:
        if msg[0] == "write":
            _, topic, token, needle, present, announced = msg
            board.add(topic, token, needle, present)
            # An answer that came before the news of its write (the pipe and this loop can be
            # slower than the server): a token present in it proves it came after the write; an
            # instance absent from it does so only if the answer came after the write was
            # arrived after the write was announced (the instance was in every answer before it).
            for w in by_topic.get(topic, ()):
                if token in w.seen or w.last_body is None:
                    continue
                if (needle in w.last_body) if present else (w.last_arrived >= announced and needle not in w.last_body):
                    w.seen[token] = w.last_at
                    w.arrived[token] = w.last_arrived
                    on_seen(w, token, w.last_at, w.last_arrived)
        elif msg[0] == "stop":
            done.set()

    def listen() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(done.set)
                return
            loop.call_soon_threadsafe(handle, msg)
            if msg[0] == "stop":
                return

    threading.Thread(target=listen, daemon=True).start()
    lag: list[float] = []
    lagger = asyncio.ensure_future(own_loop_lag(lag))
    tasks = [asyncio.ensure_future(run_watcher_raw(w, board, wait)) for w in ids.values()]
    reported = False
    while not done.is_set():
        if not reported and all(w.parked_once for w in ids.values()):
            conn.send(("parked",))
            reported = True
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except TimeoutError:
            pass
    board.stop = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lagger.cancel()
    conn.send(("lag", round(pct(lag, 0.5), 1), round(pct(lag, 0.99), 1), round(max(lag, default=0.0), 1)))
    for text in ERRORS:
        conn.send(("error", text))
    conn.send(("final", [(i, w.answers, w.spurious, w.expired, w.errors, w.index, w.unstamped) for i, w in ids.items()]))
    conn.close()


# ----------------------------------------------------------------------------------- writes


# Each flipped instance's check status, kept across runs on one cluster: a run must flip from
# what is there, or its write could change nothing (and wake nobody).
_CHECK_STATUS: dict[int, str] = {}
_RUN = [0]


@dataclass
class WriteLog:
    sent: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)  # the write's X-Consul-Index, when answered with one
    errors: int = 0


async def stream_writes(bases: list[str], layout: Layout, board: Board,
                        watchers: list[Watcher], count: int, rate: float, rng: random.Random) -> WriteLog:
    """`count` writes at `rate`/s, alternating check flips on watched services and KV writes
    under watched prefixes, round-robin over the topics (so one topic's writes are far apart)."""
    services = sorted({w.topic for w in watchers if w.kind == "health"})
    prefixes = sorted({w.topic for w in watchers if w.kind == "kv"})
    status = _CHECK_STATUS
    log = WriteLog()
    pending: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    _RUN[0] += 1
    run = _RUN[0]
    idle: dict[str, list[_RawConnection]] = {b: [] for b in bases}  # kept-alive connections per server

    async def one(seq: int) -> None:
        token = f"r{run}w{seq:06d}x{rng.randrange(10**6):06d}"  # unique across runs too
        base = bases[seq % len(bases)]
        if seq % 2 == 0 and services or not prefixes:
            svc = services[(seq // 2) % len(services)]
            i = rng.choice(layout.instances_of(svc))
            status[i] = "warning" if status.get(i, "passing") == "passing" else "passing"
            if status[i] == "passing":  # back in the ?passing answer, with the token as output
                board.add(svc, token, token.encode())
            else:  # it leaves the answer (it was in every earlier one)
                board.add(svc, token, f'"ID":"{svc}-{i}"'.encode(), present=False)
            path, body, method = "/v1/txn", json.dumps([check_op(layout, i, status[i], token)]).encode(), "PUT"
        else:
            prefix = prefixes[(seq // 2) % len(prefixes)]
            value = token.encode()
            board.add(prefix, token, base64.b64encode(value))
            # A key of its own: a watcher answered late still finds the token (a shared key could
            # have been overwritten by then, and the write counted as missed).
            path, body, method = f"/v1/kv/{prefix}k{seq}", value, "PUT"
        # Over a raw connection too: the acknowledgement's time is the kernel's receive
        # timestamp of its last segment, like the watchers' answers (not when this process,
        # which lags too, got round to it).
        conn = idle[base].pop() if idle[base] else _RawConnection(base)
        log.sent[token] = time.perf_counter()
        try:
            code, index, text = await conn.request(method, path, body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            log.errors += 1
            _note_error(f"write {base}{path}: {exc!r}")
            return
        idle[base].append(conn)
        if code != 200:
            log.errors += 1
            _note_error(f"write {base}{path}: {code} {text[:200]!r}")
            return
        log.acked[token] = conn.arrived
        log.index[token] = index

    for seq in range(count):
        due = start + seq / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(seq))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    for conns in idle.values():
        for c in conns:
            c.close()
    return log


# ---------------------------------------------------------------------------------- results

ERRORS: list[str] = []
WATCHER_PROCESS_LAG: list[list[float]] = []  # the last run's, per watcher process: loop lag p50, p99, max (ms)


def _note_error(text: str) -> None:
    if len(ERRORS) < 20:
        ERRORS.append(text)



@dataclass
class Result:
    """Per write, acknowledgement -> the last affected watcher's answer, two ways: when that answer
    *arrived* (the kernel's receive timestamp of its last segment) and when the watcher process
    *read* it (its loop got round to that socket). The difference is the watcher processes'
    own backlog, a property of the load generator, not of the servers."""

    latencies_ms: list[float]  # per write: ack -> the last affected watcher's answer, read
    arrived_ms: list[float]  # per write: ack -> the last affected watcher's answer, arrived
    by_server: dict[str, dict[str, float]]  # per (write, watcher): ack -> its answer, by server asked
    backlog_ms: list[float]  # per (write, watcher): answer arrived -> read by the watcher process
    missed: int  # writes some affected watcher never saw
    affected_pairs: int
    spurious: int
    answers: int
    watcher_errors: int
    write_errors: int
    unstamped: int = 0  # answers whose arrival had no kernel timestamp (should be 0 on Linux)
    # The writes whose last answer arrived latest: when each was sent (s after the first write),
    # its latencies, and the server the last watcher asked (to set beside the stalls logged).
    worst: list[dict[str, Any]] = field(default_factory=list)
    write_ack_ms: list[float] = field(default_factory=list)  # per write: sent -> its acknowledgement arrived
    before_sent: int = 0  # (write, watcher) answers that arrived before the write was sent (must be 0)

    def summary(self) -> dict[str, Any]:
        def dist(values: list[float]) -> dict[str, float | None]:
            return {"p50": round(pct(values, 0.5), 1), "p99": round(pct(values, 0.99), 1),
                    "max": round(max(values), 1) if values else None}

        return {
            "writes_measured": len(self.latencies_ms),
            "ack_to_last_answer_arrived_ms": dist(self.arrived_ms),
            "ack_to_last_answer_read_ms": dist(self.latencies_ms),
            "answer_arrived_to_read_ms": dist(self.backlog_ms),
            "ack_to_each_watcher_by_server_ms": self.by_server,
            "missed": self.missed,
            "affected_watcher_answers": self.affected_pairs,
            "spurious_wakeups": self.spurious,
            "answers": self.answers,
            "watcher_errors": self.watcher_errors,
            "write_errors": self.write_errors,
            "unstamped_answers": self.unstamped,
            "worst_writes": self.worst,
            "write_ack_ms": dist(self.write_ack_ms),
            "first_errors": ERRORS[:10],
        }


def collect(watchers: list[Watcher], log: WriteLog, board: Board) -> Result:
    by_topic: dict[str, list[Watcher]] = {}
    for w in watchers:
        by_topic.setdefault(w.topic, []).append(w)
    latencies: list[float] = []
    arrivals: list[float] = []
    backlog: list[float] = []
    per_server: dict[str, tuple[list[float], list[float]]] = {}  # by the server asked: (arrived, read)
    missed = pairs = before_sent = 0
    first = min(log.sent.values(), default=0.0)
    per_write: list[tuple[float, dict[str, Any]]] = []
    for token, acked in log.acked.items():
        affected = by_topic.get(board.topic_of[token], [])
        pairs += len(affected)
        for w in affected:
            if token in w.seen:
                arrived, read = per_server.setdefault(w.base, ([], []))
                arrived.append((w.arrived[token] - acked) * 1000)
                read.append((w.seen[token] - acked) * 1000)
                backlog.append((w.seen[token] - w.arrived[token]) * 1000)
                before_sent += w.arrived[token] < log.sent[token]
        lagging = [w for w in affected if token not in w.seen]
        if lagging:
            missed += 1
            where = ", ".join(f"{w.base.rsplit('/', 1)[-1]} at index {w.index}" for w in lagging[:5])
            _note_error(f"missed {token} (index {log.index.get(token, 0)}) on {board.topic_of[token]}: {len(lagging)} of {len(affected)} "
                        f"{lagging[0].kind} watchers ({where})")
            continue
        if affected:
            latencies.append((max(w.seen[token] for w in affected) - acked) * 1000)
            last = max(affected, key=lambda w: w.arrived[token])
            arrivals.append((last.arrived[token] - acked) * 1000)
            per_write.append((arrivals[-1], {
                "at": round(log.sent[token] - first, 2), "arrived_ms": round(arrivals[-1]), "read_ms": round(latencies[-1]),
                "ack_ms": round((acked - log.sent[token]) * 1000), "kind": last.kind, "last_from": last.base,
            }))
    by_server = {b: {"arrived_p50": round(pct(a, 0.5), 1), "arrived_p99": round(pct(a, 0.99), 1),
                     "read_p50": round(pct(r, 0.5), 1), "read_p99": round(pct(r, 0.99), 1)}
                 for b, (a, r) in sorted(per_server.items())}
    return Result(latencies, arrivals, by_server, backlog, missed, pairs, sum(w.spurious for w in watchers),
                  sum(w.answers for w in watchers), sum(w.errors for w in watchers), log.errors,
                  unstamped=sum(w.unstamped for w in watchers), before_sent=before_sent,
                  worst=[d for _, d in sorted(per_write, key=lambda x: -x[0])[:8]],
                  write_ack_ms=[(acked - log.sent[t]) * 1000 for t, acked in log.acked.items()])


async def all_seen(watchers: list[Watcher], log: WriteLog, board: Board, timeout_s: float) -> None:
    """Until every acknowledged write has reached every watcher of its topic (or the timeout)."""
    by_topic: dict[str, list[Watcher]] = {}
    for w in watchers:
        by_topic.setdefault(w.topic, []).append(w)
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if all(token in w.seen for token in log.acked for w in by_topic.get(board.topic_of[token], [])):
            return
        await asyncio.sleep(0.1)


async def settle(session: aiohttp.ClientSession, bases: list[str], layout: Layout, board: Board,
                 watchers: list[Watcher], timeout_s: float) -> float:
    """Before the measured stream: one write to every watched KV prefix and service (a new key;
    a new output on a passing instance's check, in `/v1/txn`s), then wait until every KV and
    health watcher has answered with it; returns how long that took.

    The servers' parked count cannot tell a watcher whose first request is still on its way
    (in a listen queue, in a busy watcher process) from one parked on the server: without this,
    a write streamed at such a moment reached that watcher only with its first answer, seconds
    later, and was counted against the servers. After it, every watcher has been served once
    and is back (or on its way back) at a known index. `/v1/catalog/services` watchers get
    nothing here: nothing in the stream may wake them."""
    _RUN[0] += 1
    tag = f"s{_RUN[0]}x{random.randrange(10**6):06d}"
    status = _CHECK_STATUS
    ops: list[dict[str, Any]] = []
    for topic in sorted({w.topic for w in watchers if w.kind in ("kv", "health")}):
        token = f"{tag}-{topic.replace('/', '_')}"
        if topic.startswith("scale/"):
            board.add(topic, token, base64.b64encode(token.encode()))
            ops.append({"KV": {"Verb": "set", "Key": f"{topic}settle", "Value": base64.b64encode(token.encode()).decode()}})
        else:
            i = next(i for i in layout.instances_of(topic) if status.get(i, "passing") == "passing")
            board.add(topic, token, token.encode())
            ops.append(check_op(layout, i, "passing", token))
    start = time.perf_counter()
    for k in range(0, len(ops), MAX_TXN_OPS):
        async with session.put(f"{bases[0]}/v1/txn", json=ops[k:k + MAX_TXN_OPS]) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"settling txn answered {resp.status}: {body[:300]!r}")
    waiting = [w for w in watchers if w.kind in ("kv", "health")]
    deadline = start + timeout_s
    while True:
        waiting = [w for w in waiting if not any(t.startswith(tag) for t in w.seen)]
        if not waiting:
            return time.perf_counter() - start
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{len(waiting)} watchers never answered the settling writes in {timeout_s}s")
        await asyncio.sleep(0.2)


async def wait_parked(session: aiohttp.ClientSession, bases: list[str], watchers: list[Watcher],
                      timeout_s: float) -> None:
    """Until every watcher has sent its blocking request and the servers' parked count has
    settled (identical reads forwarded by a follower or a client agent travel as one call and
    are counted once, on the server that serves them; Consul counts the same way)."""
    deadline = time.perf_counter() + timeout_s
    last, steady = -1, 0
    while True:
        parked = await parked_total(session, bases)
        steady = steady + 1 if parked == last and parked > 0 else 0
        last = parked
        if steady >= 3 and all(w.parked_once for w in watchers):
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{parked} blocking queries parked for {len(watchers)} watchers after {timeout_s}s")
        await asyncio.sleep(0.3)


async def health_latency(session: aiohttp.ClientSession, base: str, service: str, n: int) -> dict[str, float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.get(f"{base}/v1/health/service/{service}") as resp:
            await resp.read()
        out.append((time.perf_counter() - t) * 1000)
    return {"p50": round(pct(out, 0.5), 1), "p99": round(pct(out, 0.99), 1), "n": n}


async def watch_and_write(session: aiohttp.ClientSession, bases: list[str], layout: Layout, *, watchers: int,
                          writes: int, rate: float, seed: int, kv_prefixes: int, health_services: int,
                          wait: str = WATCH_WAIT, on_parked: Any = None, watch_bases: list[str] | None = None,
                          stale: bool = False, on_stream_end: Any = None, procs: int = 1) -> Result:
    """Phases 2 and 3: park the watchers, stream the writes, collect what the watchers saw."""
    rng = random.Random(seed * 1_000_003 + watchers)
    for k in range(kv_prefixes):  # each watched prefix holds a key from the start
        async with session.put(f"{bases[0]}/v1/kv/scale/p{k:03d}/seed", data=b"seed") as resp:
            await resp.read()
    plan = plan_watchers(layout, watch_bases or bases, watchers, rng, kv_prefixes, health_services, stale)
    board = Board()
    await prime(session, plan)
    if procs > 1:
        tasks: list[asyncio.Future[Any]] = []
        pool = WatcherProcesses(plan, procs, wait, board)
    else:
        tasks = [asyncio.ensure_future(run_watcher_raw(w, board, wait)) for w in plan]
        pool = None
    try:
        await wait_parked(session, bases, plan, timeout_s=120 + watchers / 20)
        settle_s = await settle(session, bases, layout, board, plan, timeout_s=300)
        print(f"# {watchers} watchers: every one answered the settling writes after {settle_s:.1f}s", file=sys.stderr)
        if on_parked is not None:
            on_parked()
        log = await stream_writes(bases, layout, board, plan, writes, rate, rng)
        await all_seen(plan, log, board, timeout_s=60)
        if on_stream_end is not None:
            on_stream_end()
        if pool is not None:  # the processes' counts arrive as they stop
            await pool.stop()
            WATCHER_PROCESS_LAG[:] = pool.lags
            pool = None
        return collect(plan, log, board)
    finally:
        board.stop = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if pool is not None:
            await pool.stop()


# ---------------------------------------------------------------------------------- servers


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def start_servers(procs: Any, root: Path, ips: list[str], profile_dir: Path | None = None) -> list[Any]:
    """With `profile_dir`, each server runs under cProfile (bench/raft_server_wrapper.py) and
    writes `<profile_dir>/<ip>.prof` when stopped."""
    code = "import sys; from proconsul.agent.agent import run_agent; sys.exit(run_agent(sys.argv[1:]))"
    wrapper = str(Path(__file__).resolve().parent / "raft_server_wrapper.py")
    started = []
    for ip in ips:
        head = ([wrapper, "--prof", str(profile_dir / f"{ip}.prof"), "--"] if profile_dir is not None
                else ["-c", code])
        joins = [f"-retry-join={o}" for o in ips if o != ip]
        args = [
            "-server", "-bootstrap-expect=3", *joins, f"-bind={ip}", f"-client={ip}", f"-node=s{ip.rsplit('.', 1)[1]}",
            f"-data-dir={root / ip}",
            # info (was warn): the stalls of 100 ms or more and the collector's complete scans
            # are logged at info with their times (read back by `stalls_in`).
            "-hcl", "limits { http_max_conns_per_client = 100000 }", "-log-level=info",
        ]
        env = {**os.environ, "PROF_WINDOW": "1"} if profile_dir is not None else None
        started.append(procs.start(f"server {ip}", [python_exe(), *head, *args], root / f"{ip}.log", env=env))
    return started


_STALL_LINE = re.compile(r"(gc: complete scan|runtime: gc pause|runtime: loop lag)(.*?)([\d.]+) ms.*ended at ([\d.]+)")


def stalls_in(log: Path, start: float, end: float) -> list[dict[str, Any]]:
    """The stalls a server logged (agent/gc_policy.py, metrics/runtime.py: loop lag and collector
    pauses of 100 ms or more, each with the wall time it ended) that ended between `start` and
    `end` (wall clock), each as {"kind", "ms", "at": seconds after `start`}. A complete scan is
    also a generation-2 pause of the same collection (both lines are kept, told apart by kind)."""
    kinds = {"gc: complete scan": "complete_scan", "runtime: gc pause": "gc_pause", "runtime: loop lag": "loop_lag"}
    out: list[dict[str, Any]] = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return out
    for m in _STALL_LINE.finditer(text):
        ended = float(m.group(4))
        if start <= ended <= end:
            item: dict[str, Any] = {"kind": kinds[m.group(1)], "ms": round(float(m.group(3))), "at": round(ended - start, 2)}
            for name in ("generation", "reclaimed"):
                found = re.search(rf"{name} (\d+)" if name == "generation" else rf"(\d+) {name}", m.group(0))
                if found:
                    item[name] = int(found.group(1))
            out.append(item)
    return out


async def poll_loop_lag(session: aiohttp.ClientSession, bases: list[str], worst: dict[str, float],
                        gc_worst: dict[str, float] | None = None) -> None:
    """Until cancelled: the worst `runtime.loop_lag` (how late a 1 s timer fired, ms) and, into
    `gc_worst`, the longest garbage collection (`runtime.gc_pause_ns`, as ms) each server
    reports, read every 2 s (each 10 s metrics interval keeps its max)."""
    while True:
        for base in bases:
            try:
                async with session.get(f"{base}/v1/agent/metrics", timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    data = await resp.json()
            except (TimeoutError, aiohttp.ClientError):
                continue
            for sample in data.get("Samples", []):
                if sample["Name"].endswith("runtime.loop_lag"):
                    worst[base] = max(worst.get(base, 0.0), float(sample.get("Max", 0.0)))
                elif gc_worst is not None and sample["Name"].endswith("runtime.gc_pause_ns"):
                    gc_worst[base] = max(gc_worst.get(base, 0.0), float(sample.get("Max", 0.0)) / 1e6)
        await asyncio.sleep(2)


async def own_loop_lag(worst: list[float], period_s: float = 0.05) -> None:
    """Until cancelled: how late this process's own loop runs a `period_s` timer (ms), all
    samples (the load generator is one process: when it lags, every latency it reports does)."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period_s)
        worst.append((loop.time() - t - period_s) * 1000)


async def wait_leader(session: aiohttp.ClientSession, bases: list[str], timeout_s: float = 90) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        try:
            ok = 0
            for base in bases:
                async with session.get(f"{base}/v1/status/leader") as resp:
                    ok += (await resp.read()) not in (b'""', b"")
            if ok == len(bases):
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("no leader")


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    layout = Layout(a.nodes, a.instances, a.services, a.big)
    procs = Procs()
    tmp = tempfile.TemporaryDirectory(prefix="catalog-scale-")
    ips = a.servers.split(",") if a.servers else [f"127.61.{a.subnet}.{k}" for k in (1, 2, 3)]
    bases = [f"http://{ip}:8500" for ip in ips]
    out: dict[str, Any] = {"layout": vars(layout), "writes": a.writes, "rate": a.write_rate}
    profile_dir = Path(a.profile).resolve() if a.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    try:
        pids = [] if a.servers else [p.pid for p in start_servers(procs, Path(tmp.name), ips, profile_dir)]
        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
            await wait_leader(session, bases)
            secs, txns = await load_catalog(session, bases, layout)
            out["load"] = {"seconds": round(secs, 1), "txns": txns, "instances_per_s": round(a.instances / secs)}
            print(f"# loaded {a.nodes} nodes / {a.instances} instances in {secs:.1f}s", file=sys.stderr)
            leader = await leader_base(session, bases)
            out["health_big_service_ms"] = await health_latency(session, leader, "svc-0000", a.health_reads)
            out["runs"] = []
            watch_bases = [leader] if a.watch_on == "leader" else bases
            out["watch_on"], out["stale"], out["watch_procs"] = a.watch_on, a.stale, a.watch_procs
            for n_watchers in [int(x) for x in str(a.watchers).split(",")]:
                before: dict[int, tuple[float, int]] = {}
                run: dict[str, Any] = {"watchers": n_watchers}

                prof = cProfile.Profile() if profile_dir is not None else None
                own_lag: list[float] = []
                own_lagger: list[asyncio.Future[None]] = []

                def mark(run: dict[str, Any] = run, before: dict[int, tuple[float, int]] = before,
                         prof: Any = prof, own_lag: list[float] = own_lag, own_lagger: Any = own_lagger) -> None:
                    for pid in pids:
                        before[pid] = proc_cpu_rss(pid)
                    run["stream_start"] = time.perf_counter()
                    run["stream_start_wall"] = time.time()
                    own_lagger.append(asyncio.ensure_future(own_loop_lag(own_lag)))
                    if prof is not None:
                        for pid in pids:
                            os.kill(pid, signal.SIGUSR1)
                        prof.enable()
                    print(f"# {run['watchers']} watchers parked", file=sys.stderr)

                def stream_end(prof: Any = prof, n: int = n_watchers, own_lagger: Any = own_lagger,
                               run: dict[str, Any] = run) -> None:
                    run["stream_end_wall"] = time.time()
                    for t in own_lagger:
                        t.cancel()
                    if prof is not None:
                        for pid in pids:
                            os.kill(pid, signal.SIGUSR2)
                        prof.disable()
                        prof.dump_stats(str(profile_dir / f"loadgen-{n}.prof"))  # type: ignore[operator]

                lag: dict[str, float] = {}
                gc_lag: dict[str, float] = {}
                poller = asyncio.ensure_future(poll_loop_lag(session, bases, lag, gc_lag))
                try:
                    result = await watch_and_write(
                        session, bases, layout, watchers=n_watchers, writes=a.writes, rate=a.write_rate,
                        seed=a.seed, kv_prefixes=a.kv_prefixes, health_services=a.health_services, on_parked=mark,
                        watch_bases=watch_bases, stale=a.stale, on_stream_end=stream_end, procs=a.watch_procs,
                    )
                finally:
                    poller.cancel()
                # Over the whole run: the watchers' arrival and parking included, not only the stream.
                run["worst_loop_lag_ms"] = {b: round(v) for b, v in sorted(lag.items())}
                run["worst_gc_pause_ms"] = {b: round(v) for b, v in sorted(gc_lag.items())}
                run["loadgen_loop_lag_ms"] = {"p50": round(pct(own_lag, 0.5), 1), "p99": round(pct(own_lag, 0.99), 1),
                                              "max": round(max(own_lag, default=0.0), 1)}
                run["watcher_procs_loop_lag_ms"] = list(WATCHER_PROCESS_LAG)
                # From the first write to the last affected watcher's answer: what the servers
                # logged of their stalls then (the whole run's worst figures are above).
                t0, t1 = run.pop("stream_start_wall"), run.pop("stream_end_wall")
                if not a.servers:
                    run["stalls_in_stream"] = {b: stalls_in(Path(tmp.name) / f"{ip}.log", t0, t1)
                                               for b, ip in zip(bases, ips)}
                elapsed = time.perf_counter() - run.pop("stream_start")
                run["result"] = result.summary()
                run["servers"] = []
                for pid in pids:
                    cpu, rss = proc_cpu_rss(pid)
                    run["servers"].append({"cpu_s_during_stream": round(cpu - before[pid][0], 1),
                                           "cpu_share": round((cpu - before[pid][0]) / elapsed, 2),
                                           "rss_mb": round(rss / 2**20)})
                run["stream_seconds"] = round(elapsed, 1)
                out["runs"].append(run)
                ERRORS.clear()
                print(f"# {n_watchers} watchers: {json.dumps(run)}", file=sys.stderr)
    finally:
        procs.stop_all()
        tmp.cleanup()
    return out


async def leader_base(session: aiohttp.ClientSession, bases: list[str]) -> str:
    async with session.get(f"{bases[0]}/v1/status/leader") as resp:
        leader = json.loads(await resp.read()).rsplit(":", 1)[0]
    return next(b for b in bases if f"//{leader}:" in b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--instances", type=int, default=50_000)
    p.add_argument("--services", type=int, default=500)
    p.add_argument("--big", type=int, default=1000, help="instances of svc-0000")
    p.add_argument("--watchers", default="1000", help="comma-separated: one run per count on the same cluster")
    p.add_argument("--health-services", type=int, default=100, help="distinct services health watchers watch")
    p.add_argument("--kv-prefixes", type=int, default=50)
    p.add_argument("--writes", type=int, default=400)
    p.add_argument("--write-rate", type=float, default=20.0)
    p.add_argument("--health-reads", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--subnet", type=int, default=5, help="servers on 127.61.<subnet>.1-3")
    p.add_argument("--watch-on", choices=("all", "leader"), default="all",
                   help="spread watchers over all servers, or put them all on the leader (no forwarding)")
    p.add_argument("--watch-procs", type=int, default=4,
                   help="processes holding the watchers (the writer and the measurement stay in the main one)")
    p.add_argument("--stale", action="store_true", help="watchers read with ?stale (no forwarding)")
    p.add_argument("--profile", default="", help="directory: run the servers and the stream phase under cProfile")
    p.add_argument("--servers", default="", help="comma-separated IPs of running servers (HTTP on :8500)")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per watcher
    out = asyncio.run(main_async(a))
    out["machine"] = f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
