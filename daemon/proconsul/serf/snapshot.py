"""The LAN pool's snapshot file: the peers an agent rejoins by itself after a restart.

Owns ``<data_dir>/serf/local.snapshot`` (Consul's file) and serf's rules for it:

- every member that joins is appended as ``alive: <name> <host:port>``; a member that fails or
  leaves as ``not-alive: <name>``, so the file replays to the set of peers last known alive;
- a graceful leave of this agent appends ``leave``: replaying it forgets every peer, so a restart
  after ``proconsul leave`` does not rejoin unless ``rejoin_after_leave`` (``-rejoin``), in which
  case the ``leave`` line is ignored (``Ignoring previous leave in snapshot``); once a leave was
  issued nothing more is recorded;
- the highest Lamport time of a user event and of a query this agent handled are appended as
  ``event-clock: <n>`` / ``query-clock: <n>`` when they grow; after a restart the pool ignores
  events and queries up to those times, which the cluster may still be gossiping (serf's
  eventMinTime / queryMinTime), so their handlers and watches do not fire twice;
- the file is rewritten with only the live entries and the clocks when it grows past twice the size its peers
  need (at least 128 KiB), as serf compacts it; lines it does not know are logged and skipped.

The rejoin itself (each previous peer in random order until one answers) is the membership's
job; this module only remembers.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = os.path.join("serf", "local.snapshot")
# serf: an entry costs about this much, and the file is compacted at twice the estimate ...
BYTES_PER_NODE = 128
COMPACTION_FACTOR = 2
# ... but never below this, so small pools do not rewrite the file all the time.
MIN_COMPACT_SIZE = 128 * 1024


class Snapshot:
    """An append-only record of member liveness, replayed at start.

    Writes go straight to the file (flushed, not fsynced, like serf's periodic flush); the
    ``leave`` line is fsynced because a restart must see it.
    """

    def __init__(self, data_dir: str, rejoin_after_leave: bool) -> None:
        self.path = os.path.join(data_dir, SNAPSHOT_FILE)
        self.rejoin_after_leave = rejoin_after_leave
        self.alive: dict[str, str] = {}
        self.leaving = False
        self.event_clock = 0  # highest user-event / query Lamport time handled (0: none)
        self.query_clock = 0
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self._replay()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for appends
        self._size = self._fh.tell()

    def _replay(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().split("\n")
        except FileNotFoundError:
            return
        # The last piece is empty when the file ends in a newline, or a torn write: skip it.
        for line in lines[:-1]:
            if line.startswith("alive: "):
                name, sep, addr = line[len("alive: "):].rpartition(" ")
                if not sep or not name:
                    logger.warning("serf: Failed to parse address: %s", line)
                    continue
                self.alive[name] = addr
            elif line.startswith("not-alive: "):
                self.alive.pop(line[len("not-alive: "):], None)
            elif line == "leave":
                if self.rejoin_after_leave:
                    logger.info("serf: Ignoring previous leave in snapshot")
                    continue
                self.alive.clear()
            elif line.startswith(("event-clock: ", "query-clock: ")):
                name, _, value = line.partition(": ")
                try:
                    ltime = int(value)
                except ValueError:
                    logger.warning("serf: Failed to convert %s time: %s", name, value)
                    continue
                if name == "event-clock":
                    self.event_clock = max(self.event_clock, ltime)
                else:
                    self.query_clock = max(self.query_clock, ltime)
            elif line.startswith(("#", "clock: ", "coordinate: ")):
                continue  # the member clock and coordinates re-converge from the cluster
            else:
                logger.warning("serf: Unrecognized snapshot line: %s", line)

    def previous_peers(self, own_name: str) -> list[tuple[str, str]]:
        """Peers last known alive as (name, "host:port"), ourselves excluded, sorted by name."""
        return sorted((n, a) for n, a in self.alive.items() if n != own_name)

    def member_alive(self, name: str, host: str, port: int) -> None:
        if self.leaving:
            return
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.alive[name] = addr
        self._append(f"alive: {name} {addr}\n")

    def member_gone(self, name: str) -> None:
        if self.leaving:
            return
        self.alive.pop(name, None)
        self._append(f"not-alive: {name}\n")

    def event_seen(self, ltime: int) -> None:
        """A user event with this Lamport time was handled."""
        if ltime > self.event_clock and not self.leaving:
            self.event_clock = ltime
            self._append(f"event-clock: {ltime}\n")

    def query_seen(self, ltime: int) -> None:
        """A query with this Lamport time was handled."""
        if ltime > self.query_clock and not self.leaving:
            self.query_clock = ltime
            self._append(f"query-clock: {ltime}\n")

    def leave(self) -> None:
        """Record our graceful leave; from now on nothing else is recorded."""
        if self.leaving:
            return
        self.leaving = True
        if not self.rejoin_after_leave:
            self.alive.clear()
        self._append("leave\n")
        try:
            os.fsync(self._fh.fileno())
        except (OSError, ValueError) as exc:
            logger.error("serf: failed to sync leave to snapshot: %s", exc)

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass

    def _append(self, line: str) -> None:
        try:
            self._fh.write(line)
            self._fh.flush()
            self._size += len(line.encode())
            if self._size > max(len(self.alive) * BYTES_PER_NODE * COMPACTION_FACTOR, MIN_COMPACT_SIZE):
                self._compact()
        except (OSError, ValueError) as exc:
            # A full disk must not take gossip down: the snapshot is a convenience.
            logger.error("serf: failed to append to snapshot: %s", exc)

    def _compact(self) -> None:
        tmp = self.path + ".compact"
        lines = [f"alive: {n} {a}\n" for n, a in sorted(self.alive.items())]
        if self.event_clock:
            lines.append(f"event-clock: {self.event_clock}\n")
        if self.query_clock:
            lines.append(f"query-clock: {self.query_clock}\n")
        if self.leaving:
            lines.append("leave\n")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        self._fh.close()
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = self._fh.tell()
