"""The deprecated python-consul client (still widely deployed) against a real dev agent.

python-consul and py-consul both install a package named `consul`, so the set-up script puts
python-consul in `.venv/python-consul` and this test drives it in its own interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import REPO, AgentProcess

SCRIPT = textwrap.dedent(
    """
    import sys, threading, consul
    assert consul.__version__.startswith("1.1"), consul.__version__
    c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
    assert c.kv.put("pc/key", "value") is True
    index, entry = c.kv.get("pc/key")
    assert entry["Value"] == b"value", entry
    assert c.kv.put("pc/key", "new", cas=entry["ModifyIndex"]) is True
    assert c.kv.put("pc/key", "newer", cas=entry["ModifyIndex"]) is False
    # An empty value comes back as Consul sends it, null, which the client hands over as None.
    assert c.kv.put("pc/empty", "") is True
    _, empty = c.kv.get("pc/empty")
    assert empty["Key"] == "pc/empty" and empty["Value"] is None, empty
    _, raw = c.kv.get("pc/empty", recurse=True)
    assert [e["Value"] for e in raw] == [None], raw
    c.kv.put("pc/dir/a", "1"); c.kv.put("pc/dir/b", "2")
    _, entries = c.kv.get("pc/dir/", recurse=True)
    assert [e["Key"] for e in entries] == ["pc/dir/a", "pc/dir/b"]
    out = {}
    index, _ = c.kv.get("pc/key")
    t = threading.Thread(target=lambda: out.setdefault("r", c.kv.get("pc/key", index=index, wait="30s")))
    t.start()
    c.kv.put("pc/key", "woken")
    t.join(30)
    assert out["r"][1]["Value"] == b"woken"
    assert c.kv.delete("pc/dir/", recurse=True)
    c.agent.service.register("legacy", service_id="legacy-1", port=9000, tags=["old"],
                             check=consul.Check.ttl("30s"))
    assert "legacy-1" in c.agent.services()
    c.agent.check.ttl_pass("service:legacy-1")
    # The agent syncs the new status to the catalog asynchronously (anti-entropy): poll.
    import time
    deadline = time.monotonic() + 30
    while True:
        _, nodes = c.health.service("legacy", passing=True)
        if nodes or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [n["Service"]["ID"] for n in nodes] == ["legacy-1"], nodes
    _, svcs = c.catalog.services()
    assert svcs["legacy"] == ["old"], svcs
    # Prepared queries (python-consul sends a name_prefix_match template, as py-consul does).
    qid = c.query.create("legacy", name="legacy-q", ttl="5s")["ID"]
    assert [q["ID"] for q in c.query.list()] == [qid]
    assert c.query.get(qid)[0]["DNS"] == {"TTL": "5s"}
    res = c.query.execute("legacy-q")
    assert res["Service"] == "legacy" and [n["Service"]["ID"] for n in res["Nodes"]] == ["legacy-1"], res
    assert res["Datacenter"] == "dc1" and res["Failovers"] == 0
    assert c.query.explain("legacy-q")["Query"]["ID"] == qid
    assert c.query.delete(qid) is True and c.query.list() == []
    # Catalog operations in a transaction.
    txn = c.txn.put([{"Service": {"Verb": "get", "Node": "test-node", "Service": {"ID": "legacy-1"}}},
                     {"Check": {"Verb": "get", "Check": {"Node": "test-node", "CheckID": "service:legacy-1"}}}])
    assert txn["Results"][0]["Service"]["Port"] == 9000 and txn["Results"][1]["Check"]["Status"] == "passing", txn
    c.agent.service.deregister("legacy-1")
    assert c.status.leader()
    print("python-consul OK")
    """
)


def test_python_consul_client(dev_agent: AgentProcess, tmp_path: Path) -> None:
    target = REPO / ".venv" / "python-consul"
    assert (target / "consul").is_dir(), "scripts/setup-env test installs python-consul there"
    script = tmp_path / "drive.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run(
        [sys.executable, str(script), str(dev_agent.http_port)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "python-consul OK" in proc.stdout
