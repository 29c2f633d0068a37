"""Real processes: one server and two client agents; what client agents do beyond forwarding.

- User events travel over LAN gossip: fired at any agent, they reach every agent whose node,
  service and tag filters match, and wake blocking `/v1/event/list` queries there (py-consul,
  raw HTTP and `proconsul event`).
- DNS on a client agent answers from the servers' catalog (named queries sent to a server),
  including health filtering once a check goes critical (`dig`).
- Sessions made on a client agent: renewal and lock-delay are the servers' business.

Each agent has its own 127.a.b.x address with the standard ports, joined with `-retry-join`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from cluster_helpers import LanCluster, agent_json, member_statuses, serf_health
from helpers import AgentProcess, proconsul_command, wait_for

NAMES = ("srv", "c1", "c2")


def start_lan(root: Path, clients: tuple[str, ...] = ("c1", "c2")) -> list[AgentProcess]:
    """A server (`srv`, x.1) and client agents (x.2, x.3, ...), all alive in each other's view."""
    lan = LanCluster(root, clients)
    agents = lan.start()
    try:
        everyone = {a.node: 1 for a in agents}
        for agent in agents:
            wait_for(lambda a=agent: member_statuses(a) == everyone, timeout=60,  # type: ignore[misc]
                     what=lambda a=agent: f"all members alive on {a.node}\n{a.log()}")  # type: ignore[misc]
        # The leader has put every member in the catalog (serfHealth) before tests start.
        wait_for(lambda: sorted(n["Node"] for n in agent_json(lan.server, "GET", "/v1/catalog/nodes")) == sorted(everyone),
                 timeout=60, what="every member in the catalog")
    except BaseException:
        lan.stop()
        raise
    return agents


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, AgentProcess]]:
    agents = start_lan(tmp_path_factory.mktemp("lan"))
    try:
        yield {a.node: a for a in agents}
    finally:
        for agent in agents:
            agent.stop()


def _events(agent: AgentProcess, name: str) -> list[dict[str, object]]:
    return [e for e in agent_json(agent, "GET", f"/v1/event/list?name={name}") if e["Name"] == name]  # type: ignore[union-attr]


# --- events ------------------------------------------------------------------------------------


def test_event_fired_at_a_client_reaches_all_three_agents(lan: dict[str, AgentProcess]) -> None:
    c1 = consul.Consul(host=lan["c1"].ip, port=lan["c1"].http_port)
    assert c1.event.fire("deploy-all", "v1")
    for name in NAMES:
        wait_for(lambda n=name: [e["Payload"] for e in _events(lan[n], "deploy-all")] == ["djE="], timeout=30,  # type: ignore[misc]
                 what=lambda n=name: f"deploy-all on {n}\n{lan[n].log()}")  # type: ignore[misc]
    ids = {_events(lan[n], "deploy-all")[0]["ID"] for n in NAMES}
    assert len(ids) == 1, ids  # one event, delivered once to each agent (the firing one included)
    # py-consul's view on another agent: payload decoded, the same event.
    _, listed = consul.Consul(host=lan["c2"].ip, port=lan["c2"].http_port).event.list(name="deploy-all")
    assert [e["Payload"] for e in listed] == [b"v1"] and listed[0]["LTime"] > 0


def test_event_cli_from_the_server_reaches_the_clients(lan: dict[str, AgentProcess]) -> None:
    env = dict(os.environ, CONSUL_HTTP_ADDR=lan["srv"].addr)
    run = subprocess.run([proconsul_command(), "event", "-name=restart-cli", "payload-x"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "Event ID:" in run.stdout, run
    for name in NAMES:
        wait_for(lambda n=name: len(_events(lan[n], "restart-cli")) == 1, timeout=30,  # type: ignore[misc]
                 what=lambda n=name: f"restart-cli on {n}")  # type: ignore[misc]


def test_node_filter_reaches_only_the_matching_node(lan: dict[str, AgentProcess]) -> None:
    status, _, body = lan["srv"].http("PUT", "/v1/event/fire/only-c2?node=^c2$", b"")
    assert status == 200, body
    # A later unfiltered event that everyone gets: once it is on c1 and srv, so would the first.
    assert lan["srv"].http("PUT", "/v1/event/fire/only-c2-marker", b"")[0] == 200
    wait_for(lambda: len(_events(lan["c2"], "only-c2")) == 1, timeout=30, what="only-c2 on c2")
    for name in ("srv", "c1"):
        wait_for(lambda n=name: len(_events(lan[n], "only-c2-marker")) == 1, timeout=30,  # type: ignore[misc]
                 what=lambda n=name: f"marker on {n}")  # type: ignore[misc]
        assert _events(lan[name], "only-c2") == []


def test_service_and_tag_filters_follow_local_services(lan: dict[str, AgentProcess]) -> None:
    agent_json(lan["c1"], "PUT", "/v1/agent/service/register",
               json.dumps({"Name": "api", "ID": "api-1", "Tags": ["v2"], "Port": 9000}).encode())
    assert lan["c2"].http("PUT", "/v1/event/fire/api-v2?service=^api$&tag=^v2$", b"")[0] == 200
    assert lan["c2"].http("PUT", "/v1/event/fire/api-v2-marker", b"")[0] == 200
    wait_for(lambda: len(_events(lan["c1"], "api-v2")) == 1, timeout=30, what="api-v2 on c1")
    for name in ("srv", "c2"):
        wait_for(lambda n=name: len(_events(lan[n], "api-v2-marker")) == 1, timeout=30,  # type: ignore[misc]
                 what=lambda n=name: f"marker on {n}")  # type: ignore[misc]
        assert _events(lan[name], "api-v2") == []


def test_fire_errors_are_consuls(lan: dict[str, AgentProcess]) -> None:
    c1 = lan["c1"]
    status, _, body = c1.http("PUT", "/v1/event/fire/big", b"x" * 600)
    assert status == 500 and body.startswith(b"user event exceeds configured limit of 512 bytes"), body
    status, _, body = c1.http("PUT", "/v1/event/fire/t?tag=x", b"")
    assert status == 500 and b"Cannot provide tag filter without service filter" in body
    status, _, body = c1.http("PUT", "/v1/event/fire/t?node=(", b"")
    assert status == 500 and b"Invalid node filter" in body
    status, _, body = c1.http("PUT", "/v1/event/fire/t?dc=elsewhere", b"")
    assert status == 500 and b"No path to datacenter" in body


def test_blocking_event_list_on_a_client_wakes_on_arrival(lan: dict[str, AgentProcess]) -> None:
    c2 = consul.Consul(host=lan["c2"].ip, port=lan["c2"].http_port)
    index, _ = c2.event.list()
    result: dict[str, object] = {}

    def block() -> None:
        started = time.monotonic()
        result["answer"] = c2.event.list(index=index, wait="60s")
        result["took"] = time.monotonic() - started

    waiter = threading.Thread(target=block)
    waiter.start()
    # Fire at the other client only once the query is parked (it cannot wake without an event).
    time.sleep(1.0)
    assert waiter.is_alive()
    assert consul.Consul(host=lan["c1"].ip, port=lan["c1"].http_port).event.fire("wake-c2", "now")
    waiter.join(60)
    assert not waiter.is_alive()
    new_index, events = result["answer"]  # type: ignore[misc]
    assert new_index != index and events[-1]["Name"] == "wake-c2"
    assert float(result["took"]) < 30  # type: ignore[arg-type]


# --- DNS on client agents -----------------------------------------------------------------------


def _dig(agent: AgentProcess, name: str, qtype: str) -> list[str]:
    run = subprocess.run(["dig", f"@{agent.ip}", "-p", str(agent.dns_port), "+short", "+tries=1", "+time=5",
                          name, qtype], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run
    return sorted(line for line in run.stdout.splitlines() if line and not line.startswith(";"))


def test_dns_on_a_client_agent_answers_from_the_servers_catalog(lan: dict[str, AgentProcess]) -> None:
    c1, c2 = lan["c1"], lan["c2"]
    for agent in (c1, c2):
        agent_json(agent, "PUT", "/v1/agent/service/register", json.dumps(
            {"Name": "dnsweb", "ID": "dnsweb", "Port": 8080, "Tags": ["blue"],
             "Check": {"CheckID": "dnsweb-ttl", "TTL": "600s", "Status": "passing"}}).encode())
    both = sorted([c1.ip, c2.ip])
    # c2 has the instance on c1 only through the servers' catalog.
    wait_for(lambda: _dig(c2, "dnsweb.service.consul", "A") == both, timeout=60,
             what=lambda: f"dnsweb A on c2: {_dig(c2, 'dnsweb.service.consul', 'A')}\n{c2.log()}")
    srv_targets = sorted(line.split()[3] for line in _dig(c2, "dnsweb.service.consul", "SRV"))
    assert srv_targets == ["c1.node.dc1.consul.", "c2.node.dc1.consul."]
    assert [line.split()[2] for line in _dig(c1, "_dnsweb._blue.service.consul", "SRV")] == ["8080", "8080"]
    assert _dig(c1, "srv.node.consul", "A") == [lan["srv"].ip]
    assert _dig(c1, "c2.node.consul", "A") == [c2.ip]
    assert _dig(c2, "consul.service.consul", "A") == [lan["srv"].ip]
    rev = ".".join(reversed(c1.ip.split("."))) + ".in-addr.arpa"
    assert _dig(c2, rev, "PTR") == ["c1.node.dc1.consul."]

    # A critical check on c1 takes its instance out of DNS answers on both clients.
    assert c1.http("PUT", "/v1/agent/check/fail/dnsweb-ttl")[0] == 200
    for agent in (c1, c2):
        wait_for(lambda a=agent: _dig(a, "dnsweb.service.consul", "A") == [c2.ip], timeout=60,  # type: ignore[misc]
                 what=lambda a=agent: f"c1's instance filtered on {a.node}")  # type: ignore[misc]
    assert [line.split()[3] for line in _dig(c1, "dnsweb.service.consul", "SRV")] == ["c2.node.dc1.consul."]
    assert c1.http("PUT", "/v1/agent/check/pass/dnsweb-ttl")[0] == 200
    wait_for(lambda: _dig(c2, "dnsweb.service.consul", "A") == both, timeout=60, what="c1's instance back")


# --- sessions made on client agents --------------------------------------------------------------


def test_session_renew_on_a_client_agent_reaches_the_leader(lan: dict[str, AgentProcess]) -> None:
    c1 = consul.Consul(host=lan["c1"].ip, port=lan["c1"].http_port)
    c2 = consul.Consul(host=lan["c2"].ip, port=lan["c2"].http_port)
    sid = c1.session.create(name="renewed", ttl=30)
    renewed = c2.session.renew(sid)  # another client: the session lives on the servers only
    assert renewed["ID"] == sid and renewed["TTL"] == "30s" and renewed["Node"] == "c1"
    status, _, body = lan["c1"].http("PUT", "/v1/session/renew/00000000-0000-0000-0000-000000000000")
    assert status == 404 and b"not found" in body
    c1.session.destroy(sid)


def test_stale_operator_reads_on_a_client_agent_come_from_the_servers(lan: dict[str, AgentProcess]) -> None:
    conf = agent_json(lan["c1"], "GET", "/v1/operator/raft/configuration?stale")
    assert [(s["Node"], s["Leader"]) for s in conf["Servers"]] == [("srv", True)]  # type: ignore[index]
    assert lan["c1"].http("PUT", "/v1/kv/snap-marker", b"x")[0] == 200
    status, _, archive = lan["c1"].http("GET", "/v1/snapshot?stale")
    assert status == 200 and len(archive) > 0
    # The archive holds the server's state, with the key just written.
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        state = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert b"snap-marker" in state


def test_lock_released_when_the_holding_client_agent_is_killed(tmp_path: Path) -> None:
    """The holder's session (serfHealth by default) made on a client agent that dies: the
    leader marks serfHealth critical, the session is invalidated, the lock released, and a
    contender on another client agent gets it only after the lock-delay."""
    lock_delay_s = 5
    key = "locks/killed-holder"
    srv, c1, c2 = start_lan(tmp_path)
    try:
        holder = consul.Consul(host=c1.ip, port=c1.http_port)
        contender = consul.Consul(host=c2.ip, port=c2.http_port)
        observer = consul.Consul(host=srv.ip, port=srv.http_port)
        held_sid = holder.session.create(name="holder", lock_delay=lock_delay_s)
        assert holder.session.info(held_sid)[1]["NodeChecks"] == ["serfHealth"]
        assert holder.kv.put(key, "c1", acquire=held_sid) is True
        contender_sid = contender.session.create(name="contender", lock_delay=lock_delay_s)
        assert contender.kv.put(key, "c2", acquire=contender_sid) is False  # held

        attempts: list[tuple[float, bool]] = []
        stop = threading.Event()

        def contend() -> None:
            while not stop.is_set():
                # When the request left: the agent's lock-delay check came after it.
                sent = time.monotonic()
                ok = contender.kv.put(key, "c2", acquire=contender_sid)
                attempts.append((sent, bool(ok)))
                if ok:
                    return
                time.sleep(0.1)

        c1.kill()
        thread = threading.Thread(target=contend)
        thread.start()
        try:
            # The lock is released by the invalidation (observed on the server, polled closely).
            def released() -> float | None:
                _, entry = observer.kv.get(key)
                return time.monotonic() if entry is not None and not entry.get("Session") else None

            released_at = wait_for(released, timeout=90, interval=0.05,
                                   what=lambda: f"the lock released\n{srv.log()}")
            assert serf_health(srv, "c1") == "critical"
            assert observer.session.info(held_sid)[1] is None  # invalidated
            thread.join(60)
            assert not thread.is_alive(), "the contender never got the lock"
        finally:
            stop.set()
            thread.join(10)
        acquired_at = attempts[-1][0]
        assert attempts[-1][1] is True
        # Refused during the lock-delay (the client agent asked a server), granted after it.
        assert any(not ok for t, ok in attempts if t > released_at), attempts
        assert acquired_at - released_at >= lock_delay_s - 0.5, (acquired_at - released_at)
        _, entry = observer.kv.get(key)
        assert entry["Session"] == contender_sid and entry["Value"] == b"c2"
    finally:
        for agent in (srv, c1, c2):
            agent.stop()
