"""Wire format: golden bytes (the format is a compatibility promise) and incremental decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proconsul.wire import (
    ConnType,
    FrameDecoder,
    ProtocolError,
    Request,
    Response,
    decode_message,
    encode_request,
    encode_response,
)


def test_golden_bytes() -> None:
    assert ConnType.RPC == 1 and ConnType.RAFT == 2 and ConnType.GOSSIP_STREAM == 3
    assert encode_request(Request(7, "Status.Ping", None)).hex() == "00000010940007ab5374617475732e50696e67c0"
    assert encode_response(Response(7, None, True)).hex() == "00000005940107c0c3"


@given(st.lists(st.tuples(st.integers(0, 2**31), st.text(max_size=20), st.binary(max_size=300)), max_size=20),
       st.integers(1, 50))
def test_decoder_reassembles_any_split(messages: list[tuple[int, str, bytes]], chunk: int) -> None:
    stream = b"".join(encode_request(Request(seq, method, body)) for seq, method, body in messages)
    decoder = FrameDecoder()
    got = []
    for i in range(0, len(stream), chunk):
        got.extend(decode_message(p) for p in decoder.feed(stream[i : i + chunk]))
    assert got == [Request(seq, method, body) for seq, method, body in messages]
    assert decoder.pending == 0


def test_oversized_and_malformed_frames_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(max_frame=10).feed(b"\x00\x00\x00\xff")
    with pytest.raises(ProtocolError):
        decode_message([9, 1, "x", None])
    with pytest.raises(ProtocolError):
        decode_message({"not": "a list"})


def test_a_shared_body_encodes_as_the_plain_map_and_packs_its_shared_value_once() -> None:
    from proconsul import wire

    result = [{"Key": f"k{i}", "Value": "dg=="} for i in range(50)]
    plain = {"meta": [7, True, 0, "leader"], "result": result}
    shared = wire.SharedBody(plain, ("result",))
    assert wire.encode_response(wire.Response(3, None, shared)) == wire.encode_response(wire.Response(3, None, plain))
    packed = wire._SHARED_PACKED[id(result)][1]
    assert wire.encode_response(wire.Response(4, None, wire.SharedBody(plain, ("result",)))).endswith(packed)
    assert wire._SHARED_PACKED[id(result)][1] is packed  # the second frame reused the bytes
