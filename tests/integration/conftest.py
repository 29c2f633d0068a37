"""Fixtures shared by the real-process integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import Cluster


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three servers on their own loopback subnet (cluster_helpers.Cluster), started and stopped."""
    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()
