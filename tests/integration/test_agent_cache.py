"""The agent cache (`?cached`) on a real client agent joined to a real server, over raw HTTP
(py-consul has no `cached` parameter).

One scenario, in order, because its last act takes the server away:

- background-refresh endpoints (`/v1/health/service/:s`, with `?passing` as its own entry,
  `/v1/catalog/services`, `/v1/catalog/service/:s`): MISS, then HIT with `Age: 0`; an entry
  fetched with one token is a MISS for another; a cached blocking reader (`?cached&index=`),
  parked on the cache's one background query, is woken by a catalog change;
- prepared query execute, a simple type: MISS, then HITs whose `Age` grows; a HIT keeps
  answering the old instances after a change, until `Cache-Control: max-age=` forces a refetch;
- without `?cached` nothing changes (no `X-Cache`); `?cached&consistent` is a 400; an agent with
  `http_config.use_cache = false` (the server here) ignores `?cached`;
- the server killed: uncached reads fail, the background entry keeps answering with an `Age`
  counting from the lost contact, the simple entry answers a `max-age=0` request with a 500
  but with `stale-if-error` the kept answer.

Costs one `-server -bootstrap` agent and one client agent (a `-dev` server has no RPC port for
clients); the scenario itself takes about 5 s, most of it the two `Age` waits.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cluster_helpers import LanCluster
from helpers import AgentProcess, wait_for

TELEMETRY = 'telemetry { prometheus_retention_time = "60s" disable_hostname = true }'


def _get(agent: AgentProcess, path: str, **headers: str) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(f"{agent.url}{path}", headers={k.replace("_", "-"): v for k, v in headers.items()})
    try:
        with urllib.request.urlopen(req, timeout=90) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def _register(agent: AgentProcess, node: str, address: str, service_id: str) -> None:
    body = {"Node": node, "Address": address, "Service": {"ID": service_id, "Service": "web", "Port": 80}}
    status, _, raw = agent.http("PUT", "/v1/catalog/register", json.dumps(body).encode())
    assert status == 200, raw


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(e["Service"]["ID"] for e in entries)


def _counter(agent: AgentProcess, name: str) -> float:
    text = agent.http("GET", "/v1/agent/metrics?format=prometheus")[2].decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_agent_cache_on_a_client_agent(tmp_path: Path) -> None:
    # The server runs with http_config.use_cache = false, the client agent with the default (on).
    lan = LanCluster(tmp_path, (), "-hcl", "http_config { use_cache = false }", hosts=2)
    try:
        (server,) = lan.start()
        client = lan.add(lan.client("c1", "-hcl", TELEMETRY, host=2, extra=()))
        _register(client, "n1", "10.0.0.1", "web-1")
        wait_for(lambda: _ids(_get(client, "/v1/health/service/web")[2]) == ["web-1"], timeout=30,
                 what="web-1 in the catalog")

        # --- background refresh: MISS, then HIT with Age 0 while the servers answer.
        for path in ("/v1/health/service/web?cached", "/v1/health/service/web?cached&passing",
                     "/v1/catalog/services?cached", "/v1/catalog/service/web?cached"):
            status, headers, body = _get(client, path)
            assert status == 200 and headers["X-Cache"] == "MISS" and "Age" not in headers, (path, headers)
            status, headers, again = _get(client, path)
            assert status == 200 and (headers["X-Cache"], headers["Age"]) == ("HIT", "0"), (path, headers)
            assert again == body and int(headers["X-Consul-Index"]) > 0
        assert "web" in _get(client, "/v1/catalog/services?cached")[2]

        # --- the token is part of the key: another token's request is not answered from this entry.
        for tok, expected in (("alpha", "MISS"), ("alpha", "HIT"), ("beta", "MISS"), ("beta", "HIT")):
            _, headers, _ = _get(client, "/v1/health/service/web?cached", X_Consul_Token=tok)
            assert headers["X-Cache"] == expected, (tok, headers)
        assert _get(client, "/v1/health/service/web?cached&token=gamma")[1]["X-Cache"] == "MISS"

        # --- without ?cached nothing changes; ?cached with ?consistent is refused.
        status, headers, _ = _get(client, "/v1/health/service/web")
        assert status == 200 and "X-Cache" not in headers and "Age" not in headers
        status, _, reason = _get(client, "/v1/health/service/web?cached&consistent")
        assert (status, reason) == (400, "Cannot specify ?cached with ?consistent, conflicting semantics.")
        # An agent with http_config.use_cache = false ignores ?cached, as Consul does.
        status, headers, body = _get(server, "/v1/health/service/web?cached&consistent")
        assert status == 200 and "X-Cache" not in headers and _ids(body) == ["web-1"]

        # --- a simple type: prepared query execute. Age grows between hits.
        status, raw = client.http("POST", "/v1/query", json.dumps({"Name": "webq", "Service": {"Service": "web"}}).encode())[::2]
        assert status == 200, raw
        status, headers, body = _get(client, "/v1/query/webq/execute?cached")
        assert status == 200 and headers["X-Cache"] == "MISS" and _ids(body["Nodes"]) == ["web-1"]
        wait_for(lambda: int(_get(client, "/v1/query/webq/execute?cached")[1]["Age"]) >= 2, timeout=30,
                 what="the cached execute answer's Age to grow")

        # --- a cached blocking reader parks on the background query and is woken by a change.
        _, headers, _ = _get(client, "/v1/health/service/web?cached")
        index = int(headers["X-Consul-Index"])
        parked_before = _counter(client, "consul_cache_health_services_miss_block")
        answer: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: answer.setdefault(
            "r", _get(client, f"/v1/health/service/web?cached&index={index}&wait=60s")))
        reader.start()
        wait_for(lambda: _counter(client, "consul_cache_health_services_miss_block") > parked_before, timeout=30,
                 what="the blocking reader parked on the cache")
        assert reader.is_alive()
        _register(client, "n2", "10.0.0.2", "web-2")
        reader.join(60)
        assert not reader.is_alive(), "the cached blocking reader was not woken by the change"
        status, headers, body = answer["r"]
        assert status == 200 and _ids(body) == ["web-1", "web-2"]
        assert int(headers["X-Consul-Index"]) > index and headers["X-Cache"] == "MISS"  # it waited
        # Every later cached read sees the update at once: the background query keeps the entry fresh.
        _, headers, body = _get(client, "/v1/catalog/service/web?cached")
        assert headers["X-Cache"] == "HIT" and sorted(e["ServiceID"] for e in body) == ["web-1", "web-2"]

        # --- the simple entry still has the old answer; max-age forces a refetch.
        status, headers, body = _get(client, "/v1/query/webq/execute?cached")
        assert headers["X-Cache"] == "HIT" and _ids(body["Nodes"]) == ["web-1"], "a simple entry is not refreshed"
        status, headers, body = _get(client, "/v1/query/webq/execute?cached", Cache_Control="max-age=1")
        assert status == 200 and headers["X-Cache"] == "MISS" and _ids(body["Nodes"]) == ["web-1", "web-2"]
        _, headers, _ = _get(client, "/v1/query/webq/execute?cached", Cache_Control="max-age=3600")
        assert headers["X-Cache"] == "HIT"
        status, _, reason = _get(client, "/v1/query/webq/execute?cached", Cache_Control="max-age=soon")
        assert (status, reason) == (400, "Invalid Cache-Control header.")

        # --- the servers gone.
        server.kill()
        wait_for(lambda: _get(client, "/v1/health/service/web")[0] == 500, timeout=60,
                 what="uncached reads failing without a server")
        wait_for(lambda: int(_get(client, "/v1/health/service/web?cached")[1].get("Age", "0")) >= 2, timeout=60,
                 what="the background entry's Age counting from the lost contact")
        status, headers, body = _get(client, "/v1/health/service/web?cached")
        assert status == 200 and headers["X-Cache"] == "HIT" and _ids(body) == ["web-1", "web-2"]
        status, _, _ = _get(client, "/v1/query/webq/execute?cached", Cache_Control="max-age=0")
        assert status == 500
        status, headers, body = _get(client, "/v1/query/webq/execute?cached",
                                     Cache_Control="max-age=0, stale-if-error=3600")
        assert status == 200 and headers["X-Cache"] == "HIT" and _ids(body["Nodes"]) == ["web-1", "web-2"]
        assert int(headers["Age"]) >= 0
    finally:
        lan.stop()
