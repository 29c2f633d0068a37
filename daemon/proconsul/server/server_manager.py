"""Which server a client agent sends its RPCs to: Consul's router manager policy, without I/O.

Owns the ordered server list of a client agent (servers of its datacenter that gossip reports
alive) and the rules for its head, the server every RPC goes to first:

- servers the LAN pool reports are appended; failed or left ones disappear at the next update;
- a server that fails an RPC is moved to the end (``NotifyFailedServer``), so the next call
  fails over to another one and the broken one is tried last;
- every so often the list is shuffled (``RebalanceServers``), so clients spread over servers
  and a restarted server gets load again. The period is Consul's: at least 120 s plus up to
  60 s of jitter, and longer when the cluster is large enough that ``members / (servers * 64)``
  seconds exceeds that (no more than 64 new connections per server per second cluster-wide).

Time (monotonic seconds) comes in as arguments and randomness from an injected
``random.Random``, so tests drive it exactly.
"""

from __future__ import annotations

import random

# Consul (agent/router/manager.go): never reuse a connection for less than this ...
MIN_REUSE_S = 120.0
# ... plus a random stagger of up to MIN_REUSE_S / this, so clients do not move in step ...
JITTER_FRACTION = 2
# ... and keep rebalancing below this many new connections per server per second cluster-wide.
REBALANCE_CONNS_PER_SEC_PER_SERVER = 64


def rebalance_interval(num_servers: int, num_members: int, rng: random.Random) -> float:
    """Seconds until the next shuffle (Consul's refreshServerRebalanceTimer)."""
    low_watermark = MIN_REUSE_S + rng.random() * (MIN_REUSE_S / JITTER_FRACTION)
    rate = max(1, num_servers) * REBALANCE_CONNS_PER_SEC_PER_SERVER
    # lib.RateScaledInterval: n members at `rate` per second, but never below the watermark.
    return max(low_watermark, num_members / rate)


class ServerList:
    """The client's servers, head first (see the module docstring for the rules)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.servers: list[str] = []  # "host:port", the head is the preferred server
        self.next_rebalance = 0.0  # monotonic seconds; 0: shuffle at the first look

    def update(self, alive: list[str]) -> None:
        """Take the servers gossip reports alive now; keeps the order of known ones."""
        wanted = set(alive)
        self.servers = [s for s in self.servers if s in wanted]
        known = set(self.servers)
        self.servers += [s for s in alive if s not in known]

    def maybe_rebalance(self, now: float, num_members: int) -> bool:
        """Shuffle when the rebalance time came; True if it did."""
        if now < self.next_rebalance or not self.servers:
            return False
        self.rng.shuffle(self.servers)
        self.next_rebalance = now + rebalance_interval(len(self.servers), num_members, self.rng)
        return True

    def notify_failed(self, server: str) -> None:
        """``server`` failed an RPC: if it is the head, it goes to the end of the line."""
        if len(self.servers) > 1 and self.servers[0] == server:
            self.servers.append(self.servers.pop(0))

    def candidates(self) -> list[str]:
        """Servers in the order to try them."""
        return list(self.servers)
