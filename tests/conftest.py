"""Shared fixtures: a real dev agent process per test module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import AgentProcess  # noqa: E402


@pytest.fixture(scope="module")
def dev_agent() -> Iterator[AgentProcess]:
    agent = AgentProcess().start()
    try:
        yield agent
    finally:
        agent.stop()
