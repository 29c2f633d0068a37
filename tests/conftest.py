"""Shared fixtures: a real dev agent process per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import AgentProcess
from hypothesis import settings

# The machines are small and noisy: a property test must not fail because one example was slow.
settings.register_profile("proconsul", deadline=None)
settings.load_profile("proconsul")



@pytest.fixture(scope="module")
def dev_agent() -> Iterator[AgentProcess]:
    agent = AgentProcess().start()
    try:
        yield agent
    finally:
        agent.stop()
