"""raft/recovery.py on stopped servers' data directories, the driver's marker, and the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from proconsul.cli.base import UI
from proconsul.cli.main import run_command
from proconsul.cli.raft_recover import OperatorRaftRecover
from proconsul.raft import recovery
from proconsul.raft.messages import Configuration, EntryKind
from proconsul.raft.node import RaftServer
from proconsul.raft.storage import HardState, LogRecord, SnapshotMeta, SnapshotStore, private_dir, raft_log
from proconsul.server.consensus import CommandStateMachine
from proconsul.state.fsm import FSM
from proconsul.state.store import Store

OLD_VOTERS = ["a", "b", "c", "d", "e"]


def _data_dir(root: Path, node_id: str, terms: list[int], commit: int, term: int | None = None) -> Path:
    """A stopped server's data directory: entry i+1 has term terms[i]."""
    d = root / node_id
    raft = d / "raft"
    private_dir(str(raft))
    (d / "node-id").write_text(node_id)
    (raft / "addresses.json").write_text(json.dumps({v: f"10.0.0.{k}:8300" for k, v in enumerate(OLD_VOTERS, 1)}))
    SnapshotStore(str(raft / "snapshots")).save(SnapshotMeta(0, 0, Configuration(frozenset(OLD_VOTERS)).encode()), b"")
    log = raft_log(str(raft))
    log.open()
    log.save(HardState(term if term is not None else max(terms), "e", commit),
             [LogRecord(i, t, int(EntryKind.NOOP), b"") for i, t in enumerate(terms, 1)])
    log.close()
    return d


def _server(d: Path, node_id: str) -> RaftServer:
    return RaftServer(node_id, node_id, "10.0.0.9:8300", CommandStateMachine(FSM(Store())), str(d))


def test_inspect_plan_and_apply(tmp_path: Path) -> None:
    a = _data_dir(tmp_path, "a", [1] * 10 + [2, 2], commit=10)
    b = _data_dir(tmp_path, "b", [1] * 10, commit=8, term=3)
    sa, sb = recovery.inspect(str(a)), recovery.inspect(str(b))
    assert (sa.last_term, sa.last_index, sa.commit, sa.address) == (2, 12, 10, "10.0.0.1:8300")
    assert sb.voters == tuple(OLD_VOTERS)
    p = recovery.plan([sb, sa])
    assert p.best.id == "a" and p.voters == ("a", "b") and not p.refusals and not p.losses
    assert p.recovery_term == 3 + 1 + recovery.TERM_GAP and p.majority_lost
    assert recovery.apply(p) == [str(a), str(b)]
    for d in (a, b):
        marker = recovery.load_marker(str(d / "raft"))
        assert marker is not None and marker.term == p.recovery_term
        assert dict(marker.voters) == {"a": "10.0.0.1:8300", "b": "10.0.0.2:8300"}
        assert (marker.kept_term, marker.kept_index) == (2, 12)
        log = raft_log(str(d / "raft"))
        log.open()
        assert log.hard_state.term == p.recovery_term and log.hard_state.vote == ""
        log.close()
    # Read again, the survivors see the new configuration.
    assert recovery.inspect(str(b)).voters == ("a", "b")


async def test_the_driver_hands_the_marker_to_the_core(tmp_path: Path) -> None:
    a = _data_dir(tmp_path, "a", [1] * 10 + [2, 2], commit=10)
    b = _data_dir(tmp_path, "b", [1] * 10, commit=8)
    p = recovery.plan([recovery.inspect(str(a)), recovery.inspect(str(b))])
    recovery.apply(p)
    for d, node_id, promotable in ((a, "a", True), (b, "b", False)):
        server = _server(d, node_id)
        await server.start()
        try:
            assert server.core is not None
            assert server.core.config.voters == frozenset({"a", "b"})
            assert server.core.term == p.recovery_term
            # Only a server holding the kept log may lead the new era.
            assert server.core.promotable() is promotable
            assert server.addresses.addrs["b"] == "10.0.0.2:8300"
        finally:
            await server.stop()


def test_a_marker_whose_term_bump_was_lost_raises_the_term_at_start(tmp_path: Path) -> None:
    a = _data_dir(tmp_path, "a", [1, 1], commit=2)
    marker = recovery.Marker(50, {"a": "10.0.0.1:8300"}, 1, 2)
    (a / "raft" / recovery.MARKER_FILE).write_text(marker.encode().decode())
    server = _server(a, "a")
    assert server.storage.log.hard_state.term == 50
    server.storage.log.close()


def test_peers_json_replaces_a_recovery_marker(tmp_path: Path) -> None:
    a = _data_dir(tmp_path, "a", [1, 1], commit=2)
    recovery.apply(recovery.plan([recovery.inspect(str(a))]))
    (a / "raft" / "peers.json").write_text(json.dumps([{"id": "a", "address": "10.0.0.1:8300"},
                                                       {"id": "z", "address": "10.0.0.26:8300"}]))
    server = _server(a, "a")
    assert server.recovery is None and not (a / "raft" / recovery.MARKER_FILE).exists()
    assert server.storage.snapshot_meta().config.voters == frozenset({"a", "z"})
    server.storage.log.close()


def test_a_damaged_marker_stops_the_start(tmp_path: Path) -> None:
    a = _data_dir(tmp_path, "a", [1], commit=1)
    (a / "raft" / recovery.MARKER_FILE).write_text("{not json")
    with pytest.raises(recovery.RecoveryError, match="unreadable"):
        _server(a, "a")


def _cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    cmd = OperatorRaftRecover()
    spec = cmd.flag_spec()
    parsed = spec.flagset.parse(list(args))
    from proconsul.cli.base import Context

    code = cmd.run(Context(opts=parsed, args=parsed.args, ui=UI(out, err), stdin=io.StringIO(stdin)))
    return code, out.getvalue(), err.getvalue()


def test_cli_refuses_dropping_committed_entries_unless_forced(tmp_path: Path) -> None:
    a = _data_dir(tmp_path, "a", [1] * 12, commit=12)
    b = _data_dir(tmp_path, "b", [1] * 9, commit=9)
    code, out, err = _cli(f"-data-dir={a}", f"-data-dir={b}", "-voters=b", "-yes")
    assert code == 1 and "committed (acknowledged) entries up to index 12" in err and "Nothing was changed" in err
    assert "entries 10-12 left behind on a (some at or below its commit index: acknowledged)" in out
    code, out, err = _cli(f"-data-dir={a}", f"-data-dir={b}", "-voters=b", "-force", "-dry-run")
    assert code == 0 and "Dry run" in out and "-force" in err
    assert not (b / "raft" / recovery.MARKER_FILE).exists()
    code, out, err = _cli(f"-data-dir={a}", f"-data-dir={b}", "-voters=b", "-force", "-yes")
    assert code == 0, err
    marker = recovery.load_marker(str(b / "raft"))
    assert marker is not None and list(marker.voters) == ["b"]
    assert not (a / "raft" / recovery.MARKER_FILE).exists()  # left out: untouched
    assert "must have their data directory wiped" in out


def test_cli_bad_input(tmp_path: Path) -> None:
    assert _cli()[0] == 1
    code, _, err = _cli(f"-data-dir={tmp_path / 'nothing'}")
    assert code == 1 and "no Raft state" in err
    a = _data_dir(tmp_path, "a", [1], commit=1)
    code, _, err = _cli(f"-data-dir={a}", "-voters=zz")
    assert code == 1 and "not among the survivors" in err
    code, _, err = _cli(f"-data-dir={a}", f"-data-dir={a}")
    assert code == 1 and "twice" in err
    assert run_command(OperatorRaftRecover(), ["-nope"], UI(io.StringIO(), io.StringIO())) == 1


def test_a_running_server_is_refused(tmp_path: Path) -> None:
    a = _data_dir(tmp_path, "a", [1], commit=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'rb'); print('open', flush=True); sys.stdin.read()",
         str(a / "raft" / "wal" / "LOCK")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(recovery.RecoveryError, match=f"open in process {holder.pid}"):
            recovery.inspect(str(a))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    assert recovery.inspect(str(a)).id == "a"


def test_run_as_root_the_files_stay_the_service_users(tmp_path: Path) -> None:
    a = _data_dir(tmp_path, "a", [1, 1], commit=2)
    raft = a / "raft"
    # As root (how the tests run here), the directory goes to "nobody", the service user's
    # stand-in; otherwise the files simply stay ours.
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        for p in [raft, *raft.iterdir()]:
            os.chown(p, *owner)
    recovery.apply(recovery.plan([recovery.inspect(str(a))]))
    for name in (recovery.MARKER_FILE, "wal", "wal/LOCK", "wal/00000000000000000001.wal"):
        st = (raft / name).stat()
        assert (st.st_uid, st.st_gid) == owner, name


# ------------------------------------------------------------------------------ running servers


async def test_a_running_server_recovers_in_place(tmp_path: Path) -> None:
    """`RaftServer.recover_live`: refused for a server left out or a stale term; otherwise the
    marker and term are durable and the Raft restarts under them without restarting the agent
    (alone in the new configuration, the survivor elects itself and keeps its log)."""
    import asyncio

    a = _data_dir(tmp_path, "a", [1] * 6 + [2, 2], commit=6)
    server = RaftServer("a", "a", "127.77.0.1:8300", CommandStateMachine(FSM(Store())), str(a),
                        tick_s=0.02)
    await server.start()
    try:
        state = recovery.live_state(server, "here")
        assert (state.last_term, state.last_index, state.commit, state.voters) == (2, 8, 6, tuple(OLD_VOTERS))
        assert state.terms == {6: 1, 7: 2, 8: 2}  # from the known-committed index on
        again = recovery.SurvivorState.from_json(json.loads(json.dumps(state.to_json())), "there")
        assert again.up_to_date == state.up_to_date and again.terms == state.terms and again.source == "there"
        p = recovery.plan([state])
        marker = p.marker()
        with pytest.raises(recovery.RecoveryError, match="not among the new voters"):
            await server.recover_live(recovery.Marker(marker.term, {"b": "127.77.0.2:8300"}, 2, 8))
        with pytest.raises(recovery.RecoveryError, match="not past"):
            await server.recover_live(recovery.Marker(1, {"a": "127.77.0.1:8300"}, 2, 8))
        assert not (a / "raft" / recovery.MARKER_FILE).exists()
        await server.recover_live(marker)
        assert recovery.load_marker(str(a / "raft")) == marker
        assert server.storage.log.hard_state.term >= marker.term

        async def leads() -> None:
            while not server.is_leader():
                await asyncio.sleep(0.02)

        await asyncio.wait_for(leads(), 30)
        assert server.core is not None and server.core.config.voters == frozenset({"a"})
        assert server.core.term > marker.term and server.core.last_index > 8  # its own term's entry
        # With a leader, a second recovery is refused.
        with pytest.raises(recovery.RecoveryError, match="has a leader"):
            await server.recover_live(recovery.Marker(marker.term + 10, {"a": "127.77.0.1:8300"}, 2, 8))
    finally:
        await server.stop()


def test_the_put_body_is_validated() -> None:
    marker, expect = recovery.marker_from_json(recovery.marker_to_json(
        recovery.Marker(7, {"a": "127.0.0.1:8300"}, 2, 9), None))
    assert (marker.term, dict(marker.voters), marker.kept_term, marker.kept_index, expect) == (
        7, {"a": "127.0.0.1:8300"}, 2, 9, None)
    for body, reason in (([], "JSON object"), ({"Term": 3}, "Voters"), ({"Term": 0, "Voters": {"a": "x:1"}}, "positive"),
                         ({"Term": "3", "Voters": {"a": "x:1"}}, "Term must be"),
                         ({"Term": 3, "Voters": {"a": ""}}, "Voters"),
                         ({"Term": 3, "Voters": {"a": "x:1"}, "ExpectLastTerm": 1}, "missing field ExpectLastIndex")):
        with pytest.raises(ValueError, match=reason):
            recovery.marker_from_json(body)


def test_cli_takes_servers_or_data_dirs_not_both(tmp_path: Path) -> None:
    code, _, err = _cli(f"-data-dir={tmp_path}", "-server=127.77.0.1:8500")
    assert code == 1 and "not both" in err
    code, _, err = _cli("-server=127.77.0.1:1", "-timeout=soon")
    assert code == 1 and "-timeout" in err
    # Nothing listens there: a plain error naming the address, nothing planned.
    code, out, err = _cli("-server=127.77.0.1:1", "-yes")
    assert code == 1 and "127.77.0.1:1" in err and "Survivors" not in out
