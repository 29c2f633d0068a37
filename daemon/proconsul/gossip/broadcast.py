"""Transmit-limited broadcast queue: what gets piggybacked on outgoing gossip packets.

Owns the choice of which encoded broadcasts ride in the free space of a datagram. Each broadcast
is sent at most ``retransmit_mult * ceil(log10(n + 1))`` times (enough for epidemic spread to
reach every member with high probability, per SWIM), the least-sent go first (new news spreads
fastest), and a newer message about a member replaces any older one still queued about the
same member (only the latest state matters, and stale states would waste space and mislead).

Pure: no clock, no I/O. Handles let a caller ask whether a given broadcast is still queued,
which is how a leave waits for its message to be sent enough times. Each broadcast has a kind
(memberlist's member states, serf's user events, serf's queries), one queue serving what
memberlist and serf keep in three: :meth:`TransmitLimitedQueue.depth` counts each kind, what
the driver reports as memberlist's and serf's queue depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The kinds of broadcast (memberlist's queue, serf's event and query queues).
MEMBERLIST = "memberlist"
EVENT = "event"
QUERY = "query"
KINDS = (MEMBERLIST, EVENT, QUERY)


def retransmit_limit(retransmit_mult: int, num_nodes: int) -> int:
    """How many times a broadcast is sent: ``mult * ceil(log10(n + 1))`` (memberlist's formula)."""
    scale = math.ceil(math.log10(max(0, num_nodes) + 1))
    return retransmit_mult * scale


@dataclass
class _Entry:
    handle: int
    key: str | None
    data: bytes
    kind: str
    transmits: int = 0


class TransmitLimitedQueue:
    """Broadcasts waiting to be piggybacked, fewest transmits first.

    Args:
        retransmit_mult: the multiplier of :func:`retransmit_limit`.
    """

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        self._entries: dict[int, _Entry] = {}
        self._by_key: dict[str, int] = {}
        self._next_handle = 1
        self._depths = dict.fromkeys(KINDS, 0)

    def __len__(self) -> int:
        return len(self._entries)

    def depth(self, kind: str) -> int:
        """How many broadcasts of ``kind`` (one of ``KINDS``) are queued."""
        return self._depths[kind]

    def queue(self, data: bytes, key: str | None = None, kind: str = MEMBERLIST) -> int:
        """Queue an encoded message; one with the same ``key`` (a member name) replaces the old.

        Returns a handle for :meth:`pending`.
        """
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                self._depths[self._entries.pop(old).kind] -= 1
        handle = self._next_handle
        self._next_handle += 1
        self._entries[handle] = _Entry(handle, key, data, kind)
        self._depths[kind] += 1
        if key is not None:
            self._by_key[key] = handle
        return handle

    def pending(self, handle: int) -> bool:
        """Whether that broadcast is still queued (not yet sent its limit, not replaced)."""
        return handle in self._entries

    def get(self, overhead: int, limit: int, num_nodes: int) -> list[bytes]:
        """Take broadcasts whose sizes plus ``overhead`` each fit in ``limit`` bytes.

        Every returned broadcast counts one transmit; those reaching the limit leave the queue.
        Ordering is fewest transmits first, then newest first, so fresh news is never starved by
        old news that has already spread.
        """
        if not self._entries or limit <= 0:
            return []
        max_transmits = retransmit_limit(self.retransmit_mult, num_nodes)
        order = sorted(self._entries.values(), key=lambda e: (e.transmits, -e.handle))
        out: list[bytes] = []
        used = 0
        for entry in order:
            size = len(entry.data) + overhead
            if used + size > limit:
                continue  # a smaller one further on may still fit
            used += size
            out.append(entry.data)
            entry.transmits += 1
            if entry.transmits >= max_transmits:
                self._remove(entry)
        return out

    def prune(self, max_retain: int) -> None:
        """Drop the most-sent broadcasts until at most ``max_retain`` remain (memory bound)."""
        if len(self._entries) <= max_retain:
            return
        order = sorted(self._entries.values(), key=lambda e: (e.transmits, -e.handle))
        for entry in order[max_retain:]:
            self._remove(entry)

    def reset(self) -> None:
        """Forget everything queued."""
        self._entries.clear()
        self._by_key.clear()
        self._depths = dict.fromkeys(KINDS, 0)

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.handle]
        self._depths[entry.kind] -= 1
        if entry.key is not None and self._by_key.get(entry.key) == entry.handle:
            del self._by_key[entry.key]
