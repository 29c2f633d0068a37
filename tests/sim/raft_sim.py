"""Deterministic in-process Raft cluster: the harness for the unit tests and the seeded simulation.

Owns a set of `RaftNode`s, each with a `MemoryStorage` that plays the disk (it survives a
crash; everything else about the node is volatile), two FSMs (the trace of applied NORMAL
entries, and the product's `FSM` + `Store` applying `proconsul.state.commands`), and a network
between them. Two ways to drive it:

- **Instant mode** (unit tests): `stabilize()` processes every Ready and delivers every message
  in FIFO order until the cluster is quiet; `cut`/`isolate`/`drop` filter messages.
- **Simulated time** (`run_tick`, `simulate`): a virtual clock ticks every live node, and a
  seeded network delays (reorders), loses and duplicates messages, honours one-way and two-way
  partitions, and crashes and restarts nodes, also in the middle of a persist (only a prefix
  of the Ready's snapshot / entries / hard state writes survives, in either order of entries
  and hard state, after `early_messages` may have left).

Checkers run as the cluster moves: at most one leader per term, every apply at an index is
the same entry on every node, applies are contiguous, acknowledged proposals stay where they
were acknowledged, ReadIndex results cover every write acknowledged before the read started;
every acknowledged entry durable on a quorum after every tick (`quorum_voters`); and at the
end: log matching over the persisted logs, every acknowledged entry durable on a quorum, (after
healing) all nodes converged with equal KV stores, and (in `simulate`) the KV clients' history
linearizable (kv_workload.py, linearizability.py). A failure raises `SimFailure` naming the seed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from proconsul.raft.core import (
    ConfChange,
    ConfChangeOp,
    Configuration,
    Entry,
    EntryKind,
    MemoryStorage,
    Message,
    NotLeader,
    Proposal,
    ProposalRejected,
    RaftError,
    RaftNode,
    Ready,
    Recovery,
    Role,
    Snapshot,
)
from proconsul.state import commands as cmd
from proconsul.state.fsm import FSM
from proconsul.state.store import Store


class SimFailure(AssertionError):
    pass


@dataclass
class SimNode:
    """One server: durable storage, volatile Raft state and FSMs (None while crashed).

    Two FSMs see every committed entry: `fsm`, the trace of applied NORMAL entries (what the
    apply-sequence checkers compare), and `kv`, the product's own `FSM` over a `Store`, which
    decodes `proconsul.state.commands` (anything else applies as a no-op, as the driver does).
    """

    id: str
    storage: MemoryStorage
    raft: RaftNode | None = None
    fsm: list[tuple[int, bytes]] = field(default_factory=list)  # (index, data) of NORMAL entries
    applied: int = 0
    incarnation: int = 0
    kv: FSM = field(default_factory=lambda: FSM(Store()))


@dataclass
class NetConfig:
    loss: float = 0.0  # probability a message is dropped
    dup: float = 0.0  # probability a message is delivered twice
    min_delay: int = 1  # ticks
    max_delay: int = 1  # ticks; a spread reorders messages


class Cluster:
    def __init__(
        self,
        ids: Iterable[str],
        *,
        seed: int = 0,
        voters: Iterable[str] | None = None,
        learners: Iterable[str] = (),
        net: NetConfig | None = None,
        early_send: bool = False,
        trailing_logs: int = 5,
        **raft_kw: object,
    ) -> None:
        self.ids = list(ids)
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = net or NetConfig()
        self.early_send = early_send
        self.trailing_logs = trailing_logs
        self.raft_kw = raft_kw
        voter_set = frozenset(self.ids if voters is None else voters)
        self.initial_config = Configuration(voter_set, frozenset(learners))
        # An operator's leaderless recovery per node (raft/recovery.py): handed to the core at start.
        self.recovery: dict[str, Recovery] = {}
        self.nodes: dict[str, SimNode] = {}
        for i in self.ids:
            # A node outside the initial configuration starts empty and learns it from a leader.
            member = i in voter_set or i in self.initial_config.learners
            self.nodes[i] = SimNode(i, MemoryStorage(self.initial_config if member else None))
            self._start(i)
        self.now = 0
        self.queue: list[tuple[int, int, Message]] = []  # simulated-time network
        self.fifo: list[Message] = []  # instant-mode network
        self.seq = 0
        self.blocked: set[tuple[str, str]] = set()  # directed links that drop everything
        self.drop: Callable[[Message], bool] | None = None
        self.rewrite: Callable[[Message], Message] | None = None  # tamper with messages in flight
        self.sent: list[Message] = []  # every message handed to the network (for tests)
        self.unsafe_send_before_persist = False  # send everything before persisting (a bug)
        self.crash_mid_persist = 0.0  # probability a Ready's persist is cut short by a crash
        self.crashes_mid_persist = 0
        # Hooks for a client workload (see kv_workload.py): an entry applied on a node (with
        # the KV FSM's result), a ReadIndex answered on a node, a node crashed.
        self.on_apply: Callable[[str, Entry, Any], None] | None = None
        self.on_read: Callable[[str, int, bytes], None] | None = None
        self.on_crash: Callable[[str], None] | None = None
        self.on_snapshot: Callable[[str, int], None] | None = None
        self.quorum_voters: frozenset[str] | None = None  # check_durable_quorum every tick
        # checker state
        self.leaders: dict[int, str] = {}
        self.log: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) applied anywhere
        self.proposals: dict[str, list[tuple[Proposal, bytes, int]]] = {i: [] for i in self.ids}
        self.acked: dict[int, bytes] = {}
        self._acked_sorted: list[int] = []
        self.reads: dict[bytes, int] = {}
        self.read_results: list[tuple[str, int, bytes]] = []
        self.read_seq = 0

    # ------------------------------------------------------------------ node lifecycle

    def _start(self, i: str) -> None:
        n = self.nodes[i]
        snap = n.storage.snapshot()
        n.fsm, n.kv = _decode_fsm(snap.data)
        n.applied = snap.meta.index
        n.incarnation += 1
        n.raft = RaftNode(i, n.storage, random.Random(self.rng.random()), recovery=self.recovery.get(i),
                          **self.raft_kw)  # type: ignore[arg-type]

    def raft(self, i: str) -> RaftNode:
        r = self.nodes[i].raft
        assert r is not None, f"{i} is down"
        return r

    def alive(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].raft is not None]

    def crash(self, i: str) -> None:
        """Lose everything volatile; the storage keeps what was persisted."""
        self.nodes[i].raft = None
        self.proposals[i] = []  # their outcome is unknown to the client now
        if self.on_crash is not None:
            self.on_crash(i)

    def restart(self, i: str) -> None:
        if self.nodes[i].raft is None:
            self._start(i)

    # ------------------------------------------------------------------ network

    def cut(self, a: str, b: str, one_way: bool = False) -> None:
        self.blocked.add((a, b))
        if not one_way:
            self.blocked.add((b, a))

    def isolate(self, a: str) -> None:
        for b in self.ids:
            if b != a:
                self.cut(a, b)

    def heal(self) -> None:
        self.blocked.clear()

    def _send(self, m: Message) -> None:
        if self.rewrite is not None:
            m = self.rewrite(m)
        self.sent.append(m)
        if (m.frm, m.to) in self.blocked or (self.drop is not None and self.drop(m)):
            return
        if self.net.loss and self.rng.random() < self.net.loss:
            return
        copies = 2 if self.net.dup and self.rng.random() < self.net.dup else 1
        for _ in range(copies):
            self.fifo.append(m)
            delay = self.rng.randint(self.net.min_delay, self.net.max_delay)
            self.seq += 1
            heapq.heappush(self.queue, (self.now + delay, self.seq, m))

    def _deliver(self, m: Message) -> None:
        r = self.nodes[m.to].raft if m.to in self.nodes else None
        if r is not None:
            r.step(m)

    # ------------------------------------------------------------------ Ready handling

    def process_ready(self, i: str) -> bool:
        """Carry out one Ready of node i as a driver would; False if it had none."""
        n = self.nodes[i]
        r = n.raft
        if r is None or not r.has_ready():
            return False
        rd = r.ready()
        if rd is None:
            return False
        self.check_ready(i, rd)
        if self.early_send or self.unsafe_send_before_persist:
            for m in rd.early_messages:
                self._send(m)
        if self.unsafe_send_before_persist:
            for m in rd.messages:  # a deliberately broken driver, to prove the checkers bite
                self._send(m)
        if (self.crash_mid_persist and (rd.entries or rd.hard_state or rd.snapshot)
                and self.rng.random() < self.crash_mid_persist):
            self._torn_persist(n, rd)
            self.crash(i)
            return True
        if rd.snapshot is not None:
            n.storage.apply_snapshot(rd.snapshot)
            self._install_fsm(n, rd.snapshot)
        n.storage.append(rd.entries)
        if rd.hard_state is not None:
            n.storage.set_hard_state(rd.hard_state)
        if not self.early_send and not self.unsafe_send_before_persist:
            for m in rd.early_messages:
                self._send(m)
        if not self.unsafe_send_before_persist:
            for m in rd.messages:
                self._send(m)
        for e in rd.committed_entries:
            self._apply(n, e)
        for rs in rd.read_states:
            self._check_read(n, rs.index, rs.context)
        r.advance(rd)
        due = r.snapshot_due()
        if due is not None:
            n.storage.create_snapshot(r.make_snapshot(due, _encode_fsm(n.fsm, n.kv)))
            n.storage.compact(max(0, due - self.trailing_logs))
        return True

    def _torn_persist(self, n: SimNode, rd: Ready) -> None:
        """Crash in the middle of carrying out a Ready: only a prefix of its writes is durable.

        The writes are the snapshot, the entries, then the hard state, in the order the Ready
        contract prescribes (a driver may give each its own fsync); the crash keeps a random
        prefix of that sequence, the entries themselves possibly torn (a checksummed log keeps
        the valid prefix of a batch). Nothing of `messages` has left; `early_messages` may have
        (early_send). The order matters: a hard state written before the entries can persist a
        commit index that covers stale, about-to-be-replaced entries, which a restart then
        applies (seed 1519 showed it when this harness tried both orders).
        """
        self.crashes_mid_persist += 1
        steps: list[Callable[[], None]] = []
        if rd.snapshot is not None:
            snap = rd.snapshot
            steps.append(lambda: n.storage.apply_snapshot(snap))
        ents = [lambda k=k: n.storage.append(rd.entries[:k]) for k in range(1, len(rd.entries) + 1)]
        hard = []
        if rd.hard_state is not None:
            hs = rd.hard_state
            hard.append(lambda: n.storage.set_hard_state(hs))
        steps += ents + hard
        for step in steps[:self.rng.randint(0, len(steps))]:
            step()

    def _install_fsm(self, n: SimNode, snap: Snapshot) -> None:
        fsm, kv = _decode_fsm(snap.data)
        for idx, data in fsm:
            if idx in self.log and self.log[idx][1] != data:
                self.fail(f"{n.id} installed a snapshot that disagrees at {idx}")
        n.fsm, n.kv = fsm, kv
        n.applied = snap.meta.index
        if self.on_snapshot is not None:
            self.on_snapshot(n.id, snap.meta.index)

    def _apply(self, n: SimNode, e: Entry) -> None:
        if e.index != n.applied + 1:
            self.fail(f"{n.id} applied {e.index} after {n.applied}: not contiguous")
        seen = self.log.setdefault(e.index, (e.term, e.data))
        if seen != (e.term, e.data):
            self.fail(f"{n.id} applied {e} but index {e.index} was applied elsewhere as {seen}")
        n.applied = e.index
        result: Any = None
        if e.kind == EntryKind.NORMAL:
            n.fsm.append((e.index, e.data))
            try:
                command: cmd.Command = cmd.decode(e.data)
            except ValueError:
                command = cmd.Noop()
            result = n.kv.apply(e.index, command)
        else:
            n.kv.apply(e.index, cmd.Noop())
        if self.on_apply is not None:
            self.on_apply(n.id, e, result)
        keep = []
        for prop, data, inc in self.proposals[n.id]:
            if prop.index == e.index:
                if prop.term == e.term:
                    if e.data != data:
                        self.fail(f"{n.id}: proposal {prop} applied with other data")
                    self.acked[e.index] = data  # the client is told "success" now
            elif prop.index > e.index:
                keep.append((prop, data, inc))
        self.proposals[n.id] = keep

    def _check_read(self, n: SimNode, index: int, ctx: bytes) -> None:
        floor = self.reads.pop(ctx, None)
        if floor is None:
            return  # issued by a previous incarnation
        if index < floor:
            self.fail(f"{n.id}: ReadIndex {index} misses a write acknowledged at {floor}")
        if n.applied < index:
            self.fail(f"{n.id}: ReadState {index} released before apply ({n.applied})")
        self.read_results.append((n.id, index, ctx))
        if self.on_read is not None:
            self.on_read(n.id, index, ctx)

    def check_ready(self, i: str, rd: Ready) -> None:
        r = self.raft(i)
        if r.role == Role.LEADER:
            prev = self.leaders.setdefault(r.term, i)
            if prev != i:
                self.fail(f"two leaders in term {r.term}: {prev} and {i}")

    # ------------------------------------------------------------------ client

    def propose(self, i: str, data: bytes) -> Proposal | None:
        try:
            p = self.raft(i).propose(data)
        except RaftError:
            return None
        self.proposals[i].append((p, data, self.nodes[i].incarnation))
        return p

    def conf_change(self, i: str, op: ConfChangeOp, node: str) -> Proposal | None:
        try:
            return self.raft(i).propose_conf_change(ConfChange(op, node))
        except RaftError:
            return None

    def read(self, i: str) -> bytes | None:
        self.read_seq += 1
        ctx = f"r{self.read_seq}".encode()
        try:
            self.raft(i).read_index(ctx)
        except NotLeader:
            return None
        self.reads[ctx] = max(self.acked, default=0)
        return ctx

    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        best: tuple[int, str] | None = None
        for i in self.alive():
            r = self.raft(i)
            if r.role == Role.LEADER and (best is None or r.term > best[0]):
                best = (r.term, i)
        return best[1] if best else None

    # ------------------------------------------------------------------ instant mode

    def stabilize(self, max_rounds: int = 10_000) -> None:
        """Process all Readies and deliver all messages (FIFO) until nothing is left."""
        for _ in range(max_rounds):
            progressed = False
            for i in self.ids:
                while self.process_ready(i):
                    progressed = True
            if self.fifo:
                msgs, self.fifo = self.fifo, []
                self.queue.clear()
                for m in msgs:
                    self._deliver(m)
                progressed = True
            if not progressed:
                return
        raise SimFailure("stabilize did not converge")

    def tick(self, i: str, n: int = 1) -> None:
        for _ in range(n):
            self.raft(i).tick()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for i in self.alive():
                self.raft(i).tick()
            self.stabilize()

    def elect(self, i: str) -> None:
        """Make node i leader (campaign and settle), as tests need a known leader."""
        self.raft(i).campaign()
        self.stabilize()
        if self.raft(i).role != Role.LEADER:
            raise SimFailure(f"{i} failed to become leader")

    # ------------------------------------------------------------------ simulated time

    def run_tick(self) -> None:
        self.now += 1
        self.fifo.clear()  # simulated mode uses the delay queue only
        for i in self.alive():
            self.raft(i).tick()
        while self.queue and self.queue[0][0] <= self.now:
            _, _, m = heapq.heappop(self.queue)
            self._deliver(m)
        for i in self.alive():
            r = self.raft(i)
            # A driver with `defer_commit` tells followers a commit index nothing else carried
            # after a delay of its choosing: here, each tick with probability one half.
            if r.defer_commit and r.commit_unsent() and self.rng.random() < 0.5:
                r.flush_commit()
        for i in self.ids:
            self.process_ready(i)
        self.fifo.clear()
        if self.quorum_voters is not None:
            self.check_durable_quorum(self.quorum_voters)

    # ------------------------------------------------------------------ final checkers

    def fail(self, what: str) -> None:
        raise SimFailure(f"seed {self.seed} (PROCONSUL_SEED={self.seed} replays it): {what}")

    def check_log_matching(self) -> None:
        """§5.3 Log Matching over every pair of persisted logs."""
        logs = {}
        for i in self.ids:
            s = self.nodes[i].storage
            logs[i] = {e.index: e for e in s.entries(s.first_index(), s.last_index() + 1)}
        for a in self.ids:
            for b in self.ids:
                if a >= b:
                    continue
                common = sorted(set(logs[a]) & set(logs[b]))
                diverged = False
                for idx in common:
                    ea, eb = logs[a][idx], logs[b][idx]
                    if ea == eb:
                        if diverged and ea.term == eb.term:
                            self.fail(f"log matching: {a},{b} agree at {idx} but differ below")
                    else:
                        if ea.term == eb.term:
                            self.fail(f"log matching: {a},{b} differ at {idx} in the same term")
                        diverged = True

    def check_durable_quorum(self, voters: Iterable[str]) -> None:
        """Every acknowledged entry is durable on a majority of `voters` right now.

        Run after every tick (a crash that loses unsynced data must never take an acknowledged
        entry below a quorum, even if re-replication would hide it by the end of the run).
        Cheap form: each voter's durable log "covers" the acknowledged entries up to the highest
        one it holds (Log Matching, checked separately, makes the rest of the prefix agree), so
        it is enough that the quorum-th best coverage reaches the newest acknowledged entry.
        """
        if not self.acked:
            return
        if len(self._acked_sorted) != len(self.acked):
            self._acked_sorted = sorted(self.acked)
        idxs = self._acked_sorted
        vs = sorted(voters)
        cover = []
        for i in vs:
            s = self.nodes[i].storage
            snap = s.snapshot_meta().index
            first, last = s.first_index(), s.last_index()

            def holds(idx: int, s: MemoryStorage = s, snap: int = snap, first: int = first,
                      last: int = last) -> bool:
                if snap >= idx:
                    return True
                return first <= idx <= last and s.term(idx) == self.log[idx][0]

            lo, hi = 0, len(idxs)  # idxs[:lo] held; find the first index not held
            while lo < hi:
                mid = (lo + hi) // 2
                if holds(idxs[mid]):
                    lo = mid + 1
                else:
                    hi = mid
            cover.append(idxs[lo - 1] if lo else 0)
        cover.sort(reverse=True)
        q = len(vs) // 2 + 1
        if cover[q - 1] < idxs[-1]:
            self.fail(f"acknowledged entry {idxs[-1]} is durable on fewer than {q} of {len(vs)}"
                      f" voters at tick {self.now} (coverage {cover})")

    def check_acked_on_quorum(self, voters: Iterable[str]) -> None:
        """Every acknowledged entry is durable on a majority (the committed-stays-committed rule)."""
        vs = sorted(voters)
        for idx, data in self.acked.items():
            term = self.log[idx][0]
            have = 0
            for i in vs:
                s = self.nodes[i].storage
                if s.snapshot_meta().index >= idx:
                    have += 1
                elif s.first_index() <= idx <= s.last_index():
                    e = s.entries(idx, idx + 1)[0]
                    have += e.term == term and e.data == data
            if have < len(vs) // 2 + 1:
                self.fail(f"acknowledged entry {idx} is on only {have} of {len(vs)} voters")

    def check_converged(self) -> None:
        """After healing: every live node applied the same prefix, covering every acknowledged write."""
        alive = self.alive()
        applied = {i: self.nodes[i].applied for i in alive}
        top = max(self.acked, default=0)
        for i in alive:
            if applied[i] < top:
                self.fail(f"{i} applied only {applied[i]} < acknowledged {top} after healing")
        fsms = {i: self.nodes[i].fsm for i in alive}
        ref = max(fsms.values(), key=len)
        for i, f in fsms.items():
            if f != ref[:len(f)]:
                self.fail(f"{i}'s FSM diverged from the others")
        for idx, data in self.acked.items():
            if self.log[idx][1] != data:
                self.fail(f"acknowledged write at {idx} was replaced")
        # The product FSM: nodes that applied the same prefix hold the same KV table.
        by_applied: dict[int, tuple[str, dict[str, Any]]] = {}
        for i in alive:
            kv = {k: e.to_wire() for k, e in self.nodes[i].kv.store.kv.items()}
            first = by_applied.setdefault(applied[i], (i, kv))
            if first[1] != kv:
                self.fail(f"{i} and {first[0]} applied up to {applied[i]} but their KV stores differ")


def _encode_fsm(fsm: list[tuple[int, bytes]], kv: FSM) -> bytes:
    """Snapshot data: the apply trace and the product store's own snapshot."""
    return msgpack.packb([[[i, d] for i, d in fsm], kv.store.snapshot()], use_bin_type=True)


def _decode_fsm(data: bytes) -> tuple[list[tuple[int, bytes]], FSM]:
    kv = FSM(Store())
    if not data:
        return [], kv
    trace, blob = msgpack.unpackb(data, raw=False)
    kv.store.restore(blob)
    return [(i, d) for i, d in trace], kv


# ---------------------------------------------------------------------- the randomized scenario


@dataclass
class SimResult:
    seed: int
    leaders: int
    acked: int
    reads: int
    conf_changes: int
    transfers: int
    kv_ops: dict[str, int] = field(default_factory=dict)  # "kind:status[:local]" -> count
    torn_crashes: int = 0  # crashes in the middle of a persist
    lin_unknown: int = 0  # keys whose linearizability search ran out of budget
    stale_local_reads: bool = False  # default-mode (leader-local) reads were not linearizable
    stale_guarded_reads: bool = False  # ... even leaving out those of a not-yet-ready new leader
    defer_commit: bool = False  # the leader deferred commit-only AppendEntries (RaftNode's option)


def simulate(seed: int, ticks: int = 300, n_nodes: int | None = None, heal_ticks: int = 200,
             membership: bool | None = None, lin_budget: int = 100_000,
             unsafe_driver: bool = False) -> SimResult:
    """One seeded run: random faults for `ticks`, then heal everything and check convergence.

    Throughout, KV clients (kv_workload.py) write and read through the cluster; after the run
    their history (writes and ReadIndex reads) must be linearizable. Default-mode reads from the
    leader's local store are checked too, but only counted: Consul documents them as possibly
    stale while a deposed leader has not noticed yet.
    """
    from kv_workload import KVWorkload
    from linearizability import check

    rng = random.Random(seed)
    n = n_nodes or rng.choice([3, 5])
    ids = [f"n{k}" for k in range(1, n + 1)]
    membership = rng.random() < 0.3 if membership is None else membership
    net = NetConfig(loss=rng.choice([0.0, 0.02, 0.1]), dup=rng.choice([0.0, 0.05]),
                    min_delay=1, max_delay=rng.choice([1, 2, 4]))
    # Drawn apart from `rng`, so a seed's other choices are what they were before this option.
    defer_commit = random.Random(seed * 6007 + 3).random() < 0.5
    c = Cluster(ids, seed=seed, net=net, early_send=rng.random() < 0.5,
                election_tick=10, heartbeat_tick=2, snapshot_threshold=rng.choice([0, 8, 30]),
                max_inflight=rng.choice([2, 64]), max_entries_per_msg=rng.choice([1, 4, 64]),
                check_quorum=True, pre_vote=rng.random() < 0.8, defer_commit=defer_commit)
    c.trailing_logs = rng.choice([0, 5])
    c.crash_mid_persist = rng.choice([0.0, 0.01, 0.03])
    if unsafe_driver:
        c.unsafe_send_before_persist = True
        c.crash_mid_persist = 0.05
    if not membership:
        c.quorum_voters = frozenset(ids)  # with membership changes the quorum moves; end-only
    wl = KVWorkload(c, random.Random(seed * 7919 + 1), clients=rng.choice([2, 4, 6]),
                    keys=rng.choice([1, 3]), p_op=rng.choice([0.2, 0.5]))
    p_fault = 0.03
    conf_changes = transfers = 0
    removed: list[str] = []
    for t in range(ticks):
        if rng.random() < p_fault:
            kind = rng.random()
            victim = rng.choice(ids)
            if kind < 0.25:
                c.isolate(victim)
            elif kind < 0.4:
                c.cut(victim, rng.choice([i for i in ids if i != victim]), one_way=True)
            elif kind < 0.55:
                group = set(rng.sample(ids, n // 2))
                for a in ids:
                    for b in ids:
                        if (a in group) != (b in group):
                            c.cut(a, b)
            elif kind < 0.8:
                c.crash(victim)
            else:
                c.heal()
        if rng.random() < 0.05:
            for i in ids:
                if c.nodes[i].raft is None and rng.random() < 0.5:
                    c.restart(i)
        lead = c.leader()
        if lead is not None:
            if rng.random() < 0.2:
                for k in range(rng.randint(1, 4)):
                    c.propose(lead, f"{seed}:{t}:{k}".encode())
            if rng.random() < 0.05:
                c.read(lead)
            if rng.random() < 0.005:
                target = rng.choice(ids)
                if target != lead and target in c.raft(lead).config.voters:
                    try:
                        c.raft(lead).transfer_leadership(target)
                        transfers += 1
                    except (NotLeader, ProposalRejected):
                        pass
            if membership and rng.random() < 0.02:
                conf = c.raft(lead).config
                if removed and rng.random() < 0.6:
                    back = removed[0]
                    op = ConfChangeOp.PROMOTE if back in conf.learners else ConfChangeOp.ADD_NONVOTER
                    if c.conf_change(lead, op, back) is not None:
                        conf_changes += 1
                        if op == ConfChangeOp.PROMOTE:
                            removed.pop(0)
                elif len(conf.voters) > 3:
                    victim = rng.choice(sorted(conf.voters))
                    if c.conf_change(lead, ConfChangeOp.REMOVE, victim) is not None:
                        conf_changes += 1
                        removed.append(victim)
        wl.step()
        c.run_tick()
    # Heal: no more faults, everyone up, keep proposing a little so a new leader's term commits.
    c.heal()
    c.net = NetConfig(min_delay=1, max_delay=1)
    c.crash_mid_persist = 0.0
    for i in ids:
        c.restart(i)
    for t in range(heal_ticks + 3000):
        lead = c.leader()
        if t < heal_ticks and lead is not None and t % 20 == 0:
            c.propose(lead, f"{seed}:heal:{t}".encode())
        wl.step(issue=t < heal_ticks)
        c.run_tick()
        # Past the fixed heal period, stop as soon as every member caught up (slow flow-control
        # settings can need a while to stream a long backlog one small message at a time).
        if t >= heal_ticks and lead is not None and c.raft(lead).role == Role.LEADER:
            r = c.raft(lead)
            members = r.config.voters | r.config.learners
            if all(c.nodes[i].raft is not None and c.nodes[i].applied >= r.commit_index
                   for i in members) and r.commit_index >= max(c.acked, default=0):
                break
    wl.close()
    c.check_log_matching()
    lead = c.leader()
    if lead is None:
        c.fail("no leader after healing")
    voters = c.raft(lead).config.voters
    if not membership:
        c.check_acked_on_quorum(voters)
    # Only members converge: a removed server is left behind by design.
    for i in ids:
        if i not in voters and i not in c.raft(lead).config.learners:
            c.crash(i)
    c.check_converged()
    lin = check(wl.strict_history(), budget=lin_budget)
    if not lin.ok:
        c.fail(lin.describe())
    stale = not check(wl.history, budget=lin_budget).ok
    # Would a guard "serve local reads only once the leader committed an entry of its term"
    # (as etcd's lease reads and Consul's consistent reads wait for) have been enough?
    guarded = [op for op in wl.history if "new-uncommitted" not in op.note]
    stale_guarded = stale and not check(guarded, budget=lin_budget).ok
    return SimResult(seed, len(c.leaders), len(c.acked), len(c.read_results), conf_changes,
                     transfers, wl.counts(), c.crashes_mid_persist, lin.unknown, stale,
                     stale_guarded, defer_commit)
