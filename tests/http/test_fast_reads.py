"""http/fast.py's read gates as the agent builds them: `AgentReads` over the in-process server
(with a Raft log's ReadIndex, or none on -dev's single voter) and a client agent's `ClientReads`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proconsul.http.fast import ANSWER, BARRIER, FALLBACK, AgentReads, ClientReads
from proconsul.rpc_api import NotLeader
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.state.fsm import FSM
from proconsul.state.store import Store


def _server() -> Server:
    store = Store()
    return Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id-1", "s1"), "dc1")


class FakeReadIndex:
    """Records each round's callback; `leader` False refuses at once, as RaftLog does on a follower."""

    def __init__(self, leader: bool = True) -> None:
        self.leader = leader
        self.waiting: list[Callable[[BaseException | None], None]] = []

    def read_barrier(self, done: Callable[[BaseException | None], None]) -> None:
        if not self.leader:
            raise NotLeader("10.0.0.1:8300")
        self.waiting.append(done)


def test_the_single_voter_answers_consistent_reads_at_once() -> None:
    server = _server()
    reads = AgentReads(server, None)
    assert reads.reader() is server
    assert (reads.default_read(), reads.consistent_read()) == (ANSWER, ANSWER)
    assert reads.consistent_barrier(lambda result: None) is False
    assert reads.writes is True


def test_a_raft_server_runs_read_index_for_consistent_reads() -> None:
    index = FakeReadIndex()
    reads = AgentReads(_server(), index)
    assert reads.consistent_read() == BARRIER
    results: list[Any] = []
    assert reads.consistent_barrier(results.append) is True
    assert reads.consistent_barrier(results.append) is True
    assert results == []  # nothing answered from inside the call
    first, second = index.waiting
    first(None)
    second(RuntimeError("leadership lost"))
    assert results == [(True, True), None]


def test_a_follower_refusing_read_index_sends_the_read_down_the_normal_path() -> None:
    reads = AgentReads(_server(), FakeReadIndex(leader=False))
    assert reads.consistent_barrier(lambda result: None) is False


def test_a_client_agent_takes_only_writes() -> None:
    reads = ClientReads()
    assert reads.reader() is None
    assert (reads.default_read(), reads.consistent_read()) == (FALLBACK, FALLBACK)
    assert (reads.barrier(lambda r: None), reads.consistent_barrier(lambda r: None)) == (False, False)
    assert reads.writes is True
