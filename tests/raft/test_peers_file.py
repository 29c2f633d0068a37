"""`data_dir/raft/peers.json`: Consul's outage-recovery file, and the old address book's migration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from proconsul.raft.node import PeersFileError, RaftServer
from proconsul.server.consensus import CommandStateMachine
from proconsul.state.fsm import FSM
from proconsul.state.store import Store


def _server(data_dir: Path, node_id: str = "a") -> RaftServer:
    return RaftServer(node_id, node_id, "10.0.0.1:8300", CommandStateMachine(FSM(Store())), str(data_dir))


def test_old_address_book_is_moved_aside(tmp_path: Path) -> None:
    raft_dir = tmp_path / "raft"
    raft_dir.mkdir()
    (raft_dir / "peers.json").write_text(json.dumps({"b": "10.0.0.2:8300"}))
    server = _server(tmp_path)
    assert server.addresses.addrs["b"] == "10.0.0.2:8300"
    assert not (raft_dir / "peers.json").exists() and (raft_dir / "addresses.json").exists()
    assert not server.recovered_from_peers_file
    server.storage.log.close()


@pytest.mark.parametrize("content", ["not json", "[]", '[{"id": "a"}]', '[{"id": "a", "address": "x", "non_voter": true}]'])
def test_malformed_recovery_file_is_refused_and_kept(tmp_path: Path, content: str) -> None:
    raft_dir = tmp_path / "raft"
    raft_dir.mkdir()
    (raft_dir / "peers.json").write_text(content)
    with pytest.raises(PeersFileError):
        _server(tmp_path)
    assert (raft_dir / "peers.json").read_text() == content


def test_recovery_on_empty_storage_bootstraps_those_voters(tmp_path: Path) -> None:
    raft_dir = tmp_path / "raft"
    raft_dir.mkdir()
    (raft_dir / "peers.json").write_text(json.dumps([
        {"id": "a", "address": "10.0.0.1:8300"}, {"id": "b", "address": "10.0.0.2:8300", "non_voter": False},
    ]))
    server = _server(tmp_path)
    assert server.recovered_from_peers_file and not (raft_dir / "peers.json").exists()
    assert server.storage.snapshot_meta().config.voters == frozenset({"a", "b"})
    assert server.addresses.addrs["b"] == "10.0.0.2:8300"
    server.storage.log.close()
