"""ACLs on one dev agent: roles, token self/clone/update, the agent's own tokens (persisted),
DNS with the default token, routes without a precise check failing closed, and the HTTP shapes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from helpers import AgentProcess, proconsul_command, wait_for

MGMT = "11111111-2222-3333-4444-555555555555"
RECOVERY = "99999999-2222-3333-4444-555555555555"


def _hcl(tmp: Path) -> str:
    return (f'acl {{ enabled = true  default_policy = "deny"  enable_token_persistence = true '
            f'tokens {{ initial_management = "{MGMT}"  agent_recovery = "{RECOVERY}" }} }}')


@pytest.fixture()
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    a = AgentProcess("-hcl", _hcl(tmp_path), data_dir=str(tmp_path / "data"))
    a.start()
    try:
        wait_for(lambda: _raw(a, "GET", "/v1/acl/token/self", MGMT)[0] == 200, timeout=60,
                 what="the initial management token")
        yield a
    finally:
        a.stop()


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


def _dig(agent: AgentProcess, *args: str) -> str:
    binary = shutil.which("dig")
    assert binary, "dig is missing: scripts/setup-env test installs bind9-dnsutils"
    return subprocess.run([binary, f"@{agent.ip}", "-p", str(agent.dns_port), "+tries=1", "+time=5", *args],
                          capture_output=True, text=True, timeout=30).stdout


def test_roles_self_clone_update_and_bearer_tokens(agent: AgentProcess) -> None:
    m = consul.Consul(host=agent.ip, port=agent.http_port, token=MGMT)
    policy = m.acl.policy.create("web-kv", rules={"key_prefix": {"web/": {"policy": "write"}}})
    role = m.acl.role.create("web", policies_id=[policy["ID"]], description="web role")
    assert role["Policies"] == [{"ID": policy["ID"], "Name": "web-kv"}]
    assert m.acl.role.read_by_name("web")["ID"] == role["ID"]
    token = m.acl.token.create(roles_name=["web"], description="through a role")
    assert token["Roles"] == [{"ID": role["ID"], "Name": "web"}]
    assert [t["AccessorID"] for t in m.acl.token.list(role=role["ID"])] == [token["AccessorID"]]
    assert [r["Name"] for r in m.acl.role.list(policy=policy["ID"])] == ["web"]

    # The token works from Authorization: Bearer and ?token= as well as X-Consul-Token.
    req = urllib.request.Request(f"{agent.url}/v1/kv/web/a", data=b"1", method="PUT")
    req.add_header("Authorization", f"Bearer {token['SecretID']}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.read() == b"true"
    assert _raw(agent, "GET", f"/v1/kv/web/a?token={token['SecretID']}")[0] == 200
    assert _raw(agent, "PUT", f"/v1/kv/app/a?token={token['SecretID']}", body=b"1")[0] == 403

    me = consul.Consul(host=agent.ip, port=agent.http_port, token=token["SecretID"]).acl.token.read_self()
    assert me["AccessorID"] == token["AccessorID"] and me["Description"] == "through a role"
    clone = m.acl.token.clone(token["AccessorID"], description="the clone")
    assert clone["AccessorID"] != token["AccessorID"] and clone["Roles"] == token["Roles"]
    updated = m.acl.token.update(token["AccessorID"], description="renamed", policies_id=[policy["ID"]])
    assert updated["Description"] == "renamed" and updated["CreateIndex"] == token["CreateIndex"]
    assert updated["ModifyIndex"] > token["ModifyIndex"] and "Roles" not in updated

    # Removing the role's policy takes the permission away from tokens using the role.
    m.acl.role.update(role["ID"], "web", policies_id=[])
    status, _, body = _raw(agent, "PUT", "/v1/kv/web/b", clone["SecretID"], b"1")
    assert status == 403 and b"lacks permission 'key:write' on \"web/b\"" in body

    # Bad input is a 400 with a reason; unknown IDs are "ACL not found".
    with pytest.raises(consul.ConsulException, match="Invalid Policy"):
        m.acl.policy.create("bad", rules={"key": {"x": {"policy": "admin"}}})
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        m.acl.token.read("00000000-1111-2222-3333-444444444444")
    with pytest.raises(consul.ConsulException, match="not permitted"):
        m.acl.policy.delete("00000000-0000-0000-0000-000000000001")


def test_fail_closed_dns_and_agent_tokens(agent: AgentProcess, tmp_path: Path) -> None:
    m = consul.Consul(host=agent.ip, port=agent.http_port, token=MGMT)
    wide = m.acl.policy.create("wide", rules={"key_prefix": {"": {"policy": "write"}},
                                              "operator": "write", "agent_prefix": {"": {"policy": "write"}}})
    wide_token = m.acl.token.create(policies_id=[wide["ID"]])["SecretID"]
    # /v1/snapshot has no finer check than management: a wide non-management token is refused.
    status, _, body = _raw(agent, "GET", "/v1/snapshot", wide_token)
    assert status == 403 and b"acl:write" in body
    assert _raw(agent, "GET", "/v1/snapshot", MGMT)[0] == 200
    # Operator reads need operator:read.
    assert _raw(agent, "GET", "/v1/operator/raft/configuration", wide_token)[0] == 200
    assert _raw(agent, "GET", "/v1/operator/raft/configuration")[0] == 403
    # The metrics and their stream need agent:read (an allowed stream would not end: not read here).
    assert _raw(agent, "GET", "/v1/agent/metrics/stream")[0] == 403
    assert _raw(agent, "GET", "/v1/agent/metrics")[0] == 403

    # DNS reads with the agent's default token: none set, anonymous, default deny: NXDOMAIN.
    assert m.agent.service.register("web", port=80)
    wait_for(lambda: "web" in m.catalog.services()[1], timeout=30, what="web registered")
    assert "status: NXDOMAIN" in _dig(agent, "web.service.consul", "A")
    dns_policy = m.acl.policy.create("dns", rules={"service_prefix": {"": {"policy": "read"}},
                                                   "node_prefix": {"": {"policy": "read"}}})
    dns_token = m.acl.token.create(policies_id=[dns_policy["ID"]])["SecretID"]
    m.agent.token.set("default", dns_token)
    wait_for(lambda: "status: NOERROR" in _dig(agent, "web.service.consul", "A"), timeout=30,
             what="web answered once the default token can read it")
    # The default token also serves HTTP requests without a token.
    assert _raw(agent, "GET", "/v1/catalog/services")[0] == 200
    # acl.tokens.dns (here through /v1/agent/token/dns) takes DNS over from the default token.
    blind = m.acl.token.create(description="reads nothing")["SecretID"]
    assert _raw(agent, "PUT", "/v1/agent/token/dns", MGMT, json.dumps({"Token": blind}).encode())[0] == 200
    wait_for(lambda: "status: NXDOMAIN" in _dig(agent, "web.service.consul", "A"), timeout=30,
             what="DNS answering with the dns token, which reads nothing")
    assert _raw(agent, "GET", "/v1/catalog/services")[0] == 200  # HTTP still uses the default token
    assert json.loads((tmp_path / "data" / "acl-tokens.json").read_text())["dns"] == blind
    assert _raw(agent, "PUT", "/v1/agent/token/dns", MGMT, json.dumps({"Token": dns_token}).encode())[0] == 200
    wait_for(lambda: "status: NOERROR" in _dig(agent, "web.service.consul", "A"), timeout=30,
             what="web answered with a dns token that can read it")

    # enable_token_persistence: tokens set through the API are kept in data_dir (0600).
    saved = json.loads((tmp_path / "data" / "acl-tokens.json").read_text())
    assert saved["default"] == dns_token
    assert (tmp_path / "data" / "acl-tokens.json").stat().st_mode & 0o077 == 0

    # The agent recovery token works for agent endpoints only.
    assert _raw(agent, "GET", "/v1/agent/self", RECOVERY)[0] == 200
    assert _raw(agent, "GET", "/v1/kv/x", RECOVERY)[0] == 403


def test_dns_lists_only_instances_on_nodes_the_token_may_read(agent: AgentProcess) -> None:
    """Consul's DNS reads the health endpoint with the DNS token, whose filter drops an instance
    unless the token may read its node and its service: service read alone finds nothing."""
    m = consul.Consul(host=agent.ip, port=agent.http_port, token=MGMT)
    assert m.agent.service.register("web", port=80)
    wait_for(lambda: "web" in m.catalog.services()[1], timeout=30, what="web registered")
    node = json.loads(_raw(agent, "GET", "/v1/agent/self", MGMT)[2])["Config"]["NodeName"]
    service_only = m.acl.policy.create("svc-only", rules={"service": {"web": {"policy": "read"}}})
    created = m.acl.token.create(policies_id=[service_only["ID"]])
    token = created["SecretID"]
    assert _raw(agent, "PUT", "/v1/agent/token/dns", MGMT, json.dumps({"Token": token}).encode())[0] == 200
    # Asked after the token was set (the agent takes it at once): no instance is visible.
    for qtype in ("A", "SRV"):
        assert "status: NXDOMAIN" in _dig(agent, "web.service.consul", qtype), qtype
    assert "status: NXDOMAIN" in _dig(agent, f"{node}.node.consul", "A")
    nodes = m.acl.policy.create("nodes", rules={"node_prefix": {"": {"policy": "read"}}})
    assert m.acl.token.update(created["AccessorID"], policies_id=[service_only["ID"], nodes["ID"]])
    wait_for(lambda: "status: NOERROR" in _dig(agent, "web.service.consul", "A"), timeout=60,
             what="web answered once the DNS token may read its node")
    srv = _dig(agent, "web.service.consul", "SRV")
    assert "status: NOERROR" in srv and f"{node.lower()}.node.dc1.consul." in srv, srv
    assert "status: NOERROR" in _dig(agent, f"{node}.node.consul", "A")


def test_bootstrap_reset_file(agent: AgentProcess, tmp_path: Path) -> None:
    # The initial management token counted as the bootstrap: refused, naming the reset index.
    status, _, body = _raw(agent, "PUT", "/v1/acl/bootstrap")
    assert status == 403
    text = body.decode()
    assert text.startswith("Permission denied: ACL bootstrap no longer allowed (reset index: ")
    index = int(text.rsplit(" ", 1)[1].rstrip(")"))
    reset = tmp_path / "data" / "acl-bootstrap-reset"
    reset.write_text(f"{index}\n")
    status, _, body = _raw(agent, "PUT", "/v1/acl/bootstrap")
    assert status == 200, body
    new = json.loads(body)
    assert new["Policies"] == [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]
    assert not reset.exists()
    assert _raw(agent, "GET", "/v1/acl/tokens", new["SecretID"])[0] == 200
    assert _raw(agent, "PUT", "/v1/acl/bootstrap")[0] == 403


def test_tokens_survive_a_snapshot_save_and_restore(agent: AgentProcess) -> None:
    m = consul.Consul(host=agent.ip, port=agent.http_port, token=MGMT)
    policy = m.acl.policy.create("snap", rules={"key_prefix": {"snap/": {"policy": "write"}}})
    token = m.acl.token.create(policies_id=[policy["ID"]], description="in the snapshot")
    status, _, archive = _raw(agent, "GET", "/v1/snapshot", MGMT)
    assert status == 200 and archive
    m.acl.token.delete(token["AccessorID"])
    m.acl.policy.delete(policy["ID"])
    assert _raw(agent, "PUT", "/v1/kv/snap/a", token["SecretID"], b"1")[2] == b"ACL not found"
    assert _raw(agent, "PUT", "/v1/snapshot", MGMT, archive)[0] == 200
    assert m.acl.token.read(token["AccessorID"])["Description"] == "in the snapshot"
    assert _raw(agent, "PUT", "/v1/kv/snap/a", token["SecretID"], b"1")[0] == 200
    assert _raw(agent, "PUT", "/v1/kv/other", token["SecretID"], b"1")[0] == 403
    # The restored state still records the bootstrap: nobody can bootstrap again.
    status, _, body = _raw(agent, "PUT", "/v1/acl/bootstrap")
    assert status == 403 and body.startswith(b"Permission denied: ACL bootstrap no longer allowed"), body


def _cli(agent: AgentProcess, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`proconsul COMMAND ARGS` against `agent` with the management token from CONSUL_HTTP_TOKEN."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env.update(CONSUL_HTTP_ADDR=agent.addr, CONSUL_HTTP_TOKEN=MGMT)
    return subprocess.run([proconsul_command(), *command.split(), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_policies_roles_and_token_updates(agent: AgentProcess, tmp_path: Path) -> None:
    rules = tmp_path / "rules.hcl"
    rules.write_text('key_prefix "cli/" { policy = "write" }\n')
    made = _cli(agent, "acl policy create", "-name", "cli-kv", "-rules", f"@{rules}", "-format=json")
    assert made.returncode == 0, made.stderr
    policy = json.loads(made.stdout)
    assert policy["Rules"] == rules.read_text()
    upd = _cli(agent, "acl policy update", "-id", policy["ID"], "-description", "now described")
    assert upd.returncode == 0 and "Description:  now described" in upd.stdout
    assert "cli-kv" in _cli(agent, "acl policy list").stdout

    role = _cli(agent, "acl role create", "-name", "cli-role", "-policy-name", "cli-kv", "-format=json")
    assert role.returncode == 0, role.stderr
    role_id = json.loads(role.stdout)["ID"]
    shown = _cli(agent, "acl role read", "-name", "cli-role")
    assert shown.returncode == 0 and f"   {policy['ID']} - cli-kv" in shown.stdout
    assert role_id in _cli(agent, "acl role list").stdout

    tok = _cli(agent, "acl token create", "-description", "via role", "-role-name", "cli-role", "-format=json")
    assert tok.returncode == 0, tok.stderr
    token = json.loads(tok.stdout)
    assert _raw(agent, "PUT", "/v1/kv/cli/a", token["SecretID"], b"1")[0] == 200
    upd = _cli(agent, "acl token update", "-id", token["AccessorID"], "-description", "renamed")
    assert upd.returncode == 0 and "Token updated successfully." in upd.stdout and "renamed" in upd.stdout
    assert "   " + role_id + " - cli-role" in upd.stdout  # links kept when none are given
    clone = _cli(agent, "acl token clone", "-id", token["AccessorID"], "-description", "copy", "-format=json")
    assert clone.returncode == 0 and json.loads(clone.stdout)["Description"] == "copy"
    gone = _cli(agent, "acl token delete", "-id", token["AccessorID"])
    assert gone.returncode == 0 and gone.stdout.strip() == f'Token "{token["AccessorID"]}" deleted successfully'
    assert _raw(agent, "PUT", "/v1/kv/cli/a", token["SecretID"], b"1")[2] == b"ACL not found"
    assert _cli(agent, "acl role delete", "-id", role_id).returncode == 0
    assert _cli(agent, "acl policy delete", "-name", "cli-kv").stdout.strip() == (
        f'Policy "{policy["ID"]}" deleted successfully')
    missing = _cli(agent, "acl policy read", "-name", "cli-kv")
    assert missing.returncode == 1 and "ACL not found" in missing.stderr


def test_catalog_health_and_agent_lists_are_filtered(agent: AgentProcess) -> None:
    m = consul.Consul(host=agent.ip, port=agent.http_port, token=MGMT)
    for name in ("web", "db"):
        assert m.agent.service.register(name, port=80, check=consul.Check.ttl("30s"))
    wait_for(lambda: {"web", "db"} <= set(m.catalog.services()[1]), timeout=30, what="both services")
    policy = m.acl.policy.create("web-only", rules={"service": {"web": {"policy": "read"}},
                                                    "node_prefix": {"": {"policy": "read"}}})
    secret = m.acl.token.create(policies_id=[policy["ID"]])["SecretID"]

    def get(path: str) -> tuple[dict[str, str], object]:
        status, headers, body = _raw(agent, "GET", path, secret)
        assert status == 200, (path, status, body)
        return headers, json.loads(body)

    headers, services = get("/v1/catalog/services")
    assert set(services) == {"web"} and headers["x-consul-results-filtered-by-acls"] == "true"
    _, nodes = get("/v1/health/service/db")
    assert nodes == []
    _, nodes = get("/v1/health/service/web")
    assert [n["Service"]["Service"] for n in nodes] == ["web"]
    _, local = get("/v1/agent/services")
    assert {s["Service"] for s in local.values()} == {"web"}
    _, checks = get("/v1/health/state/any")
    assert {c["ServiceName"] for c in checks} <= {"web", ""}
    _, catalog_node = get(f"/v1/catalog/node/{agent.node}")
    assert {s["Service"] for s in catalog_node["Services"].values()} == {"web"}
    # Without node:read the node's own record is hidden too.
    no_nodes = m.acl.policy.create("svc-only", rules={"service_prefix": {"": {"policy": "read"}}})
    blind = m.acl.token.create(policies_id=[no_nodes["ID"]])["SecretID"]
    status, _, body = _raw(agent, "GET", "/v1/catalog/nodes", blind)
    assert status == 200 and json.loads(body) == []


def test_txn_operations_are_each_checked(agent: AgentProcess) -> None:
    m = consul.Consul(host=agent.ip, port=agent.http_port, token=MGMT)
    policy = m.acl.policy.create("txn-kv", rules={"key_prefix": {"t/": {"policy": "write"}}})
    secret = m.acl.token.create(policies_id=[policy["ID"]])["SecretID"]
    ops = [{"KV": {"Verb": "set", "Key": "t/a", "Value": "MQ=="}},
           {"KV": {"Verb": "set", "Key": "u/b", "Value": "MQ=="}}]
    status, _, body = _raw(agent, "PUT", "/v1/txn", secret, json.dumps(ops).encode())
    assert status == 409
    errors = json.loads(body)["Errors"]
    assert errors == [{"OpIndex": 1, "What": f"Permission denied: token with AccessorID '{_accessor(m, secret)}' "
                       "lacks permission 'key:write' on \"u/b\""}]
    assert m.kv.get("t/a")[1] is None  # nothing ran
    status, _, _ = _raw(agent, "PUT", "/v1/txn", secret, json.dumps(ops[:1]).encode())
    assert status == 200 and m.kv.get("t/a")[1]["Value"] == b"1"


def _accessor(m: consul.Consul, secret: str) -> str:
    return next(t["AccessorID"] for t in m.acl.token.list() if t["SecretID"] == secret)


def test_prepared_queries_follow_query_rules(agent: AgentProcess) -> None:
    """`query`/`query_prefix` rules on the query's name for changes and reads (tokens hidden without
    acl:write), and execution results filtered by the query's own token, else the caller's."""
    m = consul.Consul(host=agent.ip, port=agent.http_port, token=MGMT)
    policy = m.acl.policy.create("pq", rules={"query_prefix": {"web-": {"policy": "write"}},
                                              "service_prefix": {"": {"policy": "read"}},
                                              "node_prefix": {"": {"policy": "read"}}})
    writer = m.acl.token.create(policies_id=[policy["ID"]])["SecretID"]
    blind = m.acl.token.create(description="no rules")["SecretID"]
    assert m.agent.service.register("pqweb", port=80)
    wait_for(lambda: "pqweb" in m.catalog.services()[1], timeout=30, what="pqweb registered")

    def post(secret: str, body: dict) -> tuple[int, bytes]:
        status, _, raw = _raw(agent, "POST", "/v1/query", secret, json.dumps(body).encode())
        return status, raw

    status, raw = post(writer, {"Name": "web-q", "Service": {"Service": "pqweb"}})
    assert status == 200, raw
    web_q = json.loads(raw)["ID"]
    status, raw = post(writer, {"Name": "db-q", "Service": {"Service": "pqweb"}})
    assert status == 403 and b"lacks permission 'query:write' on \"db-q\"" in raw
    status, raw = post(MGMT, {"Name": "db-q", "Service": {"Service": "pqweb"}, "Token": writer})
    assert status == 200, raw
    db_q = json.loads(raw)["ID"]
    status, raw = post(MGMT, {"Name": "web-tok", "Service": {"Service": "pqweb"}, "Token": writer})
    web_tok = json.loads(raw)["ID"]

    # Reads: only what query read covers, tokens hidden from a token without acl:write.
    status, headers, raw = _raw(agent, "GET", "/v1/query", writer)
    assert status == 200 and headers.get("x-consul-results-filtered-by-acls") == "true"
    listed = {q["Name"]: q["Token"] for q in json.loads(raw)}
    assert listed == {"web-q": "", "web-tok": "<hidden>"}
    assert {q["Name"]: q["Token"] for q in m.query.list()}["web-tok"] == writer
    assert _raw(agent, "GET", f"/v1/query/{db_q}", writer)[:3:2] == (403, b"Permission denied")
    assert _raw(agent, "GET", f"/v1/query/{web_q}", writer)[0] == 200
    assert _raw(agent, "GET", "/v1/query/db-q/explain", writer)[0] == 403

    # Changes need write on the stored query's name and on the new one.
    assert _raw(agent, "DELETE", f"/v1/query/{db_q}", writer)[0] == 403
    moved = json.dumps({"Name": "db-moved", "Service": {"Service": "pqweb"}}).encode()
    assert _raw(agent, "PUT", f"/v1/query/{web_q}", writer, moved)[0] == 403
    renamed = json.dumps({"Name": "web-renamed", "Service": {"Service": "pqweb"}}).encode()
    assert _raw(agent, "PUT", f"/v1/query/{web_q}", writer, renamed)[0] == 200

    # Execution: no query rule needed; instances filtered by the query's token, else the caller's.
    def execute(query_id: str, secret: str) -> tuple[list[str], bool]:
        status, _, raw = _raw(agent, "GET", f"/v1/query/{query_id}/execute", secret)
        assert status == 200, raw
        answer = json.loads(raw)
        return [n["Service"]["Service"] for n in answer["Nodes"]], answer["ResultsFilteredByACLs"]

    assert execute(web_q, writer) == (["pqweb"], False)
    assert execute(web_q, blind) == ([], True)
    assert execute(db_q, blind) == (["pqweb"], False)  # the query's own token reads pqweb
    assert _raw(agent, "DELETE", f"/v1/query/{web_tok}", writer)[0] == 200
