"""Seeded generators of hostile inputs for the fuzz tier: HTTP requests, DNS, gossip and RPC bytes.

Every generator takes a `random.Random`, so a seed reproduces a run input for input. Inputs are
shaped to reach past the first parser (real routes, real query parameters, Consul field names,
valid framing with garbage inside) as well as being plain garbage.

Anything an agent would act on outside the machine is pinned to loopback: check targets (HTTP,
TCP, UDP, gRPC), join addresses. Inputs that legitimately stop the agent or take it out of its
own quorum (`/v1/agent/leave`, removing a raft peer, `Raft.Join`) are not generated: they are
privileged operations, not hostile input.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from dnslib import QTYPE, DNSRecord
from proconsul.http.server import route_defs

# Privileged operations that end or unseat a one-node agent by design (see module docstring).
# The monitor and the metrics stream run until the client leaves, and a profile for its `seconds`: a fuzz request
# would never end, or take half a minute.
EXCLUDED_ROUTES = {("PUT", "/v1/agent/leave"), ("DELETE", "/v1/operator/raft/peer"), ("GET", "/v1/agent/monitor"),
                   ("GET", "/v1/agent/debug/pprof/profile"), ("GET", "/v1/agent/metrics/stream")}
EXCLUDED_RPC = {"Raft.Join", "Operator.RaftRemovePeer"}

RPC_METHODS = [
    "Autopilot.ServerState", "Catalog.ListDatacenters", "Catalog.ListNodes", "Catalog.ListServices",
    "Catalog.NodeServices", "Catalog.ServiceNodes", "Client.Query", "Client.Write", "Client.WriteDC",
    "Coordinate.ListNodes", "Coordinate.Node", "Health.ChecksInState", "Health.NodeChecks",
    "Health.ServiceChecks", "Health.ServiceNodes", "Internal.DNSRecords", "Internal.NodeState", "KVS.Get",
    "KVS.List", "KVS.ListKeys", "KVS.LockDelay", "Operator.RaftConfiguration", "Raft.Apply", "Raft.ApplyBatch",
    "Session.Get", "Session.List", "Session.NodeSessions", "Snapshot.Save", "Status.Identify", "Status.Leader",
    "Status.Ping", "Txn.Read", "No.Such",
]  # fmt: skip

QUERY_KEYS = [
    "index", "wait", "recurse", "keys", "separator", "dc", "filter", "stale", "consistent", "leader",
    "near", "tag", "passing", "cas", "flags", "acquire", "release", "raw", "pretty", "token", "node-meta",
    "enable", "reason", "note", "replace-existing-checks", "prune", "wan", "segment", "state", "cached",
    "ns", "partition", "peer", "limit", "id", "address", "name", "format", "relay-factor", "local-only",
    "connect",
]  # fmt: skip

FIELDS = [
    "Name", "ID", "Service", "Services", "Check", "Checks", "CheckID", "ServiceID", "TTL", "Interval",
    "Timeout", "Port", "Tags", "Meta", "Node", "Address", "TaggedAddresses", "NodeMeta", "Datacenter",
    "KV", "Verb", "Key", "Value", "Flags", "Index", "Session", "Behavior", "LockDelay", "Checks",
    "NodeChecks", "ServiceChecks", "Status", "Output", "Notes", "Weights", "Passing", "Warning",
    "EnableTagOverride", "Kind", "Proxy", "Connect", "Coord", "Vec", "Error", "Adjustment", "Height",
    "DeregisterCriticalServiceAfter", "SuccessBeforePassing", "FailuresBeforeCritical", "AliasService",
    "AliasNode", "Token", "Body", "Method", "Header", "TLSSkipVerify", "Definition", "Segment", "Namespace",
    "Template", "Type", "Regexp", "RemoveEmptyTags", "Failover", "NearestN", "Datacenters", "Targets",
    "OnlyPassing", "IgnoreCheckIDs", "Near", "ServiceMeta", "DNS", "ModifyIndex",
]  # fmt: skip

# Fields that make the agent contact something: always a closed loopback port.
_LOOPBACK_FIELDS = {
    "HTTP": lambda r: f"http://127.0.0.1:{r.choice([1, 9, 65535])}/{_text(r, 8)}",
    "TCP": lambda r: f"127.0.0.1:{r.choice([1, 9])}",
    "UDP": lambda r: f"127.0.0.1:{r.choice([1, 9])}",
    "GRPC": lambda r: f"127.0.0.1:{r.choice([1, 9])}",
    "H2PING": lambda r: f"127.0.0.1:{r.choice([1, 9])}",
    "Args": lambda r: [_text(r, 6) for _ in range(r.randint(0, 3))],  # script checks are disabled in -dev
    "ScriptArgs": lambda r: [_text(r, 6)],
}

_STRINGS = [
    "", " ", "a", "web", "db", "consul", "serfHealth", "..", "../../etc/passwd", "%00", "%ff", "\x00",
    "\u0000", "\ud800", "\udfff", "\U0001f600", "é", "\u202e", "a" * 300, "*", "?", "{}", "[]", "\\",
    "/", "//", "-1", "0", "1e309", "NaN", "Infinity", "true", "null", "10s", "-10s", "1h", "999999h",
    "1ns", "bad-duration", "Service.Name == web", "Meta.x matches \"(\"", "not", "(", "Tags contains",
    "passing", "warning", "critical", "maintenance", "any", "release", "delete", "set", "cas", "get",
    "lock", "unlock", "check-session", "delete-tree", "get-tree", "check-index", "check-not-exists",
]  # fmt: skip

_NUMBERS: list[Any] = [
    0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400,
    1.5, -0.0, 1e308, 3.14,
]  # fmt: skip


def _text(r: random.Random, n: int = 12) -> str:
    kind = r.random()
    if kind < 0.5:
        return r.choice(_STRINGS)
    if kind < 0.8:
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789-_./") for _ in range(r.randint(0, n)))
    return "".join(chr(r.choice([r.randint(0, 0x7F), r.randint(0x80, 0xFFFF), r.randint(0x10000, 0x10FFFF)]))
                   for _ in range(r.randint(0, n)))  # fmt: skip


def _value(r: random.Random, depth: int = 0) -> Any:
    roll = r.random()
    if depth > 3 or roll < 0.35:
        return _text(r)
    if roll < 0.55:
        return r.choice(_NUMBERS) if r.random() < 0.7 else r.randint(-1000, 1000)
    if roll < 0.62:
        return r.choice([True, False, None])
    if roll < 0.8:
        return [_value(r, depth + 1) for _ in range(r.randint(0, 4))]
    return _object(r, depth + 1)


def _object(r: random.Random, depth: int = 0) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for _ in range(r.randint(0, 6)):
        key = r.choice(FIELDS) if r.random() < 0.85 else r.choice([*_LOOPBACK_FIELDS, _text(r, 6)])
        if key in _LOOPBACK_FIELDS:
            obj[key] = _LOOPBACK_FIELDS[key](r)
        else:
            obj[key] = _value(r, depth)
    return obj


def _pin_loopback(value: Any) -> Any:
    """Walks a generated body and pins every outward-facing field to loopback."""
    rng = random.Random(0)
    if isinstance(value, dict):
        return {
            k: (_LOOPBACK_FIELDS[k](rng) if k in _LOOPBACK_FIELDS else _pin_loopback(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_pin_loopback(v) for v in value]
    return value


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()


def _body(r: random.Random, path: str) -> bytes | None:
    roll = r.random()
    if roll < 0.15:
        return None
    if roll < 0.55:
        value: Any = _object(r)
        if "/txn" in path and r.random() < 0.7:
            value = [
                {r.choice(["KV", "Node", "Service", "Check", "Session"]): _object(r)}
                for _ in range(r.randint(0, 5))
            ]
        return _json_bytes(_pin_loopback(value))
    if roll < 0.65:
        good = _json_bytes(_pin_loopback(_object(r)))
        return good[: r.randint(0, len(good))]  # truncated JSON
    if roll < 0.72:
        depth = r.choice([50, 500, 5000, 50000])
        return b"[" * depth + b"]" * r.choice([0, depth])
    if roll < 0.78:
        # Numbers past any integer type, also past Python's int-from-string digit limit (4300).
        return b'{"Name": ' + r.choice([b"9" * 400, b"-" + b"1" * 5000, b"1e99999", b"-0.0e-999"]) + b"}"
    if roll < 0.84:
        return b'{"Name": "\\ud800\\udc00\\udfff' + bytes([r.randint(0x80, 0xFF)]) + b'"}'
    if roll < 0.88:
        return b"x" * r.choice([1024, 600_000])  # past kv_max_value_size / txn_max_req_len
    return r.randbytes(r.randint(0, 512))


def _fill_path(r: random.Random, template: str) -> str:
    out = []
    for segment in template.split("/"):
        if segment.startswith("{"):
            if "address" in segment:
                out.append(f"127.0.0.1:{r.choice([1, 9])}")
            else:
                raw = _text(r, 20)
                out.append(_quote(raw, r))
        else:
            out.append(segment)
    path = "/".join(out)
    if r.random() < 0.05:
        path = path + "/" + _quote(_text(r), r)
    return path


def _quote(raw: str, r: random.Random) -> str:
    data = raw.encode("utf-8", "surrogatepass")
    if r.random() < 0.2:
        data += bytes([r.randint(0x80, 0xFF)])  # percent-encoded bytes that are not UTF-8
    return "".join(
        chr(b) if (b < 0x80 and chr(b).isalnum()) or chr(b) in "-_.~" else f"%{b:02X}" for b in data
    )


@dataclass(frozen=True)
class HTTPInput:
    method: str
    path: str  # already percent-encoded, with the query string
    headers: tuple[tuple[str, str], ...]
    body: bytes | None

    def describe(self) -> str:
        size = "-" if self.body is None else len(self.body)
        return f"{self.method} {self.path[:300]} headers={self.headers} body[{size}]={(self.body or b'')[:200]!r}"


_ROUTES = sorted({(d.method, d.path) for d in route_defs()} - EXCLUDED_ROUTES)  # type: ignore[attr-defined]


def http_input(r: random.Random) -> HTTPInput:
    method, template = r.choice(_ROUTES)
    if r.random() < 0.1:
        method = r.choice(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO"])
    if r.random() < 0.05:
        template = "/" + "/".join(_quote(_text(r, 8), r) for _ in range(r.randint(0, 4)))
    path = _fill_path(r, template)
    params = []
    for _ in range(r.choice([0, 0, 1, 2, 3, 5])):
        key = r.choice(QUERY_KEYS) if r.random() < 0.9 else _text(r, 6)
        if key == "wait":
            value = r.choice(["0s", "1ms", "10ms", "50ms", "-1s", "bad", "99999999999999h", ""])
        elif key == "index":
            value = str(r.choice([*_NUMBERS, 0, 1, "x", ""]))
        elif r.random() < 0.3:
            value = str(r.choice(_NUMBERS))
        else:
            value = _text(r, 16)
        params.append(f"{_quote(key, r)}={_quote(value, r)}" if r.random() < 0.9 else _quote(key, r))
    if "index" in [p.split("=", 1)[0] for p in params] and "wait=" not in "&".join(params):
        params.append("wait=20ms")  # a blocking query in the fuzzer never waits long
    if params:
        path += "?" + "&".join(params)
    headers: list[tuple[str, str]] = []
    for _ in range(r.choice([0, 0, 1, 2])):
        name = r.choice(["X-Consul-Token", "Authorization", "Content-Type", "Accept-Encoding", "X-Forwarded-For",
                         "Cache-Control", "X-Consul-Namespace", "Expect", "Transfer-Encoding"])  # fmt: skip
        value = _text(r, 24).encode("latin-1", "replace").decode("latin-1")
        value = "".join(c for c in value if c not in "\r\n\x00") or "x"
        if name == "Transfer-Encoding":
            value = r.choice(["chunked", "chunked", "gzip", "identity", value])
        if name == "Expect":
            value = r.choice(["100-continue", value])
        headers.append((name, value))
    body = _body(r, path)
    if ("Transfer-Encoding", "chunked") in headers:
        # Framed as chunks, so the agent sees the body end. Malformed chunk sizes are left out:
        # aiohttp never fails the body of a request whose handler already runs (docs/FUZZING.md),
        # so each would stall the run for the agent's 60 s body deadline.
        data = body or b""
        size = f"{len(data):x}".encode()
        body = size + b"\r\n" + data + b"\r\n0\r\n\r\n"
    return HTTPInput(method, path, tuple(headers), body)


def dns_packet(r: random.Random, domain: str = "consul") -> bytes:
    roll = r.random()
    if roll < 0.2:
        return r.randbytes(r.randint(0, 600))
    labels = [r.choice(["web", "db", "_web._tcp", "service", "node", "query", "addr", "virtual", "dc1",
                        "test-node", _text(r, 10), "x" * 63])
              for _ in range(r.randint(0, 5))]  # fmt: skip
    name = ".".join(label.replace(".", "-") or "a" for label in labels)
    name = f"{name}.{domain}." if r.random() < 0.8 else f"{name}."
    try:
        qtype = r.choice(["A", "AAAA", "SRV", "TXT", "ANY", "PTR", "SOA", "NS", "MX", "CNAME", "AXFR"])
        packet = DNSRecord.question(name, qtype).pack()
    except Exception:  # a label dnslib cannot encode: fall back to a raw name
        packet = DNSRecord.question("web.service.consul.", "A").pack()
        qtype = "A"
    if roll < 0.6:
        return packet
    data = bytearray(packet)
    for _ in range(r.randint(1, 6)):
        op = r.random()
        if op < 0.4 and data:
            data[r.randrange(len(data))] = r.randint(0, 255)
        elif op < 0.6:
            data = data[: r.randint(0, len(data))]
        elif op < 0.8:
            data += r.randbytes(r.randint(1, 40))
        else:
            struct.pack_into(">H", data, 4, r.randint(0, 0xFFFF)) if len(data) >= 6 else None  # QDCOUNT lies
    _ = QTYPE  # keep the import: QTYPE names are what `question` accepts
    return bytes(data)


def _msgpack_value(r: random.Random, depth: int = 0) -> Any:
    roll = r.random()
    if depth > 3 or roll < 0.3:
        return r.choice(
            [0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 1.5, "", "x", _text(r, 8), b"\x00\xff", None, True]
        )
    if roll < 0.55:
        return [_msgpack_value(r, depth + 1) for _ in range(r.randint(0, 6))]
    if roll < 0.7:
        return {_text(r, 5): _msgpack_value(r, depth + 1) for _ in range(r.randint(0, 4))}
    if roll < 0.8:
        return ["127.0.0.1", r.choice([0, 1, 65535, 70000, -1])]  # an address-shaped value
    return r.randint(-(2**31), 2**31)


def _packb(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return msgpack.packb(None)


def gossip_packet(r: random.Random) -> bytes:
    roll = r.random()
    if roll < 0.2:
        return r.randbytes(r.randint(0, 1400))
    version = 1 if r.random() < 0.85 else r.randint(0, 255)
    mtype = r.randint(0, 12) if r.random() < 0.9 else r.randint(0, 255)
    if mtype == 7 and r.random() < 0.6:  # compound: several inner messages
        inner = [bytes([1, r.randint(0, 11)]) + _packb(_msgpack_value(r)) for _ in range(r.randint(0, 5))]
        body = _packb(inner)
    else:
        body = _packb([_msgpack_value(r) for _ in range(r.randint(0, 8))])
    data = bytes([version, mtype]) + body
    if roll > 0.85:
        data = data[: r.randint(0, len(data))]
    return data


def rpc_stream(r: random.Random) -> bytes:
    roll = r.random()
    if roll < 0.2:
        return r.randbytes(r.randint(0, 2000))
    conn_type = r.choice([1, 1, 1, 2, 3]) if r.random() < 0.9 else r.randint(0, 255)
    frames = b""
    for seq in range(r.randint(1, 4)):
        if r.random() < 0.7:
            method = r.choice([m for m in RPC_METHODS if m not in EXCLUDED_RPC])
            payload: Any = [0, r.choice([seq, -1, 2**64 - 1]), method, _msgpack_value(r)]
        else:
            payload = _msgpack_value(r)
        data = _packb(payload)
        length = len(data)
        if r.random() < 0.15:
            length = r.choice([0, 1, length + 10, 2**31, 2**32 - 1])  # a lying length prefix
        frames += struct.pack(">I", length) + data
    if roll > 0.9:
        frames = frames[: r.randint(0, len(frames))]
    return bytes([conn_type]) + frames
