"""The snapshot archive (gzipped tar: meta.json, state.bin, SHA256SUMS) and the FSM restore."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest
from proconsul.cli.operator import format_peers
from proconsul.server import snapshot as archive
from proconsul.state import commands as cmd
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry, Node, ServiceInstance
from proconsul.state.store import Store, StoreError


def _members(blob: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
        names = tar.getnames()
        for info in tar:
            fh = tar.extractfile(info)
            assert fh is not None
            out[info.name] = fh.read()
    assert names == ["meta.json", "state.bin", "SHA256SUMS"]
    return out


def _repack(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def test_archive_layout_and_roundtrip() -> None:
    blob = archive.build(b"state-bytes", index=42, term=3, now_ms=1_700_000_000_123,
                         servers=[{"Suffrage": 0, "ID": "a", "Address": "10.0.0.1:8300"}], configuration_index=7)
    members = _members(blob)
    meta = json.loads(members["meta.json"])
    assert meta["ID"] == "3-42-1700000000123"
    assert (meta["Index"], meta["Term"], meta["Version"], meta["Size"]) == (42, 3, 1, len(b"state-bytes"))
    assert meta["Configuration"]["Servers"][0]["ID"] == "a" and meta["ConfigurationIndex"] == 7
    sums = members["SHA256SUMS"].decode().splitlines()
    assert [line.split("  ")[1] for line in sums] == ["meta.json", "state.bin"]
    got = archive.read(blob)
    assert got.state == b"state-bytes" and got.meta == meta


def test_tampered_state_is_refused() -> None:
    members = _members(archive.build(b"state", index=1, term=1, now_ms=0))
    members["state.bin"] = b"STATE"
    with pytest.raises(archive.SnapshotError, match="sha256 hash mismatch for state.bin"):
        archive.read(_repack(members))


@pytest.mark.parametrize("drop", ["meta.json", "state.bin", "SHA256SUMS"])
def test_missing_member_is_refused(drop: str) -> None:
    members = _members(archive.build(b"state", index=1, term=1, now_ms=0))
    del members[drop]
    with pytest.raises(archive.SnapshotError):
        archive.read(_repack(members))


def test_extra_member_and_garbage_are_refused() -> None:
    members = _members(archive.build(b"state", index=1, term=1, now_ms=0))
    members["evil"] = b"x"
    with pytest.raises(archive.SnapshotError, match="unexpected file"):
        archive.read(_repack(members))
    with pytest.raises(archive.SnapshotError, match="decompress"):
        archive.read(b"not gzip at all")
    blob = bytearray(archive.build(b"state" * 100, index=1, term=1, now_ms=0))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(archive.SnapshotError):
        archive.read(bytes(blob))


def test_byte_size_like_consul() -> None:
    assert [archive.byte_size(n) for n in (0, 313, 1024, 1638, 5 << 20)] == ["0", "313B", "1KB", "1.6KB", "5MB"]


def _populated_store() -> Store:
    store = Store()
    fsm = FSM(store)
    fsm.apply(1, cmd.Register(Node("n1", id="id-1", address="10.0.0.1"), ServiceInstance("n1", "web", "web")))
    for i in range(2, 50):
        fsm.apply(i, cmd.KVS("set", DirEntry(key=f"k/{i}", value=b"v")))
    return store


def test_inspect_output_layout() -> None:
    state = _populated_store().snapshot()
    snap = archive.read(archive.build(state, index=49, term=2, now_ms=5))
    text = archive.format_inspect(snap.meta, archive.state_stats(snap.state))
    lines = text.splitlines()
    # Go's tabwriter: the widest label (" Version") plus a padding of 6.
    assert lines[0] == " ID" + " " * 11 + "2-49-5"
    assert lines[1] == " Size" + " " * 9 + str(len(state))
    assert lines[4] == " Version" + " " * 6 + "1"
    assert lines[5] == ""
    assert lines[6].split() == ["Type", "Count", "Size"]
    names = [line.split()[0] for line in lines[8:-2]]
    assert names[0] == "KVS" and {"Node", "Service", "Index"} <= set(names)
    assert lines[-1].split()[0] == "Total"


def test_restore_command_roundtrips_through_the_codec() -> None:
    assert cmd.decode(cmd.encode(cmd.Restore(b"\x00blob"))) == cmd.Restore(b"\x00blob")


def test_fsm_restore_keeps_indexes_monotonic() -> None:
    """Restoring a snapshot from a cluster further ahead lifts the index offset above it."""
    blob = _populated_store().snapshot()  # indexes up to 49
    store = Store()
    fsm = FSM(store)
    fsm.apply(1, cmd.KVS("set", DirEntry(key="old", value=b"x")))
    restored_at = fsm.apply(2, cmd.Restore(blob))
    assert restored_at == 50 and store.last_index == 50
    assert store.kv_get("old")[1] is None and store.kv_get("k/2")[1] is not None
    assert store.kv_max_index() == 50  # the table index moved past every restored entry
    fsm.apply(3, cmd.KVS("set", DirEntry(key="new", value=b"y")))
    entry = store.kv_get("new")[1]
    assert entry is not None and entry.modify_index == 51 and fsm.store_index(3) == 51
    # The offset is part of the state: a Raft snapshot of this store carries it.
    again = Store()
    again.restore(store.snapshot())
    assert again.index_offset == store.index_offset == 48


def test_fsm_restore_of_an_older_snapshot_needs_no_offset() -> None:
    blob = _populated_store().snapshot()
    store = Store()
    fsm = FSM(store)
    for i in range(1, 100):
        fsm.apply(i, cmd.Noop())
    assert fsm.apply(100, cmd.Restore(blob)) == 100 and store.index_offset == 0
    assert store.kv_max_index() == 100


def test_fsm_restore_of_garbage_changes_nothing() -> None:
    store = _populated_store()
    before = store.snapshot()
    result = FSM(store).apply(60, cmd.Restore(b"garbage"))
    assert isinstance(result, StoreError)
    after = Store()
    after.restore(before)
    assert store.kv_get("k/2") == after.kv_get("k/2")


def test_list_peers_columns() -> None:
    text = format_peers({"Servers": [
        {"Node": "s1", "ID": "id-1", "Address": "10.0.0.1:8300", "Leader": True, "Voter": True, "ProtocolVersion": "3"},
        {"Node": "server-two", "ID": "id-2", "Address": "10.0.0.2:8300", "Leader": False, "Voter": True,
         "ProtocolVersion": "3"},
    ]})
    assert text.splitlines() == [
        "Node        ID    Address        State     Voter  RaftProtocol",
        "s1          id-1  10.0.0.1:8300  leader    true   3",
        "server-two  id-2  10.0.0.2:8300  follower  true   3",
    ]



def test_every_single_byte_corruption_is_refused_cleanly() -> None:
    """Whatever byte a disk or a transfer flips, reading fails with SnapshotError, never another error."""
    from proconsul.state.store import Store

    blob = archive.build(Store().snapshot(), index=7, term=2, now_ms=0)
    refused = 0
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0xFF
        try:
            archive.read(bytes(damaged))
        except archive.SnapshotError:
            refused += 1
    # gzip's header has a few bytes no reader checks (mtime, flags); all the rest is refused.
    assert refused >= len(blob) - 16
