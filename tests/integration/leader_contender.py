"""A leader-election contender through py-consul, following Consul's recipe (docs/LEADER-ELECTION.md).

Usage: leader_contender.py HTTP_PORT KEY NAME STATE_FILE CHECK_TTL LOCK_DELAY

It writes its belief ({"leader": bool, "session": id}) to STATE_FILE whenever it changes, so a
test can check that at most one contender believes it leads.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import consul


def main() -> None:
    port, key, name, state_path, ttl, lock_delay = sys.argv[1:7]
    c = consul.Consul(host="127.0.0.1", port=int(port))
    belief: dict[str, object] = {}

    def believe(leader: bool, session: str) -> None:
        new = {"leader": leader, "session": session, "pid": os.getpid()}
        if new != belief:
            belief.clear()
            belief.update(new)
            tmp = state_path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(new, fh)
            os.replace(tmp, state_path)

    # 0. A TTL health check that this process keeps passing: if the process dies, the check goes
    #    critical after TTL and the agent invalidates every session bound to it.
    check_id = f"alive-{name}"
    c.agent.check.register(check_id, check=consul.Check.ttl(ttl), check_id=check_id)

    def heartbeat() -> None:
        while True:
            c.agent.check.ttl_pass(check_id)
            time.sleep(float(ttl.rstrip("s")) / 4)

    threading.Thread(target=heartbeat, daemon=True).start()
    while not any(ch["CheckID"] == check_id and ch["Status"] == "passing" for ch in c.health.node(c.agent.self()["Config"]["NodeName"])[1]):
        time.sleep(0.1)  # the check reaches the catalog through anti-entropy
    while True:
        # 1. A session bound to the node and our check, short lock-delay, locks released on invalidation.
        sid = c.session.create(name=name, checks=["serfHealth", check_id], lock_delay=int(lock_delay.rstrip("s")))
        index = None
        try:
            while True:
                _, entry = c.kv.get(key)
                # 2. Try to acquire whenever nobody holds the key (the agent refuses during a lock-delay).
                if entry is None or not entry.get("Session"):
                    c.kv.put(key, name, acquire=sid)
                # 3. Watch the key with a blocking read; we lead exactly while it names our session.
                index, entry = c.kv.get(key, index=index, wait="2s")
                believe(bool(entry) and entry.get("Session") == sid, sid)
        except consul.ConsulException:
            # Our session was invalidated (acquire with a dead session fails): step down, start over.
            believe(False, sid)


if __name__ == "__main__":
    main()
