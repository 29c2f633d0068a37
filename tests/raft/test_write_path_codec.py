"""The cheaper per-entry steps of the write path give exactly what the general ones give:
the AppendEntries decoder (kind tables, one checking loop), the KV command decoder's positional
`DirEntry`, the log's multi-row INSERT, `kv_set`'s direct construction, and a peer link that
writes a Ready's messages to the socket at once only when nothing is queued before them."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from proconsul.raft import codec
from proconsul.raft.messages import Entry, EntryKind, Message, MsgType
from proconsul.raft.node import _PeerLink
from proconsul.raft.storage import HardState, LogRecord, raft_log
from proconsul.state import commands
from proconsul.state.records import DirEntry
from proconsul.state.store import Store
from proconsul.wire import FrameDecoder

MESSAGES = [
    Message(MsgType.APP, "b", "a", 3, log_term=3, index=9,
            entries=(Entry(10, 3, EntryKind.NORMAL, b"x"), Entry(11, 3, EntryKind.NOOP, b""),
                     Entry(12, 3, EntryKind.CONF_CHANGE, b"{}")), commit=9),
    Message(MsgType.APP, "b", "a", 3, log_term=2, index=0, commit=0),
    Message(MsgType.APP_RESP, "a", "b", 3, index=12, reject=True, reject_hint=4, log_term=2),
    Message(MsgType.HEARTBEAT, "b", "a", 5, commit=7, index=8, context=b"ctx"),
    Message(MsgType.TIMEOUT_NOW, "b", "a", 5),
]


@pytest.mark.parametrize("m", MESSAGES, ids=lambda m: m.type.name)
def test_decode_message_round_trips(m: Message) -> None:
    got = codec.decode_message(codec.encode_message(m))
    assert got == m
    assert type(got.type) is MsgType and all(type(e.kind) is EntryKind for e in got.entries)


@pytest.mark.parametrize("bad_entry", [
    [1, 1, 9, b""],        # unknown kind
    [1, 1, True, b""],     # a bool is not a kind
    [True, 1, 0, b""],     # nor an index
    [-1, 1, 0, b""],
    [1, 1, 0, "text"],     # data must be bytes
    [1, 1, 0],
    "not a list",
    [1, 1, [0], b""],      # an unhashable kind
])
def test_decode_message_refuses_malformed_entries(bad_entry: Any) -> None:
    raw = codec.encode_message(MESSAGES[0])
    raw[7] = [bad_entry]
    with pytest.raises(ValueError):
        codec.decode_message(raw)


@pytest.mark.parametrize("bad", [None, "x", 0, {"a": 1}])
def test_decode_message_refuses_entries_that_are_not_a_list(bad: Any) -> None:
    raw = codec.encode_message(MESSAGES[1])
    raw[7] = bad
    with pytest.raises(ValueError):
        codec.decode_message(raw)


def test_decode_message_refuses_unknown_types() -> None:
    for kind in (0, 99, "1", True, [1]):
        raw = codec.encode_message(MESSAGES[4])
        raw[1] = kind
        with pytest.raises(ValueError):
            codec.decode_message(raw)


@pytest.mark.parametrize("wire", [
    ["k"],
    ["k", None],
    ["k", b"v", 3],
    ["k", b"v", 3, "sess", 4, 5, 6],
    ["k", b"", 0, "", 0, 0, 0],
    ["k", [1, [2]], 0],                       # a list value is frozen by from_wire
    ["k", b"v", 0, "", 0, 0, 0, "extra"],     # more values than fields: from_wire's error
])
def test_kv_command_decode_equals_from_wire(wire: list[Any]) -> None:
    data = commands.encode(commands.KVS("set", DirEntry("placeholder")))
    kind, payload = msgpack.unpackb(data)
    payload[1] = wire
    data = msgpack.packb([kind, payload], use_bin_type=True)
    try:
        expected: Any = commands.KVS("set", DirEntry.from_wire(wire))
    except Exception as exc:  # the decoder must fail the same way
        with pytest.raises(type(exc)):
            commands.decode(data)
        return
    got = commands.decode(data)
    assert got == expected
    assert type(got.entry.value) is type(expected.entry.value)


def test_kv_set_keeps_what_replace_kept() -> None:
    store = Store()
    store.kv_set(5, DirEntry("k", b"a", flags=1, session="ignored", lock_index=9, create_index=1, modify_index=2))
    first = store.kv_get("k")[1]
    assert first == DirEntry("k", b"a", 1, "", 0, 5, 5)
    object.__setattr__(first, "session", "held")  # as a lock would leave it
    store.kv_set(8, DirEntry("k", b"b", flags=2))
    assert store.kv_get("k")[1] == DirEntry("k", b"b", 2, "held", 0, 5, 8)


def test_write_db_multi_row_batches_reopen_intact(tmp_path: Any) -> None:
    path = str(tmp_path)
    log = raft_log(path)
    log.open()
    index = 1
    for size in (1, 199, 200, 201, 450):
        batch = [LogRecord(index + i, 2, i % 3, bytes([i % 256]) * (i % 7)) for i in range(size)]
        hs = HardState(2, "a", index + size - 1)
        truncate = log.check_append(batch, None)
        log.write_db(hs, batch, truncate)
        log.apply_memory(hs, batch, truncate)
        index += size
    # Overwrite a tail, as a new leader does.
    tail = [LogRecord(index - 3 + i, 3, 0, b"new") for i in range(5)]
    log.write_db(HardState(3, "b", 10), tail, index - 3)
    log.apply_memory(HardState(3, "b", 10), tail, index - 3)
    expected = list(log.records)
    log.close()
    again = raft_log(path)
    again.open()
    assert again.records == expected
    assert again.hard_state == HardState(3, "b", 10)
    again.close()


class _Transport:
    def __init__(self, buffered: int = 0, closing: bool = False) -> None:
        self.buffered = buffered
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class _Writer:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def _link(writer: Any) -> _PeerLink:
    link = _PeerLink.__new__(_PeerLink)  # no task: the test plays the link's task itself
    link.peer = "b"
    link.queue = asyncio.Queue(_PeerLink.QUEUE_LIMIT)
    link.writer = writer
    link._out = []
    return link


def _decoded(writes: list[bytes]) -> list[Message]:
    dec = FrameDecoder()
    return [codec.decode_message(raw) for data in writes for raw in dec.feed(data)]


async def test_peer_link_writes_a_phase_at_once_when_nothing_waits() -> None:
    writer = _Writer(_Transport())
    link = _link(writer)
    msgs = MESSAGES[:3]
    for m in msgs:
        link.send(m)
    assert writer.writes == [] and link.queue.empty()  # nothing leaves before flush
    link.flush()
    assert len(writer.writes) == 1 and _decoded(writer.writes) == msgs
    assert link.queue.empty()


@pytest.mark.parametrize("state", ["dialling", "queued", "backlogged", "closing"])
async def test_peer_link_queues_behind_what_the_task_has_not_sent(state: str) -> None:
    writer = _Writer(_Transport(buffered=_PeerLink.DIRECT_WRITE_LIMIT if state == "backlogged" else 0,
                                closing=state == "closing"))
    link = _link(None if state == "dialling" else writer)
    if state == "queued":
        link.queue.put_nowait(MESSAGES[3])
    for m in MESSAGES[:2]:
        link.send(m)
    link.flush()
    assert writer.writes == []
    queued = [link.queue.get_nowait() for _ in range(link.queue.qsize())]
    assert queued == ([MESSAGES[3]] if state == "queued" else []) + MESSAGES[:2]
