"""The data plane of one proxied TCP connection: the client socket, the upstream socket, and two
links (upstream = client -> server bytes, downstream = server -> client bytes), each a chain of
stages that pass chunks through the toxics of its stream.

A link is: reader task -> head stage (no toxic) -> one stage per toxic -> writer task, joined by
unbounded queues; a per-link byte budget pauses the reader so a slow or black-holed link pushes
back on the sender instead of buffering without end. As in toxiproxy, toxics added, updated or
removed through the API reach connections that are already open: a stage is interrupted by
cancelling its task, and because the stage (not the behaviour) owns the chunk in hand, a restarted
behaviour carries on with that chunk. When a link's chain ends (EOF, or a toxic closed it) its
writer closes the destination socket, which ends the other link too, again as toxiproxy does.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Coroutine
from typing import Any

from .toxics import BEHAVIOURS, CLOSE_ON_REMOVE, DOWNSTREAM, UPSTREAM, Chunk, Toxic

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024  # bytes per socket read: one chunk
LINK_BUFFER_LIMIT = 1 << 20  # bytes read but not yet written (or dropped) before a link stops reading
CLOSE_FLUSH_TIMEOUT_S = 30.0  # how long a closed socket may take to flush to a peer that does not read

ChunkQueue = asyncio.Queue[Chunk | None]  # None is EOF


class Stage:
    """One place in a link's chain: runs its toxic's behaviour (or noop, by the toxicity roll) on
    the chunks of its input queue and puts the results on its output queue."""

    def __init__(self, link: Link, toxic: Toxic | None, input: ChunkQueue, output: ChunkQueue) -> None:
        self.link = link
        self.toxic = toxic  # None for the head stage, which only passes chunks on
        self.input = input
        self.output = output  # rewired when a toxic is added after this one or removed before it
        self.rng = link.rng
        self.state: dict[str, int] = {}
        self.closed = False
        self._holding = False
        self._held: Chunk | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the Stage protocol of toxics.py --------------------------------------------------------

    async def take(self) -> Chunk | None:
        if not self._holding:
            # Queue.get leaves the item queued when cancelled, and nothing can interrupt between it
            # returning and this assignment, so a chunk is always either queued or held.
            self._held = await self.input.get()
            self._holding = True
        return self._held

    def forward(self, data: bytes, timestamp: float) -> None:
        if data:
            self.output.put_nowait((data, timestamp))

    def keep(self, data: bytes, timestamp: float) -> None:
        self._held = (data, timestamp)

    def pass_on(self) -> None:
        if self._held is not None:
            self.forward(*self._held)
        self.release()

    def release(self) -> None:
        self._holding = False
        self._held = None

    def discard(self) -> None:
        if self._held is not None:
            self.link.bytes_gone(len(self._held[0]))
        self.release()

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if reset:
            self.link.connection.arm_reset()
        self.output.put_nowait(None)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.closed:
            self._task = self.link.connection.spawn(self._run())

    async def interrupt(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    def take_leftovers(self) -> list[Chunk | None]:
        """The chunk in hand and everything queued for this (interrupted) stage, in order."""
        leftovers: list[Chunk | None] = [self._held] if self._holding else []
        self.release()
        while not self.input.empty():
            leftovers.append(self.input.get_nowait())
        return leftovers

    async def _run(self) -> None:
        toxic = self.toxic
        # toxicity is rolled each time the stage (re)starts: per connection, and again on update.
        if toxic is None or not self.rng.random() < toxic.toxicity:
            await BEHAVIOURS["noop"](self, {})
        else:
            await BEHAVIOURS[toxic.type](self, dict(toxic.attributes))


class Link:
    """One direction of a connection: reads `reader`, passes chunks through the stages, writes `writer`."""

    def __init__(
        self,
        connection: Connection,
        direction: str,
        toxics: list[Toxic],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.connection = connection
        self.direction = direction
        self.rng = connection.rng
        self.reader = reader
        self.writer = writer
        self.sink: ChunkQueue = asyncio.Queue()  # what the writer task sends; fixed for the link's life
        self.buffered = 0  # bytes read from `reader`, not yet written to `writer` nor dropped
        self._room = asyncio.Event()
        self._room.set()
        self.stages: list[Stage] = []
        queue: ChunkQueue = asyncio.Queue()
        for toxic in [None, *toxics]:
            next_queue: ChunkQueue = asyncio.Queue() if len(self.stages) < len(toxics) else self.sink
            self.stages.append(Stage(self, toxic, queue, next_queue))
            queue = next_queue

    def start(self) -> None:
        self.connection.spawn(self._read())
        for stage in self.stages:
            stage.start()
        self.connection.spawn(self._write())

    def bytes_gone(self, count: int) -> None:
        self.buffered -= count
        if self.buffered < LINK_BUFFER_LIMIT:
            self._room.set()

    async def _read(self) -> None:
        head = self.stages[0].input
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._room.wait()
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self.buffered += len(data)
                if self.buffered >= LINK_BUFFER_LIMIT:
                    self._room.clear()
                head.put_nowait((data, loop.time()))
        except OSError:
            pass  # a reset or closed source ends the link like an EOF, as in toxiproxy
        head.put_nowait(None)

    async def _write(self) -> None:
        try:
            while (chunk := await self.sink.get()) is not None:
                self.writer.write(chunk[0])
                await self.writer.drain()
                self.bytes_gone(len(chunk[0]))
        except OSError:
            pass  # the destination went away: close it and let the other link end too
        finally:
            self.writer.close()
            self.connection.link_finished()

    # -- toxics changed through the API ---------------------------------------------------------

    def add_toxic(self, toxic: Toxic) -> None:
        last = self.stages[-1]
        new_input: ChunkQueue = asyncio.Queue()
        # Chunks still waiting for the writer have not been delivered: the new toxic gets them too.
        while not self.sink.empty():
            new_input.put_nowait(self.sink.get_nowait())
        stage = Stage(self, toxic, new_input, self.sink)
        last.output = new_input
        self.stages.append(stage)
        stage.start()

    async def update_toxic(self, toxic: Toxic) -> None:
        for stage in self.stages:
            if stage.toxic is toxic:
                await stage.interrupt()
                stage.start()

    async def remove_toxic(self, toxic: Toxic) -> None:
        index = next((i for i, stage in enumerate(self.stages) if stage.toxic is toxic), None)
        if index is None:
            return  # the connection was opened after the toxic left the chain
        stage = self.stages[index]
        await stage.interrupt()
        del self.stages[index]
        previous = self.stages[index - 1]
        if toxic.type in CLOSE_ON_REMOVE:
            # toxiproxy's timeout toxic closes its link when removed, whatever its toxicity roll was.
            stage.close()
            previous.output = stage.input  # nobody reads it any more; the link is ending
            return
        if not stage.closed:
            for item in stage.take_leftovers():
                stage.output.put_nowait(item)
        previous.output = stage.output


class Connection:
    """One accepted client and its upstream connection; owns every task of both links."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        chains: dict[str, list[Toxic]],
        rng: random.Random,
    ) -> None:
        self.rng = rng
        self.client_writer = client[1]
        self.upstream_writer = upstream[1]
        self.closing = False
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finished_links = 0
        self._done = asyncio.Event()
        self.links = {
            UPSTREAM: Link(self, UPSTREAM, list(chains[UPSTREAM]), client[0], upstream[1]),
            DOWNSTREAM: Link(self, DOWNSTREAM, list(chains[DOWNSTREAM]), upstream[0], client[1]),
        }

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        if self.closing or self._group is None:
            coro.close()
            return None
        task = self._group.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def link_finished(self) -> None:
        self._finished_links += 1
        if self._finished_links == len(self.links):
            self._done.set()

    def arm_reset(self) -> None:
        """Make the coming close of both sockets a TCP RST (SO_LINGER on, timeout 0)."""
        for writer in (self.client_writer, self.upstream_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass  # already closed

    async def run(self) -> None:
        """Pipe both directions until both links have ended (or the task is cancelled)."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for link in self.links.values():
                    link.start()
                await self._done.wait()
                self.closing = True
                for task in list(self._tasks):
                    task.cancel()  # stages still sleeping (slow_close, reset_peer) end with the link
            # Both writers were closed gracefully: let them flush what they still hold.
            for writer in (self.client_writer, self.upstream_writer):
                try:
                    await asyncio.wait_for(writer.wait_closed(), CLOSE_FLUSH_TIMEOUT_S)
                except (OSError, TimeoutError):
                    pass
        finally:
            # Reached at once when the proxy is disabled or deleted (the task is cancelled).
            self.closing = True
            for writer in (self.client_writer, self.upstream_writer):
                writer.transport.abort()
