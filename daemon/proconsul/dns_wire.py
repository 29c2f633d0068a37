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
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSBuffer, DNSHeader, DNSQuestion, DNSRecord

from proconsul.dns_answer import Answer, canonical_name

HEADER_LEN = 12
PLAIN_UDP_SIZE = 512  # RFC 1035 limit without EDNS0
MAX_UDP_SIZE = 65_000  # below the 65,507-byte UDP payload limit
MAX_TCP_SIZE = 65_535  # the TCP length prefix is 16 bits
# Consul caps udp_answer_limit with this constant (maxUDPAnswerLimit).
MAX_UDP_ANSWER_LIMIT = 8
RCODE_BADVERS = 16  # extended rcode: header 0, OPT ext_rcode 1
CLASS_IN = 1
CLASS_ANY = 255  # QCLASS "*"


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
    try:
        header = DNSHeader.parse(DNSBuffer(data[:HEADER_LEN]))
    except Exception:
        return Reject(None)
    if header.qr:
        # Never answer a response: two servers could bounce errors at each other forever.
        return Reject(None)
    try:
        record = DNSRecord.parse(data)
    except Exception:
        # dnslib raises DNSError for broken sections; deep pointer chains can also raise
        # RecursionError. Either way the header was readable, so the client hears FORMERR.
        return Reject(_error_reply(header, RCODE.FORMERR))
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


def pack(msg: DNSRecord, compress: bool = True) -> bytes:
    """dnslib's DNSRecord.pack, with the buffer chosen by the compression setting."""
    msg.set_header_qa()
    buffer = DNSBuffer() if compress else _PlainBuffer()
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


def encode_answer(req: Request, answer: Answer, recursion_available: bool, limits: Limits) -> bytes:
    """The response for `answer`, cut to the transport's size; see the module docstring."""
    groups = answer.groups
    if answer.address_answer and limits.a_record_limit > 0:
        groups = groups[: limits.a_record_limit]  # a deliberate cap, not a truncation
    total = len(groups)
    max_size = MAX_TCP_SIZE if limits.tcp else req.udp_size
    opt = _opt(req)

    def build(count: int, with_authority: bool = True) -> bytes:
        msg = DNSRecord(
            reply_header(req, answer.rcode, True, recursion_available), questions=req.record.questions
        )
        seen: set[tuple[str, int, str]] = set()
        for group in groups[:count]:
            msg.rr.extend(group.answer)
            for rr in group.extra:
                key = (str(rr.rname).lower(), rr.rtype, str(rr.rdata))
                if key not in seen:  # two instances on one node share the node's glue
                    seen.add(key)
                    msg.ar.append(rr)
        if with_authority:
            msg.auth.extend(answer.authority)
        msg.ar.extend(opt)
        return pack(msg, limits.compress)

    count = total
    if not limits.tcp and not req.edns:
        limit = min(limits.udp_answer_limit, MAX_UDP_ANSWER_LIMIT) if limits.udp_answer_limit > 0 else total
        count = min(count, limit)
    data = build(count)
    if len(data) > max_size:
        # Binary search the largest number of groups that fits.
        lo, hi = 0, count
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(build(mid)) <= max_size:
                lo = mid
            else:
                hi = mid - 1
        count = lo
        data = build(count)
        if len(data) > max_size:
            data = build(0, with_authority=False)
    if count < total and not limits.tcp and limits.enable_truncate:
        # Set TC in place: the header's flags are in bytes 2-3 (bit 9 of the 16-bit field).
        flags = struct.unpack("!H", data[2:4])[0] | 0x0200
        data = data[:2] + struct.pack("!H", flags) + data[4:]
    return data
