"""Fuzz tier: seeded hostile inputs against a real agent on every port it listens on.

The agent is a one-node bootstrap server (a -dev agent keeps raft in-process and opens no RPC
port), so the server RPC port is fuzzed too.

Inputs go to the HTTP API (routes from the route table with random parameters, headers and
bodies), DNS over UDP and TCP, gossip UDP on the serf LAN port and raw streams on the server RPC
port. Between inputs a probe (`GET /v1/status/leader`) must answer. The run fails on an HTTP 500
that is not one of the error answers Consul also gives as 500 (an RPC or state error with its
text), on a probe slower than 1 s (a stall), on a traceback in the agent's log, on the agent
exiting, and on state a fresh client cannot read back afterwards.

Scale with FUZZ_INPUTS (default 3000) and FUZZ_SECONDS (wall-clock cap, default 90); FUZZ_SEED
picks the run (default 1; the seed is printed, and reproduces the run input for input).
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import tempfile
import time
import urllib.parse
from collections import Counter

from fuzz_inputs import HTTPInput, dns_packet, gossip_packet, http_input, rpc_stream
from helpers import AgentProcess, free_port

INPUTS = int(os.environ.get("FUZZ_INPUTS", "3000"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "90"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))
PROBE_DEADLINE_S = 5.0  # how long a probe may take before it counts as lost
# A probe slower than this is a stall (issue 13: "any stall over 1 s of an unrelated probe
# request"); the worst probe is reported either way.
STALL_S = 1.0
READBACK = ("/v1/agent/services", "/v1/agent/checks", "/v1/catalog/services", "/v1/catalog/nodes",
            "/v1/kv/?recurse", "/v1/session/list", "/v1/health/state/any", "/v1/agent/self")  # fmt: skip
# aiohttp's answer when a handler raised something the error mapping does not know.
UNHANDLED_500 = b"Server got itself in trouble"


class Stats:
    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.mapped_500s: Counter[str] = Counter()
        self.worst_probe_s = 0.0
        self.blocked = 0  # blocking reads still waiting when the client gave up (Consul's behaviour)
        self.failures: list[str] = []

    def report(self) -> str:
        return (
            f"seed={SEED} inputs={dict(self.sent)} statuses={dict(sorted(self.statuses.items()))} "
            f"worst_probe={self.worst_probe_s:.3f}s blocked={self.blocked} "
            f"mapped_500s={dict(self.mapped_500s.most_common(15))}"
        )


def _http(agent: AgentProcess, item: HTTPInput, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(agent.ip, agent.http_port, timeout=timeout)
    try:
        conn.putrequest(item.method, item.path, skip_accept_encoding=True)
        names = {name.lower() for name, _ in item.headers}
        for name, value in item.headers:
            conn.putheader(name, value)
        if item.body is not None and "transfer-encoding" not in names:
            conn.putheader("Content-Length", str(len(item.body)))
        conn.endheaders()
        if item.body is not None:
            conn.send(item.body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _probe(agent: AgentProcess, stats: Stats) -> None:
    started = time.monotonic()
    try:
        status, body = _http(agent, HTTPInput("GET", "/v1/status/leader", (), None), timeout=PROBE_DEADLINE_S)
    except (OSError, http.client.HTTPException) as exc:
        stats.failures.append(f"probe failed: {exc!r}")
        return
    elapsed = time.monotonic() - started
    stats.worst_probe_s = max(stats.worst_probe_s, elapsed)
    if elapsed > STALL_S:
        stats.failures.append(f"stall: the probe took {elapsed:.2f} s (over {STALL_S} s)")
    if status != 200 or body in (b"", b'""'):
        stats.failures.append(f"probe answered {status} {body!r}")


def _blocking(item: HTTPInput) -> bool:
    """A GET/HEAD with a positive ?index=: a blocking read, which Consul holds until the index
    passes or its wait ends, however far ahead the index is."""
    if item.method not in ("GET", "HEAD") or "?" not in item.path:
        return False
    for key, value in urllib.parse.parse_qsl(item.path.split("?", 1)[1], keep_blank_values=True):
        if key == "index" and value.isdigit() and int(value) > 0:
            return True
    return False


def _send_http(agent: AgentProcess, r: random.Random, stats: Stats) -> None:
    item = http_input(r)
    try:
        status, body = _http(agent, item)
    except (ConnectionError, http.client.HTTPException):
        # The agent may refuse a malformed request by closing (e.g. a lying Transfer-Encoding);
        # the probe that follows says whether it is still healthy.
        stats.statuses[0] += 1
        return
    except TimeoutError:
        if _blocking(item):
            stats.blocked += 1  # an ?index= past the current one waits out its wait (5 min by default)
        else:
            stats.failures.append(f"no answer in 30s: {item.describe()}")
        return
    stats.statuses[status] += 1
    if status == 500 and item.method != "HEAD":  # a HEAD answer has no body to tell them apart
        if UNHANDLED_500 in body or not body.strip():
            stats.failures.append(f"unhandled 500: {item.describe()}")
        else:
            stats.mapped_500s[body.decode("utf-8", "replace").strip()[:80]] += 1


def _send_dns(agent: AgentProcess, r: random.Random) -> None:
    packet = dns_packet(r)
    if r.random() < 0.8:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.05)
            sock.sendto(packet, (agent.ip, agent.dns_port))
            try:
                sock.recv(65535)
            except OSError:
                pass  # no answer to garbage is a fine answer
        return
    with socket.create_connection((agent.ip, agent.dns_port), timeout=2) as sock:
        framed = len(packet).to_bytes(2, "big") + packet if r.random() < 0.7 else packet
        sock.settimeout(0.2)
        try:
            sock.sendall(framed)
            sock.recv(65535)
        except OSError:
            pass


def _send_gossip(agent: AgentProcess, r: random.Random) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(gossip_packet(r), (agent.ip, agent.serf_lan_port))


def _send_rpc(agent: AgentProcess, server_port: int, r: random.Random) -> None:
    data = rpc_stream(r)
    with socket.create_connection((agent.ip, server_port), timeout=2) as sock:
        sock.settimeout(0.1)
        try:
            sock.sendall(data)
            sock.recv(65535)
        except OSError:
            pass


def test_fuzz_every_port_of_a_dev_agent() -> None:
    server_port = free_port()
    data_dir = tempfile.TemporaryDirectory(prefix="proconsul-fuzz-")
    agent = AgentProcess("-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }",
                         f"-server-port={server_port}", dev=False, data_dir=data_dir.name).start()  # fmt: skip
    stats = Stats()
    r = random.Random(SEED)
    deadline = time.monotonic() + SECONDS
    try:
        for n in range(INPUTS):
            if time.monotonic() > deadline or len(stats.failures) >= 10:
                break
            channel = r.choices(["http", "dns", "gossip", "rpc"], weights=[6, 2, 1, 1])[0]
            stats.sent[channel] += 1
            if channel == "http":
                _send_http(agent, r, stats)
            elif channel == "dns":
                _send_dns(agent, r)
            elif channel == "gossip":
                _send_gossip(agent, r)
            else:
                _send_rpc(agent, server_port, r)
            _probe(agent, stats)
            assert agent.proc is not None
            if agent.proc.poll() is not None:
                stats.failures.append(f"agent exited with {agent.proc.returncode} after input {n}")
                break
        for path in READBACK:
            status, _, body = agent.http("GET", path)
            if status != 200:
                stats.failures.append(f"read-back {path}: {status} {body[:300]!r}")
        log = agent.log()
        if "Traceback" in log:
            start = log.index("Traceback")
            stats.failures.append(f"{log.count('Traceback')} tracebacks in the agent log, the first:\n"
                                  + log[max(0, start - 400) : start + 3000])  # fmt: skip
            # Each distinct exception once, for the report: the line after a traceback's frames.
            lines = log.splitlines()
            ends = {lines[i] for i in range(1, len(lines)) if lines[i - 1].startswith("    ")
                    and not lines[i].startswith(" ") and "Traceback" not in lines[i] and ":" in lines[i]}  # fmt: skip
            stats.failures.append("distinct exceptions: " + " | ".join(sorted(ends)[:20]))
        print(stats.report())
        assert not stats.failures, stats.report() + "\n" + "\n".join(stats.failures)
    finally:
        agent.stop()
        data_dir.cleanup()
