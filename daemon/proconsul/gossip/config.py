"""Gossip tuning: the LAN, WAN and local profiles of the SWIM + Lifeguard core.

This module owns the numbers only. Defaults equal hashicorp/memberlist's ``DefaultLANConfig``,
``DefaultWANConfig`` and ``DefaultLocalConfig`` (and, for the serf-level fields, serf's
``DefaultConfig``), because Consul ships with exactly those and operators tune against them.
Durations are float seconds (``_s``); parsing Consul's ``"10s"`` strings is ``proconsul.config``'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class GossipConfig:
    """One gossip pool's timing and fan-out. Build with :meth:`lan`, :meth:`wan` or :meth:`local`."""

    # s, 1.0: failure check every second; detection time scales linearly with it.
    probe_interval_s: float = 1.0
    # s, 0.5: a reasonable LAN RTT (99th percentile); after it the indirect probes start.
    probe_timeout_s: float = 0.5
    # count, 3: members asked to ping-req a silent target; any single ack clears it.
    indirect_checks: int = 3
    # count, 4: a broadcast is piggybacked retransmit_mult * ceil(log10(n+1)) times, enough to reach all.
    retransmit_mult: int = 4
    # count, 4: min suspicion = suspicion_mult * max(1, log10(n)) * probe_interval, time to refute.
    suspicion_mult: int = 4
    # count, 6: max suspicion = 6 * min; with no confirmations a lone accuser waits this long (120 s at 10k).
    suspicion_max_timeout_mult: int = 6
    # s, 30.0: full-state TCP sync is expensive, so it is low frequency; 0 disables it.
    push_pull_interval_s: float = 30.0
    # s, 0.2: gossip broadcasts that found no probe to piggyback on, more often than probes.
    gossip_interval_s: float = 0.2
    # count, 3: members sent each gossip round; spread speed against bandwidth.
    gossip_nodes: int = 3
    # s, 30.0: keep gossiping to (and remembering) dead members this long so they learn and can refute.
    gossip_to_the_dead_time_s: float = 30.0
    # count, 8: Lifeguard health score ceiling; probe interval backs off up to 8x when we are the slow one.
    awareness_max_multiplier: int = 8
    # s, 10.0: limit for one TCP push-pull exchange (connect + both directions).
    tcp_timeout_s: float = 10.0
    # bool, False: TCP fallback pings are safe and stop UDP-only breakage from causing flaps.
    disable_tcp_pings: bool = False
    # bytes, 1400: largest UDP datagram we compose; stays under a 1500-byte Ethernet MTU.
    udp_buffer_size: int = 1400
    # count, 512 (serf EventBuffer): recent user-event Lamport slots remembered for de-duplication.
    event_buffer_size: int = 512
    # bytes, 512 (serf UserEventSizeLimit): name + payload limit so an event fits in a gossip packet.
    user_event_size_limit: int = 512
    # s, 5.0 (serf BroadcastTimeout): longest wait for a leave broadcast to drain before giving up.
    leave_timeout_s: float = 5.0
    # count, 16 (serf QueryTimeoutMult): query timeout = gossip_interval * 16 * ceil(log10(n + 1)).
    query_timeout_mult: int = 16
    # count, 512 (serf QueryBuffer): recent query Lamport slots remembered for de-duplication.
    query_buffer_size: int = 512
    # bytes, 1024 (serf QuerySizeLimit / QueryResponseSizeLimit): a query or answer fits in a packet.
    query_size_limit: int = 1024

    @classmethod
    def lan(cls) -> GossipConfig:
        """memberlist DefaultLANConfig: conservative values for one datacenter."""
        return cls()

    @classmethod
    def wan(cls) -> GossipConfig:
        """memberlist DefaultWANConfig: slower probes and more patience across datacenters."""
        return dataclasses.replace(
            cls(),
            tcp_timeout_s=30.0,  # WAN round trips and slow links need longer streams
            suspicion_mult=6,  # more time to refute over lossy long-haul links
            push_pull_interval_s=60.0,  # servers only; full syncs are costlier across the WAN
            probe_timeout_s=3.0,  # WAN RTTs are far above LAN ones
            probe_interval_s=5.0,  # fewer probes per second over expensive links
            gossip_nodes=4,  # gossip less often but to one more member
            gossip_interval_s=0.5,
            gossip_to_the_dead_time_s=60.0,
        )

    @classmethod
    def local(cls) -> GossipConfig:
        """memberlist DefaultLocalConfig: loopback clusters (tests, one host)."""
        return dataclasses.replace(
            cls(),
            tcp_timeout_s=1.0,
            indirect_checks=1,
            retransmit_mult=2,
            suspicion_mult=3,
            push_pull_interval_s=15.0,
            probe_timeout_s=0.2,
            probe_interval_s=1.0,
            gossip_interval_s=0.1,
            gossip_to_the_dead_time_s=15.0,
        )

    def validate(self) -> list[str]:
        """Every problem at once, as ``field: reason`` strings (empty when valid)."""
        errors: list[str] = []
        for name in ("probe_interval_s", "probe_timeout_s", "gossip_interval_s", "tcp_timeout_s",
                     "leave_timeout_s"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}: must be > 0")
        if self.probe_timeout_s >= self.probe_interval_s:
            errors.append("probe_timeout_s: must be shorter than probe_interval_s")
        if self.push_pull_interval_s < 0:
            errors.append("push_pull_interval_s: must be >= 0 (0 disables)")
        if self.gossip_to_the_dead_time_s < 0:
            errors.append("gossip_to_the_dead_time_s: must be >= 0")
        for name in ("retransmit_mult", "suspicion_mult", "suspicion_max_timeout_mult",
                     "awareness_max_multiplier", "event_buffer_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name}: must be >= 1")
        for name in ("indirect_checks", "gossip_nodes"):
            if getattr(self, name) < 0:
                errors.append(f"{name}: must be >= 0")
        if self.udp_buffer_size < 512:
            errors.append("udp_buffer_size: must be >= 512 bytes")
        return errors


def lan() -> GossipConfig:
    """Shorthand for :meth:`GossipConfig.lan`."""
    return GossipConfig.lan()


def wan() -> GossipConfig:
    """Shorthand for :meth:`GossipConfig.wan`."""
    return GossipConfig.wan()


def local() -> GossipConfig:
    """Shorthand for :meth:`GossipConfig.local`."""
    return GossipConfig.local()
