"""The in-process HTTP API the route tests ask (tests/inprocess_agent.py's `api_client`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from inprocess_agent import api_client


@pytest.fixture
async def api() -> AsyncIterator[TestClient[Any, Any]]:
    async with api_client() as (_, client):
        yield client
