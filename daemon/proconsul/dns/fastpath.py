"""The reply cache: encoded replies to repeated service questions, answered in the datagram callback.

Owns the fast half of the DNS hot path. A service question (SRV, A, AAAA, ANY of
`<svc>.service...`) answered positively from an `AnswerCache` entry leaves a `Entry` here, keyed
by the request's bytes after the 2-byte transaction ID (flags, question name as spelled, type,
class and the EDNS0 OPT: everything in the request that shapes the reply) and by the transport.
The next request with the same bytes is answered without parsing it, resolving or encoding:
`DNSServer.fast_reply` checks the entry still holds (same config object, the store's index for
the service and its table-index object unchanged, a local read allowed by `allow_stale` /
`max_stale` or leadership), then `Entry.reply` shuffles the instances with the server's RNG (the
same draws as the resolver's shuffle, so both paths give the same bytes for the same RNG state),
picks the instances the transport carries (the resolver's own selection functions) and takes the
reply encoded for exactly that choice, encoding it on first use; only the ID is patched in.

Why a reply per choice and not one shuffled reply: name compression makes each record's bytes
depend on what was written before it, so a reply cannot be permuted by moving byte slices without
giving up compression (and the sizes that decide truncation). A plain-UDP SRV answer of 10
instances cut to `udp_answer_limit` = 3 has 720 possible choices: all of them fit
(`max_replies` per entry); larger answers (EDNS0, TCP: every instance, in any order) keep the
first `max_replies` choices seen and encode the rest per query from the cached record groups.

Only requests of the common shape are remembered (`common_shape`: one question, no answer or
authority records, at most one OPT without options, nothing after it), so odd requests (EDNS
cookies, which differ per query) cannot fill the cache; they take the full path. Not used with
ACLs on (the answer depends on the token's Authorizer, resolved asynchronously) nor on client
agents (their catalog is a server's, read per query).
"""

from __future__ import annotations

import random
import time
from typing import Any

from dnslib import QTYPE

from proconsul.config import RuntimeConfig
from proconsul.dns import wire as dns_wire
from proconsul.dns.answer import Question, Resolver, _Entry, select_addresses, select_srv

_OPT = QTYPE.OPT


def common_shape(data: bytes) -> bool:
    """A standard query with one question and at most a bare OPT record, nothing else."""
    n = len(data)
    if n < 17 or n > dns_wire.PLAIN_UDP_SIZE or data[2] & 0xF8:  # QR or an opcode set
        return False
    if data[4:10] != b"\x00\x01\x00\x00\x00\x00":  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
        return False
    i = 12
    while True:
        if i >= n:
            return False
        length = data[i]
        if length == 0:
            break
        if length > 63:  # a pointer or an extended label type: not in a plain question
            return False
        i += length + 1
    i += 5  # root label, QTYPE, QCLASS
    arcount = (data[10] << 8) | data[11]
    if arcount == 0:
        return i == n
    # One OPT: root owner, type 41, class = UDP size, TTL = ext-rcode/version/flags, RDLENGTH 0.
    return arcount == 1 and n == i + 11 and data[i] == 0 and ((data[i + 1] << 8) | data[i + 2]) == _OPT and (
        data[i + 9] == 0 and data[i + 10] == 0
    )


def shuffle(rng: random.Random, x: list[Any]) -> None:
    """`rng.shuffle(x)` with the same draws, without a method call per element (a plain
    `random.Random` draws `getrandbits` until below the bound); other generators shuffle themselves."""
    if type(rng) is not random.Random:
        rng.shuffle(x)
        return
    getrandbits = rng.getrandbits
    for i in range(len(x) - 1, 0, -1):
        n = i + 1
        k = n.bit_length()
        j = getrandbits(k)
        while j >= n:
            j = getrandbits(k)
        x[i], x[j] = x[j], x[i]


class Entry:
    """One remembered question: what it was answered from, and its replies per choice."""

    __slots__ = (
        "cfg", "tables", "service", "index", "answer_entry", "question", "request", "limits",
        "recursion_available", "max_groups", "cap", "address", "replies", "size", "plain",
    )

    def __init__(
        self,
        answer_entry: _Entry,
        service: str,
        question: Question,
        request: dns_wire.Request,
        limits: dns_wire.Limits,
        recursion_available: bool,
    ) -> None:
        self.cfg: RuntimeConfig = answer_entry.cfg
        self.tables = answer_entry.tables
        self.index = answer_entry.index
        self.service = service
        self.answer_entry = answer_entry
        self.question = question
        self.request = request  # a template: the reply's ID is patched per query
        self.limits = limits
        self.recursion_available = recursion_available
        self.address = question.qtype != QTYPE.SRV
        # The SRV groups the resolver builds for this transport (plain UDP: udp_answer_limit).
        self.max_groups = dns_wire.group_limit(request, limits)
        # How many groups of the choice can reach the wire (0: all): the reply is a function of
        # the first `cap` chosen instances (the count behind TC does not depend on the order).
        cap = self.max_groups
        if self.address and limits.a_record_limit > 0:
            cap = min(cap, limits.a_record_limit) if cap else limits.a_record_limit
        self.cap = cap
        # Every instance usable and none a duplicate of another: the choice is the shuffled
        # order itself (its first `cap`), no selection pass needed.
        items = answer_entry.items
        self.plain = not any(item.skip for item in items) and len({item.key for item in items}) == len(items)
        self.replies: dict[tuple[int, ...], bytes] = {}
        self.size = 0  # bytes held in `replies`

    def reply(self, data: bytes, rng: random.Random, owner: ReplyCache) -> bytes:
        """The reply to `data` (same bytes after the ID as the remembered request)."""
        entry = self.answer_entry
        order = entry.items[:]
        shuffle(rng, order)  # as Resolver._service: the same draws
        key: tuple[int, ...]
        if self.plain:
            cap = self.cap
            key = tuple(item.index for item in (order[:cap] if cap else order))
        elif self.address:
            chosen, cname = select_addresses(order)
            if chosen:
                cap = self.cap
                key = tuple(item.index for item in (chosen[:cap] if cap else chosen))
            else:
                key = (-1 - cname.index,) if cname is not None else ()
        else:
            chosen, _ = select_srv(order, self.max_groups)
            key = tuple(item.index for item in chosen)
        encoded = self.replies.get(key)
        if encoded is None:
            resolver = Resolver(self.cfg, entry.dc, rng, time.time(), None, self.max_groups)
            answer = resolver.service_answer(self.question, entry, order)
            encoded = dns_wire.encode_answer(self.request, answer, self.recursion_available, self.limits)
            if not answer.authority and len(self.replies) < owner.max_replies and owner.take(len(encoded), self):
                self.replies[key] = encoded
                self.size += len(encoded)
        return data[:2] + encoded[2:]


class ReplyCache:
    """Remembered questions per transport, at most `max_entries` (oldest dropped), holding at
    most `max_bytes` of encoded replies in all (oldest entries dropped to make room)."""

    def __init__(self, max_entries: int = 512, max_replies: int = 1024, max_bytes: int = 32 << 20) -> None:
        self.max_entries = max_entries
        self.max_replies = max_replies
        self.max_bytes = max_bytes
        self.bytes = 0
        self.udp: dict[bytes, Entry] = {}
        self.tcp: dict[bytes, Entry] = {}

    def get(self, data: bytes, tcp: bool) -> Entry | None:
        return (self.tcp if tcp else self.udp).get(bytes(data[2:]))

    def take(self, size: int, keep: Entry) -> bool:
        """Account `size` more bytes of replies for `keep`, dropping the oldest other entries
        when the budget is spent (a question asked no more must not hold it for good)."""
        for table in (self.udp, self.tcp):
            while self.bytes + size > self.max_bytes and table:
                key = next(iter(table))
                if table[key] is keep:
                    break
                self.bytes -= table.pop(key).size
        if self.bytes + size > self.max_bytes:
            return False
        self.bytes += size
        return True

    def remember(self, data: bytes, tcp: bool, entry: Entry) -> None:
        if not common_shape(data):
            return
        table = self.tcp if tcp else self.udp
        key = bytes(data[2:])
        old = table.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        elif len(table) >= self.max_entries:
            dropped = table.pop(next(iter(table)))
            self.bytes -= dropped.size
        table[key] = entry

    def clear(self) -> None:
        self.udp.clear()
        self.tcp.clear()
        self.bytes = 0


def stats(cache: ReplyCache) -> dict[str, Any]:
    """Sizes, for tests and debugging."""
    return {
        "entries": len(cache.udp) + len(cache.tcp),
        "replies": sum(len(e.replies) for t in (cache.udp, cache.tcp) for e in t.values()),
        "bytes": cache.bytes,
    }
