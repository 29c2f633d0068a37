"""The framing of the control stream between the agent and its HTTP workers.

Owns the byte layout of one frame (4-byte payload length, 1-byte kind, payload) and the kinds:
the agent sends its configuration (HELLO), the store snapshot a worker starts from (SNAPSHOT),
every applied Raft entry in order (ENTRY), its Raft status (STATUS) and barrier answers
(BARRIER_ANSWER); a worker sends barrier requests (BARRIER) and, every 100 ms, what its
telemetry recorded (METRICS: JSON rows of `proconsul.metrics.remote`). The stream is ordered, which is
what makes the barrier work: an answer is written after every entry applied before it.
"""

from __future__ import annotations

import asyncio
import struct

HELLO = b"H"
SNAPSHOT = b"S"
ENTRY = b"E"
STATUS = b"T"
BARRIER = b"b"
BARRIER_ANSWER = b"B"
METRICS = b"M"

_HEAD = struct.Struct("!Ic")
_INDEX = struct.Struct("!Q")
# STATUS and BARRIER_ANSWER: leader?, ready for reads?, a leader known?, last contact in ms,
# the last Raft index the agent applied.
_STATUS = struct.Struct("!???QQ")
# One frame may carry a whole snapshot; anything larger is a broken stream.
MAX_FRAME = 1 << 31


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload), kind) + payload


def entry(index: int, data: bytes) -> bytes:
    return _HEAD.pack(len(data) + 8, ENTRY) + _INDEX.pack(index) + data


def snapshot(index: int, blob: bytes) -> bytes:
    return _HEAD.pack(len(blob) + 8, SNAPSHOT) + _INDEX.pack(index) + blob


def split_index(payload: bytes) -> tuple[int, bytes]:
    return _INDEX.unpack_from(payload)[0], payload[8:]


def status(kind: bytes, leader: bool, ready: bool, known_leader: bool, last_contact_ms: int, applied: int,
           seq: int = 0) -> bytes:
    return frame(kind, _STATUS.pack(leader, ready, known_leader, last_contact_ms, applied) + _INDEX.pack(seq))


def parse_status(payload: bytes) -> tuple[bool, bool, bool, int, int, int]:
    leader, ready, known, contact, applied = _STATUS.unpack_from(payload)
    seq = _INDEX.unpack_from(payload, _STATUS.size)[0]
    return leader, ready, known, contact, applied, seq


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(kind, payload); raises IncompleteReadError at EOF."""
    head = await reader.readexactly(_HEAD.size)
    length, kind = _HEAD.unpack(head)
    if length > MAX_FRAME:
        raise ValueError(f"control frame of {length} bytes")
    return kind, await reader.readexactly(length)
