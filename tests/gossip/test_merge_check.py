"""The core's merge hook (serf's merge delegate): a refused push-pull merges nothing and is
reported as a failed join; a refused alive message is ignored."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from proconsul.gossip.config import GossipConfig
from proconsul.gossip.core import GossipCore, MemberEvent, StreamKind
from proconsul.gossip.messages import Address, Alive, NodeStateCode, PushNodeState, PushPull, encode


def addr(i: int) -> Address:
    return (f"10.0.0.{i}", 8301)


def no_id_reuse(members: Sequence[tuple[str, Mapping[str, str]]]) -> str | None:
    for name, tags in members:
        if tags.get("id") == "id-a" and name != "a":
            return f"Member '{name}' has conflicting node ID 'id-a' with this agent's ID"
    return None


def core() -> GossipCore:
    c = GossipCore("a", addr(1), GossipConfig.lan(), random.Random(1), 0.0, tags={"id": "id-a"},
                   merge_check=no_id_reuse)
    c.tick(0.0)
    return c


def test_refused_push_pull_is_a_failed_join() -> None:
    c = core()
    [req] = c.join([addr(2)], 0.0).streams
    assert req.kind is StreamKind.PUSH_PULL
    reply = encode(PushPull(False, [
        PushNodeState("b", addr(2), {"id": "id-b"}, 1, NodeStateCode.ALIVE),
        PushNodeState("evil", addr(3), {"id": "id-a"}, 1, NodeStateCode.ALIVE),
    ]))
    out = c.handle_stream_result(req.id, reply, 0.1)
    assert out.refused == "Member 'evil' has conflicting node ID 'id-a' with this agent's ID"
    assert [m.name for m in c.members()] == ["a"]  # nothing merged, not even the valid member


def test_accepted_push_pull_merges() -> None:
    c = core()
    [req] = c.join([addr(2)], 0.0).streams
    reply = encode(PushPull(False, [PushNodeState("b", addr(2), {"id": "id-b"}, 1, NodeStateCode.ALIVE)]))
    out = c.handle_stream_result(req.id, reply, 0.1)
    assert out.refused is None and [m.name for m in c.members()] == ["a", "b"]


def test_refused_alive_is_ignored() -> None:
    c = core()
    out = c.handle_packet(encode(Alive(1, "evil", addr(3), {"id": "id-a"})), addr(3), 0.0)
    assert not [e for e in out.events if isinstance(e, MemberEvent)]
    assert c.member("evil") is None
