"""Raft data types shared by the core, the storage and the wire: entries, messages, snapshots.

Owns the plain, immutable values that cross the boundary of the sans-I/O core
(`proconsul.raft.core`): log entries, the single `Message` record used for every RPC,
hard state, cluster configurations and snapshots. Nothing here does I/O or keeps state;
the encoding of a `Configuration` into a CONF_CHANGE entry lives here so the core, the
storage and the FSM agree on it.

Messages follow etcd's cut: one record type whose fields mean slightly different things
per `MsgType` (documented on each field), which keeps the wire codec and the golden test
output simple. The enum is append-only (the wire format depends on the values).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import NamedTuple


class EntryKind(enum.IntEnum):
    """What a log entry carries. Append-only: values go on the wire and on disk."""

    NORMAL = 0  # an FSM command from propose()
    CONF_CHANGE = 1  # an encoded Configuration: the whole new membership, effective when appended
    NOOP = 2  # appended by each new leader so earlier terms' entries can commit (§5.4.2)


class Entry(NamedTuple):
    """One log entry; (index, term) identifies it uniquely across the cluster (Log Matching).

    An immutable tuple rather than a frozen dataclass: every member builds two or three per
    replicated write (the leader's append, a follower's decode, the read back from storage for
    applying), and a frozen dataclass sets each field through `object.__setattr__` (~2 µs a
    record against ~0.35 for `tuple.__new__(Entry, (index, term, kind, data))` on a loaded
    box). The hot paths build it that way (all four fields, no Python-level constructor);
    elsewhere `Entry(...)` reads as before.
    """

    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


class MsgType(enum.IntEnum):
    """Raft RPCs. Append-only: the values go on the wire."""

    APP = 1  # AppendEntries: index/log_term = prev entry, entries, commit
    APP_RESP = 2  # index = last matching index (accept) or the rejected prev index (reject)
    VOTE = 3  # RequestVote: index/log_term = candidate's last entry
    VOTE_RESP = 4
    PRE_VOTE = 5  # dissertation §9.6: same as VOTE but for term+1 and nothing is persisted
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # empty AppendEntries without the log check: commit, context (ReadIndex)
    HEARTBEAT_RESP = 8  # echoes context
    SNAP = 9  # InstallSnapshot: snapshot carries metadata and the FSM bytes in one message
    TIMEOUT_NOW = 10  # leadership transfer: the target campaigns at once, bypassing the lease


@dataclass(slots=True, unsafe_hash=True)
class Message:
    """One Raft RPC. Unused fields keep their defaults; field meaning depends on `type`.

    Treated as immutable (nothing assigns a field after construction) but not `frozen`: a
    frozen dataclass's `__init__` sets every field through `object.__setattr__`, ~1.3 µs a
    message against ~0.4 µs for plain slot stores, and a replicated write builds about five
    (the AppendEntries, its decode on each follower, the answers and their decodes).
    Equality and hashing stay by value (`unsafe_hash`), and `dataclasses.replace` still works.

    Attributes:
        type: which RPC.
        to, frm: node IDs.
        term: sender's term (for a granted PRE_VOTE_RESP: the term the pre-vote was for).
        log_term: APP: term of the entry at `index`; VOTE/PRE_VOTE: term of the last entry;
            rejected APP_RESP: term of the entry at `reject_hint` in the follower's log.
        index: APP: prev entry index; VOTE/PRE_VOTE: last entry index; APP_RESP: on accept the
            highest index known to match the leader, on reject the `index` of the rejected APP;
            HEARTBEAT: the leader's commit index, uncapped (for the follower's last contact).
        entries: APP only.
        commit: APP/HEARTBEAT: leader commit (for HEARTBEAT already capped at the peer's match).
        reject: responses only.
        reject_hint: rejected APP_RESP: the follower's guess of the last index that can match
            (its last index when it is short, else the last index whose term <= the leader's
            prev term), so the leader backs off a whole term in one step.
        snapshot: SNAP only.
        context: HEARTBEAT(_RESP): ReadIndex request id; VOTE/PRE_VOTE: CAMPAIGN_TRANSFER
            when the campaign follows a leadership transfer (it overrides the lease).
    """

    type: MsgType
    to: str
    frm: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


# VOTE/PRE_VOTE context of a campaign started by TIMEOUT_NOW: voters honour it inside the lease.
CAMPAIGN_TRANSFER = b"transfer"


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent.

    `term` and `vote` are the paper's persistent state (Figure 2); `commit` is persisted
    only as an optimisation (it can always be relearned from the leader).
    """

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Configuration:
    """Cluster membership. Voters elect and count for quorum; learners (non-voters) only replicate."""

    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()

    def members(self) -> list[str]:
        """All members in a stable (sorted) order: never let set order reach an output."""
        return sorted(self.voters | self.learners)

    def encode(self) -> bytes:
        return json.dumps({"voters": sorted(self.voters), "learners": sorted(self.learners)},
                          separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> Configuration:
        obj = json.loads(data)
        return Configuration(frozenset(obj["voters"]), frozenset(obj["learners"]))


class ConfChangeOp(enum.IntEnum):
    """Single-server membership changes (dissertation §4.1). Append-only."""

    ADD_VOTER = 1
    ADD_NONVOTER = 2
    PROMOTE = 3  # non-voter -> voter
    REMOVE = 4


@dataclass(frozen=True, slots=True)
class ConfChange:
    op: ConfChangeOp
    node_id: str


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The log position a snapshot replaces and the configuration in force at that index."""

    index: int = 0
    term: int = 0
    config: Configuration = field(default_factory=Configuration)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot: metadata plus the FSM's opaque serialized state."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""
