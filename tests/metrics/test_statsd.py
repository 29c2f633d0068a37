"""The statsd and DogStatsD line formats on a registry (go-metrics' naming, labels and tags), the
packing of lines into datagrams, and the statsite sender's reconnection. The agent sending them over UDP is
tests/integration/test_metrics.py::test_statsd_and_dogstatsd_sinks_receive_lines."""

from __future__ import annotations

import asyncio
import re

from proconsul.metrics import Metrics
from proconsul.metrics.statsd import DogStatsdFormat, StatsdFormat, StatsdSinks, coalesce, pack, split_address


def _lines(m: Metrics, fmt: StatsdFormat | DogStatsdFormat) -> list[str]:
    assert m.outbox is not None
    return [fmt.line(s, v) for s, v in m.outbox]


def test_statsd_names_carry_host_for_gauges_and_label_values_as_parts() -> None:
    m = Metrics(hostname="web-1")
    m.open_outbox()
    m.counter("rpc", "request").incr()
    m.gauge("runtime", "alloc_bytes").set(1024.5)
    m.sample("api", "http", labels=("method", "path")).with_labels("GET", "v1_kv_").observe(0.25)
    m.sample("kvs", "apply").observe(3)
    assert _lines(m, StatsdFormat()) == [
        "consul.rpc.request:1.000000|c",
        "consul.web-1.runtime.alloc_bytes:1024.500000|g",
        "consul.api.http.GET.v1_kv_:0.250000|ms",
        "consul.kvs.apply:3.000000|ms",
    ]


def test_dogstatsd_splices_the_host_out_and_tags_labels_after_the_configured_tags() -> None:
    m = Metrics(hostname="web-1", prefix="pc")
    m.open_outbox()
    m.counter("rpc", "request").incr(2.7)
    m.gauge("runtime", "alloc_bytes").set(1024.0)
    m.gauge("autopilot", "healthy").set(0.000001)
    m.sample("api", "http", labels=("method", "path")).with_labels("GET", "a b:c").observe(0.25)
    fmt = DogStatsdFormat(("env:test", "team"))
    assert _lines(m, fmt) == [
        "pc.rpc.request:2|c|#env:test,team",  # datadog-go's Count takes an int64
        "pc.runtime.alloc_bytes:1024|g|#env:test,team",
        "pc.autopilot.healthy:0.000001|g|#env:test,team",  # Go's 'f' format: never an exponent
        "pc.api.http:0.25|ms|#env:test,team,method:GET,path:a_b_c",
    ]
    nan = Metrics(hostname="")
    nan.open_outbox()
    nan.gauge("g").set(float("nan"))
    nan.counter("c").incr(float("inf"))
    assert _lines(nan, DogStatsdFormat()) == ["consul.g:NaN|g", "consul.c:0|c"]
    assert _lines(nan, StatsdFormat()) == ["consul.g:NaN|g", "consul.c:+Inf|c"]
    plain = Metrics(hostname="")
    plain.open_outbox()
    plain.counter("serf", "events").incr()
    assert _lines(plain, DogStatsdFormat()) == ["consul.serf.events:1|c"]


def test_without_a_sink_nothing_is_queued_and_the_outbox_is_bounded() -> None:
    m = Metrics()
    c = m.counter("x")
    c.incr()
    assert m.outbox is None
    m.open_outbox()
    for _ in range(20000):
        c.incr()
    assert len(m.outbox) == 16384


def test_one_flush_sums_counters_keeps_the_last_gauge_and_every_sample() -> None:
    m = Metrics(hostname="")
    m.open_outbox()
    c, g, s = m.counter("c"), m.gauge("g"), m.sample("s")
    for i in range(3):
        c.incr(2)
        g.set(i)
        s.observe(i)
    lines = [StatsdFormat().line(series, v) for series, v in coalesce(m.outbox)]
    assert lines == ["consul.c:6.000000|c", "consul.g:2.000000|g", "consul.s:0.000000|ms",
                     "consul.s:1.000000|ms", "consul.s:2.000000|ms"]


def test_packets_stay_under_the_limit_and_end_as_each_format_does() -> None:
    lines = [f"consul.some.metric.{i:04d}:1.000000|c" for i in range(200)]
    statsd = pack(lines, 1400, trailing_newline=True)
    assert all(len(p) <= 1400 and p.endswith(b"\n") for p in statsd)
    assert b"".join(statsd).decode().splitlines() == lines
    dog = pack(lines, 1432, trailing_newline=False)
    assert all(len(p) <= 1432 and not p.endswith(b"\n") for p in dog)
    assert b"\n".join(dog).decode().splitlines() == lines
    # A line longer than a packet still goes, alone.
    assert pack(["x" * 2000, "y"], 1400, trailing_newline=True) == [b"x" * 2000 + b"\n", b"y\n"]


def test_addresses() -> None:
    assert split_address("127.0.0.1:8125") == ("127.0.0.1", 8125)
    assert split_address("[::1]:8125") == ("::1", 8125)
    assert split_address("statsd.internal:9125") == ("statsd.internal", 9125)
    for bad in ("127.0.0.1", ":8125", "host:0", "host:x"):
        try:
            split_address(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


async def test_statsite_reconnects_after_the_collector_drops_the_connection() -> None:
    """In-process sender against a real TCP listener on loopback: lines arrive, the collector
    closes the connection, and the next lines arrive on a new one."""
    connections: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await connections.put(reader)

    writers: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    m = Metrics(hostname="")
    sinks = StatsdSinks.from_config(m, statsite_address=f"127.0.0.1:{port}")
    assert sinks is not None
    counter = m.counter("ticks")
    task = asyncio.get_running_loop().create_task(sinks.run())
    try:
        counter.incr()
        first = await asyncio.wait_for(connections.get(), 30)
        assert await asyncio.wait_for(first.readline(), 30) == b"consul.ticks:1.000000|c\n"
        writers[0].close()  # the collector goes away
        second = None
        while second is None:  # every flush writes; the broken connection is replaced
            counter.incr(2)
            try:
                second = await asyncio.wait_for(connections.get(), 0.5)
            except TimeoutError:
                continue
        # (What was flushed into the broken connection before it was found broken is lost, as
        # in go-metrics.) Values recorded now go out on the new connection.
        counter.incr(2)
        assert re.fullmatch(rb"consul\.ticks:\d+\.000000\|c\n", await asyncio.wait_for(second.readline(), 30))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
        await server.wait_closed()
