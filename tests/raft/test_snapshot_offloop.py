"""Raft snapshots serialised off the event loop while writes continue (issue 16).

A one-server Raft over real durable storage with a small snapshot threshold: the snapshots it
takes while proposals keep applying must each hold exactly the state at their index, and a
restart must come back from the newest one (decoded in a worker thread) plus the log after it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import wait_until
from proconsul.raft.node import _RELEASE_SLICE, RaftServer, _release_in_slices
from proconsul.raft.storage import SnapshotStore, raft_log
from proconsul.server.consensus import CommandStateMachine
from proconsul.state import commands as cmd
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry
from proconsul.state.store import Store


def _server(tmp_path: Path) -> tuple[RaftServer, Store]:
    store = Store()
    raft = RaftServer(
        "a",
        "a",
        "127.0.0.1:1",
        CommandStateMachine(FSM(store)),
        str(tmp_path),
        tick_s=0.01,
        snapshot_threshold=40,
        trailing_logs=5,
    )
    raft.bootstrap({"a": "127.0.0.1:1"})
    return raft, store


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    await wait_until(predicate, timeout=30, interval=0.01)


def test_snapshots_taken_while_writes_continue_hold_the_state_at_their_index(tmp_path: Path) -> None:
    written: list[tuple[int, str, bytes]] = []  # (index, key, value) of every write, in order

    async def run() -> dict[str, bytes | None]:
        raft, store = _server(tmp_path)
        await raft.start()
        try:
            await _until(raft.is_leader)
            for i in range(400):
                key, value = f"k/{i % 17}", str(i).encode()
                op = (
                    cmd.KVS("set", DirEntry(key=key, value=value))
                    if i % 5
                    else cmd.KVS("delete", DirEntry(key=key))
                )
                index, _ = await raft.propose_bytes(cmd.encode(op))
                written.append((index, key, value if i % 5 else b""))
            await _until(lambda: not raft.snapshot_in_progress())
            assert raft.storage.snapshot_meta().index > 200  # several snapshots were taken
            compacted_to.append(raft.storage.first_index())
            return {k: e.value for k, e in store.kv.items()}
        finally:
            await raft.stop()

    compacted_to: list[int] = []
    final = asyncio.run(run())
    # The compaction's frame was written by the log writer (stop() drains it): the files say
    # what the memory said.
    log = raft_log(str(tmp_path / "raft"))
    log.open()
    try:
        assert log.first_index == compacted_to[0] > 1
    finally:
        log.close()

    def state_at(index: int) -> dict[str, bytes]:
        kv: dict[str, bytes] = {}
        for i, key, value in written:
            if i > index:
                break
            if value:
                kv[key] = value
            else:
                kv.pop(key, None)
        return kv

    async def restart() -> dict[str, bytes | None]:
        raft, store = _server(tmp_path)
        await raft.start()  # the newest snapshot, decoded off the loop, then the log after it
        try:
            await _until(lambda: store.last_index >= written[-1][0])
            return {k: e.value for k, e in store.kv.items()}
        finally:
            await raft.stop()

    assert asyncio.run(restart()) == final == state_at(written[-1][0])

    # Each snapshot kept (the newest two) holds exactly the writes up to its index.
    snaps = SnapshotStore(str(tmp_path / "raft" / "snapshots"))
    checked = 0
    while (latest := snaps.latest()) is not None and latest[0].index > 0:
        meta, data = latest
        restored = Store.decode(data)
        assert restored.last_index == meta.index
        assert {k: e.value for k, e in restored.kv.items()} == state_at(meta.index)
        checked += 1
        max(Path(snaps.directory).glob("*.snap")).unlink()  # names sort by term, then index
    assert checked >= 2


def test_records_a_compaction_drops_are_freed_a_slice_per_loop_iteration() -> None:
    """The driver hands the dropped records to the loop in slices, never all in one callback."""
    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        records = list(range(2 * _RELEASE_SLICE + 5))
        sizes: list[int] = []
        loop.call_soon(_release_in_slices, loop, records)
        while records:
            await asyncio.sleep(0)
            sizes.append(len(records))
        return sizes

    sizes = asyncio.run(run())
    assert sizes[0] == _RELEASE_SLICE + 5 and sizes[-1] == 0
    assert all(a - b <= _RELEASE_SLICE for a, b in zip([2 * _RELEASE_SLICE + 5, *sizes], sizes))


def test_the_log_writer_deletes_compacted_segments_in_pieces_between_writes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With small segments every snapshot's compaction drops whole segments: the log writer
    renames them aside with the compaction frame and deletes them a piece at a time between
    the writes that follow, so none is left once writes go on, and the log reopens."""
    from proconsul.raft import node as node_module
    from proconsul.raft import storage as storage_module

    monkeypatch.setattr(node_module, "raft_log", lambda directory: raft_log(directory, 4096))
    monkeypatch.setattr(storage_module, "DELETE_STEP_BYTES", 1024)
    steps: list[bool] = []
    step = storage_module.DurableLog.delete_step

    def counted(self):  # type: ignore[no-untyped-def]
        more = step(self)
        steps.append(more)
        return more

    monkeypatch.setattr(storage_module.DurableLog, "delete_step", counted)
    wal = tmp_path / "raft" / "wal"

    async def run() -> int:
        raft, _ = _server(tmp_path)
        await raft.start()
        try:
            await _until(raft.is_leader)
            for i in range(400):
                await raft.propose_bytes(cmd.encode(cmd.KVS("set", DirEntry(key=f"k/{i % 7}", value=b"v" * 40))))
            await _until(lambda: not raft.snapshot_in_progress())
            for i in range(50):  # writes after the last compaction: its deletion's pieces run between them
                await raft.propose_bytes(cmd.encode(cmd.KVS("set", DirEntry(key="after", value=str(i).encode()))))
            await _until(lambda: not list(wal.glob("*.wal.del")))
            return raft.storage.first_index()
        finally:
            await raft.stop()

    first = asyncio.run(run())
    assert steps.count(True) > 10  # many pieces: a fsync, truncations, unlinks
    log = raft_log(str(tmp_path / "raft"), 4096)
    log.open()
    try:
        assert log.first_index == first > 1
        assert len(list(wal.glob("*.wal"))) < 10
    finally:
        log.close()
