"""Host address discovery and go-sockaddr templates (the subset operators use).

Owns `hostname()` (the default node name), `interface_addresses()` (IPv4 by ioctl, IPv6 from
/proc/net/if_inet6), the private/public address pickers used for default advertise addresses,
`expand_template()` for `{{ GetPrivateIP }}` and friends, and the small IP predicates the builders
share. `hostname` and `interface_addresses` are module-level so tests (and other platforms) can
replace them here.
"""

from __future__ import annotations

import fcntl
import ipaddress
import re
import socket
import struct
from collections.abc import Callable


def hostname() -> str:
    """The default node name (a function so tests can replace it)."""
    return socket.gethostname()


_SIOCGIFADDR = 0x8915
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_PRIVATE_V4 = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
]


def interface_addresses() -> list[tuple[str, str]]:
    """(interface, IP) for every up interface: IPv4 via ioctl, IPv6 from /proc/net/if_inet6.

    A module-level function so tests (and other platforms) can replace it.
    """
    result: list[tuple[str, str]] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            req = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack("H", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, req)[16:18])[0]
                if not flags & _IFF_UP:
                    continue
                addr = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, req)[20:24]
            except OSError:
                continue
            result.append((name, socket.inet_ntoa(addr)))
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6:
                    result.append((parts[5], str(ipaddress.IPv6Address(bytes.fromhex(parts[0])))))
    except OSError:
        pass
    return result


def private_ipv4() -> list[str]:
    return [
        ip
        for _, ip in interface_addresses()
        if ipaddress.ip_address(ip).version == 4 and any(ipaddress.ip_address(ip) in n for n in _PRIVATE_V4)
    ]


def public_ipv6() -> list[str]:
    out = []
    for _, ip in interface_addresses():
        addr = ipaddress.ip_address(ip)
        if addr.version == 6 and addr.is_global:
            out.append(ip)
    return out


def public_ipv4() -> list[str]:
    return [
        ip
        for _, ip in interface_addresses()
        if ipaddress.ip_address(ip).version == 4 and ipaddress.ip_address(ip).is_global
    ]


def _iface_ips(name: str) -> list[str]:
    ips = [ip for iface, ip in interface_addresses() if iface == name]
    if not ips:
        raise ValueError(f'no IP address on interface "{name}"')
    return ips


_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_TEMPLATE_FUNCS: dict[str, Callable[[list[str]], list[str]]] = {
    "GetPrivateIP": lambda a: private_ipv4()[:1],
    "GetPrivateIPs": lambda a: private_ipv4(),
    "GetPublicIP": lambda a: public_ipv4()[:1],
    "GetPublicIPs": lambda a: public_ipv4(),
    "GetInterfaceIP": lambda a: [ip for ip in _iface_ips(a[0]) if ipaddress.ip_address(ip).version == 4][:1],
    "GetInterfaceIPs": lambda a: _iface_ips(a[0]),
}


def expand_template(text: str) -> str:
    """Expand the go-sockaddr templates proconsul supports; plain text passes through.

    Supported: GetPrivateIP(s), GetPublicIP(s), GetInterfaceIP "name", GetInterfaceIPs "name".
    Pipelines (`| include ...`) are not supported and raise ValueError.
    """

    def one(match: re.Match[str]) -> str:
        parts = match.group(1).split()
        if not parts or parts[0] not in _TEMPLATE_FUNCS or "|" in parts:
            raise ValueError(f"unsupported go-sockaddr template {match.group(0)!r}")
        args = [p.strip('"') for p in parts[1:]]
        if parts[0].startswith("GetInterface") and len(args) != 1:
            raise ValueError(f"{parts[0]} needs one interface name")
        return " ".join(_TEMPLATE_FUNCS[parts[0]](args))

    return _TEMPLATE.sub(one, text)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def is_any(text: str) -> bool:
    return text in ("0.0.0.0", "::", "[::]")
