"""Golden bytes for every gossip message type: the wire format is versioned and append-only.

If a golden test fails, the wire format changed: that breaks mixed-version clusters. Add a new
message type or append a field instead of editing these bytes.
"""

from __future__ import annotations

import msgpack
import pytest
from proconsul.gossip.messages import (
    COMPOUND_OVERHEAD,
    COMPOUND_PART_OVERHEAD,
    PROTOCOL_VERSION,
    Ack,
    Alive,
    Compound,
    Dead,
    IndirectPing,
    Message,
    MessageType,
    Nack,
    NodeStateCode,
    Ping,
    ProtocolError,
    PushNodeState,
    PushPull,
    Query,
    QueryResponse,
    Suspect,
    UserEvent,
    decode,
    decode_packet,
    encode,
    encode_compound,
)

A1 = ("10.0.0.1", 8301)
A2 = ("10.0.0.2", 8301)

CASES: dict[str, tuple[Message, str]] = {
    "ping": (Ping(7, "n2", "n1", A1), "01009507a26e32a26e31a831302e302e302e31cd206d"),
    "indirect_ping": (
        IndirectPing(7, "n2", A2, True, "n1", A1),
        "01019807a26e32a831302e302e302e32cd206dc3a26e31a831302e302e302e31cd206d",
    ),
    "ack": (Ack(7, b""), "01029207c400"),
    "nack": (Nack(7), "01099107"),
    "alive": (
        Alive(3, "n1", A1, {"role": "node", "dc": "dc1"}),
        "01049503a26e31a831302e302e302e31cd206d82a26463a3646331a4726f6c65a46e6f6465",
    ),
    "suspect": (Suspect(3, "n2", "n1"), "01039303a26e32a26e31"),
    "dead": (Dead(3, "n2", "n2"), "01059303a26e32a26e32"),
    "user_event": (UserEvent(5, "deploy", b"v1"), "01089305a66465706c6f79c4027631"),
    "push_pull": (
        PushPull(True, [PushNodeState("n1", A1, {"dc": "dc1"}, 2, NodeStateCode.SUSPECT)], 6,
                 [UserEvent(5, "deploy", b"v1")]),
        "010694c39196a26e31a831302e302e302e31cd206d81a26463a3646331020106919305a66465706c6f79c4027631",
    ),
    "compound": (Compound([encode(Nack(1)), encode(Nack(2))]), "01079192c40401099101c40401099102"),
    "query": (Query(5, 77, "n1", A1, "q", b"p", 3200), "010a98054da26e31a831302e302e302e31cd206da171c40170cd0c80"),
    "query_response": (QueryResponse(5, 77, "n2", b"r"), "010b94054da26e32c40172"),
}


def test_every_message_type_has_a_golden_case() -> None:
    assert {type(m).__name__.lower() for m, _ in CASES.values()} == {
        "ping", "indirectping", "ack", "nack", "alive", "suspect", "dead", "userevent", "pushpull", "compound",
        "query", "queryresponse",
    }
    assert len(CASES) == len(MessageType)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_bytes(name: str) -> None:
    msg, golden = CASES[name]
    data = encode(msg)
    assert data.hex() == golden
    assert data[0] == PROTOCOL_VERSION
    assert decode(bytes.fromhex(golden)) == msg


def test_message_type_numbers_are_pinned() -> None:
    # Append-only: these numbers are on the wire.
    assert {t.name: t.value for t in MessageType} == {
        "PING": 0, "INDIRECT_PING": 1, "ACK": 2, "SUSPECT": 3, "ALIVE": 4, "DEAD": 5,
        "PUSH_PULL": 6, "COMPOUND": 7, "USER_EVENT": 8, "NACK": 9, "QUERY": 10, "QUERY_RESPONSE": 11,
    }
    assert [s.value for s in NodeStateCode] == [0, 1, 2, 3]


def test_tags_encode_in_sorted_order() -> None:
    assert encode(Alive(1, "a", A1, {"b": "1", "a": "2"})) == encode(Alive(1, "a", A1, {"a": "2", "b": "1"}))


def test_trailing_fields_from_a_newer_peer_are_ignored() -> None:
    data = bytes((PROTOCOL_VERSION, MessageType.SUSPECT)) + msgpack.packb([3, "n2", "n1", "future"])
    assert decode(data) == Suspect(3, "n2", "n1")


def test_missing_optional_trailing_fields_take_defaults() -> None:
    data = bytes((PROTOCOL_VERSION, MessageType.ALIVE)) + msgpack.packb([1, "n1", "10.0.0.1", 8301])
    assert decode(data) == Alive(1, "n1", A1, {})


def test_dead_from_itself_is_a_leave() -> None:
    assert Dead(1, "n1", "n1").is_leave
    assert not Dead(1, "n1", "n2").is_leave


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        bytes((2, MessageType.PING)) + msgpack.packb([1, "a", "b", "h", 1]),  # unknown version
        bytes((PROTOCOL_VERSION, 200)) + msgpack.packb([1]),  # unknown type
        bytes((PROTOCOL_VERSION, MessageType.PING)) + b"\xc1",  # invalid msgpack
        bytes((PROTOCOL_VERSION, MessageType.PING)) + msgpack.packb([1, "a"]),  # too few fields
        bytes((PROTOCOL_VERSION, MessageType.PING)) + msgpack.packb(["x", "a", "b", "h", 1]),  # wrong type
        bytes((PROTOCOL_VERSION, MessageType.PING)) + msgpack.packb([1, "a", "b", "h", 70000]),  # bad port
        bytes((PROTOCOL_VERSION, MessageType.ALIVE)) + msgpack.packb([1, "a", "h", 1, {"k": 1}]),  # bad tags
        bytes((PROTOCOL_VERSION, MessageType.PUSH_PULL)) + msgpack.packb([True, [["n", "h", 1, {}, 0, 9]]]),
        bytes((PROTOCOL_VERSION, MessageType.ACK)) + msgpack.packb({"seq": 1}),  # map, not array
    ],
)
def test_malformed_input_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


def test_compound_flattens_and_skips_bad_parts() -> None:
    good = encode(Nack(1))
    nested = encode(Compound([good]))
    assert decode_packet(encode(Compound([good, b"\x01\xff", nested, encode(Ack(2))]))) == [Nack(1), Ack(2)]
    with pytest.raises(ProtocolError):
        decode_packet(encode(Compound([b"junk"])))


def test_single_part_is_sent_bare_and_overheads_are_upper_bounds() -> None:
    one = encode(Nack(1))
    assert encode_compound([one]) == one
    parts = [encode(UserEvent(i, "e", b"x" * (i * 37))) for i in range(20)]
    packed = encode_compound(parts)
    assert len(packed) <= COMPOUND_OVERHEAD + sum(len(p) + COMPOUND_PART_OVERHEAD for p in parts)
