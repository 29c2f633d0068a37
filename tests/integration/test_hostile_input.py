"""Hostile input at the HTTP boundary and in data_dir: refused with a 400 or skipped, never kept.

A request that the agent accepts must be one every later read, sync and restart can serve; what
it cannot keep (text UTF-8 cannot encode, nesting past a bound, numbers outside Consul's integer
types) is a 400 with a one-line reason, and a damaged persisted entry is skipped at start-up
with a log line while the rest load and sync (issue 13, items 3 and 4).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from helpers import AgentProcess, wait_for

SERVER_FLAGS = ("-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }")
SURROGATE = "bad\ud800"  # json.dumps escapes it as "bad\\ud800", as a hostile client would send it


def _send(agent: AgentProcess, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, str]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    status, _, text = agent.http(method, path, data)
    return status, text.decode("utf-8", "replace")


def _get(agent: AgentProcess, path: str) -> Any:
    status, text = _send(agent, "GET", path)
    assert status == 200, (path, status, text)
    return json.loads(text)


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def test_unencodable_strings_are_refused_and_the_agent_stays_readable(dev_agent: AgentProcess) -> None:
    refused = [
        ("/v1/agent/service/register", {"Name": SURROGATE}),
        ("/v1/agent/service/register", {"Name": "web", "ID": SURROGATE}),
        ("/v1/agent/service/register", {"Name": "web", "Meta": {SURROGATE: "v"}}),
        ("/v1/agent/service/register", {"Name": "web", "Tags": ["ok", SURROGATE]}),
        ("/v1/agent/check/register", {"Name": SURROGATE, "TTL": "30s"}),
        ("/v1/catalog/register", {"Node": SURROGATE, "Address": "127.0.0.1"}),
        ("/v1/session/create", {"Name": SURROGATE}),
        ("/v1/txn", [{"KV": {"Verb": "set", "Key": SURROGATE, "Value": ""}}]),
        # The surrogate would reach an error message ("Invalid KV verb ..."): still a plain 400.
        ("/v1/txn", [{"KV": {"Verb": SURROGATE, "Key": "k"}}]),
    ]
    for path, body in refused:
        status, text = _send(dev_agent, "PUT", path, body)
        assert status == 400, (path, body, status, text)
        assert "invalid UTF-8" in text, (path, text)
    # Percent-encoded bytes that are not UTF-8 in a URL never become unencodable text (the URL
    # parser keeps or replaces them), so whatever is stored from one reads back.
    status, text = _send(dev_agent, "PUT", "/v1/kv/pct%ED%A0%80?flags=1", raw=b"v")
    assert status == 200, text
    assert len(_get(dev_agent, "/v1/kv/?keys")) == 1
    # Nothing was kept: every read answers, and a later registration reaches the catalog.
    assert _get(dev_agent, "/v1/agent/services") == {}
    assert _get(dev_agent, "/v1/agent/checks") == {}
    status, text = _send(dev_agent, "PUT", "/v1/agent/service/register", {"Name": "good", "Port": 80})
    assert status == 200, text
    wait_for(lambda: _get(dev_agent, "/v1/catalog/service/good") != [], what=lambda: f"good synced\n{dev_agent.log()}")
    assert "Traceback" not in dev_agent.log()


def test_deep_nesting_and_out_of_range_numbers_are_400s(dev_agent: AgentProcess) -> None:
    deep = _nested(10_000)
    for path in ("/v1/agent/service/register", "/v1/txn", "/v1/session/create", "/v1/catalog/register"):
        status, text = _send(dev_agent, "PUT", path, raw=deep)
        assert status == 400, (path, status, text)
    # Moderate nesting inside an opaque map is still accepted.
    status, text = _send(dev_agent, "PUT", "/v1/agent/service/register",
                         raw=b'{"Name": "nested", "Proxy": {"Config": ' + _nested(20) + b"}}")
    assert status == 200, text
    huge = int("9" * 400)
    for path, body in [
        ("/v1/agent/check/register", {"Name": "t", "TTL": huge}),
        ("/v1/agent/check/register", {"Name": "t", "TTL": "9" * 400 + "s"}),
        ("/v1/agent/service/register", {"Name": "s", "Check": {"TTL": huge}}),
        ("/v1/agent/service/register", {"Name": "s", "Port": huge}),
        ("/v1/session/create", {"TTL": "9" * 400 + "s"}),
        ("/v1/session/create", {"LockDelay": huge}),
        ("/v1/txn", [{"KV": {"Verb": "set", "Key": "k", "Value": "", "Flags": 2**64}}]),
        ("/v1/txn", [{"KV": {"Verb": "cas", "Key": "k", "Value": "", "Index": 2**64}}]),
        # Accepted before, then failed every anti-entropy sync in the Raft log's encoder.
        ("/v1/agent/service/register", {"Name": "w", "Weights": {"Passing": huge, "Warning": 1}}),
        ("/v1/agent/service/register", {"Name": "w", "Weights": {"Passing": -(2**63) - 1, "Warning": 1}}),
        ("/v1/agent/check/register", {"Name": "t", "Interval": "10s", "TCP": "127.0.0.1:1", "Timeout": huge}),
    ]:
        status, text = _send(dev_agent, "PUT", path, body)
        assert status == 400, (path, body, status, text)
    # Literals Python's decoder accepts but JSON does not.
    for raw in (b'{"Name": "n", "Port": NaN}', b'{"Name": "n", "Port": Infinity}', b'{"Name": "n", "Port": 1e400}'):
        status, text = _send(dev_agent, "PUT", "/v1/agent/service/register", raw=raw)
        assert status == 400, (raw, status, text)
    # The top of Consul's uint64 range is a valid Flags value.
    status, text = _send(dev_agent, "PUT", "/v1/txn", [{"KV": {"Verb": "set", "Key": "k", "Value": "", "Flags": 2**64 - 1}}])
    assert status == 200, text
    assert _get(dev_agent, "/v1/kv/k")[0]["Flags"] == 2**64 - 1
    for path in ("/v1/kv/k?index=18446744073709551616", "/v1/catalog/services?index=18446744073709551616"):
        status, text = _send(dev_agent, "GET", path)
        assert (status, text) == (400, "Invalid index"), path
    status, text = _send(dev_agent, "PUT", "/v1/kv/k?flags=18446744073709551616", raw=b"v")
    assert status == 400, text
    # Nothing kept poisons the agent: a later registration reaches the catalog.
    services = _get(dev_agent, "/v1/agent/services")
    assert "nested" in services and "w" not in services and "s" not in services, services
    status, text = _send(dev_agent, "PUT", "/v1/agent/service/register", {"Name": "after"})
    assert status == 200, text
    wait_for(lambda: _get(dev_agent, "/v1/catalog/service/after") != [], what=lambda: f"synced\n{dev_agent.log()}")
    assert "Traceback" not in dev_agent.log()


def _persisted(folder: Path, item_id: str, payload: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = payload if isinstance(payload, str) else json.dumps(payload)
    (folder / hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]).write_text(text)


def test_damaged_persisted_entries_are_skipped_at_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    services, checks = data / "services", data / "checks"
    # As an agent without the boundary check would have written them, plus plain damage.
    _persisted(services, "poison", {"definition": {"ID": "poison", "Name": SURROGATE}, "token": ""})
    _persisted(services, SURROGATE, {"definition": {"ID": SURROGATE, "Name": "x"}, "token": ""})
    _persisted(services, "list", [1, 2, 3])
    _persisted(services, "truncated", '{"definition": {"ID": "trunc')
    _persisted(services, "deep", '{"definition": ' + '{"a":' * 5000 + "1" + "}" * 5001)
    _persisted(checks, "badcheck", {"definition": {"ID": SURROGATE, "Name": "c", "TTL": "30s"}, "token": ""})
    _persisted(services, "kept", {"definition": {"ID": "kept", "Name": "kept", "Port": 81}, "token": ""})
    agent = AgentProcess(*SERVER_FLAGS, "-hcl", 'ae_interval = "1s"', dev=False, data_dir=str(data)).start()
    try:
        assert list(_get(agent, "/v1/agent/services")) == ["kept"]
        assert _get(agent, "/v1/agent/checks") == {}
        wait_for(lambda: _get(agent, "/v1/catalog/service/kept") != [], what=lambda: f"kept synced\n{agent.log()}")
        status, text = _send(agent, "PUT", "/v1/agent/service/register", {"Name": "later"})
        assert status == 200, text
        wait_for(lambda: _get(agent, "/v1/catalog/service/later") != [], what=lambda: f"later synced\n{agent.log()}")
        log = agent.log()
        assert log.count("skipping persisted") == 6, log
        assert "Traceback" not in log
    finally:
        agent.stop()


def test_malformed_requests_are_refused_with_at_most_one_log_line(dev_agent: AgentProcess) -> None:
    """100 KB request lines and headers, sent 20 times: 400s, and the log gains at most a line per
    kind rather than a traceback each (issue 13, item 5)."""
    import socket

    host, port = dev_agent.addr.rsplit(":", 1)
    before = len(dev_agent.log())
    requests = [b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"] * 10
    for raw in requests:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(raw)
            answer = sock.recv(64)
            assert answer.split(b" ")[1] == b"400", answer
    # A normal request afterwards is answered, and by then every line above has been written.
    assert _get(dev_agent, "/v1/agent/self")["Config"]["NodeName"]
    added = dev_agent.log()[before:]
    assert "Traceback" not in added, added[:2000]
    assert added.count("Error handling request") <= 2, added[:2000]
    assert len(added) < 2000, added[:2000]
