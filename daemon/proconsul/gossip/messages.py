"""Gossip wire format: message types and their msgpack encoding.

Owns the bytes on the wire and nothing else. Every datagram and stream payload is

    version (1 byte) | type (1 byte) | msgpack array of the message's fields

Fields are positional so packets stay small; new fields may only be appended (a decoder
ignores trailing fields it does not know, and fills missing trailing fields with defaults), and
``MessageType`` is append-only: the numbers are part of the protocol. A compound message packs
several encoded messages into one datagram so broadcasts can ride on pings and acks.

Decoding never trusts the peer: anything malformed raises :class:`ProtocolError`, which the
caller logs and drops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

# The version byte leads every message. Bump it only for changes that old decoders cannot skip.
PROTOCOL_VERSION = 1

Address = tuple[str, int]


class ProtocolError(ValueError):
    """The peer sent bytes that are not a valid gossip message (never our own misuse)."""


class MessageType(IntEnum):
    """Wire message types. WARNING: only append; the numbers are part of the protocol."""

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER_EVENT = 8
    NACK = 9
    QUERY = 10
    QUERY_RESPONSE = 11


class NodeStateCode(IntEnum):
    """Member states as sent in push-pull. Append-only, same numbers as memberlist's."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True)
class Ping:
    """Direct probe; ``target`` names the member we mean, so a reused address is not acked wrongly."""

    seq: int
    target: str
    source_name: str
    source: Address


@dataclass(frozen=True)
class IndirectPing:
    """Ping-req: ask a peer to ping ``target`` for us; ``nack`` asks for a nack if it hears nothing."""

    seq: int
    target: str
    target_addr: Address
    nack: bool
    source_name: str
    source: Address


@dataclass(frozen=True)
class Ack:
    """Answer to a ping with the same ``seq``; ``payload`` is reserved for coordinates."""

    seq: int
    payload: bytes = b""


@dataclass(frozen=True)
class Nack:
    """An indirect prober reached no one: tells the requester its own network is fine (Lifeguard)."""

    seq: int


@dataclass(frozen=True)
class Alive:
    """``node`` is alive at ``incarnation`` with this address and these tags."""

    incarnation: int
    node: str
    addr: Address
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Suspect:
    """``source`` suspects ``node`` at ``incarnation``; distinct sources are Lifeguard confirmations."""

    incarnation: int
    node: str
    source: str


@dataclass(frozen=True)
class Dead:
    """``node`` is dead at ``incarnation``; when ``source == node`` it is a graceful leave."""

    incarnation: int
    node: str
    source: str

    @property
    def is_leave(self) -> bool:
        return self.source == self.node


@dataclass(frozen=True)
class UserEvent:
    """A serf-style user event stamped with the sender's Lamport time."""

    ltime: int
    name: str
    payload: bytes


@dataclass(frozen=True)
class PushNodeState:
    """One member as carried in a push-pull exchange."""

    name: str
    addr: Address
    tags: Mapping[str, str]
    incarnation: int
    state: NodeStateCode


@dataclass(frozen=True)
class PushPull:
    """Full state: every member we know plus the user-event clock and recent events."""

    join: bool
    nodes: Sequence[PushNodeState]
    event_ltime: int = 0
    events: Sequence[UserEvent] = ()


@dataclass(frozen=True)
class Query:
    """A serf-style query: gossiped to every member, answered point-to-point to ``source``.

    ``(ltime, id)`` names the query (Lamport time of the query clock plus a random id), so
    repeats are recognised; ``timeout_ms`` bounds how long answers are useful to the asker.
    """

    ltime: int
    id: int
    source_name: str
    source: Address
    name: str
    payload: bytes
    timeout_ms: int


@dataclass(frozen=True)
class QueryResponse:
    """One member's answer to the query ``(ltime, id)``, sent straight to the asker."""

    ltime: int
    id: int
    from_name: str
    payload: bytes


@dataclass(frozen=True)
class Compound:
    """Several already-encoded messages in one datagram."""

    parts: Sequence[bytes]


Message = (Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | UserEvent | PushPull | Compound
           | Query | QueryResponse)


def _tags(tags: Mapping[str, str]) -> dict[str, str]:
    # Sorted so that equal tag maps always produce equal bytes (golden tests, dedup by bytes).
    return {k: tags[k] for k in sorted(tags)}


def _fields(msg: Message) -> tuple[MessageType, list[Any]]:
    if isinstance(msg, Ping):
        return MessageType.PING, [msg.seq, msg.target, msg.source_name, msg.source[0], msg.source[1]]
    if isinstance(msg, IndirectPing):
        return MessageType.INDIRECT_PING, [
            msg.seq, msg.target, msg.target_addr[0], msg.target_addr[1], msg.nack,
            msg.source_name, msg.source[0], msg.source[1],
        ]
    if isinstance(msg, Ack):
        return MessageType.ACK, [msg.seq, bytes(msg.payload)]
    if isinstance(msg, Nack):
        return MessageType.NACK, [msg.seq]
    if isinstance(msg, Alive):
        return MessageType.ALIVE, [msg.incarnation, msg.node, msg.addr[0], msg.addr[1], _tags(msg.tags)]
    if isinstance(msg, Suspect):
        return MessageType.SUSPECT, [msg.incarnation, msg.node, msg.source]
    if isinstance(msg, Dead):
        return MessageType.DEAD, [msg.incarnation, msg.node, msg.source]
    if isinstance(msg, UserEvent):
        return MessageType.USER_EVENT, [msg.ltime, msg.name, bytes(msg.payload)]
    if isinstance(msg, PushPull):
        nodes = [[n.name, n.addr[0], n.addr[1], _tags(n.tags), n.incarnation, int(n.state)] for n in msg.nodes]
        events = [[e.ltime, e.name, bytes(e.payload)] for e in msg.events]
        return MessageType.PUSH_PULL, [msg.join, nodes, msg.event_ltime, events]
    if isinstance(msg, Compound):
        return MessageType.COMPOUND, [list(msg.parts)]
    if isinstance(msg, Query):
        return MessageType.QUERY, [
            msg.ltime, msg.id, msg.source_name, msg.source[0], msg.source[1], msg.name, bytes(msg.payload),
            msg.timeout_ms,
        ]
    if isinstance(msg, QueryResponse):
        return MessageType.QUERY_RESPONSE, [msg.ltime, msg.id, msg.from_name, bytes(msg.payload)]
    raise TypeError(f"not a gossip message: {msg!r}")


def encode(msg: Message) -> bytes:
    """Encode one message as version byte, type byte and a msgpack field array."""
    mtype, fields = _fields(msg)
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return bytes((PROTOCOL_VERSION, int(mtype))) + body


# Space a compound adds around its parts: two header bytes, an array header (<= 3 bytes while
# it holds < 65536 parts) and a bin header per part (<= 3 bytes while each part is < 64 KiB).
COMPOUND_OVERHEAD = 2 + 1 + 3
COMPOUND_PART_OVERHEAD = 3


def encode_compound(parts: Sequence[bytes]) -> bytes:
    """One part is sent as itself; several become a COMPOUND message."""
    if len(parts) == 1:
        return parts[0]
    return encode(Compound(parts))


def peek_type(data: bytes) -> MessageType:
    """The message type of an encoded message, after checking the version byte."""
    if len(data) < 2:
        raise ProtocolError("message shorter than its header")
    if data[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported gossip protocol version {data[0]}")
    try:
        return MessageType(data[1])
    except ValueError:
        raise ProtocolError(f"unknown gossip message type {data[1]}") from None


# Member states by wire number (the enum is append-only and numbered from 0).
_STATES = tuple(sorted(NodeStateCode))


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ProtocolError(f"expected a non-negative integer, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ProtocolError(f"expected a string, got {v!r}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise ProtocolError(f"expected bytes, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(f"expected a bool, got {v!r}")
    return v


def _addr(host: Any, port: Any) -> Address:
    p = _int(port)
    if p > 65535:
        raise ProtocolError(f"port out of range: {p}")
    return (_str(host), p)


def _tagmap(v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise ProtocolError(f"expected a map of strings, got {v!r}")
    return dict(v)


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ProtocolError(f"expected an array, got {v!r}")
    return v


def _need(fields: list[Any], n: int, mtype: MessageType) -> list[Any]:
    if len(fields) < n:
        raise ProtocolError(f"{mtype.name} needs {n} fields, got {len(fields)}")
    return fields


def decode(data: bytes) -> Message:
    """Decode one message; raises :class:`ProtocolError` for anything a peer got wrong."""
    mtype = peek_type(data)
    try:
        raw = msgpack.unpackb(data[2:], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"bad msgpack in {mtype.name}: {exc}") from None
    f = _list(raw)
    # Trailing fields beyond what we know are from a newer peer: ignored (append-only rule).
    if mtype is MessageType.PING:
        _need(f, 5, mtype)
        return Ping(_int(f[0]), _str(f[1]), _str(f[2]), _addr(f[3], f[4]))
    if mtype is MessageType.INDIRECT_PING:
        _need(f, 8, mtype)
        return IndirectPing(_int(f[0]), _str(f[1]), _addr(f[2], f[3]), _bool(f[4]), _str(f[5]), _addr(f[6], f[7]))
    if mtype is MessageType.ACK:
        _need(f, 1, mtype)
        return Ack(_int(f[0]), _bytes(f[1]) if len(f) > 1 else b"")
    if mtype is MessageType.NACK:
        _need(f, 1, mtype)
        return Nack(_int(f[0]))
    if mtype is MessageType.ALIVE:
        _need(f, 4, mtype)
        return Alive(_int(f[0]), _str(f[1]), _addr(f[2], f[3]), _tagmap(f[4]) if len(f) > 4 else {})
    if mtype is MessageType.SUSPECT:
        _need(f, 3, mtype)
        return Suspect(_int(f[0]), _str(f[1]), _str(f[2]))
    if mtype is MessageType.DEAD:
        _need(f, 3, mtype)
        return Dead(_int(f[0]), _str(f[1]), _str(f[2]))
    if mtype is MessageType.USER_EVENT:
        _need(f, 3, mtype)
        return UserEvent(_int(f[0]), _str(f[1]), _bytes(f[2]))
    if mtype is MessageType.PUSH_PULL:
        _need(f, 2, mtype)
        nodes: list[PushNodeState] = []
        for n in _list(f[1]):
            # A full state carries every member: check the common well-formed entry in one go
            # (msgpack yields exact types), and leave anything else to the field checks below,
            # which name what is wrong.
            if (type(n) is list and len(n) >= 6 and type(n[0]) is str and type(n[1]) is str
                    and type(n[2]) is int and 0 <= n[2] <= 65535 and type(n[3]) is dict
                    and type(n[4]) is int and n[4] >= 0 and type(n[5]) is int and 0 <= n[5] < len(_STATES)
                    and all(type(k) is str and type(v) is str for k, v in n[3].items())):
                nodes.append(PushNodeState(n[0], (n[1], n[2]), n[3], n[4], _STATES[n[5]]))
                continue
            n = _need(_list(n), 6, mtype)
            try:
                state = NodeStateCode(_int(n[5]))
            except ValueError:
                raise ProtocolError(f"unknown node state {n[5]}") from None
            nodes.append(PushNodeState(_str(n[0]), _addr(n[1], n[2]), _tagmap(n[3]), _int(n[4]), state))
        ltime = _int(f[2]) if len(f) > 2 else 0
        events = [UserEvent(_int(e[0]), _str(e[1]), _bytes(e[2]))
                  for e in (_need(_list(x), 3, mtype) for x in (_list(f[3]) if len(f) > 3 else []))]
        return PushPull(_bool(f[0]), nodes, ltime, events)
    if mtype is MessageType.COMPOUND:
        _need(f, 1, mtype)
        return Compound([_bytes(p) for p in _list(f[0])])
    if mtype is MessageType.QUERY:
        _need(f, 8, mtype)
        return Query(_int(f[0]), _int(f[1]), _str(f[2]), _addr(f[3], f[4]), _str(f[5]), _bytes(f[6]), _int(f[7]))
    if mtype is MessageType.QUERY_RESPONSE:
        _need(f, 4, mtype)
        return QueryResponse(_int(f[0]), _int(f[1]), _str(f[2]), _bytes(f[3]))
    raise ProtocolError(f"no decoder for {mtype.name}")  # pragma: no cover - enum and decoder in step


def decode_packet(data: bytes) -> list[Message]:
    """Decode a datagram into its messages, flattening one level of compound.

    A broken part of a compound is skipped rather than failing its siblings; a compound inside
    a compound is refused, so a peer cannot make us recurse.
    """
    msg = decode(data)
    if not isinstance(msg, Compound):
        return [msg]
    out: list[Message] = []
    errors: list[str] = []
    for part in msg.parts:
        try:
            inner = decode(part)
        except ProtocolError as exc:
            errors.append(str(exc))
            continue
        if isinstance(inner, Compound):
            errors.append("nested compound message")
            continue
        out.append(inner)
    if errors and not out:
        raise ProtocolError("; ".join(errors))
    return out
