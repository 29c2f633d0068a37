"""go-metrics' statsd, DogStatsD and statsite sinks: every recorded value as a line to a collector.

Owns the two line formats Consul's `telemetry { statsd_address, dogstatsd_addr, dogstatsd_tags,
statsite_address }` produce, and their senders.

- statsd (go-metrics `StatsdSink`): `<name>:<value>|<c|g|ms>` with Go's `%f` value (six decimals),
  each line ending in a newline, lines packed into datagrams of at most 1400 bytes. The name is
  the full go-metrics key (prefix, host name for gauges unless `disable_hostname`, the parts) with
  the label *values* appended as further parts (`consul.api.http.GET.v1_kv_`), `:` and ` `
  turned into `_`.
- DogStatsD (go-metrics `datadog.DogStatsdSink` over datadog-go): `<name>:<value>|<c|g|ms>|#tags`,
  the host name spliced out of gauge names (DogStatsD tags the host itself), labels as
  `name:value` tags after the configured `dogstatsd_tags`, counters as integers (datadog-go's
  `Count` takes an int64), other values in Go's shortest decimal form; lines joined by newlines
  in datagrams of at most 1432 bytes.
- statsite (go-metrics `StatsiteSink`): the statsd lines over one TCP connection, reconnected
  after a failure.

Recording code only appends `(series, value)` to the registry's bounded outbox; `StatsdSinks.run`
swaps it out every 100 ms (go-metrics' flush interval), formats and sends. A counter or gauge
recorded several times within one flush goes out as one line (the sum, the last value: what a
statsd server makes of the separate lines anyway), which bounds the formatting work for busy
counters; every sample goes out as its own line. Sending is UDP fire-and-forget as in go-metrics: an
unreachable collector costs nothing but the datagrams.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from decimal import Decimal

from proconsul.metrics.registry import COUNTER, GAUGE, SAMPLE, Metrics, Series

__all__ = [
    "DogStatsdFormat", "StatsdFormat", "StatsdSinks", "TCPTarget", "Target", "UDPTarget", "coalesce", "pack",
    "split_address",
]  # fmt: skip

logger = logging.getLogger(__name__)

FLUSH_S = 0.1  # go-metrics' statsd flush interval
STATSD_MAX_PACKET = 1400  # go-metrics' statsdMaxLen
DOGSTATSD_MAX_PACKET = 1432  # datadog-go's default UDP payload
RETRY_S = 5.0  # after a failed socket set-up (e.g. a name that does not resolve yet)
CONNECT_TIMEOUT_S = 5.0  # name resolution and, for statsite, the TCP connect
TCP_BACKLOG_BYTES = 1 << 20  # statsite: unsent bytes past which new values are dropped

_TYPE = {COUNTER: "c", GAUGE: "g"}  # samples: "ms"


def _sanitize(text: str) -> str:
    # The characters both go-metrics sinks turn into "_" in names (and DogStatsD in tags).
    return text.replace(":", "_").replace(" ", "_")


def _go_special(value: float) -> str:
    return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"


def _go_float(value: float) -> str:
    """Go's `strconv.FormatFloat(v, 'f', -1, 64)`: the shortest decimal, never an exponent."""
    if not math.isfinite(value):
        return _go_special(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


class StatsdFormat:
    """go-metrics' statsd line for a recorded value."""

    max_packet = STATSD_MAX_PACKET
    trailing_newline = True

    def __init__(self) -> None:
        # Per series, the text around the value ("name:", "|ms"): built once.
        self._parts: dict[Series, tuple[str, str]] = {}

    def line(self, series: Series, value: float) -> str:
        parts = self._parts.get(series)
        if parts is None:
            name = _sanitize(".".join([series.name, *series.label_values]))
            parts = self._parts[series] = (name + ":", "|" + _TYPE.get(series.family.kind, "ms"))
        head, tail = parts
        return head + (format(value, "f") if math.isfinite(value) else _go_special(value)) + tail


class DogStatsdFormat:
    """go-metrics' DogStatsD line (datadog-go's format) for a recorded value."""

    max_packet = DOGSTATSD_MAX_PACKET
    trailing_newline = False

    def __init__(self, tags: tuple[str, ...] = ()) -> None:
        self._tags = list(tags)
        # Per series, the text around the value ("name:", "|ms|#tags") and whether it is a counter.
        self._parts: dict[Series, tuple[str, str, bool]] = {}

    def line(self, series: Series, value: float) -> str:
        parts = self._parts.get(series)
        if parts is None:
            kind = series.family.kind
            tags = self._tags + [
                f"{_sanitize(k)}:{_sanitize(v)}" if v else _sanitize(k) for k, v in series.labels.items()
            ]
            parts = self._parts[series] = (
                _sanitize(series.family.bare_name) + ":",
                "|" + _TYPE.get(kind, "ms") + (f"|#{','.join(tags)}" if tags else ""),
                kind == COUNTER,
            )
        head, tail, counter = parts
        if counter:
            return head + str(int(value) if math.isfinite(value) else 0) + tail
        return head + _go_float(value) + tail


def coalesce(values: list[tuple[Series, float]]) -> list[tuple[Series, float]]:
    """One entry per counter (summed) and gauge (last value), in first-seen order; every sample."""
    out: list[tuple[Series, float]] = []
    where: dict[Series, int] = {}
    for series, value in values:
        kind = series.family.kind
        if kind == SAMPLE:
            out.append((series, value))
            continue
        i = where.get(series)
        if i is None:
            where[series] = len(out)
            out.append((series, value))
        elif kind == COUNTER:
            out[i] = (series, out[i][1] + value)
        else:
            out[i] = (series, value)
    return out


def pack(lines: list[str], max_packet: int, trailing_newline: bool) -> list[bytes]:
    """Lines into datagrams of at most `max_packet` bytes (a longer line goes alone)."""
    packets: list[bytes] = []
    buf: list[str] = []
    size = 0
    newline = 1 if trailing_newline else 0
    for text in lines:
        length = len(text) if text.isascii() else len(text.encode())
        extra = length + 1 if (newline or buf) else length
        if buf and size + extra > max_packet:
            packets.append(_join(buf, trailing_newline))
            buf, size = [], 0
            extra = length + newline
        buf.append(text)
        size += extra
    if buf:
        packets.append(_join(buf, trailing_newline))
    return packets


def _join(buf: list[str], trailing_newline: bool) -> bytes:
    body = "\n".join(buf)
    return (body + "\n" if trailing_newline else body).encode()


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` too) -> (host, port); ValueError with a reason otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} has no valid port")
    return host, int(port)


class Target:
    """One collector: its format and its connection (made on first use, remade after a failure)."""

    kind = ""

    def __init__(self, address: str, fmt: StatsdFormat | DogStatsdFormat) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.format = fmt
        self._retry_at = 0.0
        self._warned = False

    # The four transport hooks below are abstract: UDPTarget (statsd, DogStatsD) and the TCP
    # target (statsite) each implement all of them; `ensure` is the shared reconnect policy.

    def connected(self) -> bool:
        raise NotImplementedError

    async def _connect(self) -> None:
        raise NotImplementedError

    def send(self, values: list[tuple[Series, float]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def ensure(self) -> bool:
        if self.connected():
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._connect()
        except (OSError, TimeoutError) as exc:
            self._retry_at = now + RETRY_S
            if not self._warned:
                logger.warning("telemetry: cannot reach the %s sink at %s: %s", self.kind, self.address,
                               exc or "timed out")
                self._warned = True
            return False
        if self._warned:
            logger.info("telemetry: the %s sink at %s is reachable again", self.kind, self.address)
        self._warned = False
        return True


class UDPTarget(Target):
    """statsd or DogStatsD: lines packed into datagrams on a connected UDP socket."""

    def __init__(self, kind: str, address: str, fmt: StatsdFormat | DogStatsdFormat) -> None:
        super().__init__(address, fmt)
        self.kind = kind
        self.transport: asyncio.DatagramTransport | None = None

    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def _connect(self) -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            _Ignore, remote_addr=(self.host, self.port)
        )
        self.transport = transport

    def send(self, values: list[tuple[Series, float]]) -> None:
        fmt = self.format
        transport = self.transport
        assert transport is not None
        for packet in pack([fmt.line(s, v) for s, v in values], fmt.max_packet, fmt.trailing_newline):
            transport.sendto(packet)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class TCPTarget(Target):
    """statsite (go-metrics `StatsiteSink`): statsd lines, each ending in a newline, over TCP."""

    kind = "statsite"

    def __init__(self, address: str) -> None:
        super().__init__(address, StatsdFormat())
        self.writer: asyncio.StreamWriter | None = None
        self.dropped = 0  # values not written because the collector stopped reading

    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def _connect(self) -> None:
        _, self.writer = await asyncio.open_connection(self.host, self.port)

    def send(self, values: list[tuple[Series, float]]) -> None:
        writer = self.writer
        assert writer is not None
        if writer.transport.get_write_buffer_size() > TCP_BACKLOG_BYTES:
            # A collector that accepts but does not read: lose values rather than memory.
            self.dropped += len(values)
            return
        fmt = self.format
        writer.write("".join(fmt.line(s, v) + "\n" for s, v in values).encode())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _Ignore(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:
        # A collector that is not listening answers with ICMP port unreachable: as go-metrics,
        # the values are lost and nothing else happens.
        pass


class StatsdSinks:
    """The configured sinks of one registry. Built only when at least one address is set."""

    def __init__(self, metrics: Metrics, targets: list[Target]) -> None:
        self._metrics = metrics
        self.targets = targets
        metrics.open_outbox()

    @classmethod
    def from_config(
        cls,
        metrics: Metrics,
        statsd_address: str = "",
        dogstatsd_addr: str = "",
        dogstatsd_tags: tuple[str, ...] = (),
        statsite_address: str = "",
    ) -> StatsdSinks | None:
        targets: list[Target] = []
        if statsd_address:
            targets.append(UDPTarget("statsd", statsd_address, StatsdFormat()))
        if dogstatsd_addr:
            targets.append(UDPTarget("dogstatsd", dogstatsd_addr, DogStatsdFormat(dogstatsd_tags)))
        if statsite_address:
            targets.append(TCPTarget(statsite_address))
        return cls(metrics, targets) if targets else None

    async def flush(self) -> None:
        values = coalesce(self._metrics.take_outbox())
        for target in self.targets:
            if await target.ensure() and values:
                target.send(values)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(FLUSH_S)
                try:
                    await self.flush()
                except Exception:  # a sink must never stop for good: lose this flush, keep going
                    logger.exception("telemetry: sending metrics failed")
        finally:
            # What was recorded since the last flush still goes out (go-metrics drains its
            # queue on shutdown), then the sockets close.
            values = coalesce(self._metrics.close_outbox())
            for target in self.targets:
                if target.connected() and values:
                    target.send(values)
                target.close()
