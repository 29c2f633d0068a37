"""Blocking queries on a 1,000-node catalog wake for their own changes only (issue 16).

The reduced form of `bench/catalog_scale.py`, driven by the same code: a server and a client
agent (real processes; the client agent forwards every read to the server), 1,000 nodes and
2,000 service instances over 100 names loaded through `/v1/txn`, then 1,000 blocking queries
(`/v1/health/service/<name>?passing`, `/v1/catalog/services`, KV prefixes with `?recurse`) held
over real HTTP on both agents, and a stream of check-status flips and KV writes.

Checked: every write reaches every watcher of its service or prefix (within a generous
deadline, no timing asserted), each answer with the kernel's receive timestamp, which falls
between the write being sent and the watcher reading the answer; no watcher is answered with nothing new before its wait runs out;
and on the server, no parked read is re-run for a write it does not read (the
`rpc.queries_blocking_unchanged` counter stays where it was, while `..._rerun` moves), which a
store waking every catalog reader on each catalog write fails (the `/v1/catalog/services`
watchers would be re-run on every check flip). When the watchers hang up, the copies the client
agent forwarded stop on the server at once (the transport cancels them), long before their wait.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import aiohttp
from catalog_scale import Layout, load_catalog, parked_total, watch_and_write
from cluster_helpers import LanCluster
from helpers import wait_for


def _counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/v1/agent/metrics?format=prometheus", timeout=30) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        for name in ("consul_rpc_queries_blocking_rerun", "consul_rpc_queries_blocking_unchanged"):
            if line.startswith(name + " "):
                out[name.rsplit("_", 1)[1]] = float(line.split()[1])
    return out


async def test_a_thousand_watchers_wake_only_for_their_own_changes(tmp_path: Path) -> None:
    cluster = LanCluster(
        tmp_path, ("c1",),
        # 1,000 parked queries come from this one address.
        "-hcl", "limits { http_max_conns_per_client = 5000 }",
        "-hcl", 'telemetry { prometheus_retention_time = "1h" }',
    )  # fmt: skip
    srv, c1 = cluster.server, cluster.clients[0]
    try:
        # Both start at once (the client retries its join until the server listens).
        for agent in (srv, c1):
            agent.wait_for_leader = False
            cluster.add(agent)
        for agent in (srv, c1):
            wait_for(agent._leader_known, timeout=90, what=f"{agent.node} to know the leader\n{agent.log()}")
        layout = Layout(nodes=1000, instances=2000, services=100, big=100)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
            await load_catalog(session, [srv.url], layout, concurrency=3)
            before: dict[str, float] = {}
            result = await watch_and_write(
                session, [srv.url, c1.url], layout, watchers=1000, writes=40, rate=20.0, seed=16,
                kv_prefixes=20, health_services=40, wait="60s",
                on_parked=lambda: before.update(_counters(srv.url)),
            )  # fmt: skip
            # The watchers have hung up (their ?wait was 60 s): the queries the client agent
            # forwarded end on the server too, at once, not when their wait runs out.
            deadline = asyncio.get_running_loop().time() + 30
            while (parked := await parked_total(session, [srv.url, c1.url])) > 0:
                assert asyncio.get_running_loop().time() < deadline, f"{parked} blocking queries still parked"
                await asyncio.sleep(0.2)
        after = _counters(srv.url)
        summary = result.summary()
        assert result.write_errors == 0 and result.watcher_errors == 0, summary
        assert len(result.latencies_ms) == 40 and result.missed == 0, summary
        assert result.spurious == 0, summary
        # Each answer's arrival is the kernel's receive timestamp (bench/catalog_scale.py
        # `_RawConnection`): stamped for every answer, never before its write was sent, never
        # after the watcher read it.
        assert result.unstamped == 0 and result.before_sent == 0, summary
        assert len(result.backlog_ms) == result.affected_pairs and min(result.backlog_ms) > -1.0, summary  # (two clocks: 1 ms slack)
        assert after["rerun"] > before["rerun"], (before, after)
        assert after["unchanged"] == before["unchanged"], (before, after)
    finally:
        cluster.stop()
