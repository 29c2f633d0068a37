"""RPC wire format: connection types, frames and messages (sans-I/O).

Owns the bytes exchanged on the server port (`ports.server`, 8300). A connection opens with one
byte naming its protocol (the listener multiplexes on it, as Consul's does), then carries
length-prefixed msgpack frames. RPC frames are requests `[REQUEST, seq, method, body]` and
responses `[RESPONSE, seq, error, body]`; the sequence number lets many requests share one
connection with responses in any order (pipelining).

Type numbers are append-only: a number is never reused or renumbered, so mixed versions during
a rolling upgrade agree on what a frame means.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

WIRE_VERSION = 1
# A frame longer than this is a protocol violation (a snapshot chunk is the largest frame).
MAX_FRAME_BYTES = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")


class ConnType(IntEnum):
    """First byte of a connection on the server port."""

    RPC = 0x01  # client-agent and server-to-server RPC
    RAFT = 0x02  # Raft messages between servers
    GOSSIP_STREAM = 0x03  # push-pull and fallback probes when gossip shares the port
    # TLS follows (Consul's RPCTLS): after the handshake, the inner stream starts with RPC or RAFT.
    TLS = 0x04


class FrameKind(IntEnum):
    REQUEST = 0
    RESPONSE = 1


class ProtocolError(Exception):
    """The peer broke the protocol (bad frame, unknown type): close the connection."""


@dataclass(frozen=True, slots=True)
class Request:
    seq: int
    method: str
    body: Any


@dataclass(frozen=True, slots=True)
class Response:
    seq: int
    error: str | None
    body: Any


def encode_frame(payload: Any) -> bytes:
    data = msgpack.packb(payload, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    return _LENGTH.pack(len(data)) + data


def encode_request(req: Request) -> bytes:
    return encode_frame([int(FrameKind.REQUEST), req.seq, req.method, req.body])


class SharedBody(dict):  # type: ignore[type-arg]
    """A response body (a map) whose `shared` values are objects many responses carry (one
    parked blocking read's answer, sent to every caller waiting on it): `encode_response` packs
    each of them once, by identity, and splices the bytes into every frame that carries it.
    Still a plain dict to an in-process caller. The objects must never change once sent."""

    __slots__ = ("shared",)

    def __init__(self, items: dict[str, Any], shared: tuple[str, ...]) -> None:
        super().__init__(items)
        self.shared = shared


_SHARED_PACKED: OrderedDict[int, tuple[Any, bytes]] = OrderedDict()
_SHARED_PACKED_MAX = 16


def _pack_shared(obj: Any) -> bytes:
    hit = _SHARED_PACKED.get(id(obj))
    if hit is not None and hit[0] is obj:  # the entry holds obj, so its id cannot be reused meanwhile
        return hit[1]
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    _SHARED_PACKED[id(obj)] = (obj, data)
    if len(_SHARED_PACKED) > _SHARED_PACKED_MAX:
        _SHARED_PACKED.popitem(last=False)
    return data


def _pack_body(body: SharedBody) -> bytes:
    # Concatenated msgpack items are what packing the containing map would have produced.
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(body))]
    for key, value in body.items():
        parts.append(packer.pack(key))
        parts.append(_pack_shared(value) if key in body.shared else packer.pack(value))
    return b"".join(parts)


def encode_response(resp: Response) -> bytes:
    if type(resp.body) is not SharedBody:
        return encode_frame([int(FrameKind.RESPONSE), resp.seq, resp.error, resp.body])
    packer = msgpack.Packer(use_bin_type=True)
    data = b"".join((packer.pack_array_header(4), packer.pack(int(FrameKind.RESPONSE)), packer.pack(resp.seq),
                     packer.pack(resp.error), _pack_body(resp.body)))
    if len(data) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    return _LENGTH.pack(len(data)) + data


def decode_message(payload: Any) -> Request | Response:
    """Turn one decoded frame into a Request or Response; ProtocolError if malformed."""
    if not isinstance(payload, list) or len(payload) != 4:
        raise ProtocolError("RPC frame is not a 4-element array")
    kind, seq, a, b = payload
    if not isinstance(seq, int):
        raise ProtocolError("RPC frame has a non-integer sequence number")
    if kind == FrameKind.REQUEST:
        if not isinstance(a, str):
            raise ProtocolError("RPC request has a non-string method")
        return Request(seq, a, b)
    if kind == FrameKind.RESPONSE:
        if a is not None and not isinstance(a, str):
            raise ProtocolError("RPC response has a non-string error")
        return Response(seq, a, b)
    raise ProtocolError(f"unknown RPC frame kind {kind!r}")


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole decoded frames back."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out: list[Any] = []
        while len(self._buf) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buf)
            if length > self._max:
                raise ProtocolError(f"frame of {length} bytes exceeds the {self._max}-byte limit")
            end = _LENGTH.size + length
            if len(self._buf) < end:
                break
            raw = bytes(self._buf[_LENGTH.size : end])
            del self._buf[:end]
            try:
                out.append(msgpack.unpackb(raw, raw=False))
            except Exception as exc:  # msgpack raises several unrelated exception types
                raise ProtocolError(f"undecodable frame: {exc}") from exc
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
