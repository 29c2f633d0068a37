"""A client agent's server proxy counts Consul's client.rpc (every RPC sent to a server, retries
included) and client.rpc.failed (by the failing server's node name)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
from proconsul.metrics import Metrics
from proconsul.rpc_api import RPCError
from proconsul.server.remote import RemoteServer
from proconsul.transport import RemoteError


class _Membership:
    def servers(self) -> list[tuple[str, str]]:
        return [("s1", "127.0.0.1:8300"), ("s2", "127.0.0.2:8300")]

    def members(self) -> list[Any]:
        return [SimpleNamespace(status=1)] * 3


def _total(m: Metrics, name: str, *labels: str) -> float:
    series = m.series.get((f"consul.{name}", labels))
    return 0.0 if series is None else series.total


async def test_rpcs_and_failures_are_counted() -> None:
    metrics = Metrics()
    remote = RemoteServer(_Membership(), "dc1", rng=random.Random(1), metrics=metrics)
    assert ("consul.client.rpc", ()) in metrics.series and ("consul.client.rpc.failed", ()) in metrics.series
    answers: list[Any] = []

    async def call(addr: str, method: str, body: Any, timeout_s: float = 0.0) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    remote.pool.call = call  # type: ignore[method-assign]
    answers.append({"leader": "x"})
    await remote.call("Status.Leader", None)
    assert _total(metrics, "client.rpc") == 1
    # The first server refuses the connection: the call moves on to the other, two RPCs in all.
    answers.extend([ConnectionRefusedError("refused"), {"ok": True}])
    first = remote._candidates()[0]
    await remote.call("Status.Leader", None)
    assert _total(metrics, "client.rpc") == 3
    failed = {"127.0.0.1:8300": "s1", "127.0.0.2:8300": "s2"}[first]
    assert _total(metrics, "client.rpc.failed", failed) == 1
    # The server answers with an error: failed too, and not retried.
    answers.append(RemoteError("Permission denied"))
    with pytest.raises(RPCError):
        await remote.call("Status.Leader", None)
    assert _total(metrics, "client.rpc") == 4
    assert sum(_total(metrics, "client.rpc.failed", name) for name in ("s1", "s2")) == 2
    await remote.pool.close()
