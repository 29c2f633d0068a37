"""Answers for names inside the Consul domain, computed from the state store.

Owns the meaning of a `.consul` question: parsing the query forms (`<node>.node`,
`[<tag>.]<service>.service`, RFC 2782 `_<service>._<tag>`, `<hexip>.addr`, PTR under `arpa.`,
SOA/NS of the zone), health filtering, SRV targets and their additional records, TTLs and
node-meta TXT records. It does no I/O: `resolve` is a pure function of the store, the settings,
an injected `random.Random` and the time for the SOA serial, run inside `Server.read` (a stale read, never blocking).

Service answers (SRV, A, AAAA, ANY) are the hot path, so they are cached (`AnswerCache`): per
question, the sorted healthy instances and, built lazily, one record group per instance. An
entry is valid while the store's index for the service (`Store.index_for_service`, over every
spelling of the name), the store's table-index object (replaced by a snapshot restore), the
config object and the datacenter are unchanged; any register, deregister or check update that
touches the service bumps its index, so the next query sees it. Per query only the shuffle (the
injected RNG, the same draws as shuffling the instances themselves), the duplicate filter and,
for a transport that can carry only `max_groups` groups (plain UDP), the cut run; groups that are
never sent are never built.

With ACLs on, the resolver is given the DNS token's `Visibility` (dns.acl): instances on nodes or
of services the token may not read are left out before the health selection, as Consul's servers
filter the health endpoint's answer before its DNS filters health; a cached entry holds the
Authorizer it was made for and serves only that one.

The result is an `Answer`: an rcode plus answer *groups* (the records for one instance and the
additional records that belong to them) so that the wire layer can cut UDP answers to size by
dropping whole groups, keeping each SRV's glue with it.

Behaviour chosen to match Consul (agent/dns router and message serializer):
- A name in another datacenter (`.dc2.consul`, `.dc2.dc.consul`) is answered NXDOMAIN with the
  SOA and `Answer.remote` naming what to fetch from there; the DNS server reads those records
  over the WAN and resolves the question again for that datacenter (`dns_remote`). Without a
  path to it the NXDOMAIN stands, as Consul answers `ErrNoDCPath`.
- Unknown names, unknown nodes and services with no healthy instance: NXDOMAIN with the SOA.
  A known name without records of the asked type: NOERROR, empty answer, SOA in authority.
- SOA and NS questions anywhere in the zone answer for the zone apex (`ns.<domain>`,
  `hostmaster.<domain>`, serial = unix time), naming up to three servers (`consul` service).
- `_<service>._tcp` means "no tag filter"; any other `_<tag>` filters by that tag (`_udp` too).
- Prepared queries (`<name>.query[.<dc>].<domain>`, `_<name>._tcp.query...` for SRV) are marked
  with `Answer.prepared`: the DNS server executes the query (with its failover, see
  `server.prepared_query`) and answers from its instances with `prepared_answer`, in the order the
  execution returned them, with the query's `DNS.TTL` when set (else `service_ttl` for its
  service). An unknown query is NXDOMAIN, as Consul.
- The mesh forms (`.connect`, `.ingress`, `.virtual`) are not available and answer NXDOMAIN.
- Records named after the question (service and node answers, `.addr`, PTR) carry the name as
  the client spelled it (`Question.spelled`), as Consul answers with the question's own name;
  targets and glue use canonical lower-case names.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSLabel

from proconsul.config import RuntimeConfig
from proconsul.state import protection
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store
from proconsul.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING

# Consul's InvalidNameRe: nodes and services with other characters are not resolvable.
_INVALID_NAME = re.compile(r"[^A-Za-z0-9\-]+")
_HEX = re.compile(r"^[0-9a-f]+$")
# The zone's NS and SOA answers name at most this many servers (Consul's nameservers()).
MAX_NAMESERVERS = 3
CONSUL_SERVICE = "consul"
_KINDS = ("service", "connect", "virtual", "ingress", "node", "query", "addr")


@dataclass
class Group:
    """Records for one result: answer records and the additional records they need."""

    answer: list[RR] = field(default_factory=list)
    extra: list[RR] = field(default_factory=list)
    # The wire layer's memo of this group's encoding (dns_wire sets it). Groups are treated as
    # immutable once built: cached groups are shared between queries.
    wire: Any = field(default=None, repr=False, compare=False)


@dataclass
class Answer:
    rcode: int = RCODE.NOERROR
    groups: list[Group] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    # True when the answer lists addresses (A/AAAA/ANY of a service): `a_record_limit` applies.
    address_answer: bool = False
    # Outside our data (an unmatched PTR): the caller may hand the question to a recursor.
    recurse: bool = False
    # Groups left out because the transport cannot carry them (`max_groups`); the wire layer
    # counts them as cut (TC). Only for answers that are not `address_answer`.
    omitted: int = 0
    # A question for another datacenter: (dc, "service" | "node", name) to look up there.
    remote: tuple[str, str, str] | None = None
    # A prepared query question: (dc to execute in, query ID or name).
    prepared: tuple[str, str] | None = None
    # A service answer made from an `AnswerCache` entry: (entry, lower-cased service name). The
    # DNS server's reply cache (`dns.fastpath`) answers the same question from it while the
    # service's index is unchanged.
    cached: tuple[_Entry, str] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Question:
    name: str  # lower-cased, with the trailing dot
    qtype: int
    domain: str  # the domain that matched (domain or alt_domain), answers use it
    # The name as the client spelled it (case kept); answer records for the question name
    # carry it, as Consul's (it answers with the question's own name). Empty: `name`.
    spelled: str = ""

    @property
    def owner(self) -> str:
        return self.spelled or self.name


def soa_record(cfg: RuntimeConfig, domain: str, now: float) -> RR:
    """The zone's SOA; the serial is the unix time `now`, as Consul."""
    soa = cfg.dns_config.soa
    serial = int(now) & 0xFFFFFFFF
    rdata = SOA(
        mname=f"ns.{domain}",
        rname=f"hostmaster.{domain}",
        times=(serial, soa.refresh, soa.retry, soa.expire, soa.min_ttl),
    )
    # The SOA's own TTL equals its minimum TTL, so negative caching stays consistent.
    return RR(domain, QTYPE.SOA, rdata=rdata, ttl=soa.min_ttl)


def match_domain(name: str, cfg: RuntimeConfig) -> str | None:
    """The served domain `name` falls in (longest first), `domain` for `arpa.`, else None."""
    candidates = sorted((d for d in (cfg.domain, cfg.alt_domain) if d), key=len, reverse=True)
    for domain in candidates:
        if name == domain or name.endswith("." + domain):
            return domain
    if name == "arpa." or name.endswith(".arpa."):
        return cfg.domain  # PTR answers always use the primary domain, as Consul
    return None


def _ttl_s(value: float) -> int:
    return max(0, min(int(value), 0x7FFFFFFF))


def service_ttl(cfg: RuntimeConfig, service: str) -> int:
    """`service_ttl`: exact name first, then the longest `prefix*` match; else `node_ttl`."""
    table = cfg.dns_config.service_ttl_s
    if service in table:
        return _ttl_s(table[service])
    best: tuple[int, float] | None = None
    for key, value in table.items():
        if key.endswith("*") and service.startswith(key[:-1]):
            if best is None or len(key) > best[0]:
                best = (len(key), value)
    if best is not None:
        return _ttl_s(best[1])
    return _ttl_s(cfg.dns_config.node_ttl_s)


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `text` spells, or None (a hostname); memoised, addresses repeat."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _addr_rr(name: str | DNSLabel, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, ttl: int) -> RR:
    if ip.version == 4:
        return RR(name, QTYPE.A, rdata=A(tuple(ip.packed)), ttl=ttl)
    return RR(name, QTYPE.AAAA, rdata=AAAA(tuple(ip.packed)), ttl=ttl)


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def encode_rfc1464(key: str, value: str) -> str:
    """`key=value` with RFC 1464 backquote escapes, as Consul's encodeKVasRFC1464."""
    key = key.replace("`", "``").replace("=", "`=")
    stripped = key.lstrip(" ")
    key = "` " * (len(key) - len(stripped)) + stripped
    stripped = key.rstrip(" ")
    key = stripped + "` " * (len(key) - len(stripped))
    return key + "=" + value.replace("`", "``")


def node_meta_txt(name: str | DNSLabel, node: Node, ttl: int) -> list[RR]:
    out = []
    for key in sorted(node.meta):
        value = node.meta[key]
        text = value if key.lower().startswith("rfc1035-") else encode_rfc1464(key, value)
        data = text.encode()
        # A TXT character-string holds at most 255 bytes; longer values are split.
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        out.append(RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=ttl))
    return out


def _healthy(checks: Iterable[HealthCheck], only_passing: bool) -> bool:
    for c in checks:
        if c.status == HEALTH_CRITICAL or (only_passing and c.status != HEALTH_PASSING):
            return False
    return True


def _weight(svc: ServiceInstance, checks: list[HealthCheck]) -> int:
    passing, warning = (tuple(svc.weights) + (1, 1))[:2] if svc.weights else (1, 1)
    if any(c.status == HEALTH_WARNING for c in checks):
        return max(0, min(int(warning), 0xFFFF))
    return max(0, min(int(passing), 0xFFFF))


def _locality(suffixes: list[str], local_dc: str) -> str | None:
    """The datacenter named by the labels after the kind: [], [dc] or [dc, "dc"]."""
    if not suffixes:
        return local_dc
    if len(suffixes) == 1:
        return suffixes[0]
    if len(suffixes) == 2 and suffixes[1] == "dc":
        return suffixes[0]
    return None


Instance = tuple[Node, ServiceInstance, list[HealthCheck]]


def query_name(parts: list[str]) -> str:
    """The prepared query a `.query` name asks for: `_<name>._<tag>` (RFC 2782) or the labels."""
    if len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
        return parts[0][1:]
    return ".".join(parts)


def split_name(q: Question) -> tuple[str, list[str], list[str]]:
    """A forward name read as ``<parts>.<kind>.<suffixes>.<domain>``: the rightmost label that
    names a kind (``service``, ``node``, ...) splits it; ("", [], []) when none does."""
    rest = q.name[: -len(q.domain)].rstrip(".") if q.name != q.domain else ""
    labels = rest.split(".") if rest else []
    for i in range(len(labels) - 1, -1, -1):
        if labels[i] in _KINDS:
            return labels[i], labels[:i], labels[i + 1 :]
        # For SRV the `.service` label is optional in the RFC 2782 form.
        if q.qtype == QTYPE.SRV and labels[i].startswith("_"):
            return "service", labels[: i + 1], labels[i + 1 :]
    return "", [], []


class _Item:
    """One healthy instance in a cached entry, with its group built on first use."""

    __slots__ = ("node", "svc", "checks", "key", "skip", "group", "cname", "index")

    def __init__(self, node: Node, svc: ServiceInstance, checks: list[HealthCheck], index: int = 0) -> None:
        self.index = index  # position in the entry's sorted items (the reply cache's key)
        self.node = node
        self.svc = svc
        self.checks = checks
        # The duplicate key (SRV: node, address, port; addresses: the IP text) and whether the
        # instance can never answer this question; both are set when the entry is made.
        self.key: Any = None
        self.skip = False
        self.group: Group | None = None
        self.cname: Group | None = None  # address answers: the CNAME of a hostname address


@dataclass
class _Entry:
    cfg: RuntimeConfig
    dc: str
    tables: dict[str, int]  # the store's table_index object: a restore replaces it
    index: int
    items: list[_Item]
    ttl: int
    owner: DNSLabel  # the question name, labelled once
    txt: dict[str, list[RR]] = field(default_factory=dict)  # node meta TXT per node name
    # The Authorizer (ACLs on) whose visible instances these are; None: every instance.
    viewer: Any = None


class AnswerCache:
    """Service answers per question, valid while the service's store index is unchanged.

    Owned by the DNS server, used inside `Server.read` (one thread, the event loop). At most
    `max_entries` questions are kept; the oldest entry goes first. Only questions with healthy
    instances are cached (a negative answer costs one scan, as before).
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self.entries: dict[tuple[str, str, int, str, str], _Entry] = {}
        # Lower-cased service name -> the spellings in the store, rebuilt when the services
        # table (where new names come from) or the store changes.
        self._names: dict[str, list[str]] = {}
        self._names_tables: dict[str, int] | None = None
        self._names_at = -1

    def service_index(self, store: Store, service: str) -> int:
        """The highest store index of any change to `service` (any spelling) or its health."""
        tables = store.table_index
        if self._names_tables is not tables or self._names_at != tables["services"]:
            names: dict[str, list[str]] = {}
            for name in store.service_index:
                names.setdefault(name.lower(), []).append(name)
            self._names, self._names_tables, self._names_at = names, tables, tables["services"]
        spellings = self._names.get(service)
        if not spellings:
            return store.index_for_service(service)
        return max(store.index_for_service(n) for n in spellings)

    def get(
        self, key: tuple[str, str, int, str, str], cfg: RuntimeConfig, dc: str, store: Store, index: int,
        viewer: Any = None,
    ) -> _Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if (entry.cfg is cfg and entry.dc == dc and entry.tables is store.table_index and entry.index == index
                and entry.viewer is viewer):
            return entry
        del self.entries[key]
        return None

    def put(self, key: tuple[str, str, int, str, str], entry: _Entry) -> None:
        if len(self.entries) >= self.max_entries:
            del self.entries[next(iter(self.entries))]
        self.entries[key] = entry


def select_srv(order: list[_Item], limit: int) -> tuple[list[_Item], int]:
    """The SRV instances answered, in `order`: duplicates and unusable ones left out, at most
    `limit` (0: all); and how many more there were (cut: never built, counted for TC)."""
    chosen: list[_Item] = []
    seen: set[Any] = set()
    omitted = 0
    for item in order:
        if item.skip or item.key in seen:
            continue
        seen.add(item.key)
        if limit and len(chosen) >= limit:
            omitted += 1
            continue
        chosen.append(item)
    return chosen, omitted


def select_addresses(order: list[_Item]) -> tuple[list[_Item], _Item | None]:
    """The instances whose address answers, in `order`, one per IP; and the first instance with
    a hostname address (its CNAME answers when no address does)."""
    chosen: list[_Item] = []
    seen: set[Any] = set()
    cname: _Item | None = None
    for item in order:
        if item.skip:
            if cname is None and item.cname is not None:
                cname = item  # the first hostname in the shuffled order
            continue
        if item.key in seen:
            continue
        seen.add(item.key)
        chosen.append(item)
    return chosen, cname


class Visibility:
    """The instances an Authorizer may see in DNS answers (ACLs on): `allows(node, service)`
    is Consul's filterCheckServiceNodes test, node read on the node and service read on the
    service. `key` is the Authorizer itself: cached entries made for it are reused only for the
    same object (the ACL resolver hands out one object per token until its rights change)."""

    __slots__ = ("key", "_allows")

    def __init__(self, key: Any, allows: Any) -> None:
        self.key = key
        self._allows = allows

    def allows(self, node: str, service: str) -> bool:
        return bool(self._allows(node, service))


class Resolver:
    """Answers one question from a store snapshot; see the module docstring."""

    def __init__(
        self,
        cfg: RuntimeConfig,
        datacenter: str,
        rng: random.Random,
        now: float,
        cache: AnswerCache | None = None,
        max_groups: int = 0,
        protection_log: protection.ProtectionLog | None = None,
        visible: Visibility | None = None,
    ) -> None:
        self.cfg = cfg
        # ACLs on: which instances the DNS token may see (Consul's filterCheckServiceNodes: read
        # on the instance's node and on its service); the others do not exist for this answer.
        self.visible = visible
        self.protection_log = protection_log
        self.dc = datacenter
        self.rng = rng
        self.now = now  # wall-clock seconds, only for the SOA serial
        self.cache = cache
        # The most SRV groups the transport can carry (plain UDP: the answer limit); 0 = all.
        self.max_groups = max_groups

    # ------------------------------------------------------------------------- entry point

    def resolve(self, store: Store, q: Question) -> Answer:
        if q.qtype in (QTYPE.SOA, QTYPE.NS):
            return self._zone(store, q)
        if q.qtype in (QTYPE.AXFR, QTYPE.IXFR):
            return Answer(rcode=RCODE.NOTIMP)
        if q.name == "arpa." or q.name.endswith(".arpa."):
            return self._ptr(store, q)
        kind, parts, suffixes = split_name(q)
        if kind == "addr":
            return self._addr(q, parts)
        if kind == "query" and parts:
            dc = _locality(suffixes, self.dc)
            if dc is None:
                return self._nxdomain(q)
            answer = self._nxdomain(q)  # stands when the query is unknown
            answer.prepared = (dc, query_name(parts))
            return answer
        if kind not in ("service", "node") or not parts:
            return self._nxdomain(q)
        dc = _locality(suffixes, self.dc)
        if dc is None:
            return self._nxdomain(q)
        if kind == "node":
            if dc != self.dc:
                return self._remote(q, dc, kind, ".".join(parts))
            return self._node(store, q, ".".join(parts))
        if len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
            service, tag = parts[0][1:], parts[1][1:]
            if tag == "tcp":
                tag = ""
        else:
            service, tag = parts[-1], ".".join(parts[:-1])
        if dc != self.dc:
            return self._remote(q, dc, kind, service)
        return self._service(store, q, service, tag)

    # --------------------------------------------------------------------------- helpers

    def _nxdomain(self, q: Question) -> Answer:
        return Answer(rcode=RCODE.NXDOMAIN, authority=[soa_record(self.cfg, q.domain, self.now)])

    def _remote(self, q: Question, dc: str, kind: str, name: str) -> Answer:
        answer = self._nxdomain(q)  # stands when there is no path to `dc`
        answer.remote = (dc, kind, name)
        return answer

    def _nodata(self, q: Question) -> Answer:
        return Answer(rcode=RCODE.NOERROR, authority=[soa_record(self.cfg, q.domain, self.now)])

    def _finish(self, q: Question, answer: Answer) -> Answer:
        if not any(g.answer or g.extra for g in answer.groups):
            nodata = self._nodata(q)
            nodata.address_answer = answer.address_answer
            return nodata
        return answer

    def node_fqdn(self, node: str, domain: str) -> str:
        return f"{node.lower()}.node.{self.dc}.{domain}"

    def _find_node(self, store: Store, name: str) -> Node | None:
        node = store.nodes.get(name)
        if node is not None:
            return node
        # Consul's node index is case-insensitive; DNS names arrive lower-cased.
        for key in sorted(store.nodes):
            if key.lower() == name:
                return store.nodes[key]
        return None

    def healthy_instances(self, store: Store, service: str, tag: str) -> list[Instance]:
        """Healthy instances of `service` (case-insensitive), sorted, then shuffled."""
        out = self.sorted_healthy(store, service, tag)
        # Sorted (node, service ID), so the shuffle depends only on the RNG's state.
        self.rng.shuffle(out)
        return out

    def sorted_healthy(self, store: Store, service: str, tag: str) -> list[Instance]:
        """Healthy instances of `service` (case-insensitive), by node name and service ID."""
        candidates = []
        only_passing = self.cfg.dns_config.only_passing
        visible = self.visible
        for node_name in sorted(store.services):
            node = store.nodes.get(node_name)
            if node is None:
                continue
            per = store.services[node_name]
            for sid in sorted(per):
                svc = per[sid]
                if svc.service.lower() != service:
                    continue
                if tag and not any(t.lower() == tag for t in svc.tags):
                    continue
                if visible is not None and not visible.allows(node.node, svc.service):
                    continue
                candidates.append((node, svc, store.checks_for_instance(svc)))
        out, protected = protection.select_healthy(candidates, lambda c: c[1], lambda c: _healthy(c[2], only_passing))
        if self.protection_log is not None:
            self.protection_log.note(service, protected)
        return out

    def prepared_answer(self, q: Question, instances: list[Instance], ttl: int) -> Answer:
        """The answer for a prepared query from the instances its execution returned (already
        filtered, shuffled or distance-sorted); NXDOMAIN when there are none."""
        if not instances:
            return self._nxdomain(q)
        if q.qtype not in (QTYPE.SRV, QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
            return self._nodata(q)
        entry = _Entry(
            cfg=self.cfg, dc=self.dc, tables={}, index=0,
            items=[_Item(node, svc, checks, i) for i, (node, svc, checks) in enumerate(instances)],
            ttl=ttl, owner=DNSLabel(q.owner),
        )
        if q.qtype == QTYPE.SRV:
            for item in entry.items:
                item.key = (item.node.node, item.svc.address or item.node.address, item.svc.port)
                item.skip = bool(_INVALID_NAME.search(item.node.node))
            return self._finish(q, self._srv(q, entry, entry.items))
        self._prepare_addresses(q, entry)
        return self._finish(q, self._addresses(q, entry, entry.items))

    # ----------------------------------------------------------------------------- forms

    def _zone(self, store: Store, q: Question) -> Answer:
        ttl = _ttl_s(self.cfg.dns_config.node_ttl_s)
        domain = q.domain
        answer = Answer()
        servers = self.healthy_instances(store, CONSUL_SERVICE, "")[:MAX_NAMESERVERS]
        ns_records: list[RR] = []
        glue: list[RR] = []
        for node, _svc, _checks in servers:
            if _INVALID_NAME.search(node.node):
                continue
            fqdn = self.node_fqdn(node.node, domain)
            ns_records.append(RR(domain, QTYPE.NS, rdata=NS(fqdn), ttl=ttl))
            ip = _ip(node.address)
            if ip is not None:
                glue.append(_addr_rr(fqdn, ip, ttl))
        if q.qtype == QTYPE.SOA:
            answer.groups.append(Group(answer=[soa_record(self.cfg, domain, self.now)], extra=glue))
            answer.authority = ns_records
        else:
            for i, ns in enumerate(ns_records):
                answer.groups.append(Group(answer=[ns], extra=glue[i : i + 1]))
        return self._finish(q, answer)

    def _addr(self, q: Question, parts: list[str]) -> Answer:
        if len(parts) != 1 or len(parts[0]) not in (8, 32) or not _HEX.match(parts[0]):
            return self._nxdomain(q)
        ip = ipaddress.ip_address(bytes.fromhex(parts[0]))
        rr = _addr_rr(q.owner, ip, _ttl_s(self.cfg.dns_config.node_ttl_s))
        wanted = QTYPE.A if ip.version == 4 else QTYPE.AAAA
        if q.qtype in (wanted, QTYPE.ANY):
            return Answer(groups=[Group(answer=[rr])])
        # Consul puts the address in the additional section for other types.
        return Answer(groups=[Group(extra=[rr])], authority=[soa_record(self.cfg, q.domain, self.now)])

    def _node(self, store: Store, q: Question, name: str) -> Answer:
        if q.qtype not in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY, QTYPE.TXT):
            # Consul answers only these types for nodes; other types find no data.
            return self._nodata(q) if self._find_node(store, name) else self._nxdomain(q)
        node = self._find_node(store, name)
        if node is None:
            return self._nxdomain(q)
        ttl = _ttl_s(self.cfg.dns_config.node_ttl_s)
        group = Group()
        if q.qtype != QTYPE.TXT:
            ip = _ip(node.address)
            if ip is None and node.address:
                group.answer.append(RR(q.owner, QTYPE.CNAME, rdata=CNAME(_fqdn(node.address)), ttl=ttl))
            elif ip is not None and (q.qtype == QTYPE.ANY or (q.qtype == QTYPE.A) == (ip.version == 4)):
                group.answer.append(_addr_rr(q.owner, ip, ttl))
        if q.qtype in (QTYPE.TXT, QTYPE.ANY):
            group.answer.extend(node_meta_txt(q.owner, node, ttl))
        elif self.cfg.dns_config.enable_additional_node_meta_txt and group.answer:
            group.extra.extend(node_meta_txt(q.owner, node, ttl))
        if not group.answer:
            return self._nodata(q)
        return Answer(groups=[group])

    def _service(self, store: Store, q: Question, service: str, tag: str) -> Answer:
        if q.qtype not in (QTYPE.SRV, QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
            # Other types find no data; the shuffle still runs so the RNG advances as always.
            if not self.healthy_instances(store, service, tag):
                return self._nxdomain(q)
            return self._nodata(q)
        entry = self._entry(store, q, service, tag)
        if entry is None:
            return self._nxdomain(q)
        order = entry.items[:]
        # Shuffling the items draws from the RNG exactly as shuffling the instances did.
        self.rng.shuffle(order)
        answer = self.service_answer(q, entry, order)
        if self.cache is not None and not answer.authority:
            answer.cached = (entry, service)
        return answer

    def service_answer(self, q: Question, entry: _Entry, order: list[_Item]) -> Answer:
        """The answer to a service question from `entry`'s items in the shuffled `order`."""
        if q.qtype == QTYPE.SRV:
            return self._finish(q, self._srv(q, entry, order))
        return self._finish(q, self._addresses(q, entry, order))

    def _entry(self, store: Store, q: Question, service: str, tag: str) -> _Entry | None:
        """The cached instances for a service question, made afresh when the index moved."""
        cache = self.cache
        key = (q.name, q.owner, q.qtype, q.domain, tag)
        index = 0
        viewer = self.visible.key if self.visible is not None else None
        if cache is not None:
            index = cache.service_index(store, service)
            entry = cache.get(key, self.cfg, self.dc, store, index, viewer)
            if entry is not None:
                return entry
        instances = self.sorted_healthy(store, service, tag)
        if not instances:
            return None
        entry = _Entry(
            cfg=self.cfg,
            dc=self.dc,
            tables=store.table_index,
            index=index,
            items=[_Item(node, svc, checks, i) for i, (node, svc, checks) in enumerate(instances)],
            ttl=service_ttl(self.cfg, service),
            owner=DNSLabel(q.owner),
            viewer=viewer,
        )
        if q.qtype == QTYPE.SRV:
            for item in entry.items:
                item.key = (item.node.node, item.svc.address or item.node.address, item.svc.port)
                item.skip = bool(_INVALID_NAME.search(item.node.node))
        else:
            self._prepare_addresses(q, entry)
        if cache is not None:
            cache.put(key, entry)
        return entry

    def _prepare_addresses(self, q: Question, entry: _Entry) -> None:
        for item in entry.items:
            address = item.svc.address or item.node.address
            ip = _ip(address)
            if ip is None:
                # A hostname address answers as a CNAME, used only when no address answers.
                item.skip = True
                if address:
                    rr = RR(entry.owner, QTYPE.CNAME, rdata=CNAME(_fqdn(address)), ttl=entry.ttl)
                    item.cname = Group(answer=[rr])
            elif q.qtype != QTYPE.ANY and (q.qtype == QTYPE.A) != (ip.version == 4):
                item.skip = True
            else:
                item.key = str(ip)
                # One IP answers with the same record whichever instance carries it.
                item.group = Group(answer=[_addr_rr(entry.owner, ip, entry.ttl)])

    def _addresses(self, q: Question, entry: _Entry, order: list[_Item]) -> Answer:
        answer = Answer(address_answer=True)
        chosen, cname = select_addresses(order)
        for item in chosen:
            assert item.group is not None
            answer.groups.append(item.group)
        if not chosen and cname is not None:
            assert cname.cname is not None
            answer.groups.append(cname.cname)
        return answer

    def _srv(self, q: Question, entry: _Entry, order: list[_Item]) -> Answer:
        answer = Answer()
        chosen, answer.omitted = select_srv(order, self.max_groups)
        for item in chosen:
            group = item.group
            if group is None:
                group = item.group = self._srv_group(q, entry, item)
            answer.groups.append(group)
        return answer

    def _srv_group(self, q: Question, entry: _Entry, item: _Item) -> Group:
        node, svc, ttl = item.node, item.svc, entry.ttl
        group = Group()
        node_fqdn = self.node_fqdn(node.node, q.domain)
        svc_ip = _ip(svc.address) if svc.address else None
        if svc.address and svc_ip is None:
            # The service has a hostname: it is the target; its resolution is the client's.
            target = _fqdn(svc.address)
        elif svc_ip is not None and svc.address != node.address:
            target = f"{svc_ip.packed.hex()}.addr.{self.dc}.{q.domain}"
            group.extra.append(_addr_rr(target, svc_ip, ttl))
        else:
            target = node_fqdn
            node_ip = _ip(node.address)
            if node_ip is not None:
                group.extra.append(_addr_rr(target, node_ip, ttl))
            elif node.address:
                group.extra.append(RR(target, QTYPE.CNAME, rdata=CNAME(_fqdn(node.address)), ttl=ttl))
        rdata = SRV(priority=1, weight=_weight(svc, item.checks), port=svc.port, target=target)
        group.answer.append(RR(entry.owner, QTYPE.SRV, rdata=rdata, ttl=ttl))
        if self.cfg.dns_config.enable_additional_node_meta_txt:
            txt = entry.txt.get(node.node)
            if txt is None:
                txt = entry.txt[node.node] = node_meta_txt(node_fqdn, node, ttl)
            group.extra.extend(txt)
        return group

    def _ptr(self, store: Store, q: Question) -> Answer:
        ip = ip_from_arpa(q.name)
        if ip is None:
            return self._nxdomain(q)
        ttl = _ttl_s(self.cfg.dns_config.node_ttl_s)
        answer = Answer()
        for name in sorted(store.nodes):
            node = store.nodes[name]
            if _ip(node.address) == ip and not _INVALID_NAME.search(node.node):
                target = self.node_fqdn(node.node, q.domain)
                answer.groups.append(Group(answer=[RR(q.owner, QTYPE.PTR, rdata=PTR(target), ttl=ttl)]))
        if not answer.groups:
            # Newer Consul also maps service addresses to `<service>.service.<dc>.<domain>`.
            names: list[str] = []
            for node_name in sorted(store.services):
                for sid in sorted(store.services[node_name]):
                    svc = store.services[node_name][sid]
                    if svc.address and _ip(svc.address) == ip and svc.service.lower() not in names:
                        names.append(svc.service.lower())
            for svc_name in names:
                target = f"{svc_name}.service.{self.dc}.{q.domain}"
                answer.groups.append(Group(answer=[RR(q.owner, QTYPE.PTR, rdata=PTR(target), ttl=ttl)]))
        if not answer.groups:
            nx = self._nxdomain(q)
            nx.recurse = True  # Consul hands unknown reverse names to the recursors
            return nx
        return answer


def ip_from_arpa(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a reverse name stands for, or None when it names no full address."""
    labels = name.rstrip(".").split(".")
    try:
        if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
            return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
            nibbles = "".join(reversed(labels[:32]))
            if not _HEX.match(nibbles):
                return None
            return ipaddress.IPv6Address(bytes.fromhex(nibbles))
    except ValueError:
        return None
    return None


def canonical_name(label: DNSLabel) -> str:
    """Lower-cased text form with the trailing dot (Consul answers with canonical names)."""
    return str(label).lower() if str(label).endswith(".") else str(label).lower() + "."
