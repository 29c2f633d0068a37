"""The run's toxiproxy server and one proxy per directed RPC link, driven only through the
toxiproxy HTTP API (the `toxiproxy-python` client), so the builtin server and a real
`toxiproxy-server` binary are interchangeable.

Link (A, B) is "A dials B's server RPC port": its proxy listens on the bridge address at a
port derived from the pair and forwards to B's `ip:8300`; A's `dial_overrides` sends the dial
there. Disabling the proxy closes its listener and its open connections, so A can no longer
reach B while B can still reach A through link (B, A): partitions can be one-way.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import die_with_parent

API_PORT = 8474
FIRST_PROXY_PORT = 20000


class ProxyError(RuntimeError):
    pass


def resolve_toxiproxy(choice: str) -> list[str] | None:
    """The server command for `--toxiproxy=auto|builtin|PATH`; None means the builtin one."""
    if choice == "builtin":
        return None
    if choice == "auto":
        found = shutil.which("toxiproxy-server")
        return [found] if found else None
    if not Path(choice).exists():
        raise ProxyError(f"--toxiproxy: {choice} does not exist")
    return [choice]


class ToxiproxyServer:
    """A toxiproxy server process listening on `host:API_PORT` in the run's namespace."""

    def __init__(self, host: str, binary: list[str] | None, log_path: Path) -> None:
        self.host = host
        self.binary = binary
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def kind(self) -> str:
        return self.binary[0] if self.binary else "builtin"

    def start(self) -> None:
        if self.binary:
            cmd = [*self.binary, "-host", self.host, "-port", str(API_PORT)]
        else:
            cmd = [sys.executable, "-m", "proconsul_sim.toxiproxy", "--host", self.host, "--port", str(API_PORT)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        log.close()
        import toxiproxy

        self.client = toxiproxy.Toxiproxy()
        self.client.update_api_consumer(self.host, API_PORT)
        deadline = time.monotonic() + 30
        while not self.client.running():
            if self.proc.poll() is not None:
                raise ProxyError(f"toxiproxy server exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise ProxyError(f"toxiproxy server did not answer on {self.host}:{API_PORT}; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class Link:
    src: str  # node name that dials
    dst: str  # node name dialled
    listen: str  # proxy address (host:port) that src dials instead
    upstream: str  # dst's real server RPC address

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"


class Links:
    """The proxies of every directed RPC link, and the toxics applied to them."""

    def __init__(self, server: ToxiproxyServer) -> None:
        self.server = server
        self.links: dict[tuple[str, str], Link] = {}
        self.proxies: dict[tuple[str, str], Any] = {}

    def plan(self, src: str, dst: str, upstream: str) -> Link:
        """Reserve the proxy address of link src -> dst (before the agents' configs are written)."""
        port = FIRST_PROXY_PORT + len(self.links)
        link = Link(src, dst, f"{self.server.host}:{port}", upstream)
        self.links[(src, dst)] = link
        return link

    def create_all(self) -> None:
        for key, link in sorted(self.links.items()):
            self.proxies[key] = self.server.client.create(upstream=link.upstream, name=link.name, listen=link.listen)

    def dial_overrides(self, src: str) -> dict[str, str]:
        return {link.upstream: link.listen for (s, _), link in sorted(self.links.items()) if s == src}

    def pairs(self, srcs: set[str], dsts: set[str]) -> list[tuple[str, str]]:
        return sorted(k for k in self.links if k[0] in srcs and k[1] in dsts and k[0] != k[1])

    def disable(self, pairs: list[tuple[str, str]]) -> None:
        for key in pairs:
            self.proxies[key].disable()

    def enable(self, pairs: list[tuple[str, str]]) -> None:
        for key in pairs:
            self.proxies[key].enable()

    def add_toxic(self, pairs: list[tuple[str, str]], name: str, toxic_type: str,
                  attributes: dict[str, Any], stream: str = "downstream") -> None:
        for key in pairs:
            self.proxies[key].add_toxic(name=name, type=toxic_type, stream=stream, attributes=attributes)

    def remove_toxic(self, pairs: list[tuple[str, str]], name: str) -> None:
        for key in pairs:
            self.proxies[key].destroy_toxic(name)

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed (toxiproxy's POST /reset)."""
        self.server.client.reset()
