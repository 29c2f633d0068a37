"""Toxics: their API shape (name, type, stream, toxicity, attributes), input validation, and what each
one does to the bytes of one direction of one connection.

Behaviour follows toxiproxy's `toxics/*.go` (v2.12):
- `latency`: each chunk leaves `latency` ± `jitter` ms after it was read from the socket, in order.
- `bandwidth`: at most `rate` KB/s (1 KB = 1000 bytes); chunks bigger than 100 ms worth of bytes are
  cut into 100 ms pieces.
- `slow_close`: data passes; the close is held back `delay` ms.
- `timeout`: data is dropped; the connection closes once no data arrived for `timeout` ms (toxiproxy
  restarts that timer on every dropped chunk); `timeout` 0 never closes (a black hole). Removing a
  timeout toxic closes the connections of its stream, as toxiproxy does.
- `reset_peer`: on the first data (or EOF) it waits `timeout` ms, drops the data and closes both
  sockets with a TCP RST (SO_LINGER 0).
- `slicer`: chunks are cut into pieces of about `average_size` ± `size_variation` bytes with `delay`
  µs between pieces.
- `limit_data`: passes `bytes` bytes in total on this connection, then closes it.
- `noop`: passes everything (toxiproxy registers it too).

Each behaviour runs on a `Stage` (see `link.py`) that owns the chunk in hand, so interrupting a
behaviour (its toxic was updated) never loses data: the next run picks the chunk up again.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import errors

UPSTREAM = "upstream"  # client -> server bytes
DOWNSTREAM = "downstream"  # server -> client bytes
DIRECTIONS = (UPSTREAM, DOWNSTREAM)  # toxiproxy lists upstream toxics before downstream ones

# Attribute names per toxic type, all integers, all defaulting to 0 as in toxiproxy's structs.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "noop": (),
    "latency": ("latency", "jitter"),  # ms, ms
    "bandwidth": ("rate",),  # KB/s
    "slow_close": ("delay",),  # ms
    "timeout": ("timeout",),  # ms, 0 = never close
    "reset_peer": ("timeout",),  # ms
    "slicer": ("average_size", "size_variation", "delay"),  # bytes, bytes, µs
    "limit_data": ("bytes",),  # bytes
}

Chunk = tuple[bytes, float]  # data and the loop time it was read from the socket


@dataclass
class Toxic:
    """One toxic of a proxy, shared by every connection's stage that runs it."""

    name: str
    type: str
    stream: str  # as the client spelled it; `direction` is its lower-case meaning
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return self.stream.lower()

    def to_json(self) -> dict[str, Any]:
        # toxiproxy's field order: attributes first (the embedded struct), then the wrapper's fields.
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }


def _bad_body(reason: str) -> errors.ApiError:
    return errors.BAD_REQUEST_BODY.with_detail(reason)


def _string_field(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad_body(f"{key} must be a string")
    return value


def _toxicity_field(body: dict[str, Any], default: float) -> float:
    value = body.get("toxicity")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad_body("toxicity must be a number")
    return float(value)


def parse_attributes(toxic_type: str, raw: Any, current: dict[str, int]) -> dict[str, int]:
    """Merge `raw` into `current` like toxiproxy decodes JSON onto the toxic's struct: listed keys
    overwrite, unknown keys are ignored, null keeps the old value; integers only."""
    if raw is None:
        return dict(current)
    if not isinstance(raw, dict):
        raise _bad_body("attributes must be an object")
    merged = dict(current)
    for key in ATTRIBUTES[toxic_type]:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_body(f"attribute {key} of a {toxic_type} toxic must be an integer")
        merged[key] = value
    if toxic_type == "slicer" and merged["average_size"] <= 0:
        # toxiproxy recurses forever on a zero average size; refuse it instead.
        raise _bad_body("attribute average_size of a slicer toxic must be positive")
    return merged


def new_toxic(body: Any, existing_names: set[str]) -> Toxic:
    """A toxic from a create request, checked in toxiproxy's order: body, stream, type, name clash."""
    if not isinstance(body, dict):
        raise _bad_body("expected a JSON object")
    stream = _string_field(body, "stream", DOWNSTREAM)
    if stream.lower() not in DIRECTIONS:
        raise errors.INVALID_STREAM
    toxic_type = _string_field(body, "type", "")
    name = _string_field(body, "name", "") or f"{toxic_type}_{stream}"
    toxicity = _toxicity_field(body, 1.0)
    if toxic_type not in ATTRIBUTES:
        raise errors.INVALID_TOXIC_TYPE
    if name in existing_names:
        raise errors.TOXIC_ALREADY_EXISTS
    defaults = dict.fromkeys(ATTRIBUTES[toxic_type], 0)
    attributes = parse_attributes(toxic_type, body.get("attributes"), defaults)
    return Toxic(name=name, type=toxic_type, stream=stream, toxicity=toxicity, attributes=attributes)


def parse_update(toxic: Toxic, body: Any) -> tuple[float, dict[str, int]]:
    """The new (toxicity, attributes) of an update request; name, type and stream never change."""
    if not isinstance(body, dict):
        raise _bad_body("expected a JSON object")
    return _toxicity_field(body, toxic.toxicity), parse_attributes(
        toxic.type, body.get("attributes"), toxic.attributes
    )


class Stage(Protocol):
    """What a behaviour may do with the chunks of its place in a link (implemented in link.py)."""

    state: dict[str, int]  # per-connection state that survives updates (limit_data's byte count)
    rng: random.Random

    async def take(self) -> Chunk | None: ...  # the chunk in hand, or the next one; None is EOF
    def forward(self, data: bytes, timestamp: float) -> None: ...  # send a piece on
    def keep(self, data: bytes, timestamp: float) -> None: ...  # what is left of the chunk in hand
    def pass_on(self) -> None: ...  # send the chunk in hand on unchanged
    def release(self) -> None: ...  # done with the chunk in hand (all of it was forwarded)
    def discard(self) -> None: ...  # the chunk in hand (what `keep` left of it) vanishes
    def close(self, reset: bool = False) -> None: ...  # end this direction (RST when reset)
    def now(self) -> float: ...


Behaviour = Callable[[Stage, dict[str, int]], Awaitable[None]]


async def _noop(stage: Stage, attrs: dict[str, int]) -> None:
    while await stage.take() is not None:
        stage.pass_on()
    stage.close()


async def _latency(stage: Stage, attrs: dict[str, int]) -> None:
    while (chunk := await stage.take()) is not None:
        data, received = chunk
        delay_ms = attrs["latency"]
        if attrs["jitter"] > 0:
            delay_ms += stage.rng.randrange(-attrs["jitter"], attrs["jitter"])
        # Measured from the chunk's read time, so chunks queued behind a delayed one are not
        # delayed twice: the link stays pipelined, like a long wire.
        wait = received + delay_ms / 1000 - stage.now()
        if wait > 0:
            await asyncio.sleep(wait)
        stage.forward(data, stage.now())
        stage.release()
    stage.close()


async def _bandwidth(stage: Stage, attrs: dict[str, int]) -> None:
    rate = attrs["rate"]  # KB/s = bytes per ms
    owed = 0.0  # seconds of transmission time not yet slept; negative after oversleeping
    while (chunk := await stage.take()) is not None:
        data, received = chunk
        if rate <= 0:
            stage.pass_on()
            continue
        owed += len(data) / (rate * 1000)
        piece = rate * 100  # bytes in 100 ms
        while len(data) > piece:
            await asyncio.sleep(0.1)
            stage.forward(data[:piece], received)
            data = data[piece:]
            stage.keep(data, received)
            owed -= 0.1
        started = stage.now()
        if owed > 0:
            await asyncio.sleep(owed)
        owed -= stage.now() - started
        stage.pass_on()
    stage.close()


async def _slow_close(stage: Stage, attrs: dict[str, int]) -> None:
    while await stage.take() is not None:
        stage.pass_on()
    await asyncio.sleep(attrs["delay"] / 1000)
    stage.close()


async def _timeout(stage: Stage, attrs: dict[str, int]) -> None:
    idle_s = attrs["timeout"] / 1000
    while True:
        if idle_s > 0:
            try:
                chunk = await asyncio.wait_for(stage.take(), idle_s)
            except TimeoutError:
                break
        else:
            chunk = await stage.take()
        if chunk is None:
            break
        stage.discard()
    stage.close()


async def _reset_peer(stage: Stage, attrs: dict[str, int]) -> None:
    chunk = await stage.take()
    await asyncio.sleep(attrs["timeout"] / 1000)
    if chunk is not None:
        stage.discard()
    stage.close(reset=True)


def slice_bounds(size: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Cut points 0 < ... < size splitting `size` bytes into pieces of about average ± variation:
    halve recursively (with a random shift) until a piece is small enough, so sizes vary evenly."""
    bounds = [0]
    pending = [(0, size)]  # a stack of (start, end), right halves pushed first
    while pending:
        start, end = pending.pop()
        if (end - start) - average <= variation or end - start < 2:
            bounds.append(end)
            continue
        middle = start + (end - start) // 2
        if variation > 0:
            middle += rng.randrange(-variation, variation)
        middle = min(max(middle, start + 1), end - 1)  # a shift never makes an empty piece
        pending.append((middle, end))
        pending.append((start, middle))
    return bounds


async def _slicer(stage: Stage, attrs: dict[str, int]) -> None:
    while (chunk := await stage.take()) is not None:
        data, received = chunk
        bounds = slice_bounds(len(data), attrs["average_size"], max(attrs["size_variation"], 0), stage.rng)
        for start, end in zip(bounds, bounds[1:]):
            stage.forward(data[start:end], received)
            if end < len(data):
                stage.keep(data[end:], received)  # an update mid-chunk re-slices only the rest
            else:
                stage.release()
            await asyncio.sleep(max(attrs["delay"], 0) / 1_000_000)
    stage.close()


async def _limit_data(stage: Stage, attrs: dict[str, int]) -> None:
    limit = attrs["bytes"]
    sent = stage.state.setdefault("limit_data_sent", 0)
    while True:
        chunk = await stage.take()
        if chunk is None:
            break
        data, received = chunk
        allowed = data[: limit - sent]
        stage.forward(allowed, received)
        stage.keep(data[len(allowed) :], received)
        stage.discard()  # bytes past the limit never arrive
        sent += len(allowed)
        stage.state["limit_data_sent"] = sent
        if sent >= limit:
            break  # like toxiproxy, even a limit of 0 waits for the first chunk before closing
    stage.close()


BEHAVIOURS: dict[str, Behaviour] = {
    "noop": _noop,
    "latency": _latency,
    "bandwidth": _bandwidth,
    "slow_close": _slow_close,
    "timeout": _timeout,
    "reset_peer": _reset_peer,
    "slicer": _slicer,
    "limit_data": _limit_data,
}

# Toxics whose removal closes the connections they were on (toxiproxy's CleanupToxic).
CLOSE_ON_REMOVE = frozenset({"timeout"})
