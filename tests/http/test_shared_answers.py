"""Work done per shared blocking answer, not per watcher (issue 16: 10,000 watchers).

Identical parked blocking reads are answered with one object (server/rpc.py); the HTTP layer
encodes it once (http/common.py) and computes the protection-threshold header once
(http/health.py): N watchers of `?passing` woken by one write cost one scan of the answer's
checks. An agent runs in this process so the test can count the scans.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from helpers import free_port, wait_until
from proconsul import config as configmod
from proconsul.agent.agent import Agent
from proconsul.http import health

N = 40


async def test_watchers_of_one_answer_share_one_protection_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    http_port = free_port()
    flags = configmod.agent_flagset().parse([
        "-dev", f"-http-port={http_port}", f"-dns-port={free_port()}", f"-serf-lan-port={free_port()}",
        f"-serf-wan-port={free_port()}", "-client=127.0.0.1", "-bind=127.0.0.1", "-node=shared-answers",
    ])  # fmt: skip
    agent = Agent(configmod.load_from(flags).config, flags)
    await agent.start()
    base = f"http://127.0.0.1:{http_port}"
    scans: list[int] = []
    real_scan = health.protection_applied

    def counted(items: list[object]) -> bool:
        scans.append(len(items))
        return real_scan(items)

    monkeypatch.setattr(health, "protection_applied", counted)
    try:
        async with aiohttp.ClientSession() as client:

            async def register(node: str) -> None:
                body = {"Node": node, "Address": "127.0.0.1", "Service": {"Service": "web", "Port": 80}}
                async with client.put(f"{base}/v1/catalog/register", json=body) as resp:
                    assert resp.status == 200

            async def watch(index: int) -> tuple[int, list[dict[str, object]]]:
                async with client.get(f"{base}/v1/health/service/web?passing&index={index}&wait=60s") as resp:
                    return resp.status, await resp.json()

            await register("n1")
            async with client.get(f"{base}/v1/health/service/web?passing") as resp:
                assert resp.status == 200
                index = int(resp.headers["X-Consul-Index"])
            scans.clear()
            watchers = [asyncio.ensure_future(watch(index)) for _ in range(N)]
            await wait_until(lambda: agent.server.blocking_reads() == N, timeout=60)
            await register("n2")
            answers = await asyncio.gather(*watchers)
        assert [status for status, _ in answers] == [200] * N
        assert all(len(entries) == 2 for _, entries in answers)
        assert scans == [2]  # one scan of the one shared two-instance answer
    finally:
        await agent.stop()
