"""The deliberately broken build `unsafe_reads_before_first_apply`, caught by read-your-writes.

In process and deterministic (a chaos run of the same bug, scenarios/broken-new-leader-reads.toml,
costs minutes and needs luck to hit a window of one round trip): a client's write was
acknowledged by the old leader; the new leader has it in its log but applies it only with its
term's first entry. The product's `Server.query` answers the client's next default read. The
correct build waits for that apply and the history passes; the broken one answers from the
store as it is, and the checker names the read and the write it missed.
"""

from __future__ import annotations

import base64
import itertools

from proconsul.rpc_api import QueryOptions
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store
from proconsul_sim.checkers import check_read_your_writes
from proconsul_sim.history import History


class NewLeader(SingleNodeLog):
    """A server that just won an election: leader, not ready until its first apply, which brings
    the predecessor's last acknowledged write into its store."""

    def __init__(self, fsm: FSM) -> None:
        super().__init__(fsm, "10.0.0.2:8300", "me", "s2")
        self.fsm_ = fsm
        self.pending = 3  # ready_for_reads() answers False this many times

    def is_leader(self) -> bool:
        return True

    def ready_for_reads(self) -> bool:
        if self.pending > 0:
            self.pending -= 1
            if self.pending == 0:  # the term's first entry commits and applies
                self.fsm_.apply(8, commands.KVS(commands.KVOp.SET, DirEntry(key="reg/0", value=b"2")))
            return False
        return True


async def run_client(unsafe: bool) -> History:
    ticks = itertools.count()
    h = History(clock=lambda: float(next(ticks)))  # every event strictly after the one before
    store = Store()
    fsm = FSM(store)
    fsm.apply(5, commands.KVS(commands.KVOp.SET, DirEntry(key="reg/0", value=b"1")))  # applied everywhere
    server = Server(store, NewLeader(fsm), "dc1", unsafe_reads_before_first_apply=unsafe)
    # Process 1's write of 2, acknowledged by the old leader (which died before telling the
    # others it committed), after process 2's write of 1.
    h.ok(h.invoke(2, "write", "reg/0", 1))
    h.ok(h.invoke(1, "write", "reg/0", 2))
    op = h.invoke(1, "read", "reg/0", None, mode="default", node="s2")
    _, entry = await server.query("KVS.Get", {"key": "reg/0"}, QueryOptions())
    h.ok(op, int(base64.b64decode(entry["Value"])) if entry else None)
    return h


async def test_the_correct_build_passes_read_your_writes() -> None:
    res = check_read_your_writes(await run_client(unsafe=False))
    assert res.valid is True and res.details["reads_after_own_write"] == 1


async def test_reads_before_the_first_apply_are_caught() -> None:
    res = check_read_your_writes(await run_client(unsafe=True))
    assert res.valid is False
    (failure,) = res.details["failures"]
    assert failure["read"]["value"] == 1 and failure["own_write"]["value"] == 2
    assert "process 1 read 1" in failure["summary"] and "through s2" in failure["summary"]

