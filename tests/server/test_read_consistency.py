"""The read contract of `Server.query`: default-mode reads wait for the leader's first apply of
its term, `max_stale` hands a too-stale read to the leader, and the wire carries it."""

from __future__ import annotations

from typing import Any

import pytest
from proconsul.raft.node import NEVER_CONTACTED_MS, RaftServer
from proconsul.rpc_api import NotLeader, QueryOptions
from proconsul.server.consensus import CommandStateMachine
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state import commands
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store


class Consensus(SingleNodeLog):
    """A server whose leadership, readiness and leader contact the test sets."""

    def __init__(self, fsm: FSM) -> None:
        super().__init__(fsm, "10.0.0.2:8300", "me", "s2")
        self.leader = True
        self.ready_after = 0  # ready_for_reads() calls that answer False first
        self.on_ready: Any = None
        self.contact_ms = 0
        self.leader_addr = "10.0.0.1:8300"

    def is_leader(self) -> bool:
        return self.leader

    def ready_for_reads(self) -> bool:
        if self.ready_after > 0:
            self.ready_after -= 1
            return False
        if self.on_ready is not None:
            self.on_ready()
            self.on_ready = None
        return self.leader

    def leader_address(self) -> str:
        return self.self_address if self.leader else self.leader_addr

    def last_contact_ms(self) -> int:
        return 0 if self.leader else self.contact_ms


class Pool:
    """The forward-to-leader pool: records the calls, answers as a leader would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def call(self, addr: str, method: str, body: Any, timeout_s: float = 30.0) -> Any:
        self.calls.append((addr, method, body))
        return {"meta": [42, True, 0, "leader"], "result": "from-leader"}


def _server(pool: Pool | None = None) -> tuple[Server, Consensus, Store]:
    store = Store()
    fsm = FSM(store)
    consensus = Consensus(fsm)
    return Server(store, consensus, "dc1", pool=pool), consensus, store


async def test_a_new_leader_answers_only_after_its_first_apply() -> None:
    server, consensus, store = _server()
    fsm = FSM(store)

    def apply_predecessors_write() -> None:
        # What the new leader's first apply of its term brings: a write its predecessor acknowledged.
        fsm.apply(7, commands.KVS(commands.KVOp.SET, DirEntry(key="k", value=b"acked")))

    consensus.ready_after = 3
    consensus.on_ready = apply_predecessors_write
    meta, result = await server.query("KVS.Get", {"key": "k"}, QueryOptions())
    assert consensus.ready_after == 0 and meta.consistency == "leader"
    assert result is not None and result["Value"] == "YWNrZWQ="  # the write is there, not a stale miss


async def test_a_leader_deposed_while_waiting_refers_to_the_new_one() -> None:
    server, consensus, _ = _server()
    consensus.ready_after = 2

    def depose() -> None:
        consensus.leader = False

    consensus.on_ready = depose
    with pytest.raises(NotLeader):
        await server.query("KVS.Get", {"key": "k"}, QueryOptions())


async def test_stale_reads_do_not_wait_for_readiness() -> None:
    server, consensus, _ = _server()
    consensus.ready_after = 10**9
    meta, _ = await server.query("KVS.Get", {"key": "k"}, QueryOptions(allow_stale=True))
    assert meta.consistency == "stale"


async def test_max_stale_hands_a_too_stale_read_to_the_leader() -> None:
    pool = Pool()
    server, consensus, _ = _server(pool)
    consensus.leader = False
    consensus.contact_ms = 5000
    meta, _ = await server.query("KVS.Get", {"key": "k"}, QueryOptions(allow_stale=True, max_stale_s=10))
    assert meta.consistency == "stale" and meta.last_contact_ms == 5000 and not pool.calls
    meta, result = await server.query("KVS.Get", {"key": "k"}, QueryOptions(allow_stale=True, max_stale_s=1))
    assert result == "from-leader" and meta.consistency == "leader"
    # Our own contact age is what the header reports, even for the leader's answer.
    assert meta.last_contact_ms == 5000
    (addr, method, body), = pool.calls
    assert (addr, method) == ("10.0.0.1:8300", "Query") and body["opts"][2] is False


async def test_the_query_rpc_carries_max_stale() -> None:
    server, consensus, _ = _server(Pool())
    consensus.leader = False
    consensus.contact_ms = 5000
    body = {"name": "KVS.Get", "args": {"key": "k"}}
    reply = await server.handle_rpc("Client.Query", {**body, "opts": [0, 0.0, True, False]})
    assert reply["meta"][3] == "stale"  # an older client: no bound
    reply = await server.handle_rpc("Client.Query", {**body, "opts": [0, 0.0, True, False, 1.0]})
    assert reply["result"] == "from-leader"
    assert QueryOptions(allow_stale=True).wire() == [0, 0.0, True, False]  # older servers read four
    assert QueryOptions.from_wire(QueryOptions(allow_stale=True, max_stale_s=2.5).wire()).max_stale_s == 2.5


def test_a_server_that_never_heard_from_a_leader_says_so(tmp_path: Any) -> None:
    raft = RaftServer("a", "a", "10.0.0.1:8300", CommandStateMachine(FSM(Store())), str(tmp_path))
    assert raft.last_contact_ms() == NEVER_CONTACTED_MS == 9223372036854
    assert QueryOptions(allow_stale=True, max_stale_s=87600 * 3600).too_stale(raft.last_contact_ms())
    raft.storage.log.close()
