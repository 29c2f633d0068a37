"""The Raft consensus core: a deterministic state machine with no I/O (sans-I/O, like etcd's RawNode).

Owns the Raft protocol: elections (with pre-vote and check-quorum, and the leader lease
they give), log replication (conflict back-off, pipelining, batching), the commit rule,
ReadIndex, snapshots and log compaction hand-off, single-server membership changes and
leadership transfer. It does not own the disk, the network, the clock or the FSM: the
driver (`proconsul.raft.node`, or a test/simulation harness) feeds it

- time, as `tick()` calls (one tick = heartbeat granularity; the driver picks the period),
- randomness, as an injected `random.Random` (election jitter),
- peers' messages, as `step(msg)`,
- client requests: `propose`, `propose_conf_change`, `read_index`, `transfer_leadership`,

and collects everything the core wants done as a `Ready` (see its docstring for the
ordering contract), calling `advance(ready)` when it has been carried out.

The durable log is read through the `LogView` protocol; `MemoryStorage` is the in-memory
implementation beside it. Entries the core appended but the driver has not persisted yet
live in `_RaftLog`'s unstable tail, which always takes precedence over the storage.

Threading: none. A `RaftNode` is not thread-safe; the driver calls it from one task.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proconsul.raft import quorum
from proconsul.raft.messages import (
    CAMPAIGN_TRANSFER,
    ConfChange,
    ConfChangeOp,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

__all__ = [
    "CAMPAIGN_TRANSFER", "Compacted", "ConfChange", "ConfChangeOp", "Configuration", "Entry",
    "EntryKind", "HardState", "LogView", "MemoryStorage", "Message", "MsgType", "NotLeader",
    "Proposal", "ProposalRejected", "RaftError", "RaftNode", "ReadState", "Ready", "Role",
    "Snapshot", "SnapshotMeta", "SoftState", "Unavailable",
]

logger = logging.getLogger(__name__)
# Entries are built with tuple.__new__ on the hot paths (see messages.Entry): no Python-level
# constructor per replicated entry.
_new_tuple = tuple.__new__


# ---------------------------------------------------------------------------------- errors


class RaftError(Exception):
    """Base of the errors the core raises to its caller (misuse or a refused request)."""


class NotLeader(RaftError):
    """The request needs the leader; `leader_hint` is the leader this node knows of, if any."""

    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ProposalRejected(RaftError):
    """The leader refused the request now (transfer in progress, conf change pending, ...)."""


class Compacted(RaftError):
    """The requested index is below the storage's first index (it is in a snapshot)."""


class Unavailable(RaftError):
    """The requested index is above the storage's last index."""


# ---------------------------------------------------------------------------------- storage


class LogView(Protocol):
    """Read-only view of the durable Raft state, implemented by the driver's storage.

    Contract:
    - Everything visible here is durable: the driver writes a `Ready`'s snapshot, entries and
      hard state here (in that order) only after they are safely on disk, before `advance`.
    - The log is contiguous over [first_index(), last_index()]; the entry just below
      (first_index()-1, the compaction point) still has a known `term()`.
    - Appending entries whose first index is <= last_index() truncates the conflicting suffix
      first (the core never asks to rewrite a committed entry).
    - Compaction (dropping a prefix) is the driver's decision, and only up to an index covered
      by the stored snapshot; the core learns of it through first_index().
    - Ranges are half-open: entries(lo, hi) is [lo, hi).
    """

    def hard_state(self) -> HardState: ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot (index 0 and the bootstrap configuration if none was taken)."""
        ...

    def snapshot_meta(self) -> SnapshotMeta:
        """Metadata of snapshot(), without loading its data."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int:
        """Term of the entry at `index` for first_index()-1 <= index <= last_index().

        Raises Compacted below that range and Unavailable above it.
        """
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi), stopping before max_bytes of data (but returning at least one).

        Raises Compacted if lo < first_index() and Unavailable if hi > last_index() + 1.
        """
        ...


class MemoryStorage:
    """In-memory `LogView` plus the write side a driver needs; also the simulation's "disk".

    Whatever is stored here counts as durable (the simulation keeps it across a crash).
    """

    def __init__(self, config: Configuration | None = None) -> None:
        # The bootstrap configuration is a snapshot at index 0, so every node has a config.
        self._snap = Snapshot(SnapshotMeta(0, 0, config or Configuration()), b"")
        self._hard = HardState()
        # Compaction point: entries[0] is index offset+1; term(offset) is offset_term.
        self._offset = 0
        self._offset_term = 0
        self._entries: list[Entry] = []

    # LogView -----------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        return self._hard

    def snapshot(self) -> Snapshot:
        return self._snap

    def snapshot_meta(self) -> SnapshotMeta:
        return self._snap.meta

    def first_index(self) -> int:
        return self._offset + 1

    def last_index(self) -> int:
        return self._offset + len(self._entries)

    def term(self, index: int) -> int:
        if index < self._offset:
            raise Compacted(index)
        if index == self._offset:
            return self._offset_term
        if index > self.last_index():
            raise Unavailable(index)
        return self._entries[index - self._offset - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self._offset:
            raise Compacted(lo)
        if hi > self.last_index() + 1:
            raise Unavailable(hi)
        out = self._entries[lo - self._offset - 1:hi - self._offset - 1]
        return _limit_bytes(out, max_bytes)

    # write side (the driver's) -----------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        self._hard = hs

    def append(self, entries: Sequence[Entry]) -> None:
        """Append, truncating any conflicting suffix first; entries must be contiguous."""
        if not entries:
            return
        first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending {first} after {self.last_index()}")
        # Entries at or below the compaction point are committed and already covered.
        skip = max(0, self._offset + 1 - first)
        entries = entries[skip:]
        if not entries:
            return
        keep = entries[0].index - self._offset - 1
        del self._entries[keep:]
        self._entries.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Install a snapshot received from the leader: it replaces the whole log."""
        self._snap = snap
        self._offset = snap.meta.index
        self._offset_term = snap.meta.term
        self._entries = []

    def create_snapshot(self, snap: Snapshot) -> None:
        """Record a snapshot the local FSM took (see RaftNode.make_snapshot); the log stays."""
        if snap.meta.index < self._snap.meta.index:
            return
        self._snap = snap

    def compact(self, index: int) -> None:
        """Drop entries <= index; index must be covered by the stored snapshot."""
        if index <= self._offset:
            return
        if index > self._snap.meta.index:
            raise ValueError(f"compact({index}) beyond snapshot {self._snap.meta.index}")
        self._offset_term = self.term(index)
        del self._entries[:index - self._offset]
        self._offset = index


def _limit_bytes(ents: list[Entry], max_bytes: int | None) -> list[Entry]:
    if max_bytes is None or not ents:
        return ents
    size = 0
    for i, e in enumerate(ents):
        size += len(e.data)
        if size > max_bytes and i > 0:
            return ents[:i]
    return ents


class _RaftLog:
    """The log as the core sees it: durable storage plus the not-yet-persisted (unstable) tail.

    Invariant: `offset` is the index of the first unstable entry (== last persisted + 1), so
    storage entries at or above `offset` are stale and ignored until the driver rewrites them.
    """

    def __init__(self, storage: LogView) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        self.unstable_snap: Snapshot | None = None
        # After a restart the FSM is restored from the snapshot, so that is what is applied;
        # the hard state's commit may move `committed` further (see RaftNode).
        self.committed = storage.snapshot_meta().index
        self.applied = storage.snapshot_meta().index

    def applied_to(self, index: int) -> None:
        """The state machine has applied up to `index` (the driver said so, or a restart's FSM)."""
        self.applied = index

    def first_index(self) -> int:
        if self.unstable_snap is not None:
            return self.unstable_snap.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        return self.offset + len(self.unstable) - 1

    def last_term(self) -> int:
        t = self.term(self.last_index())
        assert t is not None
        return t

    def persisted_last(self) -> int:
        """Highest index known to be durable locally (what the leader may count for itself)."""
        return self.offset - 1 if self.unstable_snap is None else 0

    def term(self, index: int) -> int | None:
        """Term at `index`, or None when it is compacted away or beyond the log."""
        if index > self.last_index() or index < 0:
            return None
        if index >= self.offset:
            return self.unstable[index - self.offset].term
        if self.unstable_snap is not None:
            return self.unstable_snap.meta.term if index == self.unstable_snap.meta.index else None
        try:
            return self.storage.term(index)
        except (Compacted, Unavailable):
            return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log is at least as up-to-date if its last term is higher, or equal and longer."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_count: int | None = None,
              max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); raises Compacted if lo is not available any more."""
        if lo < self.first_index():
            raise Compacted(lo)
        hi = min(hi, self.last_index() + 1)
        if max_count is not None:
            hi = min(hi, lo + max_count)
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset), max_bytes)
            if len(out) < min(hi, self.offset) - lo:
                return out  # byte limit reached inside the stable part
        if hi > self.offset:
            out = out + self.unstable[max(lo, self.offset) - self.offset:hi - self.offset]
            out = _limit_bytes(out, max_bytes)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        """Put entries into the unstable tail, truncating whatever they conflict with."""
        if not entries:
            return
        after = entries[0].index
        assert after > self.committed, f"truncating committed entry {after} <= {self.committed}"
        end = self.offset + len(self.unstable)
        if after == end:
            self.unstable.extend(entries)
        elif after <= self.offset:
            # Rewriting persisted entries: the driver will truncate them when it writes these.
            self.offset = after
            self.unstable = list(entries)
        else:
            del self.unstable[after - self.offset:]
            self.unstable.extend(entries)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or is new); 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest j <= index whose term is <= term (or unknown): where a matching prefix may end."""
        j = min(index, self.last_index())
        while j > 0:
            t = self.term(j)
            if t is None or t <= term:
                return j
            j -= 1
        return 0

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} beyond last {self.last_index()}"
            self.committed = index

    def restore(self, snap: Snapshot) -> None:
        self.unstable_snap = snap
        self.unstable = []
        self.offset = snap.meta.index + 1
        self.committed = snap.meta.index

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to (index, term): drop them from the unstable tail."""
        if index < self.offset or index > self.last_index():
            return
        if self.unstable[index - self.offset].term != term:
            return  # overwritten since the Ready was taken; it will be written again
        del self.unstable[:index - self.offset + 1]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.unstable_snap is not None and self.unstable_snap.meta.index == index:
            self.unstable_snap = None


# ---------------------------------------------------------------------------------- progress


class _PeerState(enum.Enum):
    PROBE = "probe"  # next is a guess: send one AppendEntries, wait for the answer
    REPLICATE = "replicate"  # next is known: stream entries optimistically, bounded inflight
    SNAPSHOT = "snapshot"  # a snapshot is on its way; send nothing else


@dataclass(slots=True)
class _Progress:
    """The leader's view of one peer's log (Figure 2's nextIndex/matchIndex, plus flow control)."""

    match: int = 0
    next: int = 1
    state: _PeerState = _PeerState.PROBE
    probe_sent: bool = False  # PROBE: one message in flight, wait for a response
    inflight: list[int] = field(default_factory=list)  # REPLICATE: last index of each APP in flight
    pending_snapshot: int = 0
    snapshot_stall: int = 0  # heartbeat responses seen while in SNAPSHOT (lost-snapshot retry)
    recent_active: bool = False  # heard from since the last check-quorum round
    sent_commit: int = 0  # highest commit index this peer was told about (and can use)

    def become_probe(self) -> None:
        if self.state == _PeerState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = _PeerState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = _PeerState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = _PeerState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_stall = 0
        self.inflight.clear()

    def paused(self, max_inflight: int) -> bool:
        if self.state == _PeerState.PROBE:
            return self.probe_sent
        if self.state == _PeerState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def maybe_update(self, index: int) -> bool:
        """A peer acknowledged `index`; returns True if its match grew."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """A peer rejected the APP whose prev index was `rejected`; False if the reply is stale."""
        if self.state == _PeerState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True


# ---------------------------------------------------------------------------------- outputs


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile, informational state: who leads and what this node is. Never persisted."""

    leader: str | None
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed ReadIndex request: reads for `context` may be served from the local FSM.

    Only released once the FSM has applied `index` (counting the committed_entries of the
    Ready that carries it, which the driver applies first).
    """

    index: int
    context: bytes


# Handle for a proposed entry: it succeeded iff the entry applied at `index` has `term`. If a
# different term is applied at `index`, or leadership is lost first, the outcome is unknown to
# this node's client (another leader may still commit it): report it as unknown. The appended
# entry itself is the handle (its `index` and `term`): no second record per write.
Proposal = Entry


# Messages a leader may send before its own entries are durable (see Ready.early_messages).
_LEADER_TRAFFIC = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP, MsgType.TIMEOUT_NOW})


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the core asks the driver to do, in order. Then call `RaftNode.advance(ready)`.

    The ordering contract (persist before send):
    1. Install `snapshot` (if any) into storage and the FSM, then append `entries` to
       storage (truncating any conflicting suffix), then write `hard_state` (if not None).
       All three must be durable (fsync) before step 2; they may share one fsync.
    2. Send `messages`. They may promise what step 1 makes durable (a vote, an acknowledged
       entry), so they must never leave before it.
       `early_messages` are the exception: they may be sent before or concurrently with
       step 1 (the leader writing its log in parallel with replicating it, dissertation
       §10.2.1). This is safe because the core counts the leader's own log toward commit
       only after `advance` reports it durable, and because the core puts messages in
       `early_messages` only when this Ready changes neither term nor vote (a leader's term
       is already durable, so no (index, term) can be reused after a crash).
    3. Apply `committed_entries` to the FSM in order (they may include entries from this
       Ready's `entries`: step 1 made them durable first). Committed entries that precede
       this Ready's `entries` are durable already, so they may be applied while step 1 runs.
    4. Serve `read_states`: their index is applied once step 3 is done.
    5. `advance(ready)`. Only one Ready may be outstanding; `step`, `tick` and `propose` may
       be called while the driver works on it (their output goes into the next Ready).
    """

    soft_state: SoftState | None = None  # set when leader or role changed
    hard_state: HardState | None = None  # set when term, vote or commit changed: persist
    entries: tuple[Entry, ...] = ()  # append durably before sending `messages`
    snapshot: Snapshot | None = None  # install durably (storage and FSM) before anything else
    committed_entries: tuple[Entry, ...] = ()  # apply in order after persisting
    messages: tuple[Message, ...] = ()  # send ONLY after snapshot/entries/hard_state are durable
    early_messages: tuple[Message, ...] = ()  # leader replication: may go before/while persisting
    read_states: tuple[ReadState, ...] = ()  # confirmed ReadIndex results, index already applied


@dataclass(slots=True)
class _ReadRequest:
    index: int
    acks: set[str]


# ---------------------------------------------------------------------------------- the node


@dataclass(frozen=True)
class Recovery:
    """An operator's leaderless recovery (`proconsul.raft.recovery` explains why it is safe).

    `config` replaces every configuration carried by an entry or snapshot of a term before
    `term`; entries of `term` or later decide as usual. No server campaigns, and none votes for
    a candidate, whose log is less up-to-date than (`floor_term`, `floor_index`), the kept log:
    the first leader of the new era holds it, and every later one holds that leader's.
    """

    term: int
    config: Configuration
    floor_term: int = 0
    floor_index: int = 0

    def admits(self, last_term: int, last_index: int) -> bool:
        return (last_term, last_index) >= (self.floor_term, self.floor_index)


class RaftNode:
    """One Raft server's protocol state. See the module docstring for the driver's duties.

    Args:
        id: this server's node ID.
        storage: the durable state (hard state, snapshot, log) it restarts from.
        rng: source of election jitter; inject a seeded one for determinism.
        peers: the initial voters, used only when the storage holds no configuration at all
            (a brand new cluster bootstrapped without writing a config snapshot).
        election_tick: ticks without hearing from a leader before campaigning (randomized
            in [election_tick, 2*election_tick)); also the lease and check-quorum period.
            Keep it about 10x heartbeat_tick.
        heartbeat_tick: ticks between a leader's heartbeats.
        pre_vote: run a pre-vote round before bumping the term (§9.6), so a node that was
            partitioned away cannot depose a healthy leader when it comes back.
        check_quorum: a leader steps down when a quorum has not answered within an election
            timeout; followers then refuse votes while they believe in a leader (the lease).
        max_inflight: AppendEntries messages in flight per peer in REPLICATE state.
        max_entries_per_msg, max_bytes_per_msg: batch bounds of one AppendEntries.
        snapshot_threshold: applied entries past the last snapshot before snapshot_due() fires
            (0 disables).
        defer_commit: a leader does not send an AppendEntries just to carry a new commit index;
            followers learn it from the next AppendEntries that carries entries, the next
            heartbeat, or when the driver calls `flush_commit()` (see there).
        applied: last index already applied to the FSM (default: the snapshot index).
        recovery: an operator's leaderless recovery (see `Recovery`), or None.
    """

    def __init__(
        self,
        id: str,
        storage: LogView,
        rng: random.Random,
        *,
        peers: Sequence[str] = (),
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_inflight: int = 256,
        max_entries_per_msg: int = 64,
        max_bytes_per_msg: int | None = 1 << 20,
        snapshot_threshold: int = 0,
        applied: int | None = None,
        recovery: Recovery | None = None,
        defer_commit: bool = False,
    ) -> None:
        if heartbeat_tick <= 0 or election_tick <= heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        self.id = id
        self.rng = rng
        self.election_tick = election_tick
        self.heartbeat_tick = heartbeat_tick
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.max_inflight = max_inflight
        self.max_entries_per_msg = max_entries_per_msg
        self.max_bytes_per_msg = max_bytes_per_msg
        self.snapshot_threshold = snapshot_threshold
        self.defer_commit = defer_commit
        # While True (and defer_commit is on) the next broadcast also sends commit-only messages.
        self._commit_flush = False

        self._storage = storage
        self._log = _RaftLog(storage)
        hs = storage.hard_state()
        self.term = hs.term
        self.vote: str | None = hs.vote
        self._log.commit_to(min(max(hs.commit, self._log.committed), self._log.last_index()))
        if applied is not None:
            self._log.applied_to(applied)

        # Configuration history: (index, config) of the snapshot and of every CONF_CHANGE entry
        # in the log, newest last. The newest one is in force (effective when appended, §4.1);
        # truncating the log pops entries off the end, reverting to the previous configuration.
        self._recovery = recovery
        snap_meta = storage.snapshot_meta()
        base = self._effective_config(snap_meta.term, snap_meta.config)
        if not base.voters and not base.learners and peers:
            base = Configuration(frozenset(peers))
        self._conf_history: list[tuple[int, Configuration]] = [(snap_meta.index, base)]
        first, last = storage.first_index(), storage.last_index()
        if last >= first:
            for e in storage.entries(first, last + 1):
                if e.kind == EntryKind.CONF_CHANGE and e.index > snap_meta.index and self._conf_counts(e.term):
                    self._conf_history.append((e.index, Configuration.decode(e.data)))
        self.config = self._conf_history[-1][1]

        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self._prs: dict[str, _Progress] = {}
        self._votes: dict[str, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = election_tick
        self._transferee: str | None = None
        self._msgs: list[Message] = []
        self._bcast_pending = False
        # ReadIndex: requests waiting for the leader's first commit in its term, requests
        # waiting for a heartbeat quorum (ordered), and confirmed ones waiting for apply.
        self._reads_before_commit: list[bytes] = []
        self._read_requests: dict[bytes, _ReadRequest] = {}
        self._read_ready: list[ReadState] = []

        self._prev_hard = hs
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._outstanding: Ready | None = None
        self._reset_timeout()

    # ---------------------------------------------------------------- introspection

    @property
    def commit_index(self) -> int:
        return self._log.committed

    @property
    def transferee(self) -> str | None:
        """The voter this leader is handing leadership to, while a transfer runs."""
        return self._transferee

    def committed_in_term(self) -> bool:
        """True once an entry of the current term is committed (and so every earlier one is).

        A new leader's state machine may lack writes its predecessor acknowledged until then,
        so it must not answer reads from local state before this holds (dissertation §6.4).
        """
        return self._log.term(self._log.committed) == self.term

    @property
    def ready_outstanding(self) -> bool:
        """A Ready was handed out and not advanced yet: the driver is persisting or applying it."""
        return self._outstanding is not None

    @property
    def config_index(self) -> int:
        """The log index of the configuration in force (the snapshot's, or its entry's)."""
        return self._conf_history[-1][0]

    @property
    def applied_index(self) -> int:
        return self._log.applied

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def last_term(self) -> int:
        return self._log.last_term()

    def promotable(self) -> bool:
        """Only voters campaign; learners and removed servers never do."""
        if self._recovery is not None and not self._recovery.admits(self._log.last_term(), self._log.last_index()):
            return False  # lacks the kept log: wait for the new era's leader
        return self.id in self.config.voters

    def progress(self, peer: str) -> tuple[int, int, str]:
        """(match, next, state) of a peer, as the leader tracks it (for tests and operators)."""
        pr = self._prs[peer]
        return pr.match, pr.next, pr.state.value

    # ---------------------------------------------------------------- driver API: input

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self.promotable() and self._election_elapsed >= self._randomized_timeout:
                self._election_elapsed = 0
                self.campaign()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled); no-op for a non-voter/leader."""
        if self.role == Role.LEADER or not self.promotable():
            return
        self._campaign(pre=self.pre_vote, transfer=False)

    def propose(self, data: bytes) -> Proposal:
        """Append an FSM command; returns where it will be committed if leadership holds.

        Raises:
            NotLeader: this node is not the leader.
            ProposalRejected: a leadership transfer is in progress.
        """
        return self._propose(EntryKind.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> Proposal:
        """Propose a single-server membership change (dissertation §4.1).

        The new configuration takes effect on each server as soon as the entry is appended to
        its log, committed or not. Only one change may be uncommitted at a time, and only once
        the leader has committed an entry of its own term (the fix for the single-server
        change bug described on raft-dev in 2015).

        Raises:
            NotLeader, ProposalRejected (a change is pending, or the change is invalid).
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self._conf_history[-1][0] > self._log.committed:
            raise ProposalRejected("a configuration change is still uncommitted")
        if not self._committed_in_term():
            raise ProposalRejected("leader has not committed an entry of its term yet")
        voters, learners = set(self.config.voters), set(self.config.learners)
        n = cc.node_id
        if cc.op == ConfChangeOp.ADD_VOTER:
            learners.discard(n)
            voters.add(n)
        elif cc.op == ConfChangeOp.ADD_NONVOTER:
            if n in voters:
                raise ProposalRejected(f"{n} is already a voter")
            learners.add(n)
        elif cc.op == ConfChangeOp.PROMOTE:
            if n not in learners:
                raise ProposalRejected(f"{n} is not a non-voter")
            learners.discard(n)
            voters.add(n)
        elif cc.op == ConfChangeOp.REMOVE:
            if n not in voters and n not in learners:
                raise ProposalRejected(f"{n} is not a member")
            voters.discard(n)
            learners.discard(n)
            if not voters:
                raise ProposalRejected("cannot remove the last voter")
        new = Configuration(frozenset(voters), frozenset(learners))
        if new == self.config:
            raise ProposalRejected("configuration unchanged")
        return self._propose(EntryKind.CONF_CHANGE, new.encode())

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; the answer comes back as a `ReadState`.

        The leader records its commit index, confirms it is still leader with a heartbeat
        round to a quorum (§6.4), and releases the ReadState once that index is applied.
        A new leader first waits for its NOOP to commit (its commit index is only then known
        to be current). Requests pending when leadership is lost are dropped silently: the
        driver must fail them on a soft_state change. `context` must be unique per request.

        Raises:
            NotLeader: this node is not the leader (forward the read to the leader).
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if not self._committed_in_term():
            self._reads_before_commit.append(context)
            return
        self._start_read(context)

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to voter `to` (dissertation §3.10).

        The leader stops accepting proposals, brings `to` up to date, then sends TIMEOUT_NOW
        so it campaigns at once (overriding the other voters' lease). Abandoned after an
        election timeout if it has not happened.
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id or self._transferee == to:
            return
        if to not in self.config.voters:
            raise ProposalRejected(f"{to} is not a voter")
        self._transferee = to
        self._election_elapsed = 0  # the transfer times out after one election timeout
        if self._prs[to].match == self._log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to, self.id, self.term))
        else:
            self._send_append(to)

    def commit_unsent(self) -> bool:
        """Leader: some follower holds entries up to an index now committed but was not told so.

        Only ever True with `defer_commit` for long: otherwise the commit index leaves with the
        Ready that follows the commit."""
        if self.role != Role.LEADER:
            return False
        committed = self._log.committed
        for p, pr in self._prs.items():
            if p != self.id and pr.sent_commit < min(committed, pr.match):
                return True
        return False

    def flush_commit(self) -> None:
        """Leader with `defer_commit`: the next Ready tells every follower that lacks it the
        commit index (a commit-only AppendEntries where no entries are due anyway).

        Deferring lets a commit ride on the next proposal's AppendEntries: a write that follows
        within the driver's delay costs each follower one message and one answer instead of
        two. Followers apply later by up to that delay (a heartbeat carries the commit too);
        the leader's own commit, and so every acknowledgement, is not delayed."""
        if self.role == Role.LEADER:
            self._commit_flush = True
            self._bcast_pending = True

    def step(self, m: Message) -> None:
        """Process one message from a peer. Messages not addressed to this node are ignored."""
        if m.to != self.id:
            return
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                # The lease: while we heard from a leader within the election timeout, a vote
                # request is ignored outright (no term bump), unless it follows a transfer.
                forced = m.context == CAMPAIGN_TRANSFER
                in_lease = (self.check_quorum and self.leader is not None
                            and self._election_elapsed < self.election_tick)
                if in_lease and not forced:
                    return
            if m.type == MsgType.PRE_VOTE or (m.type == MsgType.PRE_VOTE_RESP and not m.reject):
                # A pre-vote is for a future term: answering it or being granted one changes
                # nothing durable (that is the point of §9.6).
                pass
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MsgType.APP, MsgType.HEARTBEAT):
                # A stale leader (e.g. healed from a partition) may never learn of the new term
                # otherwise, since with pre-vote/lease nobody else bumps its term: tell it.
                self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term))
            elif m.type == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    # ---------------------------------------------------------------- driver API: output

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        lg = self._log
        # Field by field, not by building a HardState and a SoftState to compare (called once
        # or twice per Ready; two records per call cost more than the rest of it).
        ph = self._prev_hard
        ps = self._prev_soft
        return bool(
            self._msgs or self._bcast_pending or lg.unstable or lg.unstable_snap is not None
            or lg.committed > lg.applied
            or self.term != ph.term or self.vote != ph.vote or lg.committed != ph.commit
            or self.leader != ps.leader or self.role is not ps.role
            or (self._read_ready and any(r.index <= lg.applied for r in self._read_ready))
        )

    def ready(self) -> Ready | None:
        """Collect the work for the driver, or None if there is none (see `Ready`)."""
        if self._outstanding is not None:
            raise RaftError("ready() called again before advance()")
        self._flush_broadcast()
        if not self.has_ready():
            return None
        lg = self._log
        ph = self._prev_hard
        ps = self._prev_soft
        hard_changed = self.term != ph.term or self.vote != ph.vote or lg.committed != ph.commit
        hard = self._hard_state() if hard_changed else ph
        soft_changed = self.leader != ps.leader or self.role is not ps.role
        soft = self._soft_state() if soft_changed else ps
        lo = lg.applied + 1
        if lg.unstable_snap is not None:
            lo = max(lo, lg.unstable_snap.meta.index + 1)
        committed = tuple(lg.slice(lo, lg.committed + 1)) if lg.committed >= lo else ()
        reads: tuple[ReadState, ...] = ()
        if self._read_ready:
            applied_after = committed[-1].index if committed else lg.applied
            if lg.unstable_snap is not None:
                applied_after = max(applied_after, lg.unstable_snap.meta.index)
            reads = tuple(r for r in self._read_ready if r.index <= applied_after)
            self._read_ready = [r for r in self._read_ready if r.index > applied_after]

        durable_term = hard.term == ph.term and hard.vote == ph.vote
        early: list[Message] = []
        late: list[Message] = []
        for m in self._msgs:
            if durable_term and m.type in _LEADER_TRAFFIC and m.term == self.term:
                early.append(m)
            else:
                late.append(m)
        self._msgs = []
        rd = Ready(
            soft_state=soft if soft_changed else None,
            hard_state=hard if hard_changed else None,
            entries=tuple(lg.unstable),
            snapshot=lg.unstable_snap,
            committed_entries=committed,
            messages=tuple(late),
            early_messages=tuple(early),
            read_states=reads,
        )
        self._prev_soft = soft
        self._prev_hard = hard
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver carried out `rd` (persisted, sent, applied)."""
        if rd is not self._outstanding:
            raise RaftError("advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        lg = self._log
        if rd.snapshot is not None:
            lg.stable_snap_to(rd.snapshot.meta.index)
            lg.applied_to(max(lg.applied, rd.snapshot.meta.index))
        if rd.entries:
            last = rd.entries[-1]
            lg.stable_to(last.index, last.term)
        if rd.committed_entries:
            lg.applied_to(max(lg.applied, rd.committed_entries[-1].index))
        if self.role == Role.LEADER and self.id in self._prs:
            # Only now does the leader's own log count toward commit (see Ready).
            if self._prs[self.id].maybe_update(lg.persisted_last()):
                self._maybe_commit()

    # ---------------------------------------------------------------- snapshots

    def snapshot_due(self) -> int | None:
        """The applied index to snapshot at, when the log since the last snapshot is too long."""
        if self.snapshot_threshold <= 0:
            return None
        if self._log.applied - self._storage.snapshot_meta().index >= self.snapshot_threshold:
            return self._log.applied
        return None

    def make_snapshot(self, index: int, data: bytes) -> Snapshot:
        """Wrap the FSM state at applied `index` with its metadata (term, configuration then).

        The driver stores it (MemoryStorage.create_snapshot) and may then compact the log up
        to `index` (keeping some trailing entries so slow followers avoid a full snapshot).
        """
        if index > self._log.applied:
            raise RaftError(f"snapshot index {index} beyond applied {self._log.applied}")
        term = self._log.term(index)
        if term is None:
            raise Compacted(index)
        return Snapshot(SnapshotMeta(index, term, self._config_at(index)), data)

    # ---------------------------------------------------------------- internals: roles

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self._log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    def _reset_timeout(self) -> None:
        self._randomized_timeout = self.rng.randrange(self.election_tick, 2 * self.election_tick)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_timeout()
        self._votes = {}
        self._transferee = None
        self._bcast_pending = False
        self._commit_flush = False
        self._reads_before_commit = []
        self._read_requests = {}
        self._read_ready = []
        self._prs = {}

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            vote_term, kind = self.term + 1, MsgType.PRE_VOTE
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            vote_term, kind = self.term, MsgType.VOTE
        self._votes[self.id] = True
        if quorum.vote_result(self.config.voters, self._votes) == quorum.VoteResult.WON:
            self._election_won(pre)
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for v in sorted(self.config.voters):
            if v != self.id:
                self._send(Message(kind, v, self.id, vote_term, log_term=self._log.last_term(),
                                   index=self._log.last_index(), context=ctx))

    def _election_won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False, transfer=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self._log.last_index()
        for p in self.config.members():
            self._prs[p] = _Progress(match=0, next=last + 1)
        if self.id in self._prs:
            me = self._prs[self.id]
            me.match, me.state, me.recent_active = self._log.persisted_last(), _PeerState.REPLICATE, True
        # §5.4.2/§8: an entry of the new term lets everything before it commit, and tells the
        # leader its commit index is current (needed before it answers ReadIndex).
        self._append_as_leader(EntryKind.NOOP, b"")
        logger.debug("%s became leader at term %d", self.id, self.term)

    # ---------------------------------------------------------------- internals: messages

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == MsgType.PRE_VOTE
        resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        # Vote once per term (§5.2): again for the same candidate (a retransmission), or for
        # anyone if we have not voted and know no leader; a pre-vote for a later term is free.
        can_vote = (self.vote == m.frm or (self.vote is None and self.leader is None)
                    or (pre and m.term > self.term))
        if self._recovery is not None and not self._recovery.admits(m.log_term, m.index):
            can_vote = False
        if can_vote and self._log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp, m.frm, self.id, m.term))
            if not pre:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))

    def _step_follower(self, m: Message) -> None:
        if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self._election_elapsed = 0
            self.leader = m.frm
            if m.type == MsgType.APP:
                self._handle_append(m)
            elif m.type == MsgType.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif m.type == MsgType.TIMEOUT_NOW:
            if self.promotable():
                # Leadership transfer: skip pre-vote (the leader asked us) and override leases.
                self._campaign(pre=False, transfer=True)

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            # A leader exists in our term (or a later one): §5.2, return to follower.
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
            return
        expect = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if m.type != expect:
            return
        self._votes.setdefault(m.frm, not m.reject)
        result = quorum.vote_result(self.config.voters, self._votes)
        if result == quorum.VoteResult.WON:
            self._election_won(self.role == Role.PRE_CANDIDATE)
        elif result == quorum.VoteResult.LOST:
            self._become_follower(self.term, None)

    def _handle_append(self, m: Message) -> None:
        lg = self._log
        if m.index < lg.committed:
            # Everything up to our commit index matches the leader already (Log Matching).
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=lg.committed))
            return
        if lg.match_term(m.index, m.log_term):
            last_new = m.index + len(m.entries)
            conflict = lg.find_conflict(m.entries)
            if conflict:
                new = m.entries[conflict - m.index - 1:]
                self._truncate_config(new[0].index)
                lg.append(new)
                for e in new:
                    if e.kind == EntryKind.CONF_CHANGE and self._conf_counts(e.term):
                        self._apply_config(e.index, Configuration.decode(e.data))
            lg.commit_to(min(m.commit, last_new))
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=last_new))
            return
        # Reject with a hint: the last index that could match, judged by term, so the leader
        # skips a whole conflicting term (or our whole missing suffix) in one round trip.
        hint = lg.find_conflict_by_term(min(m.index, lg.last_index()), m.log_term)
        self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=m.index, reject=True,
                           reject_hint=hint, log_term=lg.term(hint) or 0))

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader caps the commit at our match index, so it is in our log; cap anyway.
        self._log.commit_to(min(m.commit, self._log.last_index()))
        self._send(Message(MsgType.HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        s = m.snapshot.meta
        lg = self._log
        if s.index <= lg.committed:
            pass  # stale or duplicate: we already have (and committed) all of it
        elif lg.match_term(s.index, s.term):
            lg.commit_to(s.index)  # our log already contains the snapshot's last entry
        else:
            lg.restore(m.snapshot)
            self.config = self._effective_config(s.term, s.config)
            self._conf_history = [(s.index, self.config)]
            self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=lg.last_index()))
            return
        self._send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=lg.committed))

    # ---------------------------------------------------------------- internals: leader

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.election_tick:
            self._election_elapsed = 0
            if self.check_quorum:
                active = [p for p, pr in self._prs.items() if pr.recent_active or p == self.id]
                if not quorum.has_quorum(self.config.voters, active):
                    logger.info("%s steps down at term %d: no quorum heard from", self.id, self.term)
                    self._become_follower(self.term, None)
                    return
                for p, pr in self._prs.items():
                    pr.recent_active = p == self.id
            self._transferee = None  # a transfer that took a whole election timeout failed
        if self._heartbeat_elapsed >= self.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _broadcast_heartbeat(self, context: bytes | None = None) -> None:
        if context is None:
            context = next(reversed(self._read_requests), b"") if self._read_requests else b""
        for p in sorted(self._prs):
            if p == self.id:
                continue
            pr = self._prs[p]
            commit = min(pr.match, self._log.committed)
            pr.sent_commit = max(pr.sent_commit, commit)
            # `index` carries the real commit index: the follower's last contact counts only
            # once it applied that far (RaftServer._heard_from_leader).
            self._send(Message(MsgType.HEARTBEAT, p, self.id, self.term, index=self._log.committed,
                               commit=commit, context=context))

    def _step_leader(self, m: Message) -> None:
        pr = self._prs.get(m.frm)
        if pr is None:
            return  # not (or no longer) a member
        if m.type == MsgType.APP_RESP:
            pr.recent_active = True
            self._handle_append_response(m, pr)
        elif m.type == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == _PeerState.REPLICATE and len(pr.inflight) >= self.max_inflight:
                pr.inflight.pop(0)  # a message may be lost: free a slot so replication resumes
            if pr.state == _PeerState.SNAPSHOT:
                pr.snapshot_stall += 1
                if pr.snapshot_stall * self.heartbeat_tick >= self.election_tick:
                    pr.become_probe()  # the snapshot was probably lost: probe (and resend)
            if pr.match < self._log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._ack_read(m.context, m.frm)

    def _handle_append_response(self, m: Message, pr: _Progress) -> None:
        lg = self._log
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                # Skip every entry of ours whose term is above the follower's term at the hint.
                hint = lg.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decrease(m.index, hint):
                if pr.state == _PeerState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state == _PeerState.PROBE:
            pr.become_replicate()
        elif pr.state == _PeerState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == _PeerState.REPLICATE:
            while pr.inflight and pr.inflight[0] <= m.index:
                pr.inflight.pop(0)
        self._maybe_commit()  # on success it schedules a broadcast of the new commit index (unless deferred)
        if self.role != Role.LEADER:
            return  # the commit removed us from the configuration
        while self._send_append(m.frm, send_empty=False):
            pass
        if m.frm == self._transferee and pr.match == lg.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, m.frm, self.id, self.term))

    def _send_append(self, to: str, send_empty: bool = True) -> bool:
        """Send the next AppendEntries (or a snapshot) to `to`; False if nothing was sent."""
        pr = self._prs[to]
        if pr.paused(self.max_inflight):
            return False
        lg = self._log
        prev = pr.next - 1
        if not send_empty and prev >= lg.last_index() and (
                min(lg.committed, prev) <= pr.sent_commit or (self.defer_commit and not self._commit_flush)):
            # Nothing to send (the common second call of a broadcast's loop): decided before
            # the term lookup and slice below would find no entries and decide the same.
            return False
        prev_term = lg.term(prev)
        ents: list[Entry] = []
        if prev_term is not None:
            try:
                ents = lg.slice(pr.next, lg.last_index() + 1, self.max_entries_per_msg,
                                self.max_bytes_per_msg)
            except Compacted:
                prev_term = None
        if prev_term is None:
            return self._send_snapshot(to, pr)
        # The follower may use the commit index only up to the last entry this APP vouches for.
        usable_commit = min(lg.committed, ents[-1].index if ents else prev)
        if not ents and not send_empty and (usable_commit <= pr.sent_commit
                                            or (self.defer_commit and not self._commit_flush)):
            return False  # nothing new, not even a commit index the follower could use (now)
        pr.sent_commit = max(pr.sent_commit, usable_commit)
        self._send(Message(MsgType.APP, to, self.id, self.term, log_term=prev_term, index=prev,
                           entries=tuple(ents), commit=lg.committed))
        if pr.state == _PeerState.REPLICATE:
            if ents:
                pr.next = ents[-1].index + 1
                pr.inflight.append(ents[-1].index)
        else:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: str, pr: _Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a whole snapshot to a peer that may be down
        snap = self._storage.snapshot()
        self._send(Message(MsgType.SNAP, to, self.id, self.term, snapshot=snap))
        pr.become_snapshot(snap.meta.index)
        return True

    def _flush_broadcast(self) -> None:
        """Send pending entries/commit to every peer, batched: one pass per Ready, not per propose."""
        if not self._bcast_pending:
            return
        self._bcast_pending = False
        if self.role != Role.LEADER:
            self._commit_flush = False
            return
        # Only what a peer lacks: entries, or a commit index it can use. An empty AppendEntries
        # to a peer that was just told everything (by the answer to its acknowledgement, in
        # `_handle_append_response`) would cost it a message and the leader an answer.
        for p in sorted(self._prs):
            if p != self.id:
                while self._send_append(p, send_empty=False):
                    pass
        self._commit_flush = False

    def _committed_in_term(self) -> bool:
        return self._log.term(self._log.committed) == self.term

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a majority has; only entries of our term (§5.4.2)."""
        match = {p: pr.match for p, pr in self._prs.items()}
        idx = quorum.committed_index(self.config.voters, match)
        if idx <= self._log.committed or self._log.term(idx) != self.term:
            return False
        first_in_term = not self._committed_in_term()
        self._log.commit_to(idx)
        if not self.defer_commit:  # else it rides on the next entries (see flush_commit)
            self._bcast_pending = True
        if first_in_term and self._reads_before_commit:
            pending, self._reads_before_commit = self._reads_before_commit, []
            for ctx in pending:
                self._start_read(ctx)
        if self.id not in self.config.voters and self._conf_history[-1][0] <= idx:
            # Our removal is committed: hand over by stepping down (§4.2.2).
            self._become_follower(self.term, None)
        return True

    def _propose(self, kind: EntryKind, data: bytes) -> Proposal:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee is not None:
            raise ProposalRejected(f"leadership transfer to {self._transferee} in progress")
        return self._append_as_leader(kind, data)

    def _append_as_leader(self, kind: EntryKind, data: bytes) -> Entry:
        e = _new_tuple(Entry, (self._log.last_index() + 1, self.term, kind, data))
        self._log.append([e])
        if kind == EntryKind.CONF_CHANGE:
            self._apply_config(e.index, Configuration.decode(data))
        self._bcast_pending = True
        return e

    # ---------------------------------------------------------------- internals: reads

    def _start_read(self, ctx: bytes) -> None:
        if ctx in self._read_requests:
            return
        self._read_requests[ctx] = _ReadRequest(self._log.committed, {self.id})
        if quorum.has_quorum(self.config.voters, {self.id}):
            self._ack_read(ctx, self.id)
        else:
            self._broadcast_heartbeat(ctx)

    def _ack_read(self, ctx: bytes, frm: str) -> None:
        req = self._read_requests.get(ctx)
        if req is None:
            return
        req.acks.add(frm)
        if not quorum.has_quorum(self.config.voters, req.acks):
            return
        # Leadership was confirmed after every earlier request was made: release them too.
        while self._read_requests:
            c, r = next(iter(self._read_requests.items()))
            del self._read_requests[c]
            self._read_ready.append(ReadState(r.index, c))
            if c == ctx:
                break

    # ---------------------------------------------------------------- internals: config

    def _conf_counts(self, term: int) -> bool:
        """Whether a configuration written in `term` still decides (a recovery overrides older ones)."""
        return self._recovery is None or term >= self._recovery.term

    def _effective_config(self, term: int, conf: Configuration) -> Configuration:
        return conf if self._recovery is None or term >= self._recovery.term else self._recovery.config

    def _config_at(self, index: int) -> Configuration:
        conf = self._conf_history[0][1]
        for i, c in self._conf_history:
            if i <= index:
                conf = c
        return conf

    def _truncate_config(self, from_index: int) -> None:
        """Entries >= from_index are being replaced: forget the configurations they carried."""
        if self._conf_history[-1][0] < from_index:
            return
        while len(self._conf_history) > 1 and self._conf_history[-1][0] >= from_index:
            self._conf_history.pop()
        self.config = self._conf_history[-1][1]

    def _apply_config(self, index: int, conf: Configuration) -> None:
        self._conf_history.append((index, conf))
        self.config = conf
        if self.role != Role.LEADER:
            return
        last = self._log.last_index()
        for p in conf.members():
            if p not in self._prs:
                self._prs[p] = _Progress(match=0, next=last)
        for p in [p for p in self._prs if p not in conf.voters and p not in conf.learners
                  and p != self.id]:
            del self._prs[p]
        if self._transferee is not None and self._transferee not in conf.voters:
            self._transferee = None
        self._maybe_commit()  # a smaller quorum may already cover more
