"""Who may call what on the HTTP API: Consul's `http_config.block_endpoints` and
`http_config.allow_write_http_from`.

Owns the two checks every request passes before its handler, as Consul's HTTP wrapper makes them:
a path under a blocked prefix is answered 403 "Endpoint is blocked by agent configuration", and a
request that can change state (any method but GET, HEAD and OPTIONS) from an address outside the
allowed networks is answered 403 "Access is restricted". Pure: built from the settings once.
The allowed networks are one `netaddr.IPSet` (merged CIDRs, one lookup per write, IPv4-mapped
IPv6 peers matched as their IPv4 address).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import netaddr

BLOCKED_MESSAGE = "Endpoint is blocked by agent configuration"
RESTRICTED_MESSAGE = "Access is restricted"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

@dataclass(frozen=True)
class AccessRules:
    blocked_prefixes: tuple[str, ...] = ()
    write_networks: tuple[str, ...] = ()  # the CIDRs as configured; empty: writes allowed from anywhere
    write_set: netaddr.IPSet = field(default_factory=netaddr.IPSet)

    @classmethod
    def build(cls, block_endpoints: Iterable[str], allow_write_http_from: Iterable[str]) -> AccessRules:
        networks = tuple(allow_write_http_from)
        # netaddr reads a bare address as a /32 (/128) and, like Consul's net.ParseCIDR-or-IP, keeps
        # host bits of a CIDR out of the way (the network is what matters).
        return cls(tuple(block_endpoints), networks, netaddr.IPSet(netaddr.IPNetwork(c).cidr for c in networks))

    def refusal(self, method: str, path: str, remote: str | None) -> str | None:
        """The 403 text for this request, or None when it may go on."""
        if any(path.startswith(prefix) for prefix in self.blocked_prefixes):
            return BLOCKED_MESSAGE
        if not self.write_networks or method in _READ_METHODS:
            return None
        try:
            address = netaddr.IPAddress((remote or "").split("%", 1)[0])
        except (netaddr.AddrFormatError, ValueError, TypeError):
            return RESTRICTED_MESSAGE  # not an IP peer (no address to match): refuse, never allow
        if address.version == 6 and address.is_ipv4_mapped():
            address = address.ipv4()
        return None if address in self.write_set else RESTRICTED_MESSAGE
