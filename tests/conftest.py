"""Shared fixtures: a real dev agent process per test module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# The machines are small and noisy: a property test must not fail because one example was slow.
settings.register_profile("proconsul", deadline=None)
settings.load_profile("proconsul")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import AgentProcess  # noqa: E402


@pytest.fixture(scope="module")
def dev_agent() -> Iterator[AgentProcess]:
    agent = AgentProcess().start()
    try:
        yield agent
    finally:
        agent.stop()
