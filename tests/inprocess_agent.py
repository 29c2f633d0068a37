"""Agents inside the test's own event loop.

- `start_agent_with_normal_listener`: a started dev agent with a second HTTP listener that has the
  fast path off: tests of the fast paths compare its answers with the normal path's byte for byte.
- `api_client`: a dev agent built but not started (no listener, no gossip, no background loop, so
  nothing changes its catalog but the test) and its HTTP application served by aiohttp's test
  server on loopback: the route modules' own answers (tests/http/test_*_routes.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from helpers import free_port
from proconsul import config as configmod
from proconsul.agent.agent import Agent
from proconsul.http.server import HTTPServer, build_app


async def start_agent_with_normal_listener(tmp: Path, node: str, hcl: str) -> tuple[Agent, HTTPServer]:
    """The agent (its own listener has the fast path on) and a started listener without it."""
    conf = tmp / f"{node}.hcl"
    conf.write_text(hcl)
    flags = configmod.agent_flagset().parse([
        "-dev", f"-http-port={free_port()}", f"-dns-port={free_port()}", f"-serf-lan-port={free_port()}",
        f"-serf-wan-port={free_port()}", "-client=127.0.0.1", "-bind=127.0.0.1", f"-node={node}",
        f"-config-file={conf}",
    ])  # fmt: skip
    agent = Agent(configmod.load_from(flags).config, flags)
    await agent.start()
    normal = HTTPServer(agent, ["127.0.0.1"], free_port(), reads=agent.fast_reads)
    normal.fast_path = False
    await normal.start()
    return agent, normal


@asynccontextmanager
async def api_client(*hcl: str, node: str = "inproc") -> AsyncIterator[tuple[Agent, TestClient[Any, Any]]]:
    """A dev agent (not started; `hcl`: extra configuration snippets) and a client of its HTTP
    application. The application is `http.server.build_app`'s, without the listener's fast path."""
    flags = configmod.agent_flagset().parse(["-dev", "-bind=127.0.0.1", "-client=127.0.0.1", f"-node={node}",
                                             *(f"-hcl={h}" for h in hcl)])
    agent = Agent(configmod.load_from(flags).config, flags)
    async with TestClient(TestServer(build_app(agent), host="127.0.0.1")) as client:
        yield agent, client
