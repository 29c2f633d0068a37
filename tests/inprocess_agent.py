"""A dev agent started inside the test's own event loop, with a second HTTP listener that has the
fast path off: tests of the fast paths compare its answers with the normal path's byte for byte."""

from __future__ import annotations

from pathlib import Path

from helpers import free_port
from proconsul import config as configmod
from proconsul.agent.agent import Agent
from proconsul.http.server import HTTPServer


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
    normal = HTTPServer(agent, ["127.0.0.1"], free_port())
    normal.fast_path = False
    await normal.start()
    return agent, normal
