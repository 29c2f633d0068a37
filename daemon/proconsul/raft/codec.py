"""Raft messages on the wire: `Message` <-> msgpack-able lists (sans-I/O).

Owns the encoding of Raft RPCs between servers. Positional lists, versioned by a leading
number, with fields only ever appended: a newer server reading an older message fills missing
trailing fields with their defaults.
"""

from __future__ import annotations

from typing import Any

from proconsul.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

CODEC_VERSION = 1
# Entries are built with tuple.__new__ on the hot paths (see messages.Entry): no Python-level
# constructor per replicated entry.
_new_tuple = tuple.__new__


def _entry(e: Entry) -> list[Any]:
    return [e.index, e.term, int(e.kind), e.data]


def _snapshot(s: Snapshot) -> list[Any]:
    return [s.meta.index, s.meta.term, s.meta.config.encode(), s.data]


def encode_message(m: Message) -> list[Any]:
    return [
        CODEC_VERSION,
        int(m.type),
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        [_entry(e) for e in m.entries],
        m.commit,
        m.reject,
        m.reject_hint,
        _snapshot(m.snapshot) if m.snapshot is not None else None,
        m.context,
    ]


def _uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Enum members by value: a dict lookup instead of an Enum call (`EntryKind(k)` goes through
# EnumType.__call__), which a follower made several times per replicated entry.
_MSG_TYPES = {int(t): t for t in MsgType}
ENTRY_KINDS = {int(k): k for k in EntryKind}


def _entries(raw: Any) -> tuple[Entry, ...]:
    """The entries of an AppendEntries, checked; ValueError when malformed."""
    if type(raw) is not list:
        raise ValueError("Raft message: entries must be [index, term, kind, data] lists")
    out = []
    kinds = ENTRY_KINDS
    for e in raw:
        # type() is: a peer's msgpack gives exactly int and bytes, and bool is not an index.
        if (type(e) is not list or len(e) != 4 or type(e[0]) is not int or e[0] < 0
                or type(e[1]) is not int or e[1] < 0 or type(e[3]) is not bytes):
            raise ValueError("Raft message: entries must be [index, term, kind, data] lists")
        kind = kinds.get(e[2]) if type(e[2]) is int else None
        if kind is None:
            raise ValueError(f"Raft message: unknown entry kind {e[2]!r}")
        out.append(_new_tuple(Entry, (e[0], e[1], kind, e[3])))
    return tuple(out)


def decode_message(raw: Any) -> Message:
    """Decode `encode_message` output; ValueError when it is not a Raft message."""
    if not isinstance(raw, list) or len(raw) < 13 or raw[0] != CODEC_VERSION:
        raise ValueError("not a Raft message")
    _, kind, to, frm, term, log_term, index, entries, commit, reject, hint, snap, context = raw[:13]
    # A peer's message is checked field by field here, so a wrongly typed one is dropped as
    # undecodable instead of raising inside the core's step().
    if not (isinstance(to, str) and isinstance(frm, str)):
        raise ValueError("Raft message: to and frm must be strings")
    # type() is (as in `_entries`): msgpack gives exactly int, and bool is not a number here;
    # five `_uint` calls cost a follower more than the rest of the checks.
    if not (type(term) is int and type(log_term) is int and type(index) is int and type(commit) is int
            and type(hint) is int and term >= 0 and log_term >= 0 and index >= 0 and commit >= 0 and hint >= 0):
        raise ValueError("Raft message: term, log_term, index, commit and hint must be non-negative integers")
    msg_type = _MSG_TYPES.get(kind) if type(kind) is int else None
    if msg_type is None:
        raise ValueError(f"Raft message: unknown type {kind!r}")
    decoded = () if entries == [] else _entries(entries)
    snapshot = None
    if snap is not None:
        if not (isinstance(snap, list) and len(snap) == 4 and _uint(snap[0]) and _uint(snap[1])
                and isinstance(snap[2], bytes) and isinstance(snap[3], bytes)):
            raise ValueError("Raft message: malformed snapshot")
        s_index, s_term, s_config, s_data = snap
        snapshot = Snapshot(SnapshotMeta(s_index, s_term, Configuration.decode(s_config)), s_data)
    # Positional, in the field order of `Message`: a keyword call costs more per message.
    return Message(msg_type, to, frm, term, log_term, index, decoded, commit, bool(reject), hint, snapshot, context)
