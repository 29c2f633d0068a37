"""DNS messages on the wire: decoding and checking requests, encoding and sizing responses.

Owns what is independent of Consul's names: turning request bytes into a `Request` (or into a
FORMERR reply when the header parses, or into nothing when it does not), EDNS0 (the client's
UDP buffer size, an OPT echoed in every answer, BADVERS for versions above 0), the response
header flags, name compression (`disable_compression`), and fitting answers to the transport:
512 bytes or the EDNS0 buffer over UDP (with `udp_answer_limit` for plain 512-byte clients),
64 KiB over TCP. Cuts drop whole answer groups so SRV records keep their glue; the TC bit is set
on a cut UDP answer when `enable_truncate` is on (proconsul's default; Consul's default trims silently).

The codec is dnslib; this module adds the checks dnslib leaves out (label and name lengths,
one question, one OPT, classes) and turns every decoding failure into a value, never a raise.
Answers are written by a small encoder of its own (`_Writer`) that produces the same bytes as
dnslib's `DNSRecord.pack` (same name compression, same order) from records encoded once: each
group memoises its encoding in `Group.wire`, so a cached group costs only the owner-name
compression and a join per query.

Compression pointers hold 14 bits, so only names written before byte 16,384 may be pointed at
(`MAX_POINTER`). dnslib's buffer registers every name it writes and masks larger offsets into
pointers to the wrong place, which broke TCP answers beyond 16 KB; both the encoder and `pack`
register names only below that offset (a later name is written out, or points at an earlier copy).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSBuffer, DNSHeader, DNSLabel, DNSQuestion, DNSRecord
from dnslib.label import DNSLabelError

from proconsul.dns.answer import Answer, Group, canonical_name

HEADER_LEN = 12
PLAIN_UDP_SIZE = 512  # RFC 1035 limit without EDNS0
MAX_UDP_SIZE = 65_000  # below the 65,507-byte UDP payload limit
MAX_TCP_SIZE = 65_535  # the TCP length prefix is 16 bits
# Consul caps udp_answer_limit with this constant (maxUDPAnswerLimit).
MAX_UDP_ANSWER_LIMIT = 8
RCODE_BADVERS = 16  # extended rcode: header 0, OPT ext_rcode 1
CLASS_IN = 1
CLASS_ANY = 255  # QCLASS "*"
# The largest offset a compression pointer can hold (RFC 1035 4.1.4: 14 bits).
MAX_POINTER = 0x3FFF


@dataclass
class Request:
    record: DNSRecord
    name: str  # canonical question name: lower case, trailing dot
    qtype: int
    edns: bool
    udp_size: int  # what the client can receive over UDP


@dataclass
class Reject:
    """The request cannot be answered normally; `reply` is None when it is dropped."""

    reply: bytes | None


def _error_reply(header: DNSHeader, rcode: int, question: DNSQuestion | None = None) -> bytes:
    out = DNSHeader(id=header.id, qr=1, opcode=header.opcode, rd=header.rd, rcode=rcode)
    msg = DNSRecord(out, questions=[question] if question is not None else [])
    return msg.pack()


def _name_ok(label: object) -> bool:
    parts = getattr(label, "label", ())
    # Wire length: one length byte per label, the labels, and the root byte.
    return all(0 < len(p) <= 63 for p in parts) and sum(len(p) + 1 for p in parts) + 1 <= 255


def decode(data: bytes) -> Request | Reject:
    """Parse and check a request. Never raises."""
    if len(data) < HEADER_LEN:
        return Reject(None)
    if data[2] & 0x80:
        # QR set. Never answer a response: two servers could bounce errors at each other forever.
        return Reject(None)
    try:
        record = DNSRecord.parse(data)
    except Exception:
        # dnslib raises DNSError for broken sections; deep pointer chains can also raise
        # RecursionError. Either way the header was readable, so the client hears FORMERR.
        return Reject(_error_reply(DNSHeader.parse(DNSBuffer(data[:HEADER_LEN])), RCODE.FORMERR))
    header = record.header
    if header.opcode != 0:
        return Reject(_error_reply(header, RCODE.NOTIMP))
    if header.q == 0:
        # Consul (and miekg/dns) refuse a message without a question.
        return Reject(_error_reply(header, RCODE.REFUSED))
    if header.q > 1:
        return Reject(_error_reply(header, RCODE.FORMERR))
    question = record.questions[0]
    if not _name_ok(question.qname) or question.qclass not in (CLASS_IN, CLASS_ANY):
        return Reject(_error_reply(header, RCODE.FORMERR))
    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    if len(opts) > 1 or any(len(rr.rname.label) != 0 for rr in opts):
        return Reject(_error_reply(header, RCODE.FORMERR))
    udp_size = PLAIN_UDP_SIZE
    if opts:
        version = (opts[0].ttl >> 16) & 0xFF
        if version != 0:
            reply = DNSRecord(
                DNSHeader(id=header.id, qr=1, opcode=header.opcode, rd=header.rd), questions=[question]
            )
            reply.add_ar(EDNS0(ext_rcode=RCODE_BADVERS >> 4, udp_len=PLAIN_UDP_SIZE))
            return Reject(reply.pack())
        udp_size = min(max(opts[0].rclass, PLAIN_UDP_SIZE), MAX_UDP_SIZE)
    try:
        name = canonical_name(question.qname)
    except Exception:
        return Reject(_error_reply(header, RCODE.FORMERR))
    return Request(record, name, question.qtype, bool(opts), udp_size)


class _PlainBuffer(DNSBuffer):
    """A DNSBuffer that never compresses names (`dns_config.disable_compression`)."""

    def encode_name(self, name: object) -> None:
        self.encode_name_nocompress(name)


class _Buffer(DNSBuffer):
    """dnslib's compressing DNSBuffer, except that names at offsets a pointer cannot reach
    (beyond `MAX_POINTER`) stay out of the compression table."""

    def encode_name(self, name: object) -> None:
        for suffix, piece in _name(name):
            pointer = self.names.get(suffix)
            if pointer is not None:
                self.pack("!H", pointer | 0xC000)
                return
            if self.offset <= MAX_POINTER:
                self.names[suffix] = self.offset
            self.append(piece)
        self.append(b"\x00")


def pack(msg: DNSRecord, compress: bool = True) -> bytes:
    """dnslib's DNSRecord.pack, with the buffer chosen by the compression setting."""
    msg.set_header_qa()
    buffer = _Buffer() if compress else _PlainBuffer()
    msg.header.pack(buffer)
    for section in (msg.questions, msg.rr, msg.auth, msg.ar):
        for item in section:
            item.pack(buffer)
    return bytes(buffer.data)


def reply_header(req: Request, rcode: int, authoritative: bool, recursion_available: bool) -> DNSHeader:
    h = req.record.header
    return DNSHeader(
        id=h.id,
        qr=1,
        opcode=h.opcode,
        aa=int(authoritative),
        rd=h.rd,
        ra=int(recursion_available),
        rcode=rcode,
    )


def _opt(req: Request) -> list[RR]:
    # Echo the client's buffer size, as Consul's setEDNS does.
    return [EDNS0(udp_len=req.udp_size)] if req.edns else []


def simple_reply(
    req: Request, rcode: int, authoritative: bool, recursion_available: bool, compress: bool
) -> bytes:
    msg = DNSRecord(
        reply_header(req, rcode, authoritative, recursion_available), questions=req.record.questions
    )
    for rr in _opt(req):
        msg.add_ar(rr)
    return pack(msg, compress)


@dataclass(frozen=True)
class Limits:
    tcp: bool
    enable_truncate: bool
    compress: bool
    udp_answer_limit: int
    a_record_limit: int


def group_limit(req: Request, limits: Limits) -> int:
    """The most answer groups the transport takes whatever their size (0: no such limit).

    Plain UDP (no EDNS0) carries at most `udp_answer_limit` groups, as Consul's trimUDPResponse.
    """
    if limits.tcp or req.edns or limits.udp_answer_limit <= 0:
        return 0
    return min(limits.udp_answer_limit, MAX_UDP_ANSWER_LIMIT)


# --------------------------------------------------------------------------------- encoder

# A name ready to write: for each suffix (the whole name first), the suffix's wire form (the key
# of the compression table: case-sensitive like dnslib's tuple of labels, and a bytes key hashes
# once where a tuple hashes on every lookup) and the wire form of its first label.
_Name = tuple[tuple[bytes, bytes], ...]


def _name(label: Any) -> _Name:
    """Checked as dnslib checks names when packing (DNSLabelError on a bad name)."""
    if not isinstance(label, DNSLabel):
        label = DNSLabel(label)
    if len(label) > 253:
        raise DNSLabelError(f"Domain label too long: {label!r}")
    pieces = []
    for part in label.label:
        if len(part) > 63:
            raise DNSLabelError(f"Label component too long: {part!r}")
        pieces.append(bytes((len(part),)) + part)
    return tuple((b"".join(pieces[i:]), piece) for i, piece in enumerate(pieces))


class _Recorder(DNSBuffer):
    """Packs one RDATA, noting where compressible names go (they depend on the message)."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[tuple[int, _Name]] = []

    def encode_name(self, name: Any) -> None:
        self.marks.append((len(self.data), _name(name)))

    def segments(self) -> list[bytes | _Name]:
        out: list[bytes | _Name] = []
        last = 0
        for pos, name in self.marks:
            if pos > last:
                out.append(bytes(self.data[last:pos]))
            out.append(name)
            last = pos
        if len(self.data) > last:
            out.append(bytes(self.data[last:]))
        return out


class _Encoded:
    """One resource record, encoded once; `tail` is everything after the owner name when the
    RDATA holds no compressible name (A, AAAA, SRV, TXT, OPT), else None and `segments`."""

    __slots__ = ("owner", "fixed", "tail", "segments", "key")

    def __init__(self, rr: RR) -> None:
        self.owner = _name(rr.rname)
        self.fixed = struct.pack("!HHI", rr.rtype, rr.rclass, rr.ttl)
        rec = _Recorder()
        if rr.rtype == QTYPE.OPT:
            for opt in rr.rdata:
                opt.pack(rec)
        else:
            rr.rdata.pack(rec)
        self.segments = rec.segments()
        if not rec.marks:
            data = bytes(rec.data)
            self.tail: bytes | None = self.fixed + struct.pack("!H", len(data)) + data
        else:
            self.tail = None
        # Two instances on one node share the node's glue: extras are de-duplicated by this.
        self.key = (str(rr.rname).lower(), rr.rtype, str(rr.rdata))


def _encoded_group(group: Group) -> tuple[list[_Encoded], list[_Encoded]]:
    wire = group.wire
    if wire is None:
        wire = group.wire = ([_Encoded(rr) for rr in group.answer], [_Encoded(rr) for rr in group.extra])
    result: tuple[list[_Encoded], list[_Encoded]] = wire
    return result


class _Writer:
    """Writes a message body as `_Buffer` would (compression table and all)."""

    def __init__(self, compress: bool) -> None:
        self.parts: list[bytes] = []
        self.offset = HEADER_LEN
        self.names: dict[bytes, int] | None = {} if compress else None

    def name(self, name: _Name) -> None:
        parts = self.parts
        names = self.names
        if names is not None:
            for suffix, piece in name:
                pointer = names.get(suffix)
                if pointer is not None:
                    parts.append(struct.pack("!H", pointer | 0xC000))
                    self.offset += 2
                    return
                if self.offset <= MAX_POINTER:  # a pointer cannot reach further
                    names[suffix] = self.offset
                parts.append(piece)
                self.offset += len(piece)
        else:
            for _suffix, piece in name:
                parts.append(piece)
                self.offset += len(piece)
        parts.append(b"\x00")
        self.offset += 1

    def record(self, rr: _Encoded) -> None:
        self.name(rr.owner)
        tail = rr.tail
        if tail is not None:
            self.parts.append(tail)
            self.offset += len(tail)
            return
        self.parts.append(rr.fixed)
        at = len(self.parts)
        self.parts.append(b"")  # RDLENGTH, known once the RDATA is written
        self.offset += len(rr.fixed) + 2
        start = self.offset
        for seg in rr.segments:
            if isinstance(seg, bytes):
                self.parts.append(seg)
                self.offset += len(seg)
            else:
                self.name(seg)
        self.parts[at] = struct.pack("!H", self.offset - start)


def encode_answer(req: Request, answer: Answer, recursion_available: bool, limits: Limits) -> bytes:
    """The response for `answer`, cut to the transport's size; see the module docstring."""
    groups = answer.groups
    if answer.address_answer and limits.a_record_limit > 0:
        groups = groups[: limits.a_record_limit]  # a deliberate cap, not a truncation
    total = len(groups) + answer.omitted
    max_size = MAX_TCP_SIZE if limits.tcp else req.udp_size
    # reply_header's flags, without building a DNSHeader (its range-checked setters are slow).
    h = req.record.header
    bitmap = 0x8000 | (h.bitmap & 0x7900) | 0x0400 | (int(recursion_available) << 7) | (answer.rcode & 0xF)
    questions = [(_name(q.qname), struct.pack("!HH", q.qtype, q.qclass)) for q in req.record.questions]
    authority = [_Encoded(rr) for rr in answer.authority]
    opt = [_Encoded(rr) for rr in _opt(req)]

    def build(count: int, with_authority: bool = True) -> bytes:
        w = _Writer(limits.compress)
        for qname, qtail in questions:
            w.name(qname)
            w.parts.append(qtail)
            w.offset += 4
        extras: list[_Encoded] = []
        seen: set[tuple[str, int, str]] = set()
        n_answer = 0
        for group in groups[:count]:
            ans, extra = _encoded_group(group)
            for rr in ans:
                w.record(rr)
            n_answer += len(ans)
            for rr in extra:
                if rr.key not in seen:
                    seen.add(rr.key)
                    extras.append(rr)
        auth = authority if with_authority else []
        for rr in auth:
            w.record(rr)
        extras.extend(opt)
        for rr in extras:
            w.record(rr)
        head = struct.pack("!HHHHHH", h.id, bitmap, len(questions), n_answer, len(auth), len(extras))
        return head + b"".join(w.parts)

    count = total
    limit = group_limit(req, limits)
    if not limits.tcp and not req.edns:
        count = min(count, limit or total)
    count = min(count, len(groups))
    data = build(count)
    if len(data) > max_size:
        # Search the largest number of groups that fits. The size grows almost linearly with
        # the groups, so interpolating finds it in a few builds where bisecting a 1,000-instance
        # answer took a dozen; a step that does not halve the bracket is followed by a bisection.
        lo, hi = 0, count
        fits = build(0)
        if len(fits) <= max_size:
            lo_size, hi_size = len(fits), len(data)
            bisect = False
            while hi - lo > 1:
                if bisect:
                    mid = (lo + hi) // 2
                else:
                    mid = lo + (hi - lo) * (max_size - lo_size) // max(hi_size - lo_size, 1)
                    mid = min(max(mid, lo + 1), hi - 1)
                width = hi - lo
                candidate = build(mid)
                if len(candidate) <= max_size:
                    lo, lo_size, fits = mid, len(candidate), candidate
                else:
                    hi, hi_size = mid, len(candidate)
                bisect = not bisect and (hi - lo) * 2 > width
            count, data = lo, fits
        else:
            count, data = 0, build(0, with_authority=False)
    if count < total and not limits.tcp and limits.enable_truncate:
        # Set TC in place: the header's flags are in bytes 2-3 (bit 9 of the 16-bit field).
        flags = struct.unpack("!H", data[2:4])[0] | 0x0200
        data = data[:2] + struct.pack("!H", flags) + data[4:]
    return data
