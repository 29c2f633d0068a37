"""ACLs on a real cluster: three servers and client agents, driven by py-consul and the CLI.

Bootstrap (once, then refused with the reset index), a policy and a token, an allowed call that
succeeds, a denied call that is a 403 and changes nothing, a filtered list, the server authorising
a client agent's forwarded write with the caller's token, the CLI with `-token` and
`CONSUL_HTTP_TOKEN`, and tokens surviving a kill -9 of the leader.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from cluster_helpers import Cluster
from helpers import AgentProcess, proconsul_command, wait_for

ACL_HCL = 'acl { enabled = true  default_policy = "deny"  down_policy = "extend-cache" }'
APP_RULES = {
    "key_prefix": {"app/": {"policy": "write"}},
    "service_prefix": {"": {"policy": "read"}},
    "node_prefix": {"": {"policy": "read"}},
}
AGENT_RULES = {"node_prefix": {"": {"policy": "write"}}, "service_prefix": {"": {"policy": "write"}}}


class ACLCluster:
    def __init__(self, root: Path) -> None:
        self.servers = Cluster(root, hcl=ACL_HCL)
        prefix = self.servers.prefix
        joins = [f"-retry-join={ip}" for ip in self.servers.ips]
        # c1 enforces ACLs itself; c2 has them off, so only the servers can refuse its writes.
        self.c1 = AgentProcess(*joins, "-retry-interval=1s", "-hcl", ACL_HCL, dev=False,
                               ip=f"{prefix}.4", node="c1", data_dir=str(root / "c1"))
        self.c2 = AgentProcess(*joins, "-retry-interval=1s", dev=False,
                               ip=f"{prefix}.5", node="c2", data_dir=str(root / "c2"))

    def start(self) -> None:
        self.servers.start()
        self.c1.start()
        self.c2.start()

    def stop(self) -> None:
        for a in (self.c1, self.c2):
            a.stop()
        self.servers.stop()


@pytest.fixture()
def acl_cluster(tmp_path: Path) -> Iterator[ACLCluster]:
    c = ACLCluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _client(agent: AgentProcess, token: str | None = None) -> consul.Consul:
    return consul.Consul(host=agent.ip, port=agent.http_port, token=token)


def _raw(agent: AgentProcess, method: str, path: str, token: str = "", body: bytes | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"{agent.url}{path}", data=body, method=method)
    if token:
        req.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _bootstrap(agent: AgentProcess) -> str:
    """Bootstrap through `agent`, waiting for the leader's ACL initialisation to be reachable."""
    result: dict[str, str] = {}

    def attempt() -> bool:
        token = _client(agent).acl.bootstrap()
        result.update(token)
        return True

    wait_for(attempt, timeout=60, what="ACL bootstrap")
    return result["SecretID"]


def _cli(agent: AgentProcess, command: str, *args: str, token: str | None = None, env_token: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    """`proconsul COMMAND [-token=T] ARGS...` against `agent` (flags go before positionals)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env["CONSUL_HTTP_ADDR"] = agent.addr
    if env_token is not None:
        env["CONSUL_HTTP_TOKEN"] = env_token
    flags = [f"-token={token}"] if token is not None else []
    argv = [proconsul_command(), *command.split(), *flags, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def test_acl_enforcement_on_a_cluster_with_client_agents(acl_cluster: ACLCluster) -> None:
    c1, c2 = acl_cluster.c1, acl_cluster.c2
    server = acl_cluster.servers.nodes[acl_cluster.servers.ips[0]]
    mgmt = _bootstrap(c1)
    m = _client(c1, mgmt)

    # Bootstrap is once: afterwards 403 naming the reset index.
    with pytest.raises(consul.ACLPermissionDenied, match=r"ACL bootstrap no longer allowed \(reset index: \d+\)"):
        _client(server).acl.bootstrap()
    # The reset file is read where Consul reads it: on the leader, whichever agent is asked.
    status, _, body = _raw(c1, "PUT", "/v1/acl/bootstrap")
    index = body.decode().rsplit(" ", 1)[1].rstrip(")")
    leader_ip = acl_cluster.servers.leader_ip(server)
    reset_file = acl_cluster.servers.data_dir(leader_ip) / "acl-bootstrap-reset"
    reset_file.write_text(index)
    again = _client(c1).acl.bootstrap()
    assert again["SecretID"] != mgmt and not reset_file.exists()
    assert _raw(c1, "PUT", "/v1/acl/bootstrap")[0] == 403

    # Without a token (anonymous, default deny) a KV read is refused with Consul's text.
    status, headers, body = _raw(c1, "GET", "/v1/kv/app/a")
    assert status == 403 and headers["x-consul-default-acl-policy"] == "deny"
    assert body.decode() == ("Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' "
                             "lacks permission 'key:read' on \"app/a\"")

    policy = m.acl.policy.create("app", rules=APP_RULES, description="app keys")
    token = m.acl.token.create(policies_name=["app"], description="app token")
    assert token["Policies"] == [{"ID": policy["ID"], "Name": "app"}]
    app = _client(c1, token["SecretID"])

    # Allowed: written through the client agent, read back.
    assert app.kv.put("app/a", "1") is True
    assert app.kv.get("app/a")[1]["Value"] == b"1"

    # Denied: 403 and nothing written.
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'key:write' on \"other/x\""):
        app.kv.put("other/x", "1")
    assert m.kv.get("other/x")[1] is None
    with pytest.raises(consul.ACLPermissionDenied):
        app.acl.token.list()

    # A list is filtered to what the token may read, and says so.
    assert m.kv.put("secret/k", "s") is True
    status, headers, body = _raw(c1, "GET", "/v1/kv/?recurse", token["SecretID"])
    assert status == 200 and headers.get("x-consul-results-filtered-by-acls") == "true"
    assert [e["Key"] for e in json.loads(body)] == ["app/a"]
    assert [e["Key"] for e in m.kv.get("", recurse=True)[1]] == ["app/a", "secret/k"]

    # The client agent with ACLs off does not check; the server does, with the caller's token.
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'key:write' on \"other/y\""):
        _client(c2, token["SecretID"]).kv.put("other/y", "1")
    assert m.kv.get("other/y")[1] is None
    assert _client(c2, token["SecretID"]).kv.put("app/b", "2") is True

    # Catalog writes need service:write; reads are filtered by node/service read.
    with pytest.raises(consul.ACLPermissionDenied, match="service:write"):
        app.agent.service.register("web", port=80)
    assert m.agent.service.register("web", port=80)
    wait_for(lambda: "web" in app.catalog.services()[1], timeout=60, what="web in the catalog")
    # (c1 has no agent token yet: its node info is refused by the servers' ACLs, which holds
    # back nothing else, as in Consul.) Its own syncs use the agent token once it has one.
    agent_policy = m.acl.policy.create("agents", rules=AGENT_RULES)
    agent_token = m.acl.token.create(policies_id=[agent_policy["ID"]], description="agent")
    m.agent.token.set("agent", agent_token["SecretID"])
    assert m.agent.service.register("api", port=81)
    wait_for(lambda: "api" in app.catalog.services()[1], timeout=60, what="api in the catalog")

    # The agent cache (?cached) keeps an entry per token, and ACL filtering applies to its answers.
    for tok, expected in ((token["SecretID"], "MISS"), (token["SecretID"], "HIT"), ("", "MISS"), (mgmt, "MISS")):
        status, headers, body = _raw(c1, "GET", "/v1/catalog/services?cached", tok)
        assert status == 200 and headers["x-cache"] == expected, (tok == mgmt, headers)
        # Anonymous (default deny) sees nothing, and is not told that something was hidden.
        assert ("web" in json.loads(body)) == (tok != ""), body
        assert (json.loads(body) == {}) == (tok == "") and "x-consul-results-filtered-by-acls" not in headers

    # Token updates take effect; deleted tokens are "ACL not found".
    m.acl.token.delete(token["AccessorID"])
    wait_for(lambda: _raw(server, "GET", "/v1/kv/app/a", token["SecretID"])[0] == 403, timeout=30,
             what="deleted token refused")
    assert _raw(server, "GET", "/v1/kv/app/a", token["SecretID"])[2] == b"ACL not found"


def test_acl_cli_and_tokens_survive_a_leader_kill(acl_cluster: ACLCluster) -> None:
    servers = acl_cluster.servers
    first = servers.nodes[servers.ips[0]]
    boot = _cli(first, "acl bootstrap")
    assert boot.returncode == 0, boot.stderr
    mgmt = next(line.split()[-1] for line in boot.stdout.splitlines() if line.startswith("SecretID:"))
    again = _cli(first, "acl bootstrap")
    assert again.returncode == 1 and "ACL bootstrap no longer allowed" in again.stderr

    created = _cli(first, "acl policy create", "-name", "ro", "-description", "read kv",
                   "-rules", 'key_prefix "" { policy = "read" }', token=mgmt)
    assert created.returncode == 0, created.stderr
    assert "Name:         ro" in created.stdout and 'key_prefix "" { policy = "read" }' in created.stdout
    made = _cli(first, "acl token create", "-description", "reader", "-policy-name", "ro",
                "-format=json", env_token=mgmt)
    assert made.returncode == 0, made.stderr
    reader = json.loads(made.stdout)
    assert [p["Name"] for p in reader["Policies"]] == ["ro"]
    listed = _cli(first, "acl token list", env_token=mgmt)
    assert listed.returncode == 0 and reader["AccessorID"] in listed.stdout
    denied = _cli(first, "acl token list", token=reader["SecretID"])
    assert denied.returncode == 1 and "403" in denied.stderr and "acl:read" in denied.stderr
    read = _cli(first, "acl token read", "-id", reader["AccessorID"], token=mgmt)
    assert read.returncode == 0 and "   " + reader["Policies"][0]["ID"] + " - ro" in read.stdout
    assert _cli(first, "kv put", "cfg/x", "1", token=mgmt).returncode == 0
    assert _cli(first, "kv put", "cfg/y", "1", token=reader["SecretID"]).returncode == 1

    # Kill -9 the leader: the policy and token are in the replicated state, on every survivor.
    leader_ip = servers.leader_ip(first)
    servers.nodes[leader_ip].kill()
    survivors = [a for ip, a in servers.nodes.items() if ip != leader_ip]

    def new_leader() -> bool:
        ip = servers.leader_ip(survivors[0])
        return bool(ip) and ip != leader_ip

    wait_for(new_leader, timeout=60, what="a new leader")
    for agent in survivors:
        got = _cli(agent, "kv get", "cfg/x", token=reader["SecretID"])
        assert got.returncode == 0 and got.stdout.strip() == "1", got.stderr
        assert _cli(agent, "kv put", "cfg/z", "1", token=reader["SecretID"]).returncode == 1
        shown = _cli(agent, "acl token read", "-id", reader["AccessorID"], "-format=json", token=mgmt)
        assert shown.returncode == 0 and json.loads(shown.stdout)["Description"] == "reader"
        # The bootstrap is in the replicated state too: the new leader refuses another one.
        status, _, body = _raw(agent, "PUT", "/v1/acl/bootstrap")
        assert status == 403 and b"ACL bootstrap no longer allowed" in body, body


def test_sessions_locks_events_keyring_coordinates_and_dns_through_a_client_agent(acl_cluster: ACLCluster) -> None:
    """The rest of the endpoint families on the cluster, through the ACL-enforcing client agent:
    an allowed call succeeds, a denied one is a 403 that changes nothing, a list is filtered."""
    c1 = acl_cluster.c1
    mgmt = _bootstrap(c1)
    m = _client(c1, mgmt)
    agent_policy = m.acl.policy.create("agents", rules=AGENT_RULES)
    m.agent.token.set("agent", m.acl.token.create(policies_id=[agent_policy["ID"]])["SecretID"])
    wait_for(lambda: "c1" in [n["Node"] for n in m.catalog.nodes()[1]], timeout=60, what="c1 in the catalog")
    server_node = next(n["Node"] for n in m.catalog.nodes()[1] if n["Node"] not in ("c1", "c2"))
    rules = {
        "session_prefix": {"c1": {"policy": "write"}},
        "key_prefix": {"lock/": {"policy": "write"}},
        "event_prefix": {"deploy": {"policy": "write"}},
        "node_prefix": {"c1": {"policy": "read"}},
        "keyring": "read",
    }
    policy = m.acl.policy.create("families", rules=rules)
    user = m.acl.token.create(policies_id=[policy["ID"]])["SecretID"]
    u = _client(c1, user)

    # Sessions: on the token's node only; the list shows only what session read covers.
    sid = u.session.create(name="mine", node="c1", checks=[])
    assert u.session.renew(sid)["ID"] == sid  # forwarded to the leader with the caller's token
    with pytest.raises(consul.ACLPermissionDenied, match="session:write"):
        u.session.create(name="theirs", node=server_node, checks=[])
    other = m.session.create(name="theirs", node=server_node, checks=[])
    assert {s["ID"] for s in m.session.list()[1]} == {sid, other}
    status, headers, body = _raw(c1, "GET", "/v1/session/list", user)
    assert status == 200 and [s["ID"] for s in json.loads(body)] == [sid]
    assert headers.get("x-consul-results-filtered-by-acls") == "true"

    # Locks: a held key under the token's prefix; elsewhere refused and not held.
    assert u.kv.put("lock/leader", "me", acquire=sid) is True
    with pytest.raises(consul.ACLPermissionDenied, match="key:write"):
        u.kv.put("other/leader", "me", acquire=sid)
    assert m.kv.get("other/leader")[1] is None and m.kv.get("lock/leader")[1]["Session"] == sid

    # Events: fired only under the token's prefix; the list is what event read covers.
    assert u.event.fire("deploy-web", body="v2")
    with pytest.raises(consul.ACLPermissionDenied, match="event:write"):
        u.event.fire("restart", body="x")
    assert m.event.fire("audit", body="y")

    # The list is what event read covers, read on the client agent that fired them (every agent,
    # the firing one included, receives the events over LAN gossip).
    def events(secret: str) -> set[str]:
        status, _, body = _raw(c1, "GET", "/v1/event/list", secret)
        assert status == 200, body
        return {e["Name"] for e in json.loads(body)}

    wait_for(lambda: events(mgmt) >= {"deploy-web", "audit"}, timeout=120,
             what=lambda: f"both events on c1\n{c1.log()}")
    assert events(user) == {"deploy-web"}
    assert events("") == set()  # anonymous, default deny

    # Keyring: reading needs keyring:read, changing it keyring:write.
    assert _raw(c1, "GET", "/v1/operator/keyring")[0] == 403
    assert _raw(c1, "GET", "/v1/operator/keyring", user)[0] != 403
    status, _, body = _raw(c1, "POST", "/v1/operator/keyring", user, json.dumps({"Key": "x" * 44}).encode())
    assert status == 403 and b"keyring:write" in body, body

    # Coordinates: only the nodes node read covers.
    def coordinates(secret: str) -> set[str]:
        status, _, body = _raw(c1, "GET", "/v1/coordinate/nodes", secret)
        assert status == 200, body
        return {c["Node"] for c in json.loads(body)}

    # c1's own updates carry its agent token (node:write on c1), checked by the servers.
    wait_for(lambda: "c1" in coordinates(mgmt), timeout=90, what="c1's coordinate")
    assert coordinates(user) <= {"c1"}

    # DNS on the client agent answers with its default token: none, so anonymous sees nothing,
    # until a default token that can read services and nodes is set.
    def dig(name: str) -> str:
        return subprocess.run(["dig", f"@{c1.ip}", "-p", str(c1.dns_port), "+tries=1", "+time=5", name, "A"],
                              capture_output=True, text=True, timeout=30).stdout

    assert "status: NXDOMAIN" in dig("consul.service.consul")
    reader = m.acl.policy.create("dns", rules={"service_prefix": {"": {"policy": "read"}},
                                               "node_prefix": {"": {"policy": "read"}}})
    m.agent.token.set("default", m.acl.token.create(policies_id=[reader["ID"]])["SecretID"])
    wait_for(lambda: "status: NOERROR" in dig("consul.service.consul"), timeout=60,
             what="consul.service.consul answered with a default token that may read it")
