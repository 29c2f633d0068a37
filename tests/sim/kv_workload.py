"""Simulated KV clients on a simulated Raft cluster, recording a history for the checker.

Each client has at most one operation outstanding. It picks a node (usually the current
leader, sometimes any live node, which answers "not leader"), and issues one of

- `put k v`: a `KVS set` command proposed on that node;
- `cas k expected new`: a `KVS cas` command whose ModifyIndex is the one a get (or put)
  returned with `expected` (0 when the client expects the key to be absent);
- `get k` through ReadIndex (`read_index`, then the node's own store once the ReadState is
  released: Consul's `?consistent`);
- `get k` from the leader's local store at once (Consul's default mode).

Outcomes follow the product's rules (DESIGN.md house rule 6): a proposal answered by the
node applying its (index, term) is `ok` with the FSM's result; "not leader" at the time of the
call is `fail` (nothing was proposed); a proposal whose index applied with another term, a
snapshot replacing the node's log past it, a crash of the node, or the client's timeout is
`info` (unknown: another leader may still commit it). A read that cannot be answered is `fail`
(it had no effect). Every written value is unique, so the checker can treat a cas by
ModifyIndex as a cas by value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from linearizability import FAIL, INFO, OK, Op
from proconsul.raft.core import Entry, Role
from proconsul.state import commands as cmd
from proconsul.state.records import DirEntry
from raft_sim import Cluster


@dataclass
class _Pending:
    client: int
    key: str
    kind: str  # put | cas | get
    value: object
    call: int
    node: str
    deadline: int
    index: int = 0  # write: proposal index
    term: int = 0  # write: proposal term
    ctx: bytes = b""  # ReadIndex read: request context


class KVWorkload:
    def __init__(self, c: Cluster, rng: random.Random, *, clients: int = 4, keys: int = 3,
                 p_op: float = 0.3, timeout: int = 40, p_leader_read: float = 0.15) -> None:
        self.c = c
        self.rng = rng
        self.clients = clients
        self.keys = [f"k{i}" for i in range(keys)]
        self.p_op = p_op
        self.timeout = timeout
        self.p_leader_read = p_leader_read
        self.clock = 0  # one tick of this clock per history event: a strict real-time order
        self.history: list[Op] = []
        self.pending: dict[int, _Pending] = {}
        self.by_index: dict[tuple[str, int], int] = {}  # (node, proposal index) -> client
        self.by_ctx: dict[bytes, int] = {}  # ReadIndex context -> client
        self.seen: dict[str, list[tuple[bytes, int]]] = {k: [] for k in self.keys}  # (value, ModifyIndex)
        self.n_ops = 0
        c.on_apply = self._on_apply
        c.on_read = self._on_read
        c.on_crash = self._on_crash
        c.on_snapshot = self._on_snapshot

    # ------------------------------------------------------------------ history

    def _now(self) -> int:
        self.clock += 1
        return self.clock

    def _finish(self, p: _Pending, status: str, value: object = None, output: object = None) -> None:
        self.pending.pop(p.client, None)
        if self.by_index.get((p.node, p.index)) == p.client:
            del self.by_index[(p.node, p.index)]
        self.by_ctx.pop(p.ctx, None)
        if p.kind != "get":
            value = p.value
        self.history.append(Op(p.client, p.key, p.kind, value, p.call,
                               None if status == INFO else self._now(), status, output,
                               note=f"{p.node}@{p.index}" if p.kind != "get" else f"{p.node} readindex"))

    def _learn(self, key: str, value: bytes | None, index: int) -> None:
        if value is not None and index and (value, index) not in self.seen[key]:
            self.seen[key].append((value, index))
            if len(self.seen[key]) > 8:
                self.seen[key].pop(0)

    # ------------------------------------------------------------------ client steps

    def step(self, issue: bool = True) -> None:
        """Before a tick: time out overdue operations, then let idle clients start new ones."""
        now = self.c.now
        for p in sorted(self.pending.values(), key=lambda p: p.client):
            if now >= p.deadline:
                self._finish(p, FAIL if p.kind == "get" else INFO)
        if not issue:
            return
        for client in range(self.clients):
            if client not in self.pending and self.rng.random() < self.p_op:
                self._start(client)

    def _start(self, client: int) -> None:
        c, rng = self.c, self.rng
        alive = c.alive()
        lead = c.leader()
        if not alive or (lead is None and rng.random() < 0.8):
            return  # no leader known: a real client would mostly back off and retry later
        node = lead if lead is not None and rng.random() < 0.85 else rng.choice(alive)
        key = rng.choice(self.keys)
        self.n_ops += 1
        value = f"c{client}.{self.n_ops}".encode()
        r = rng.random()
        deadline = c.now + self.timeout
        if r < 0.4 or (r < 0.6 and not self.seen[key] and rng.random() < 0.5):
            p = _Pending(client, key, "put", value, self._now(), node, deadline)
            self._propose(p, cmd.KVS(cmd.KVOp.SET, DirEntry(key, value)))
        elif r < 0.6:
            exp, idx = rng.choice(self.seen[key]) if self.seen[key] else (None, 0)
            p = _Pending(client, key, "cas", (exp, value), self._now(), node, deadline)
            self._propose(p, cmd.KVS(cmd.KVOp.CAS, DirEntry(key, value, modify_index=idx)))
        elif r < 1 - self.p_leader_read:
            p = _Pending(client, key, "get", None, self._now(), node, deadline)
            ctx = c.read(node) if node in alive else None
            if ctx is None:
                self._finish(p, FAIL)
                return
            p.ctx = ctx
            self.pending[client] = p
            self.by_ctx[ctx] = client
        else:
            # Default-mode read: the leader's local store, no quorum check.
            call = self._now()
            r_ = c.nodes[node].raft
            if r_ is None or r_.role != Role.LEADER:
                return
            store = c.nodes[node].kv.store
            idx, e = store.kv_get(key)
            val = e.value if e is not None else None
            if e is not None:
                self._learn(key, val, e.modify_index)
            # For reports: is this leader deposed already (a higher term exists), and has it
            # committed an entry of its term yet (before that its store may lag the last
            # leader's acknowledged writes)?
            top = max(c.raft(i).term for i in alive)
            why = "deposed" if r_.term < top else (
                "current" if r_._committed_in_term() else "new-uncommitted")
            self.history.append(Op(client, key, "get", val, call, self._now(), OK,
                                   note=f"{node} leader-local {why} term={r_.term} "
                                        f"applied={c.nodes[node].applied}"))

    def _propose(self, p: _Pending, command: cmd.Command) -> None:
        prop = self.c.propose(p.node, cmd.encode(command))
        if prop is None:
            self._finish(p, FAIL)  # not leader (or transferring): nothing was proposed
            return
        p.index, p.term = prop.index, prop.term
        self.pending[p.client] = p
        self.by_index[(p.node, p.index)] = p.client

    # ------------------------------------------------------------------ cluster hooks

    def _on_apply(self, node: str, e: Entry, result: object) -> None:
        client = self.by_index.get((node, e.index))
        if client is None:
            return
        p = self.pending[client]
        if e.term != p.term:
            self._finish(p, INFO)  # another leader's entry took the index: fate unknown here
            return
        if isinstance(result, Exception):
            self.c.fail(f"KV command {p.kind} {p.key} failed in the FSM: {result!r}")
        if p.kind == "put" or result:
            self._learn(p.key, p.value if p.kind == "put" else p.value[1], e.index)  # type: ignore[index]
        self._finish(p, OK, output=bool(result) if p.kind == "cas" else None)

    def _on_read(self, node: str, index: int, ctx: bytes) -> None:
        client = self.by_ctx.get(ctx)
        if client is None:
            return
        p = self.pending[client]
        store = self.c.nodes[node].kv.store
        _, e = store.kv_get(p.key)
        val = e.value if e is not None else None
        if e is not None:
            self._learn(p.key, val, e.modify_index)
        self._finish(p, OK, value=val)

    def _on_crash(self, node: str) -> None:
        for p in sorted(self.pending.values(), key=lambda p: p.client):
            if p.node == node:
                self._finish(p, FAIL if p.kind == "get" else INFO)

    def _on_snapshot(self, node: str, index: int) -> None:
        for p in sorted(self.pending.values(), key=lambda p: p.client):
            if p.node == node and p.kind != "get" and p.index <= index:
                self._finish(p, INFO)  # a snapshot replaced the log past it: fate unknown here

    def close(self) -> None:
        """End of the run: whatever is still outstanding has an unknown outcome."""
        for p in sorted(self.pending.values(), key=lambda p: p.client):
            self._finish(p, FAIL if p.kind == "get" else INFO)

    # ------------------------------------------------------------------ results

    def strict_history(self) -> list[Op]:
        """Writes and ReadIndex reads: these must be linearizable."""
        return [op for op in self.history if "leader-local" not in op.note]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.history:
            k = f"{op.kind}:{op.status}" + (":local" if "leader-local" in op.note else "")
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))
