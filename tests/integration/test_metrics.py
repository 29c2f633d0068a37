"""Real processes: `/v1/agent/metrics` on a dev agent and on a one-server Raft agent, in go-metrics'
JSON shape and in the Prometheus format (read with prometheus-client's parser), with Consul's
metric names present from start-up and growing with the writes made."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cluster_helpers import Cluster
from helpers import AgentProcess, wait_for
from prometheus_client.parser import text_string_to_metric_families

TELEMETRY = 'telemetry { prometheus_retention_time = "60s" disable_hostname = true }'

# Families every agent declares when it starts.
AGENT_FAMILIES = {
    "consul_api_http": "summary",
    "consul_rpc_request": "unknown",
    "consul_rpc_query": "unknown",
    "consul_rpc_queries_blocking": "gauge",
    "consul_rpc_request_error": "unknown",
    "consul_kvs_apply": "summary",
    "consul_txn_apply": "summary",
    "consul_catalog_register": "summary",
    "consul_dns_domain_query": "summary",
    "consul_dns_ptr_query": "summary",
    "consul_runtime_alloc_bytes": "gauge",
    "consul_runtime_num_goroutines": "gauge",
    "consul_runtime_total_gc_runs": "gauge",
    "consul_memberlist_msg_alive": "unknown",
    "consul_memberlist_msg_suspect": "unknown",
    "consul_memberlist_msg_dead": "unknown",
    "consul_memberlist_probeNode": "summary",
    "consul_memberlist_udp_sent": "unknown",
    "consul_memberlist_udp_received": "unknown",
    "consul_memberlist_tcp_accept": "unknown",
    "consul_memberlist_tcp_connect": "unknown",
    "consul_memberlist_queue_broadcasts": "summary",
    "consul_memberlist_pushPullNode": "summary",
    "consul_memberlist_degraded_probe": "unknown",
    "consul_memberlist_node_instances": "gauge",
    "consul_serf_member_join": "unknown",
    "consul_serf_member_left": "unknown",
    "consul_serf_member_failed": "unknown",
    "consul_serf_member_update": "unknown",
    "consul_serf_member_flap": "unknown",
    "consul_serf_events": "unknown",
    "consul_serf_queries": "unknown",
    "consul_serf_query_responses": "unknown",
    "consul_serf_queue_Event": "summary",
    "consul_serf_queue_Query": "summary",
    "consul_health_service_query": "unknown",
    "consul_health_service_query_tags": "unknown",
    "consul_health_service_not_found": "unknown",
    "consul_catalog_service_query": "unknown",
    "consul_catalog_service_query_tags": "unknown",
    "consul_catalog_service_not_found": "unknown",
}
RAFT_FAMILIES = {
    "consul_raft_apply": "unknown",
    "consul_raft_commitTime": "summary",
    "consul_raft_fsm_apply": "summary",
    "consul_raft_state_leader": "unknown",
    "consul_raft_state_candidate": "unknown",
    "consul_raft_leader_lastContact": "summary",
    "consul_raft_leader_dispatchLog": "summary",
    "consul_raft_rpc_appendEntries_storeLogs": "summary",
    "consul_raft_rpc_appendEntries": "summary",
    "consul_raft_snapshot_takeSnapshot": "summary",
    "consul_raft_fsm_restore": "summary",
}


def _prometheus(agent: AgentProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    status, headers, body = agent.http("GET", "/v1/agent/metrics?format=prometheus")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _types(agent: AgentProcess) -> dict[str, str]:
    body = agent.http("GET", "/v1/agent/metrics?format=prometheus")[2].decode()
    return {f.name: f.type for f in text_string_to_metric_families(body)}


def _json(agent: AgentProcess) -> dict:
    status, headers, body = agent.http("GET", "/v1/agent/metrics")
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def _put_keys(agent: AgentProcess, n: int) -> None:
    for i in range(n):
        status, _, body = agent.http("PUT", f"/v1/kv/metrics/k{i}", b"v")
        assert status == 200 and body == b"true", body


@pytest.fixture(scope="module")
def dev() -> Iterator[AgentProcess]:
    agent = AgentProcess("-hcl", TELEMETRY).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def raft_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    data = Path(tmp_path_factory.mktemp("metrics")) / "data"
    agent = AgentProcess(
        "-server", "-bootstrap", "-hcl", "performance { raft_multiplier = 1 }", "-hcl", TELEMETRY,
        dev=False, data_dir=str(data),
    ).start()
    try:
        yield agent
    finally:
        agent.stop()


def test_dev_agent_declares_its_families_at_start_up(dev: AgentProcess) -> None:
    types = _types(dev)
    for name, typ in AGENT_FAMILIES.items():
        assert types.get(name) == typ, (name, types.get(name))


def test_kv_puts_grow_kvs_apply_and_api_http(dev: AgentProcess) -> None:
    before = _prometheus(dev)
    put = (("method", "PUT"), ("path", "v1_kv_"))
    http_before = before.get("consul_api_http_count", {}).get(put, 0.0)
    kvs_before = before["consul_kvs_apply_count"][()]
    _put_keys(dev, 5)
    after = _prometheus(dev)
    assert after["consul_kvs_apply_count"][()] >= kvs_before + 5
    assert after["consul_api_http_count"][put] >= http_before + 5
    assert after["consul_api_http_sum"][put] > 0
    assert after["consul_rpc_request"][()] >= before["consul_rpc_request"][()] + 5


def test_json_view_has_go_metrics_shape_and_counts_the_writes(dev: AgentProcess) -> None:
    doc = _json(dev)
    assert list(doc) == ["Timestamp", "Gauges", "Points", "Counters", "Samples"]
    assert doc["Timestamp"].endswith(" +0000 UTC")
    gauges = {g["Name"] for g in doc["Gauges"]}
    # The runtime sampler sets its gauges every second, so every interval has them.
    assert {"consul.runtime.alloc_bytes", "consul.runtime.num_goroutines"} <= gauges
    _put_keys(dev, 3)

    def kvs_sample() -> dict | None:
        # The view shows the last finished 10 s interval: wait until one holds the writes.
        for s in _json(dev)["Samples"]:
            if s["Name"] == "consul.kvs.apply" and s["Count"] >= 3:
                return s
        _put_keys(dev, 3)
        return None

    sample = wait_for(kvs_sample, timeout=60, interval=1.0, what="consul.kvs.apply in a finished interval")
    assert set(sample) == {"Name", "Count", "Rate", "Sum", "Min", "Max", "Mean", "Stddev", "Labels"}
    assert 0 < sample["Min"] <= sample["Mean"] <= sample["Max"]
    assert sample["Rate"] == pytest.approx(sample["Sum"] / 10.0)


def _next_document(resp: http.client.HTTPResponse) -> tuple[str, dict]:
    """One document of the metrics stream: Go's indented JSON ends with a "}" line at column 0."""
    lines = []
    while True:
        line = resp.readline().decode()
        assert line, f"the stream ended after {lines}"
        lines.append(line)
        if line == "}\n":
            text = "".join(lines)
            return text, json.loads(text)


def test_metrics_stream_sends_each_interval_as_it_ends(dev: AgentProcess) -> None:
    conn = http.client.HTTPConnection(dev.ip, dev.http_port, timeout=60)
    try:
        conn.request("GET", "/v1/agent/metrics/stream")
        resp = conn.getresponse()  # the headers come at once, the first document when the interval ends
        assert resp.status == 200
        _put_keys(dev, 3)
        docs = []
        # The puts land in the interval open when they were made: the first document, or the
        # second when an interval ended between the request and the puts (go-metrics' 10 s).
        for _ in range(2):
            text, doc = _next_document(resp)
            assert text.startswith('{\n    "Timestamp": "'), text[:40]  # Go's four-space indent
            assert set(doc) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d0 \+0000 UTC", doc["Timestamp"]), doc["Timestamp"]
            docs.append(doc)
            applies = [s for s in doc["Samples"] if s["Name"] == "consul.kvs.apply"]
            if applies and applies[0]["Count"] >= 3:
                break
        else:
            raise AssertionError(f"no document counted the 3 KV applies: {[d['Samples'] for d in docs]}")
        assert any(g["Name"] == "consul.runtime.alloc_bytes" for g in docs[-1]["Gauges"])
        if len(docs) == 2:  # consecutive intervals, one document each
            assert docs[0]["Timestamp"] < docs[1]["Timestamp"]
    finally:
        conn.close()


def test_blocking_queries_in_flight_are_counted(dev: AgentProcess) -> None:
    assert dev.http("PUT", "/v1/kv/metrics/block", b"0")[0] == 200
    index = dev.http("GET", "/v1/kv/metrics/block")[1]["X-Consul-Index"]

    def in_flight() -> float:
        return _prometheus(dev)["consul_rpc_queries_blocking"][()]

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(dev.http, "GET", f"/v1/kv/metrics/block?index={index}&wait=60s")
        wait_for(lambda: in_flight() == 1, timeout=30, what="the blocking query to be counted")
        assert dev.http("PUT", "/v1/kv/metrics/block", b"1")[0] == 200
        assert waiting.result(timeout=30)[0] == 200
    wait_for(lambda: in_flight() == 0, timeout=30, what="the blocking query to be uncounted")


def test_dns_queries_are_timed(dev: AgentProcess) -> None:
    import dns.message
    import dns.query

    before = _prometheus(dev)["consul_dns_domain_query_count"].get((("node", "test-node"),), 0.0)
    query = dns.message.make_query("consul.service.consul.", "A")
    dns.query.udp(query, "127.0.0.1", port=dev.dns_port, timeout=5)
    after = _prometheus(dev)["consul_dns_domain_query_count"][(("node", "test-node"),)]
    assert after >= before + 1


@pytest.fixture(scope="module")
def sinks_agent() -> Iterator[tuple[AgentProcess, socket.socket, socket.socket, socket.socket]]:
    """A dev agent with the default telemetry (no Prometheus, host names in gauge names) and a
    statsd (UDP), a DogStatsD (UDP) and a statsite (TCP) sink on sockets of this test."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dog, socket.socket() as statsite:
        for sock in (statsd, dog, statsite):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        statsite.listen()
        telemetry = (f'telemetry {{ statsd_address = "127.0.0.1:{statsd.getsockname()[1]}" '
                     f'dogstatsd_addr = "127.0.0.1:{dog.getsockname()[1]}" dogstatsd_tags = ["env:test", "team"] '
                     f'statsite_address = "127.0.0.1:{statsite.getsockname()[1]}" }}')
        agent = AgentProcess("-hcl", telemetry).start()
        try:
            yield agent, statsd, dog, statsite
        finally:
            agent.stop()


def test_prometheus_format_is_refused_without_a_retention_time(sinks_agent: tuple[AgentProcess, ...]) -> None:
    agent = sinks_agent[0]
    status, _, body = agent.http("GET", "/v1/agent/metrics?format=prometheus")
    assert status == 415
    assert body == b"Prometheus is not enabled since its retention time is not positive"
    doc = _json(agent)
    # disable_hostname is false by default: gauges carry the host name, as go-metrics names them.
    assert all(not g["Name"].startswith("consul.runtime.") for g in doc["Gauges"])
    assert any(g["Name"].endswith(".runtime.alloc_bytes") for g in doc["Gauges"])


def _receive(sock: socket.socket, packets: list[bytes]) -> list[bytes]:
    """Every datagram waiting on `sock`, appended to `packets` (which is returned)."""
    while True:
        try:
            packets.append(sock.recv(65536))
        except BlockingIOError:
            return packets


STATSD_LINE = re.compile(r"^[^:|#]+:-?\d+\.\d{6}\|(c|g|ms)$")  # go-metrics' "%s:%f|<type>"
DOGSTATSD_LINE = re.compile(r"^[^:|#]+:-?\d+(\.\d+)?\|(c|g|ms)\|#env:test,team(,[^,]+)*$")


def test_statsd_dogstatsd_and_statsite_sinks_receive_lines(
    sinks_agent: tuple[AgentProcess, socket.socket, socket.socket, socket.socket],
) -> None:
    """A real agent sends go-metrics' statsd and DogStatsD lines to UDP sockets on loopback, and the
    statsd lines to a statsite TCP listener."""
    agent, statsd, dog, statsite = sinks_agent
    # What queued up since the agent started goes: a full socket buffer would drop new datagrams.
    _receive(statsd, [])
    _receive(dog, [])
    _put_keys(agent, 2)
    host = socket.gethostname().replace(":", "_").replace(" ", "_")
    statsd_packets: list[bytes] = []
    wanted = [re.compile(p) for p in (
        r"^consul\.kvs\.apply:\d+\.\d{6}\|ms$",
        r"^consul\.api\.http\.PUT\.v1_kv_:\d+\.\d{6}\|ms$",
        r"^consul\.rpc\.request:\d+\.000000\|c$",  # one line per flush: the requests of those 100 ms
        rf"^consul\.{re.escape(host)}\.runtime\.alloc_bytes:\d+\.\d{{6}}\|g$",  # gauges carry the host
    )]

    def statsd_lines() -> list[str]:
        return [line for p in _receive(statsd, statsd_packets) for line in p.decode().splitlines()]

    wait_for(lambda: all(any(w.match(line) for line in statsd_lines()) for w in wanted), timeout=30,
             what=lambda: f"statsd lines {[w.pattern for w in wanted]} in {statsd_lines()[:40]}")
    assert all(len(p) <= 1400 and p.endswith(b"\n") for p in statsd_packets)
    assert all(STATSD_LINE.match(line) for line in statsd_lines()), statsd_lines()

    # statsite: the same lines on one TCP connection.
    statsite.settimeout(30)
    conn, _ = statsite.accept()
    with conn:
        conn.setblocking(False)
        received = bytearray()

        def statsite_lines() -> list[str]:
            while True:
                try:
                    chunk = conn.recv(65536)
                except BlockingIOError:
                    break
                assert chunk, "the agent closed the statsite connection"
                received.extend(chunk)
            return received[: received.rfind(b"\n") + 1].decode().splitlines()

        wait_for(lambda: all(any(w.match(line) for line in statsite_lines()) for w in wanted), timeout=30,
                 what=lambda: f"statsite lines {[w.pattern for w in wanted]} in {statsite_lines()[:40]}")
        assert all(STATSD_LINE.match(line) for line in statsite_lines()), statsite_lines()

    dog_packets: list[bytes] = []
    wanted = [re.compile(p) for p in (
        r"^consul\.kvs\.apply:\d+(\.\d+)?\|ms\|#env:test,team$",
        r"^consul\.api\.http:\d+(\.\d+)?\|ms\|#env:test,team,method:PUT,path:v1_kv_$",
        r"^consul\.rpc\.request:\d+\|c\|#env:test,team$",
        r"^consul\.runtime\.alloc_bytes:\d+\|g\|#env:test,team$",  # the host is spliced out
    )]

    def dog_lines() -> list[str]:
        return [line for p in _receive(dog, dog_packets) for line in p.decode().split("\n")]

    wait_for(lambda: all(any(w.match(line) for line in dog_lines()) for w in wanted), timeout=30,
             what=lambda: f"DogStatsD lines {[w.pattern for w in wanted]} in {dog_lines()[:40]}")
    assert all(len(p) <= 1432 and not p.endswith(b"\n") for p in dog_packets)
    assert all(DOGSTATSD_LINE.match(line) for line in dog_lines()), dog_lines()


def test_metrics_prefix_is_honoured() -> None:
    agent = AgentProcess("-hcl", 'telemetry { prometheus_retention_time = "10s" metrics_prefix = "pc" }').start()
    try:
        names = set(_prometheus(agent))
        assert "pc_api_http_count" in names and "pc_kvs_apply_count" in names
        assert not any(name.startswith("consul_") for name in names)
    finally:
        agent.stop()


def test_prefix_filter_blocks_families_and_a_reload_changes_it(tmp_path: Path) -> None:
    """`telemetry.prefix_filter` as go-metrics applies it: the blocked family records nothing
    and is listed nowhere; a reload with other rules (SIGHUP) applies them at once."""
    config = tmp_path / "telemetry.json"
    config.write_text(json.dumps({"telemetry": {
        "prometheus_retention_time": "60s", "disable_hostname": True, "prefix_filter": ["-consul.api.http", "-consul.kvs"],
    }}))
    agent = AgentProcess(f"-config-file={config}").start()
    try:
        _put_keys(agent, 3)
        names = set(_prometheus(agent))
        assert "consul_txn_apply_count" in names  # not blocked
        assert not any(n.startswith(("consul_api_http", "consul_kvs_")) for n in names), sorted(names)
        config.write_text(json.dumps({"telemetry": {
            "prometheus_retention_time": "60s", "disable_hostname": True, "prefix_filter": ["-consul.kvs"],
        }}))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded configuration" in agent.log(), timeout=30, what=f"the reload\n{agent.log()}")
        _put_keys(agent, 2)
        samples = _prometheus(agent)
        assert samples["consul_api_http_count"][(("method", "PUT"), ("path", "v1_kv_"))] == 2
        assert not any(n.startswith("consul_kvs_") for n in samples)
    finally:
        agent.stop()


def test_raft_server_reports_raft_metrics(raft_server: AgentProcess) -> None:
    types = _types(raft_server)
    for name, typ in {**AGENT_FAMILIES, **RAFT_FAMILIES}.items():
        assert types.get(name) == typ, (name, types.get(name))
    before = _prometheus(raft_server)
    assert before["consul_raft_state_leader"][()] >= 1  # it elected itself
    # Set by the gossip timer: a lone healthy server has nothing to report to Lifeguard.
    assert wait_for(lambda: _prometheus(raft_server).get("consul_memberlist_health_score"), timeout=30)[()] == 0
    _put_keys(raft_server, 5)
    after = _prometheus(raft_server)
    assert after["consul_raft_apply"][()] >= before["consul_raft_apply"][()] + 5
    assert after["consul_raft_commitTime_count"][()] >= before["consul_raft_commitTime_count"][()] + 5
    assert after["consul_raft_fsm_apply_count"][()] >= before["consul_raft_fsm_apply_count"][()] + 5
    assert after["consul_kvs_apply_count"][()] >= before["consul_kvs_apply_count"][()] + 5
    # Each write was fsynced by the leader before it committed.
    assert after["consul_raft_leader_dispatchLog_count"][()] >= before["consul_raft_leader_dispatchLog_count"][()] + 5
    assert after["consul_raft_commitTime"][(("quantile", "0.5"),)] > 0


def test_three_servers_report_replication_and_gossip(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, hcl=TELEMETRY)
    try:
        cluster.start()
        agents = [cluster.nodes[ip] for ip in cluster.ips]
        leader_ip = cluster.leader_ip(agents[0])
        leader = cluster.nodes[leader_ip]
        followers = [a for a in agents if a is not leader]
        before = {a.ip: _prometheus(a) for a in agents}
        # Written through a follower: forwarded to the leader, which proposes and times it.
        _put_keys(followers[0], 5)
        after = {a.ip: _prometheus(a) for a in agents}

        def grown(name: str) -> float:
            # Summed over the servers: on a loaded box leadership may move during the writes.
            return sum(after[a.ip][name][()] - before[a.ip][name][()] for a in agents)

        assert grown("consul_raft_apply") >= 5
        assert grown("consul_kvs_apply_count") >= 5
        # One of them became leader, and counted it.
        assert sum(after[a.ip]["consul_raft_state_leader"][()] for a in agents) >= 1
        # The follower that took the writes served them (and forwarded them).
        writer = followers[0].ip
        assert after[writer]["consul_rpc_request"][()] >= before[writer]["consul_rpc_request"][()] + 5

        def stored(ip: str) -> bool:
            now = _prometheus(cluster.nodes[ip])
            return all(now[f"{name}_count"][()] >= before[ip][f"{name}_count"][()] + 1
                       for name in ("consul_raft_rpc_appendEntries_storeLogs", "consul_raft_rpc_appendEntries"))

        leader_ip = cluster.leader_ip(followers[0])  # again: it may have moved on a loaded box
        leader = cluster.nodes[leader_ip]
        for f in (a for a in agents if a is not leader):
            # Followers fsync what the leader replicates.
            wait_for(lambda ip=f.ip: stored(ip), timeout=30, what=f"storeLogs on follower {f.ip}")
        # The leader samples how long ago each follower answered, every tick.
        wait_for(
            lambda: _prometheus(leader)["consul_raft_leader_lastContact_count"][()] > 0,
            timeout=30, what="lastContact samples on the leader",
        )
        lan, wan = (("network", "lan"),), (("network", "wan"),)
        for a in agents:
            m = after[a.ip]
            assert m["consul_memberlist_msg_alive"][()] >= 1
            assert m["consul_memberlist_udp_sent"][()] > 0 and m["consul_memberlist_udp_received"][()] > 0
            assert m["consul_memberlist_probeNode_count"][()] > 0
            assert m["consul_serf_member_failed"][()] == 0
            # Sampled every 30 s; declared (count 0) from start-up.
            assert m["consul_memberlist_queue_broadcasts_count"][()] == 0
            assert m["consul_serf_queue_Event_count"][()] == 0
        # serf saw the three servers join both pools, each series labelled with its pool (the WAN
        # pool fills by flood-join, which may still be under way on a loaded box).
        def joined(a: AgentProcess) -> bool:
            joins = _prometheus(a).get("consul_serf_member_join", {})
            return joins.get(lan, 0) >= 3 and joins.get(wan, 0) >= 3

        for a in agents:
            wait_for(lambda a=a: joined(a), timeout=90, what=f"serf joins in both pools on {a.ip}")
        # A user event reaches every server's LAN pool (gossiped a few times, then carried by
        # push-pull every 30 s: a loaded box may drop the datagrams).
        status, _, body = followers[0].http("PUT", "/v1/event/fire/deploy", b"")
        assert status == 200, body
        for a in agents:
            wait_for(lambda a=a: _prometheus(a).get("consul_serf_events", {}).get(lan, 0) >= 1, timeout=120,
                     what=f"serf.events on {a.ip}")
        # ... and the queue depths are sampled every 30 s (serf's and memberlist's QueueCheckInterval).
        def sampled(m: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> bool:
            return all(m[name].get(net, 0) >= 1 for net in (lan, wan) for name in (
                "consul_memberlist_queue_broadcasts_count", "consul_serf_queue_Event_count",
                "consul_serf_queue_Query_count"))

        wait_for(lambda: sampled(_prometheus(leader)), timeout=90, what="queue depths sampled in both pools")
    finally:
        cluster.stop()


def test_client_agent_counts_its_rpcs_and_servers_count_service_reads(tmp_path: Path) -> None:
    """A client agent's `client.rpc` grows with the reads it sends its server, which counts them
    as `health.service.query` / `catalog.service.query` by service, as do its own fast-path reads."""
    from cluster_helpers import LanCluster

    cluster = LanCluster(tmp_path, ("c1",), "-hcl", TELEMETRY)
    try:
        server, client = cluster.start()
        assert "consul_client_rpc" in _types(client) and "consul_client_rpc" not in _types(server)
        before = _prometheus(client)["consul_client_rpc"][()]
        consul = (("service", "consul"),)
        for path in ("/v1/health/service/consul", "/v1/catalog/service/consul", "/v1/health/service/nope"):
            status, _, body = client.http("GET", path)
            assert status == 200, body
        # Sent to the server at least once each (the agent's own sync and leader refresh send more).
        assert _prometheus(client)["consul_client_rpc"][()] >= before + 3
        on_server = _prometheus(server)
        assert on_server["consul_health_service_query"][consul] >= 1
        assert on_server["consul_catalog_service_query"][consul] >= 1
        assert on_server["consul_health_service_not_found"][(("service", "nope"),)] >= 1
        # The server's own HTTP reads (its fast path) count too.
        health_before = on_server["consul_health_service_query"][consul]
        for _ in range(3):
            assert server.http("GET", "/v1/health/service/consul?tag=x")[0] == 200
        after = _prometheus(server)
        assert after["consul_health_service_query"][consul] == health_before + 3
        assert after["consul_health_service_query_tags"][(("service", "consul"), ("tag", "x"))] == 3
        assert after["consul_health_service_not_found"][consul] == 3  # no consul instance is tagged x
    finally:
        cluster.stop()


def test_grafana_dashboard_queries_only_families_a_server_exports(raft_server: AgentProcess) -> None:
    """packaging/grafana/proconsul-dashboard.json: every metric it queries is a family a Raft
    server declares at start-up, and the autopilot gauges carry a single server's health."""
    import re

    dashboard = json.loads((Path(__file__).parents[2] / "packaging" / "grafana" / "proconsul-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    wanted = {name for e in exprs for name in re.findall(r"\bconsul_[A-Za-z0-9_]+", e)}
    assert {"consul_autopilot_healthy", "consul_raft_commitTime", "consul_memberlist_msg_suspect",
            "consul_serf_member_failed"} <= wanted
    types = _types(raft_server)
    # A summary's `_sum` and `_count` series belong to its family.
    missing = {name for name in wanted if name not in types
               and types.get(re.sub(r"_(sum|count)$", "", name)) != "summary"}
    assert not missing, f"dashboard queries unknown families: {sorted(missing)}"
    wait_for(lambda: _prometheus(raft_server)["consul_autopilot_healthy"][()] == 1.0, timeout=30,
             what="a single healthy server")
    assert _prometheus(raft_server)["consul_autopilot_failure_tolerance"][()] == 0.0
