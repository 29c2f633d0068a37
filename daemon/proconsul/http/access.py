"""Who may call what on the HTTP API: Consul's `http_config.block_endpoints` and
`http_config.allow_write_http_from`.

Owns the two checks every request passes before its handler, as Consul's HTTP wrapper makes them:
a path under a blocked prefix is answered 403 "Endpoint is blocked by agent configuration", and a
request that can change state (any method but GET, HEAD and OPTIONS) from an address outside the
allowed networks is answered 403 "Access is restricted". Pure: built from the settings once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

BLOCKED_MESSAGE = "Endpoint is blocked by agent configuration"
RESTRICTED_MESSAGE = "Access is restricted"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AccessRules:
    blocked_prefixes: tuple[str, ...] = ()
    write_networks: tuple[Network, ...] = ()  # empty: writes allowed from anywhere

    @classmethod
    def build(cls, block_endpoints: Iterable[str], allow_write_http_from: Iterable[str]) -> AccessRules:
        networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow_write_http_from)
        return cls(tuple(block_endpoints), networks)

    def refusal(self, method: str, path: str, remote: str | None) -> str | None:
        """The 403 text for this request, or None when it may go on."""
        if any(path.startswith(prefix) for prefix in self.blocked_prefixes):
            return BLOCKED_MESSAGE
        if not self.write_networks or method in _READ_METHODS:
            return None
        try:
            address = ipaddress.ip_address((remote or "").split("%", 1)[0])
        except ValueError:
            return RESTRICTED_MESSAGE  # not an IP peer (no address to match): refuse, never allow
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.write_networks):
            return None
        return RESTRICTED_MESSAGE
