"""Transport: first-byte multiplexing, pipelined RPC over one connection, errors and disconnects."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from proconsul.transport import ConnectionPool, Listener, RemoteError, rpc_stream_handler
from proconsul.wire import ConnType


async def test_pipelined_calls_complete_out_of_order() -> None:
    release = asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        if method == "slow":
            await release.wait()
            return "slow-done"
        if method == "boom":
            raise ValueError("no such thing")
        return body * 2

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    addr = f"127.0.0.1:{listener.port}"
    try:
        slow = asyncio.ensure_future(pool.call(addr, "slow", None))
        # The fast call shares the connection and returns while the slow one is parked.
        assert await pool.call(addr, "double", 21) == 42
        assert not slow.done()
        release.set()
        assert await slow == "slow-done"
        with pytest.raises(RemoteError, match="no such thing"):
            await pool.call(addr, "boom", None)
        assert len(pool._conns) == 1
    finally:
        await pool.close()
        await listener.stop()


async def test_pending_calls_fail_when_the_server_goes_away() -> None:
    entered = asyncio.Event()

    async def dispatch(method: str, body: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()  # never answers

    listener = Listener("127.0.0.1", 0, {ConnType.RPC: rpc_stream_handler(dispatch)})
    await listener.start()
    pool = ConnectionPool()
    call = asyncio.ensure_future(pool.call(f"127.0.0.1:{listener.port}", "hang", None, timeout_s=60))
    await asyncio.wait_for(entered.wait(), 30)
    await listener.stop()
    with pytest.raises((ConnectionError, RemoteError)):
        await asyncio.wait_for(call, 30)
    await pool.close()


async def test_unknown_connection_type_is_closed() -> None:
    listener = Listener("127.0.0.1", 0, {})
    await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"\x7f")
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
    finally:
        await listener.stop()
