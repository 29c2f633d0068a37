"""Bounded staleness of `?stale` KV reads: never older than the server says it might be.

A `?stale` read is answered by whichever server receives it, from its own store, with
`X-Consul-LastContact` saying how long ago that server last heard from the leader (0 on the
leader itself). That header is the contract a client relies on (`?max_stale` is built on it): a
read answered with LastContact L must return a value the register held at some moment no
earlier than (read sent - L - slack). The slack covers what the header cannot: a follower
learns that an entry committed from the leader's next message and then applies it (one
heartbeat plus apply time), the client's clock reads the send time a little before the
server's does, and, the large part, a follower whose partition just healed reports contact
from the leader's first heartbeat while it still catches up on what it missed (the runner's
default is 3 s; see docs/simulation.md, "Known gaps").

The check is the linearizability search of `linearizability.py` over a key's writes and cas
together with its `?stale` reads, each read allowed to take effect anywhere from that bound to
its return (`check_cas_register(read_staleness_s=...)`): "the register held that value at some
point in the window" is exactly the read fitting in some order of the writes. Other reads are
left out (the linearizability and read-your-writes checkers judge those). A read whose answer
had no LastContact header (it failed over, say) gets `missing_header_bound_s`.
"""

from __future__ import annotations

from typing import Any

from ..history import History, Op
from .base import CheckResult
from .linearizability import check_cas_register

STALE = "stale"


def stale_bound_s(op: Op, slack_s: float, missing_header_bound_s: float) -> float:
    """How stale this read may be: its recorded LastContact plus `slack_s`."""
    lc = op.extra.get("last_contact_ms")
    if lc is None:
        return missing_header_bound_s
    return max(0.0, float(lc)) / 1000.0 + slack_s


def check_bounded_staleness(history: History, *, slack_s: float = 3.0, missing_header_bound_s: float = 3.0,
                            budget_s: float = 30.0, name: str = "bounded-staleness") -> CheckResult:
    """Every ok `?stale` read (op.extra["mode"] == "stale") saw a state no older than its bound."""

    def include(op: Op) -> bool:
        return op.f in ("write", "cas") or (op.f == "read" and op.extra.get("mode") == STALE)

    def bound(op: Op) -> float:
        return stale_bound_s(op, slack_s, missing_header_bound_s)

    result = check_cas_register(history, budget_s, include=include, read_staleness_s=bound, name=name)
    reads = [op for op in history.ops if op.f == "read" and op.type == "ok" and op.extra.get("mode") == STALE]
    contacts = [float(op.extra["last_contact_ms"]) for op in reads if op.extra.get("last_contact_ms") is not None]
    summary: dict[str, Any] = {
        "stale_reads": len(reads),
        "without_header": len(reads) - len(contacts),
        "known_leader_false": sum(1 for op in reads if op.extra.get("known_leader") is False),
        "max_last_contact_ms": max(contacts, default=None),
        "slack_s": slack_s,
    }
    result.details = {**summary, **result.details}
    return result
