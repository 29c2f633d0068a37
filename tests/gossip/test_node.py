"""The asyncio gossip driver on real loopback sockets: join, failure, leave, encryption."""

from __future__ import annotations

import dataclasses
import os

import pytest
from helpers import wait_until
from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import MemberEvent, MemberEventKind, MemberState, UserEventReceived
from proconsul.gossip.keyring import Keyring, KeyringError, decode_key, generate_key, setup_keyring
from proconsul.gossip.node import GossipNode, parse_address

FAST = dataclasses.replace(
    GossipConfig.local(),
    probe_interval_s=0.2,
    probe_timeout_s=0.1,
    gossip_interval_s=0.05,
    suspicion_mult=2,
    push_pull_interval_s=2.0,
    gossip_to_the_dead_time_s=30.0,
    leave_timeout_s=2.0,
)


def _states(node: GossipNode) -> dict[str, MemberState]:
    return {m.name: m.state for m in node.members()}


async def _cluster(n: int, keyrings: list[Keyring | None] | None = None) -> tuple[list[GossipNode], list[list]]:
    nodes, events = [], []
    for i in range(n):
        ev: list = []
        node = GossipNode(f"n{i}", ("127.0.0.1", 0), FAST, tags={"role": "node", "i": str(i)},
                          on_event=ev.append, keyring=(keyrings or [None] * n)[i])
        await node.start()
        nodes.append(node)
        events.append(ev)
    return nodes, events


async def test_three_nodes_join_fail_and_leave() -> None:
    nodes, events = await _cluster(3)
    try:
        first = f"{nodes[0].address[0]}:{nodes[0].address[1]}"
        assert await nodes[1].join([first]) == 1
        assert await nodes[2].join([first]) == 1
        await wait_until(lambda: all(len(n.members()) == 3 for n in nodes))
        assert {m.tags["i"] for m in nodes[2].members()} == {"0", "1", "2"}
        assert any(isinstance(e, MemberEvent) and e.kind is MemberEventKind.JOIN and e.member.name == "n2"
                   for e in events[0])

        # User events reach everyone once.
        nodes[0].send_user_event("deploy", b"v1")
        await wait_until(lambda: all(any(isinstance(e, UserEventReceived) and e.name == "deploy" for e in ev)
                                for ev in events))

        # Graceful leave: left, not failed.
        await nodes[2].leave()
        await nodes[2].stop()
        await wait_until(lambda: _states(nodes[0]).get("n2") == MemberState.LEFT)
        await wait_until(lambda: _states(nodes[1]).get("n2") == MemberState.LEFT)

        # Abrupt stop: detected as failed.
        await nodes[1].stop()
        await wait_until(lambda: _states(nodes[0]).get("n1") == MemberState.DEAD)
        assert any(isinstance(e, MemberEvent) and e.kind is MemberEventKind.FAIL and e.member.name == "n1"
                   for e in events[0])
        # force-leave turns failed into left.
        assert nodes[0].force_leave("n1")
        assert _states(nodes[0])["n1"] == MemberState.LEFT
    finally:
        for n in nodes:
            await n.stop()


async def test_join_unreachable_counts_zero() -> None:
    nodes, _ = await _cluster(1)
    try:
        assert await nodes[0].join(["127.0.0.1:1"]) == 0
    finally:
        await nodes[0].stop()


async def test_encrypted_pool_refuses_wrong_key() -> None:
    key = decode_key(generate_key())
    other = decode_key(generate_key())
    nodes, _ = await _cluster(3, [Keyring([key]), Keyring([other, key]), Keyring([other])])
    try:
        addr = f"{nodes[0].address[0]}:{nodes[0].address[1]}"
        # n1 encrypts with `other` but n0 only knows `key`: refused, logged, no crash.
        assert await nodes[2].join([addr]) == 0
        nodes[1].keyring.use(key)  # type: ignore[union-attr]
        assert await nodes[1].join([addr]) == 1
        await wait_until(lambda: len(nodes[0].members()) == 2 and len(nodes[1].members()) == 2)
        assert "n2" not in _states(nodes[0])
    finally:
        for n in nodes:
            await n.stop()


def test_keyring_persistence(tmp_path) -> None:
    key = generate_key()
    ring = setup_keyring(key, str(tmp_path))
    assert ring is not None
    assert os.path.exists(tmp_path / "serf" / "local.keyring")
    ring.install(decode_key(generate_key()))
    ring.save(str(tmp_path))
    # The file wins over the `encrypt` setting.
    again = setup_keyring(generate_key(), str(tmp_path))
    assert again is not None and again.keys == ring.keys
    plain = b"hello"
    assert again.decrypt(ring.encrypt(plain)) == plain
    with pytest.raises(KeyringError):
        decode_key("c2hvcnQ=")
    with pytest.raises(KeyringError):
        ring.remove(ring.primary)


def test_parse_address() -> None:
    assert parse_address("10.0.0.1", 8301) == ("10.0.0.1", 8301)
    assert parse_address("10.0.0.1:9", 8301) == ("10.0.0.1", 9)
    assert parse_address("[::1]:7", 8301) == ("::1", 7)
    assert parse_address("[::1]", 8301) == ("::1", 8301)


def test_keyring_file_is_created_0600_whatever_the_umask(tmp_path) -> None:
    """Consul creates local.keyring 0600: it holds the gossip encryption keys (issue 13)."""
    old = os.umask(0o022)
    try:
        Keyring([decode_key(generate_key())]).save(str(tmp_path))
    finally:
        os.umask(old)
    path = tmp_path / "serf" / "local.keyring"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700


async def test_indirect_ping_to_a_non_ip_target_is_dropped_without_a_traceback(caplog) -> None:
    """A ping-req naming a host name, a NUL or an impossible port is dropped: no DNS lookup on the
    event loop, no traceback, and the UDP socket stays open for the next one (issue 13)."""
    import asyncio
    import socket

    from proconsul.gossip.messages import IndirectPing, encode

    caplog.set_level("DEBUG")
    nodes, _ = await _cluster(1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        target.bind(("127.0.0.1", 0))
        target.setblocking(False)
        node_addr = nodes[0].address
        for bad in (("not-an-ip.invalid", 8301), ("127.0.0.1\x00", 8301), ("127.0.0.1", -1)):
            sock.sendto(encode(IndirectPing(7, "x", bad, True, "src", ("127.0.0.1", 9))), node_addr)
        # A good ping-req after them must still be relayed: the node kept its UDP socket.
        good = IndirectPing(8, "x", target.getsockname(), False, "src", ("127.0.0.1", 9))
        loop = asyncio.get_running_loop()
        sock.sendto(encode(good), node_addr)
        assert await asyncio.wait_for(loop.sock_recv(target, 65536), 30)
    finally:
        sock.close()
        target.close()
        for node in nodes:
            await node.stop()
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.name == "asyncio"], [r.getMessage() for r in caplog.records]
