"""Leaderless recovery: give the surviving servers of a cluster that lost its majority for good a
new configuration made of themselves, without losing what they hold.

Owns the recovery marker (`data_dir/raft/recovery.json`), reading a stopped server's durable
Raft state (`inspect`) or a running one's (`live_state`, and the wire forms of both), the plan (`plan`: which survivors become the voters, what is kept, what
may be lost, and when to refuse) and writing it (`apply`). `proconsul operator raft recover`
(cli/raft_recover.py) is its user; the driver (raft/node.py) loads the marker at start and hands
it to the core, which lets the marker's configuration replace every configuration carried by an
entry or snapshot of an earlier term (`RaftNode(recovery=...)`).

How it differs from `peers.json`: that file makes each server apply its whole log, committed or
not, and restart from a snapshot of it, so two survivors whose log tails differ end up with
different states. Here nothing is applied and nothing is truncated: each chosen survivor keeps
its log, its term is raised past every term any survivor has seen, and the configuration
changes. The marker also names the kept log (the last term and index of the most up-to-date
chosen survivor, B below): until a server's log is at least that up-to-date it neither
campaigns nor grants a vote to a candidate whose log is not. Raft's election restriction alone
would not do: it only makes the winner as up-to-date as a majority of the voters, and two
lagging survivors could elect each other over B. So the first leader of the new era is B (or a
survivor with an identical log); it replicates B's log to the others (a diverging tail, which
cannot be committed, is overwritten), and every later leader holds that leader's log. If B is
lost during the recovery, the others wait; run the recovery again on those left.

Why the most up-to-date survivor keeps every committed entry any survivor holds. Let B be the
survivor with the highest (last term, last index) and e an entry at index i, term t, committed by
the old cluster and held by some survivor S. S's last term is at least t, so B's is too.
- If B's last term T exceeds t: B's last entry was written by the leader of term T, which by
  Leader Completeness holds e at i, and holds it below its own term-T entries, so i < B's last
  index; by Log Matching B's log equals that leader's up to B's last entry, e included.
- If B's last term is t: S's last term is t as well (it is at least t and at most B's), so
  B's last index is at least S's, which is at least i. Both e and B's last entry were written by
  the leader of term t, whose log never changes under it; Log Matching again gives e in B.
So choosing B (and anyone else, who will copy B's log) keeps every such entry; entries a
survivor holds beyond the point where its log leaves B's are not committed and are the only
ones dropped. The plan refuses (unless forced) when the operator's choice of voters leaves out a
survivor whose log is more up-to-date than every chosen one, since its extra entries may have
been acknowledged (and are known to be when they lie at or below its commit index).

What cannot be guaranteed: an entry committed on a majority made only of servers that are now
gone (with 2 survivors of 5, a write acknowledged by the 3 lost servers) is on no survivor and
is lost; nothing left can tell it existed. Recovery keeps everything the survivors hold, not
everything the cluster acknowledged. A survivor left out of the new configuration must have its
data directory wiped before it joins the new cluster again.

The new term is set far past every term any survivor has seen (`TERM_GAP`): lost servers may
have run elections no survivor heard of, and the new era must not reuse their terms.

Two ways to reach the survivors. Stopped: `inspect` reads a data directory (and refuses one whose
Raft log another process has open) and `apply` writes it; the survivors are then started.
Running: each survivor answers `GET /v1/operator/raft/recover` with `live_state` and takes the
plan's marker through `PUT` (`RaftServer.recover_live`: the same durable writes, then its Raft
restarts from storage in place), refusing while it has a leader. Either way the same `plan` decides.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from proconsul.raft.core import Recovery
from proconsul.raft.messages import Configuration, EntryKind
from proconsul.raft.storage import (
    LEGACY_DB,
    LOG_DIR,
    DurableLog,
    HardState,
    LogLocked,
    SnapshotStore,
    atomic_write,
    log_file_names,
    raft_log,
)

MARKER_FILE = "recovery.json"

# How far past every term a survivor has seen the recovered cluster starts. The lost servers may
# have held elections among themselves that no survivor heard of; a new-era leader reusing such
# a term could write an (index, term) pair a lost server also wrote with other content, which
# Log Matching forbids. Skipping far ahead keeps the eras apart unless the lost servers ran more
# elections than this unseen.
TERM_GAP = 1000


class RecoveryError(Exception):
    """The recovery cannot be planned or written; the message says why and nothing was changed."""


@dataclass(frozen=True)
class Marker:
    """A recovery written to a survivor: configurations from terms before `term` are void.

    `voters` maps each new voter's node ID to its server-port address (so a restarted survivor
    can reach the others even if its address book lacks one).
    """

    term: int
    voters: Mapping[str, str]
    kept_term: int = 0  # the kept log's last entry: no leader of the new era has less
    kept_index: int = 0
    created: str = ""  # wall-clock time, for operators only

    @property
    def configuration(self) -> Configuration:
        return Configuration(frozenset(self.voters))

    def recovery(self) -> Recovery:
        """What the core enforces (see `RaftNode(recovery=...)`)."""
        return Recovery(self.term, self.configuration, self.kept_term, self.kept_index)

    def encode(self) -> bytes:
        return json.dumps({"term": self.term, "voters": dict(sorted(self.voters.items())),
                           "kept_term": self.kept_term, "kept_index": self.kept_index,
                           "created": self.created}, indent=1).encode()


def load_marker(raft_dir: str) -> Marker | None:
    path = os.path.join(raft_dir, MARKER_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        voters = {str(k): str(v) for k, v in dict(raw["voters"]).items()}
        term = int(raw["term"])
        kept = (int(raw.get("kept_term", 0)), int(raw.get("kept_index", 0)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecoveryError(f"raft: {path} is unreadable ({exc}); restore it or remove it by hand") from None
    if not voters or term <= 0:
        raise RecoveryError(f"raft: {path} names no voter or no term")
    return Marker(term, voters, kept[0], kept[1], str(raw.get("created", "")))


def write_marker(raft_dir: str, marker: Marker) -> None:
    """Durably (write, fsync, rename) put `marker` in `raft_dir`."""
    atomic_write(os.path.join(raft_dir, MARKER_FILE), marker.encode())


def clear_marker(raft_dir: str) -> None:
    """A later `peers.json` recovery replaces this one."""
    path = os.path.join(raft_dir, MARKER_FILE)
    if os.path.exists(path):
        os.remove(path)


@dataclass(frozen=True)
class SurvivorState:
    """One survivor's durable Raft state, as far as recovery needs it."""

    id: str
    address: str
    source: str  # where it was read from (the data directory)
    term: int  # current term (hard state)
    commit: int  # commit index (hard state; may lag what the leader knew)
    last_index: int
    last_term: int
    snapshot_index: int
    snapshot_term: int
    voters: tuple[str, ...]  # the configuration this server had in force
    terms: Mapping[int, int] = field(default_factory=dict, repr=False)  # index -> term, entries in the log
    addresses: Mapping[str, str] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, object]:
        """The wire form `GET /v1/operator/raft/recover` answers with (see `from_json`)."""
        return {"ID": self.id, "Address": self.address, "Term": self.term, "CommitIndex": self.commit,
                "LastIndex": self.last_index, "LastTerm": self.last_term, "SnapshotIndex": self.snapshot_index,
                "SnapshotTerm": self.snapshot_term, "Voters": list(self.voters),
                "Terms": {str(i): t for i, t in sorted(self.terms.items())},
                "Addresses": dict(sorted(self.addresses.items()))}

    @classmethod
    def from_json(cls, raw: object, source: str) -> SurvivorState:
        """Parse a survivor's answer; RecoveryError names `source` when it is malformed."""
        try:
            assert isinstance(raw, dict)
            return cls(
                id=str(raw["ID"]), address=str(raw["Address"]), source=source, term=int(raw["Term"]),
                commit=int(raw["CommitIndex"]), last_index=int(raw["LastIndex"]), last_term=int(raw["LastTerm"]),
                snapshot_index=int(raw["SnapshotIndex"]), snapshot_term=int(raw["SnapshotTerm"]),
                voters=tuple(sorted(str(v) for v in raw["Voters"])),
                terms={int(i): int(t) for i, t in dict(raw.get("Terms") or {}).items()},
                addresses={str(k): str(v) for k, v in dict(raw.get("Addresses") or {}).items()},
            )
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise RecoveryError(f"{source}: unexpected answer ({type(exc).__name__}: {exc})") from None

    @property
    def up_to_date(self) -> tuple[int, int]:
        """Raft's election order (§5.4.1): last term first, then last index."""
        return (self.last_term, self.last_index)

    @property
    def known_committed(self) -> int:
        return max(self.commit, self.snapshot_index)

    def term_at(self, index: int) -> int | None:
        """The term of entry `index`, or None when compacted away or absent."""
        if index == self.snapshot_index:
            return self.snapshot_term
        return self.terms.get(index)

    def holds(self, index: int, term: int) -> bool:
        """Whether this log holds entry (index, term) — assuming that entry is committed."""
        if index <= 0:
            return True
        if index > self.last_index:
            return False
        if index <= self.known_committed:
            return True  # committed here too, and a committed index has one entry cluster-wide
        return self.term_at(index) == term

    def diverges_from(self, other: SurvivorState) -> int:
        """The first index of this log that `other`'s log does not share (last_index + 1 if none)."""
        i = min(self.last_index, other.last_index)
        # Log Matching: the highest index with equal terms ends the shared prefix. Entries at or
        # below our commit index are shared with the most up-to-date log (see above); an index
        # compacted away on either side is taken as shared (it was committed there).
        while i > self.known_committed:
            a, b = self.term_at(i), other.term_at(i)
            if a is None or b is None or a == b:
                break
            i -= 1
        return i + 1


@dataclass(frozen=True)
class Loss:
    server: str
    first: int  # first index that will not survive
    last: int
    in_new_configuration: bool
    known_committed: bool  # some of it lies at or below that server's commit index


@dataclass(frozen=True)
class Plan:
    survivors: tuple[SurvivorState, ...]
    voters: tuple[str, ...]  # the new configuration, sorted
    best: SurvivorState  # the chosen log the new cluster continues
    recovery_term: int
    losses: tuple[Loss, ...]
    refusals: tuple[str, ...]  # why this would drop acknowledged writes; empty when it would not
    majority_lost: bool  # the survivors may miss writes acknowledged by the lost servers alone

    def marker(self) -> Marker:
        by_id = {s.id: s for s in self.survivors}
        return Marker(self.recovery_term, {v: by_id[v].address for v in self.voters},
                      self.best.last_term, self.best.last_index, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def plan(survivors: Sequence[SurvivorState], voters: Sequence[str] | None = None) -> Plan:
    """Choose the new voters (default: every survivor) and say what is kept and what may be lost."""
    if not survivors:
        raise RecoveryError("no survivor given")
    ids = [s.id for s in survivors]
    if len(set(ids)) != len(ids):
        raise RecoveryError(f"the same server was given twice: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    chosen_ids = sorted(set(voters)) if voters else sorted(ids)
    unknown = [v for v in chosen_ids if v not in ids]
    if unknown:
        raise RecoveryError(f"voters {unknown} are not among the survivors given ({sorted(ids)})")
    for s in survivors:
        if s.id in chosen_ids and not s.address:
            raise RecoveryError(f"server {s.id} ({s.source}) does not know its own server address")
    # Ties keep the lowest ID first so the plan does not depend on argument order.
    ranked = sorted(survivors, key=lambda s: (-s.last_term, -s.last_index, s.id))
    chosen = [s for s in ranked if s.id in chosen_ids]
    best = chosen[0]
    overall = ranked[0]
    refusals: list[str] = []
    for s in ranked:
        c = s.known_committed
        t = s.term_at(c)
        if c > 0 and t is not None and not best.holds(c, t):
            refusals.append(
                f"server {s.id} has committed (acknowledged) entries up to index {c} that the new "
                f"configuration's most up-to-date log ({best.id}, last index {best.last_index}) lacks")
    if overall.up_to_date > best.up_to_date and not refusals:
        refusals.append(
            f"server {overall.id} (last term {overall.last_term}, index {overall.last_index}) is more up-to-date "
            f"than every chosen voter (best {best.id}: term {best.last_term}, index {best.last_index}); "
            "its extra entries may have been acknowledged")
    losses: list[Loss] = []
    for s in ranked:
        if s is best:
            continue
        first = s.diverges_from(best)
        if first <= s.last_index:
            losses.append(Loss(s.id, first, s.last_index, s.id in chosen_ids, first <= s.known_committed))
    # A write is on no survivor only if a quorum of the old voters is made of lost servers alone.
    old_voters = set().union(*(set(s.voters) for s in survivors))
    lost = old_voters - set(ids)
    majority_lost = bool(old_voters) and len(lost) >= len(old_voters) // 2 + 1
    top = max(max(s.term, s.last_term) for s in survivors)
    return Plan(tuple(ranked), tuple(chosen_ids), best, top + 1 + TERM_GAP, tuple(losses), tuple(refusals), majority_lost)


# ------------------------------------------------------------------------------ stopped servers


def _open_elsewhere(path: str) -> list[int]:
    """PIDs of other processes holding `path` open (those this user may look at)."""
    target = os.path.realpath(path)
    pids = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(os.path.join(fd_dir, fd)) == target:
                        pids.append(int(name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return pids


def _raft_paths(data_dir: str) -> str:
    """The raft directory of a stopped server's data directory (refused while a server runs)."""
    raft_dir = os.path.join(data_dir, "raft")
    log_dir, legacy = os.path.join(raft_dir, LOG_DIR), os.path.join(raft_dir, LEGACY_DB)
    if not os.path.isdir(log_dir) and not os.path.exists(legacy):
        raise RecoveryError(f"{data_dir}: no Raft state (no raft/{LOG_DIR}/); is this a server's data directory?")
    for held in (os.path.join(log_dir, "LOCK"), legacy):
        busy = _open_elsewhere(held) if os.path.exists(held) else []
        if busy:
            raise RecoveryError(f"{data_dir}: the Raft log is open in process {busy[0]}; stop that server first")
    return raft_dir


def _open_log(data_dir: str, raft_dir: str) -> DurableLog:
    log = raft_log(raft_dir)
    try:
        log.open()
    except LogLocked:
        raise RecoveryError(f"{data_dir}: the Raft log is open in another process; stop that server first") from None
    return log


def _log_names(raft_dir: str) -> list[str]:
    """What opening the log may have written (an old raft.db is imported at the first open)."""
    return [*log_file_names(raft_dir), *(LEGACY_DB + s + ".imported" for s in ("", "-wal", "-shm"))]


def inspect(data_dir: str) -> SurvivorState:
    """Read a stopped server's node ID, address book, hard state, snapshot and log."""
    raft_dir = _raft_paths(data_dir)
    try:
        with open(os.path.join(data_dir, "node-id"), encoding="utf-8") as fh:
            node_id = fh.read().strip()
    except OSError as exc:
        raise RecoveryError(f"{data_dir}: cannot read the node ID ({exc})") from None
    addresses: dict[str, str] = {}
    book = os.path.join(raft_dir, "addresses.json")
    if os.path.exists(book):
        with open(book, encoding="utf-8") as fh:
            addresses = {str(k): str(v) for k, v in json.load(fh).items()}
    marker = load_marker(raft_dir)
    if marker is not None:
        addresses = {**addresses, **marker.voters}
    log = _open_log(data_dir, raft_dir)
    try:
        hs = log.hard_state
        records = log.slice(log.first_index, log.last_index + 1) if log.last_index >= log.first_index else []
        offset_term = log.offset_term
        first = log.first_index
    finally:
        log.close()
    _give_back(raft_dir, _log_names(raft_dir))
    latest = SnapshotStore(os.path.join(raft_dir, "snapshots")).latest()
    snap_index, snap_term, config = 0, 0, Configuration()
    if latest is not None:
        meta, _ = latest
        snap_index, snap_term, config = meta.index, meta.term, Configuration.decode(meta.config)
    return describe(node_id, addresses.get(node_id, ""), data_dir, hs.term, hs.commit, snap_index, snap_term,
                    config, (first - 1, offset_term), records, marker, addresses)


class _Record(Protocol):
    index: int
    term: int
    kind: int
    data: bytes


def describe(
    node_id: str,
    address: str,
    source: str,
    term: int,
    commit: int,
    snapshot_index: int,
    snapshot_term: int,
    snapshot_config: Configuration,
    compacted: tuple[int, int],
    entries: Iterable[_Record],
    marker: Marker | None = None,
    addresses: Mapping[str, str] | None = None,
) -> SurvivorState:
    """A survivor's state from its durable pieces (sans-I/O; `inspect` and the simulation use it).

    `compacted` is (index, term) of the last entry dropped from the log's front, (0, 0) if none.
    """
    records = list(entries)
    snap_index, snap_term, config = snapshot_index, snapshot_term, snapshot_config
    if compacted[0] > snap_index:  # compacted up to a point the snapshot also covers
        snap_index, snap_term = compacted

    def counts(t: int) -> bool:
        return marker is None or t >= marker.term

    if marker is not None and not counts(snapshot_term):
        config = marker.configuration
    for r in records:
        if r.kind == EntryKind.CONF_CHANGE and r.index > snapshot_index and counts(r.term):
            config = Configuration.decode(r.data)
    last_index, last_term = snap_index, snap_term
    if records:
        last_index, last_term = records[-1].index, records[-1].term
    return SurvivorState(
        id=node_id, address=address, source=source, term=term, commit=commit,
        last_index=last_index, last_term=last_term, snapshot_index=snap_index, snapshot_term=snap_term,
        voters=tuple(sorted(config.voters)), terms={r.index: r.term for r in records},
        addresses=dict(addresses or {}),
    )


# ------------------------------------------------------------------------------ running servers


class LiveRaft(Protocol):
    """What `live_state` reads of a running server's Raft (`proconsul.raft.node.RaftServer`)."""

    id: str
    address: str
    core: Any
    storage: Any
    addresses: Any


def live_state(raft: LiveRaft, source: str) -> SurvivorState:
    """A running server's Raft state, from memory (its log records are held in memory, so this
    never races the replication loop's writes): the current term and commit index (which may
    be ahead of the durable ones), its log position, and the terms of the entries past what it
    knows committed (all `plan` compares)."""
    core = raft.core
    if core is None:
        raise RecoveryError("this server's Raft has not started")
    snap = raft.storage.snapshot_meta()
    log = raft.storage.log
    known = max(core.commit_index, snap.index)
    terms = {r.index: r.term for r in log.slice(max(known, log.first_index), core.last_index + 1)}
    return SurvivorState(
        id=raft.id, address=raft.address, source=source, term=core.term, commit=core.commit_index,
        last_index=core.last_index, last_term=core.last_term, snapshot_index=snap.index, snapshot_term=snap.term,
        voters=tuple(sorted(core.config.voters)), terms=terms, addresses=dict(raft.addresses.addrs),
    )


def marker_to_json(marker: Marker, expect: SurvivorState | None = None) -> dict[str, object]:
    """The body of `PUT /v1/operator/raft/recover`: the marker, and the log position the plan saw
    on that server (it refuses when its log moved since)."""
    body: dict[str, object] = {"Term": marker.term, "Voters": dict(sorted(marker.voters.items())),
                               "KeptTerm": marker.kept_term, "KeptIndex": marker.kept_index}
    if expect is not None:
        body["ExpectLastTerm"], body["ExpectLastIndex"] = expect.last_term, expect.last_index
    return body


def marker_from_json(raw: object) -> tuple[Marker, tuple[int, int] | None]:
    """Parse that body; ValueError with a plain reason when it is malformed."""
    if not isinstance(raw, dict):
        raise ValueError("the body must be a JSON object with Term, Voters, KeptTerm and KeptIndex")

    def number(name: str, default: int | None = None) -> int:
        value = raw.get(name, default)
        if value is None:
            raise ValueError(f"missing field {name}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        return value

    voters = raw.get("Voters")
    if not isinstance(voters, dict) or not voters or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in voters.items()):
        raise ValueError("Voters must be a non-empty object of node ID -> server address")
    term = number("Term")
    if term <= 0:
        raise ValueError("Term must be positive")
    marker = Marker(term, dict(voters), number("KeptTerm", 0), number("KeptIndex", 0),
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    expect = None
    if "ExpectLastTerm" in raw or "ExpectLastIndex" in raw:
        expect = (number("ExpectLastTerm"), number("ExpectLastIndex"))
    return marker, expect


def apply(p: Plan) -> list[str]:
    """Write the plan to every chosen survivor's data directory; returns those directories.

    The term is raised first, then the marker written (both durable): a crash in between leaves
    a harmless term bump, and the driver raises the term again from the marker at start.
    """
    marker = p.marker()
    done = []
    for s in p.survivors:
        if s.id not in p.voters:
            continue
        raft_dir = _raft_paths(s.source)
        log = _open_log(s.source, raft_dir)
        try:
            hs = log.hard_state
            log.save(hard_state=HardState(max(hs.term, p.recovery_term), "", hs.commit))
        finally:
            log.close()
        write_marker(raft_dir, marker)
        _give_back(raft_dir, [MARKER_FILE, *_log_names(raft_dir)])
        done.append(s.source)
    return done


def _give_back(raft_dir: str, names: list[str]) -> None:
    """Run as root against a service user's data directory, leave what we wrote owned by that
    user (the owner of the raft directory), or the server could not read it at start."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    st = os.stat(raft_dir)
    for name in names:
        path = os.path.join(raft_dir, name)
        if os.path.exists(path):
            os.chown(path, st.st_uid, st.st_gid)
