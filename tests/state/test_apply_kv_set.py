"""The KV-set apply path that skips the command objects: same state as the general decode.

`commands.decode_for_apply` hands a plain KV set to `FSM.apply_kv_set` as (key, value, flags);
every other shape must decode exactly as `commands.decode` does. These tests apply the same
entries through both paths and compare the stores, indexes and the watches they fire.
"""

from __future__ import annotations

import msgpack
import pytest
from proconsul.server.consensus import CommandStateMachine
from proconsul.state import commands as cmd
from proconsul.state.fsm import FSM
from proconsul.state.records import DirEntry, Session
from proconsul.state.store import Store


def _general(sm: CommandStateMachine, index: int, data: bytes) -> object:
    """The path every entry took before: decode to a command, then FSM.apply."""
    try:
        command = cmd.decode(data)
    except ValueError:
        command = cmd.Noop()
    return sm.fsm.apply(index, command)


def _state(store: Store) -> tuple:
    return (dict(store.kv), list(store._kv_sorted), dict(store.tombstones), dict(store.table_index),
            store.last_index)


def _pair() -> tuple[CommandStateMachine, CommandStateMachine]:
    return CommandStateMachine(FSM(Store())), CommandStateMachine(FSM(Store()))


def test_a_plain_set_decodes_to_its_three_fields() -> None:
    data = cmd.encode(cmd.KVS(cmd.KVOp.SET, DirEntry("a/b", b"v", flags=7)))
    assert cmd.decode_for_apply(data) == ("a/b", b"v", 7)


@pytest.mark.parametrize("command", [
    cmd.KVS(cmd.KVOp.CAS, DirEntry("k", b"v", modify_index=3)),
    cmd.KVS(cmd.KVOp.LOCK, DirEntry("k", b"v", session="s"), checked_at=4),
    cmd.KVS(cmd.KVOp.DELETE, DirEntry("k")),
    cmd.Deregister("n1"),
])
def test_other_commands_decode_as_before(command: cmd.Command) -> None:
    data = cmd.encode(command)
    assert cmd.decode_for_apply(data) == cmd.decode(data)


@pytest.mark.parametrize("raw", [
    [int(cmd.CommandType.KVS), ["set", ["k", b"v", 1, "", 0, 0, 0], 9]],  # with checked_at
    [int(cmd.CommandType.KVS), ["set", ["k", [b"v"]]]],  # a nested list is frozen by from_wire
    [int(cmd.CommandType.KVS), ["set", ["k"]]],  # short: defaults for value and flags
    [int(cmd.CommandType.KVS), ["SET", ["k", b"v"]]],
])
def test_odd_shapes_build_the_same_state_on_both_paths(raw: list) -> None:
    data = msgpack.packb(raw, use_bin_type=True)
    fast, slow = _pair()
    assert repr(fast.apply(5, data)) == repr(_general(slow, 5, data))  # a StoreError compares by identity
    assert _state(fast.fsm.store) == _state(slow.fsm.store)


def test_sets_build_the_same_store_and_wake_the_same_watches() -> None:
    fast, slow = _pair()
    fired: dict[str, list[str]] = {"fast": [], "slow": []}
    for name, sm in (("fast", fast), ("slow", slow)):
        store = sm.fsm.store
        store.index_offset = 10
        store.watch(("kvs",), lambda n=name: fired[n].append("table"))
        store.watch((), lambda n=name: fired[n].append("prefix"), kv_prefix="a/")
        store.watch((), lambda n=name: fired[n].append("other"), kv_prefix="z/")
    entries = [
        cmd.KVS(cmd.KVOp.SET, DirEntry("a/1", b"one", flags=1)),
        cmd.KVS(cmd.KVOp.DELETE, DirEntry("a/1")),  # leaves a tombstone the next set clears
        cmd.KVS(cmd.KVOp.SET, DirEntry("a/1", b"again")),
        cmd.KVS(cmd.KVOp.SET, DirEntry("a/1", None, flags=2)),  # keeps create_index
        cmd.KVS(cmd.KVOp.SET, DirEntry("b", b"")),
    ]
    for i, c in enumerate(entries, start=1):
        data = cmd.encode(c)
        assert fast.apply(i, data) == _general(slow, i, data)
    assert _state(fast.fsm.store) == _state(slow.fsm.store)
    assert fast.fsm.store.kv["a/1"] == DirEntry("a/1", None, 2, "", 0, 13, 14)
    assert fired["fast"] == fired["slow"] == ["table", "prefix"]


def test_a_set_keeps_the_lock_of_the_key_it_overwrites() -> None:
    fast, slow = _pair()
    for sm in (fast, slow):
        store = sm.fsm.store
        store.nodes["n1"] = None  # create_session checks the node exists only
        store.create_session(1, Session("s1", node="n1", node_checks=()))
    lock = cmd.encode(cmd.KVS(cmd.KVOp.LOCK, DirEntry("k", b"held", session="s1")))
    put = cmd.encode(cmd.KVS(cmd.KVOp.SET, DirEntry("k", b"new")))
    for i, data in enumerate((lock, put), start=2):
        assert fast.apply(i, data) == _general(slow, i, data)
    assert fast.fsm.store.kv["k"] == slow.fsm.store.kv["k"]
    assert fast.fsm.store.kv["k"].session == "s1"


def test_the_leaders_own_set_builds_the_same_state() -> None:
    fast, slow = _pair()
    c = cmd.KVS(cmd.KVOp.SET, DirEntry("k", b"v", flags=3))
    data = cmd.encode(c)
    assert fast.apply(1, data, proposed=c) is True
    _general(slow, 1, data)
    assert _state(fast.fsm.store) == _state(slow.fsm.store)


def test_a_set_outside_a_transaction_changes_what_one_inside_a_committed_one_does() -> None:
    # `kv_set_fields` spells `_kv_put` out when there is nothing to undo; inside a transaction
    # it goes through `_kv_put`, and a rollback must still undo every part of it.
    outside, inside = Store(), Store()
    for store in (outside, inside):
        store.kv_set_fields(1, "k", b"old", 0)
        store.finish(1)
        store.kv_delete(2, "k")  # a tombstone the set below clears
        store.finish(2)
    before = _state(inside)
    inside.begin()
    inside.kv_set_fields(3, "k", b"new", 4)
    inside.kv_set_fields(3, "fresh", b"f", 0)
    inside.rollback()
    inside.finish(2)
    assert _state(inside) == before
    outside.kv_set_fields(3, "k", b"new", 4)
    outside.kv_set_fields(3, "fresh", b"f", 0)
    inside.begin()
    inside.kv_set_fields(3, "k", b"new", 4)
    inside.kv_set_fields(3, "fresh", b"f", 0)
    inside.commit()
    assert (outside._dirty_tables, outside._dirty_keys) == (inside._dirty_tables, inside._dirty_keys)
    for store in (outside, inside):
        store.finish(3)
    assert _state(outside) == _state(inside)
    assert outside.kv["k"] == DirEntry("k", b"new", 4, "", 0, 3, 3) and "k" not in outside.tombstones
    assert outside._kv_sorted == ["fresh", "k"]
