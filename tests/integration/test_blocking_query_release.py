"""Blocking queries release what they hold: store watches and HTTP connections (issue 13).

An agent runs in this process so the test can count the structures a blocking query holds
while parked: its store watch (and with it the waiting task, event and closure) and its HTTP
connection. After the queries finish, whether they ran out their ?wait, were woken by a write,
or their clients hung up mid-wait, both counts return to zero.
"""

from __future__ import annotations

import asyncio

import aiohttp
from helpers import free_port, wait_until
from proconsul import config as configmod
from proconsul.agent.agent import Agent
from proconsul.http.conn_guard import IDLE_TIMEOUT_S

N = 200


async def _start_agent() -> tuple[Agent, str]:
    http_port = free_port()
    flags = configmod.agent_flagset().parse([
        "-dev", f"-http-port={http_port}", f"-dns-port={free_port()}", f"-serf-lan-port={free_port()}",
        f"-serf-wan-port={free_port()}", "-client=127.0.0.1", "-bind=127.0.0.1", "-node=release-test",
        # N parked queries plus the writes that wake them come from one IP: above the default 200.
        "-hcl", "limits { http_max_conns_per_client = 1000 }",
    ])  # fmt: skip
    agent = Agent(configmod.load_from(flags).config, flags)
    await agent.start()
    return agent, f"http://127.0.0.1:{http_port}"


async def test_blocking_queries_leave_no_watches_or_connections_behind() -> None:
    agent, base = await _start_agent()
    agent.server.successor_grace_s = 0.5
    store = agent.server.store
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            async with client.put(f"{base}/v1/kv/k", data=b"v") as resp:
                assert resp.status == 200
                index = int(resp.headers.get("X-Consul-Index", "0") or 0)
            async with client.get(f"{base}/v1/kv/k") as resp:
                index = int(resp.headers["X-Consul-Index"])

            async def query(path: str) -> int:
                async with client.get(base + path) as resp:
                    await resp.read()
                    return resp.status

            # 1. Queries that run out their wait.
            statuses = await asyncio.gather(*(query(f"/v1/kv/k?index={index}&wait=200ms") for _ in range(N)))
            assert statuses == [200] * N
            assert store.watch_count() == 0
            # 2. Queries woken by a write.
            # Identical reads park once: one store watch for all N readers (and one re-run).
            woken = [asyncio.ensure_future(query(f"/v1/kv/k?index={index}&wait=60s")) for _ in range(N)]
            await wait_until(lambda: agent.server.blocking_reads() == N, timeout=60)
            assert store.watch_count() == 1
            async with client.put(f"{base}/v1/kv/k", data=b"w") as resp:
                assert resp.status == 200
            assert await asyncio.gather(*woken) == [200] * N
            # The answered read parks again at its new index for its readers' return (a watcher's
            # next request joins it without re-running the read); nobody returns here, so it goes
            # when its grace ends.
            assert store.watch_count() <= 1
            await wait_until(lambda: store.watch_count() == 0, timeout=30)
            # 3. Queries whose clients hang up mid-wait: the agent stops waiting at once, long
            # before the 60 s ?wait, instead of parking a watch per abandoned query.
            abandoned = [
                asyncio.ensure_future(query(f"/v1/catalog/services?index={1000000 + i % 2}&wait=60s"))
                for i in range(N)
            ]
            await wait_until(lambda: agent.server.blocking_reads() == N, timeout=60)
            assert store.watch_count() == 2
            for task in abandoned:
                task.cancel()
            await asyncio.gather(*abandoned, return_exceptions=True)
        # The session is closed: every client connection is gone.
        await wait_until(lambda: store.watch_count() == 0 and agent.server.blocking_reads() == 0, timeout=30)
        await wait_until(lambda: agent.http.connections.open_connections() == 0, timeout=IDLE_TIMEOUT_S)
    finally:
        await agent.stop()
