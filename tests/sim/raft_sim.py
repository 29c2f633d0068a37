"""Deterministic in-process Raft cluster: the harness for the unit tests and the seeded simulation.

Owns a set of `RaftNode`s, each with a `MemoryStorage` that plays the disk (it survives a
crash; everything else about the node is volatile), a toy FSM (the list of applied NORMAL
entries), and a network between them. Two ways to drive it:

- **Instant mode** (unit tests): `stabilize()` processes every Ready and delivers every message
  in FIFO order until the cluster is quiet; `cut`/`isolate`/`drop` filter messages.
- **Simulated time** (`run_tick`, `simulate`): a virtual clock ticks every live node, and a
  seeded network delays (reorders), loses and duplicates messages, honours one-way and two-way
  partitions, and crashes and restarts nodes, also in the middle of a persist.

Checkers run as the cluster moves: at most one leader per term, every apply at an index is
the same entry on every node, applies are contiguous, acknowledged proposals stay where they
were acknowledged, ReadIndex results cover every write acknowledged before the read started;
and at the end: log matching over the persisted logs, every acknowledged entry durable on a
quorum, and (after healing) all nodes converged. A failure raises `SimFailure` naming the seed.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
    Role,
    Snapshot,
)


class SimFailure(AssertionError):
    pass


@dataclass
class SimNode:
    """One server: durable storage, volatile Raft state and FSM (None while crashed)."""

    id: str
    storage: MemoryStorage
    raft: RaftNode | None = None
    fsm: list[tuple[int, bytes]] = field(default_factory=list)  # (index, data) of NORMAL entries
    applied: int = 0
    incarnation: int = 0


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
        self.crash_mid_persist = 0.0
        # checker state
        self.leaders: dict[int, str] = {}
        self.log: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) applied anywhere
        self.proposals: dict[str, list[tuple[Proposal, bytes, int]]] = {i: [] for i in self.ids}
        self.acked: dict[int, bytes] = {}
        self.reads: dict[bytes, int] = {}
        self.read_results: list[tuple[str, int, bytes]] = []
        self.read_seq = 0

    # ------------------------------------------------------------------ node lifecycle

    def _start(self, i: str) -> None:
        n = self.nodes[i]
        snap = n.storage.snapshot()
        n.fsm = _decode_fsm(snap.data)
        n.applied = snap.meta.index
        n.incarnation += 1
        n.raft = RaftNode(i, n.storage, random.Random(self.rng.random()), **self.raft_kw)  # type: ignore[arg-type]

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
        if self.early_send:
            for m in rd.early_messages:
                self._send(m)
        if (self.crash_mid_persist and (rd.entries or rd.hard_state)
                and self.rng.random() < self.crash_mid_persist):
            self.crash(i)  # the fsync never completed: nothing of this Ready is durable
            return True
        if rd.snapshot is not None:
            n.storage.apply_snapshot(rd.snapshot)
            self._install_fsm(n, rd.snapshot)
        n.storage.append(rd.entries)
        if rd.hard_state is not None:
            n.storage.set_hard_state(rd.hard_state)
        if not self.early_send:
            for m in rd.early_messages:
                self._send(m)
        for m in rd.messages:
            self._send(m)
        for e in rd.committed_entries:
            self._apply(n, e)
        for rs in rd.read_states:
            self._check_read(n, rs.index, rs.context)
        r.advance(rd)
        due = r.snapshot_due()
        if due is not None:
            n.storage.create_snapshot(r.make_snapshot(due, _encode_fsm(n.fsm)))
            n.storage.compact(max(0, due - self.trailing_logs))
        return True

    def _install_fsm(self, n: SimNode, snap: Snapshot) -> None:
        fsm = _decode_fsm(snap.data)
        for idx, data in fsm:
            if idx in self.log and self.log[idx][1] != data:
                self.fail(f"{n.id} installed a snapshot that disagrees at {idx}")
        n.fsm = fsm
        n.applied = snap.meta.index

    def _apply(self, n: SimNode, e: Entry) -> None:
        if e.index != n.applied + 1:
            self.fail(f"{n.id} applied {e.index} after {n.applied}: not contiguous")
        seen = self.log.setdefault(e.index, (e.term, e.data))
        if seen != (e.term, e.data):
            self.fail(f"{n.id} applied {e} but index {e.index} was applied elsewhere as {seen}")
        n.applied = e.index
        if e.kind == EntryKind.NORMAL:
            n.fsm.append((e.index, e.data))
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
        for i in self.ids:
            self.process_ready(i)
        self.fifo.clear()

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


def _encode_fsm(fsm: list[tuple[int, bytes]]) -> bytes:
    return json.dumps([[i, d.hex()] for i, d in fsm]).encode()


def _decode_fsm(data: bytes) -> list[tuple[int, bytes]]:
    if not data:
        return []
    return [(i, bytes.fromhex(h)) for i, h in json.loads(data)]


# ---------------------------------------------------------------------- the randomized scenario


@dataclass
class SimResult:
    seed: int
    leaders: int
    acked: int
    reads: int
    conf_changes: int
    transfers: int


def simulate(seed: int, ticks: int = 300, n_nodes: int | None = None, heal_ticks: int = 200,
             membership: bool | None = None) -> SimResult:
    """One seeded run: random faults for `ticks`, then heal everything and check convergence."""
    rng = random.Random(seed)
    n = n_nodes or rng.choice([3, 5])
    ids = [f"n{k}" for k in range(1, n + 1)]
    membership = rng.random() < 0.3 if membership is None else membership
    net = NetConfig(loss=rng.choice([0.0, 0.02, 0.1]), dup=rng.choice([0.0, 0.05]),
                    min_delay=1, max_delay=rng.choice([1, 2, 4]))
    c = Cluster(ids, seed=seed, net=net, early_send=rng.random() < 0.5,
                election_tick=10, heartbeat_tick=2, snapshot_threshold=rng.choice([0, 8, 30]),
                max_inflight=rng.choice([2, 64]), max_entries_per_msg=rng.choice([1, 4, 64]),
                check_quorum=True, pre_vote=rng.random() < 0.8)
    c.trailing_logs = rng.choice([0, 5])
    c.crash_mid_persist = 0.01
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
            if rng.random() < 0.4:
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
        c.run_tick()
        # Past the fixed heal period, stop as soon as every member caught up (slow flow-control
        # settings can need a while to stream a long backlog one small message at a time).
        if t >= heal_ticks and lead is not None and c.raft(lead).role == Role.LEADER:
            r = c.raft(lead)
            members = r.config.voters | r.config.learners
            if all(c.nodes[i].raft is not None and c.nodes[i].applied >= r.commit_index
                   for i in members) and r.commit_index >= max(c.acked, default=0):
                break
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
    return SimResult(seed, len(c.leaders), len(c.acked), len(c.read_results), conf_changes, transfers)
