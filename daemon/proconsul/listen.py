"""The accept backlog of every TCP listener the agent opens.

Owns one number: how many connections the kernel may hold, handshake done, before the agent
accepts them. asyncio's default is 100; Go's net package (and so Consul) asks for the kernel's
`net.core.somaxconn` (4096 on current Linux). With 100, a burst of clients (thousands of
watchers reconnecting after a restart, a fleet of agents polling at once) overflows the queue
while the event loop is busy for a moment; the kernel then drops their handshakes and each
client retries after 1, 3, 7, 15, 31 s: a watcher can wait a minute for its first answer while the
agent is idle (found by bench/catalog_scale.py at 5,000 watchers).
"""

from __future__ import annotations

import functools
import socket

_SOMAXCONN = "/proc/sys/net/core/somaxconn"
# The kernel caps a listen() backlog at somaxconn anyway; Go caps it at 65535 (it is a u16 in
# older kernels' accept queue accounting), and so do we.
_MAX = 65535


@functools.cache
def listen_backlog() -> int:
    """The kernel's somaxconn (as Go reads it), else socket.SOMAXCONN."""
    try:
        with open(_SOMAXCONN, encoding="ascii") as f:
            value = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return socket.SOMAXCONN
    return max(1, min(value, _MAX)) if value > 0 else socket.SOMAXCONN
