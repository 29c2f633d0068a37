"""Client workloads of a chaos run: threads that talk HTTP straight to the agents and record
every operation in the run's `History`, Jepsen style.

Outcome rules (what the checkers rely on):
- a request refused before it was sent (connection refused, connect timeout) is `fail`;
- a read that gets no answer is `fail` too: a read has no effect, so dropping it is sound;
- a write that times out or loses its connection after sending is `info` (indeterminate), and so
  is any HTTP 5xx on a write except the ones that prove it was never proposed ("No cluster
  leader", "node is not the leader", a forward whose dial was refused): see
  docs/DURABILITY.md, "UnknownOutcome";
- after an `info` the worker continues as a new process id (the old request may still land).

Workloads: a CAS register per key on KV (`?cas=ModifyIndex`; default, `?consistent` and `?stale`
reads, the last recording `X-Consul-LastContact` and `X-Consul-KnownLeader`),
a grow-only set (one KV key per element), a mutex (KV lock `?acquire`/`?release` through a
session of its own) and service-discovery sampling (`/v1/health/service/web?passing`).
"""

from __future__ import annotations

import base64
import random
import threading
from collections.abc import Callable
from typing import Any

import requests

from .history import History, Op
from .launcher import Node

CONNECT_TIMEOUT_S = 2.0
# Longer than the daemon's own waits for a leader (rpc_hold_timeout, 7 s), so an answer that
# exists arrives; a forwarded write can still take longer and then ends `info`.
READ_TIMEOUT_S = 10.0
DEFINITE_WRITE_FAILURES = ("No cluster leader", "node is not the leader")
# A follower's forward to the leader makes one dial and sends nothing before it connects; the
# daemon reports a refused dial as an unknown outcome ("lost the connection ... mid-write"), but
# ECONNREFUSED only ever answers a connect, so the write was certainly never sent.
REFUSED_DIAL = "[Errno 111] Connection refused"


class Outcome:
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


def classify_exception(exc: requests.RequestException) -> str:
    """fail if the request never left (refused or connect timeout), else info."""
    if isinstance(exc, requests.ConnectTimeout):
        return Outcome.FAIL
    if isinstance(exc, requests.ConnectionError) and "NewConnectionError" in repr(exc):
        return Outcome.FAIL
    return Outcome.INFO


class Worker(threading.Thread):
    """One client thread bound to one agent, issuing operations until stopped."""

    def __init__(self, workload: Workload, index: int, node: Node, seed: int) -> None:
        super().__init__(name=f"{workload.name}-{index}", daemon=True)
        self.workload = workload
        self.index = index
        self.process = index
        self.node = node
        self.rng = random.Random(seed)
        self.session = requests.Session()

    def new_process(self) -> None:
        self.process += self.workload.worker_count

    def run(self) -> None:
        stop = self.workload.stop_event
        while not stop.is_set():
            try:
                self.workload.step(self)
            except Exception as exc:  # a harness bug must not hang the run silently
                self.workload.errors.append(f"{self.name}: {exc!r}")
                return
            stop.wait(self.rng.uniform(0, 2 * self.workload.mean_delay_s))

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.session.request(method, f"{self.node.url}{path}",
                                    timeout=(CONNECT_TIMEOUT_S, self.workload.timeout_s), **kw)


class Workload:
    """Base: a named set of workers over the given agents."""

    name = "workload"

    def __init__(self, history: History, nodes: list[Node], seed: int, workers: int, mean_delay_s: float,
                 timeout_s: float = READ_TIMEOUT_S) -> None:
        self.history = history
        self.nodes = nodes
        self.seed = seed
        self.worker_count = workers
        self.mean_delay_s = mean_delay_s
        self.timeout_s = timeout_s
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.base_process = 0
        self.workers: list[Worker] = []

    def start(self, base_process: int) -> None:
        self.base_process = base_process
        self.setup()
        for i in range(self.worker_count):
            node = self.nodes[i % len(self.nodes)]
            worker = Worker(self, i, node, self.seed * 7919 + i)
            worker.process = base_process + i
            self.workers.append(worker)
        for worker in self.workers:
            worker.start()

    def setup(self) -> None:
        pass

    def step(self, worker: Worker) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_event.set()
        for worker in self.workers:
            worker.join(self.timeout_s + CONNECT_TIMEOUT_S + 5)

    def finish(self, cluster_nodes: list[Node]) -> None:
        """After the nemesis healed everything: final reads the checkers need."""

    def write(self, worker: Worker, op: Op, method: str, path: str, data: bytes,
              on_ok: Callable[[Any], None]) -> None:
        """Send a write; complete `op` by the outcome rules above (`on_ok` gets the JSON body)."""
        try:
            resp = worker.request(method, path, data=data)
        except requests.RequestException as exc:
            if classify_exception(exc) == Outcome.FAIL:
                self.history.fail(op, f"not sent: {type(exc).__name__}")
            else:
                self.history.info(op, f"no answer: {type(exc).__name__}")
                worker.new_process()
            return
        if resp.status_code == 200:
            on_ok(resp.json())
        elif (resp.status_code < 500 or resp.text.strip().startswith(DEFINITE_WRITE_FAILURES)
              or resp.text.strip().endswith(REFUSED_DIAL)):
            self.history.fail(op, f"{resp.status_code} {resp.text.strip()[:200]}")
        else:
            self.history.info(op, f"{resp.status_code} {resp.text.strip()[:200]}")
            worker.new_process()


def _decode_value(entry: dict[str, Any]) -> int | None:
    raw = entry.get("Value")
    return int(base64.b64decode(raw).decode()) if raw else None


class CasRegister(Workload):
    """A linearizable register per key: reads (default, ?consistent and ?stale), writes, and CAS on the
    key's ModifyIndex. Every written value is unique, so "ModifyIndex m" and "the value that the
    write at m wrote" name the same state: the checker's cas(expected, new) compares values.

    Keys rotate as Jepsen's independent keys do: a key group moves to a fresh key after
    `ops_per_key` operations or `key_lifetime_s` seconds, whichever comes first, so each key's
    history stays small enough for the linearizability search to decide (proving a history
    non-linearizable means exhausting the search, which is exponential in its concurrency)."""

    name = "cas-register"

    def __init__(self, *args: Any, keys: int = 2, ops_per_key: int = 80, key_lifetime_s: float = 10.0,
                 default_reads: float = 0.3, consistent_reads: float = 0.2, stale_reads: float = 0.1,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        # Operation mix: these fractions of reads, the rest split between writes and CAS.
        if min(default_reads, consistent_reads, stale_reads) < 0 or default_reads + consistent_reads + stale_reads > 1:
            raise ValueError("cas_register read fractions must be >= 0 and add up to at most 1")
        self.default_reads = default_reads
        self.consistent_reads = consistent_reads
        self.stale_reads = stale_reads
        self.key_groups = keys
        self.ops_per_key = ops_per_key
        self.key_lifetime_s = key_lifetime_s
        self.lock = threading.Lock()
        self.generation = [0] * keys
        self.op_count = [0] * keys
        self.key_born = [0.0] * keys  # history time of each group's current key's first operation
        self.next_value = 0
        # What each worker last saw of each key: value -> the ModifyIndex that wrote it.
        self.seen: dict[tuple[int, str], tuple[int | None, int]] = {}

    def key_for(self, worker: Worker) -> str:
        # Consecutive workers sit on different agents (Workload.start), so each key group spans
        # every agent: a stale agent and the majority then work on the same keys.
        group = (worker.index // len(self.nodes)) % self.key_groups
        now = self.history.clock()
        with self.lock:
            self.op_count[group] += 1
            if self.op_count[group] == 1:
                self.key_born[group] = now
            elif self.op_count[group] > self.ops_per_key or now - self.key_born[group] > self.key_lifetime_s:
                self.op_count[group] = 1
                self.key_born[group] = now
                self.generation[group] += 1
            return f"reg/{group}/{self.generation[group]}"

    def fresh_value(self) -> int:
        with self.lock:
            self.next_value += 1
            return self.next_value

    def step(self, worker: Worker) -> None:
        key = self.key_for(worker)
        roll = worker.rng.random()
        reads = self.default_reads + self.consistent_reads + self.stale_reads
        if roll < self.default_reads:
            self.read(worker, key, "default")
        elif roll < self.default_reads + self.consistent_reads:
            self.read(worker, key, "consistent")
        elif roll < reads:
            self.read(worker, key, "stale")
        elif roll < reads + (1 - reads) / 2 or (worker.index, key) not in self.seen:
            self.put(worker, key)
        else:
            self.cas(worker, key)

    def read(self, worker: Worker, key: str, mode: str) -> None:
        """A read in `mode` ("default", "consistent" or "stale"); the answer's LastContact and
        KnownLeader headers go into the op (the bounded-staleness checker's bound)."""
        op = self.history.invoke(worker.process, "read", key, None, mode=mode, node=worker.node.name)
        query = {"default": "", "consistent": "?consistent", "stale": "?stale"}[mode]
        try:
            resp = worker.request("GET", f"/v1/kv/{key}{query}")
        except requests.RequestException as exc:
            self.history.fail(op, f"read not answered: {type(exc).__name__}")
            return
        contact = resp.headers.get("X-Consul-LastContact")
        if contact is not None and contact.isdigit():
            op.extra["last_contact_ms"] = int(contact)
        if "X-Consul-KnownLeader" in resp.headers:
            op.extra["known_leader"] = resp.headers["X-Consul-KnownLeader"] == "true"
        if resp.status_code == 404:
            self.seen[(worker.index, key)] = (None, 0)
            self.history.ok(op, None)
        elif resp.status_code == 200:
            entry = resp.json()[0]
            value = _decode_value(entry)
            self.seen[(worker.index, key)] = (value, int(entry["ModifyIndex"]))
            self.history.ok(op, value)
        else:
            self.history.fail(op, f"{resp.status_code} {resp.text.strip()[:200]}")

    def put(self, worker: Worker, key: str) -> None:
        value = self.fresh_value()
        op = self.history.invoke(worker.process, "write", key, value, node=worker.node.name)
        self.write(worker, op, "PUT", f"/v1/kv/{key}", str(value).encode(), lambda body: self.history.ok(op))

    def cas(self, worker: Worker, key: str) -> None:
        expected, index = self.seen.pop((worker.index, key))
        new = self.fresh_value()
        op = self.history.invoke(worker.process, "cas", key, (expected, new), node=worker.node.name, index=index)
        self.write(worker, op, "PUT", f"/v1/kv/{key}?cas={index}", str(new).encode(),
                   lambda body: self.history.ok(op, bool(body)))


class GrowOnlySet(Workload):
    """Adds of unique elements (one key `set/<n>` each); at the end one ?consistent read of all."""

    name = "grow-only-set"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lock = threading.Lock()
        self.next_element = 0

    def step(self, worker: Worker) -> None:
        with self.lock:
            self.next_element += 1
            element = self.next_element
        op = self.history.invoke(worker.process, "add", "set", element, node=worker.node.name)
        self.write(worker, op, "PUT", f"/v1/kv/set/{element}", b"1",
                   lambda body: self.history.ok(op) if body is True else self.history.fail(op, f"answered {body}"))

    def finish(self, cluster_nodes: list[Node]) -> None:
        process = self.base_process + 10_000
        for attempt in range(30):
            node = cluster_nodes[attempt % len(cluster_nodes)]
            op = self.history.invoke(process, "read-all", "set", None, node=node.name)
            try:
                resp = requests.get(f"{node.url}/v1/kv/set/?keys&consistent", timeout=(2, 15))
            except requests.RequestException as exc:
                self.history.fail(op, repr(exc))
                continue
            if resp.status_code in (200, 404):
                keys = resp.json() if resp.status_code == 200 else []
                self.history.ok(op, sorted(int(k.rsplit("/", 1)[1]) for k in keys))
                return
            self.history.fail(op, f"{resp.status_code} {resp.text.strip()[:200]}")
            self.stop_event.wait(1)


class Mutex(Workload):
    """Lock `mutex/lock` through sessions without health checks.

    An explicit release frees the lock at once. The only other way a holder loses it is its
    session being invalidated behind its back: the session's node deregistered, as when
    autopilot removes a server that stayed failed after a partition healed, before gossip saw it
    alive again. The sessions therefore keep Consul's default lock-delay (15 s), which holds the
    lock free for that long after an invalidation (not after a release), so a holder that still
    believes it holds the lock finishes its 0.2 s critical section before anyone else can take
    it; with a lock-delay of 0 the mutex checker reported that (correct) behaviour as an
    overlap."""

    name = "mutex"
    hold_s = 0.2

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sessions: dict[int, str] = {}

    def session_of(self, worker: Worker) -> str | None:
        sid = self.sessions.get(worker.index)
        if sid:
            return sid
        try:
            resp = worker.request("PUT", "/v1/session/create",
                                  json={"Name": f"sim-{worker.index}", "Checks": [], "LockDelay": "15s"})
        except requests.RequestException:
            return None
        if resp.status_code != 200:
            return None
        self.sessions[worker.index] = resp.json()["ID"]
        return self.sessions[worker.index]

    def step(self, worker: Worker) -> None:
        sid = self.session_of(worker)
        if sid is None:
            return
        op = self.history.invoke(worker.process, "acquire", "mutex/lock", sid, node=worker.node.name)
        got: list[bool] = []

        def acquired(body: Any) -> None:
            if body is True:
                got.append(True)
                self.history.ok(op)
            else:
                self.history.fail(op, "held by another session")

        process_before = worker.process
        self.write(worker, op, "PUT", f"/v1/kv/mutex/lock?acquire={sid}", str(worker.process).encode(), acquired)
        if not got and worker.process == process_before:
            return  # definitely not acquired
        if got:
            self.stop_event.wait(worker.rng.uniform(0, 2 * self.hold_s))
        # Held, or perhaps held (acquire indeterminate): release until the answer is known.
        for _ in range(20):
            rel = self.history.invoke(worker.process, "release", "mutex/lock", sid, node=worker.node.name)
            done: list[bool] = []
            self.write(worker, rel, "PUT", f"/v1/kv/mutex/lock?release={sid}", b"",
                       lambda body, rel=rel, done=done: (done.append(True), self.history.ok(rel, body)))
            if done:
                return
            self.stop_event.wait(0.5)


class DiscoverySampler(threading.Thread):
    """Every `interval_s`, which nodes `/v1/health/service/web?passing` lists (asked of any
    server that answers); the nemesis adds the fault/heal events of client nodes."""

    SERVICE = "web"

    def __init__(self, servers: list[Node], clients: list[Node], clock: Callable[[], float],
                 interval_s: float = 0.5) -> None:
        super().__init__(name="discovery-sampler", daemon=True)
        self.servers = servers
        self.clients = clients
        self.clock = clock
        self.interval_s = interval_s
        self.observations: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def register_services(self) -> None:
        for client in self.clients:
            resp = requests.put(f"{client.url}/v1/agent/service/register",
                                json={"Name": self.SERVICE, "ID": f"{self.SERVICE}-{client.name}", "Port": 80},
                                timeout=10)
            resp.raise_for_status()

    def record(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.observations.append(event)

    def sample_once(self) -> list[str] | None:
        for server in self.servers:
            if not server.running or server.paused:
                continue
            try:
                resp = requests.get(f"{server.url}/v1/health/service/{self.SERVICE}?passing",
                                    timeout=(1, 3))
            except requests.RequestException:
                continue
            if resp.status_code == 200:
                return sorted(entry["Node"]["Node"] for entry in resp.json())
        return None

    def run(self) -> None:
        while not self.stop_event.is_set():
            passing = self.sample_once()
            if passing is not None:
                self.record({"event": "sample", "time": self.clock(), "passing": passing})
            self.stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)
