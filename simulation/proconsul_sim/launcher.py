"""The cluster of one run: N server and M client `proconsul agent` processes, each in its own
network namespace on the run's bridge, with every server RPC link (server -> server and
client -> server) routed through its own toxiproxy proxy via the agents' `dial_overrides`.

Each node keeps its config, log and data directory under `<out>/nodes/<name>/` for the report.
The agents get a parent-death signal, so even a runner that dies without cleaning up takes them
with it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from .netns import Network, die_with_parent
from .proxies import Links

SERVER_RPC_PORT = 8300
HTTP_PORT = 8500


def proconsul_command() -> str:
    script = Path(sys.executable).parent / "proconsul"
    if not script.exists():
        raise FileNotFoundError(f"{script} is missing: install the package (pip install -e .)")
    return str(script)



def agent_env() -> dict[str, str]:
    """A minimal environment for an agent; PYTHONPATH passes through, so a run from a source
    checkout (`PYTHONPATH=daemon:simulation proconsul-sim ...`) tests that checkout's agent and
    not whatever the console script's environment has installed."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONUNBUFFERED": "1"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env

class _Spawner:
    """Starts every agent from one thread that lives as long as the run.

    The parent-death signal fires when the *thread* that forked the child exits, not the
    process: an agent restarted by the nemesis thread would be killed as soon as that thread
    finished. Spawning from this daemon thread ties the agents to the runner process instead.
    """

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="agent-spawner", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            fn, reply = self.requests.get()
            try:
                reply.put((True, fn()))
            except BaseException as exc:
                reply.put((False, exc))

    def call(self, fn: Callable[[], Any]) -> Any:
        reply: queue.Queue[Any] = queue.Queue()
        self.requests.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def spawn(fn: Callable[[], Any]) -> Any:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
    return _spawner.call(fn)


class Node:
    """One agent process: start, kill -9, pause/resume, graceful leave, restart."""

    def __init__(self, name: str, ip: str, server: bool, root: Path) -> None:
        self.name = name
        self.ip = ip
        self.server = server
        self.dir = root / name
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "agent.log"
        self.config_path = self.dir / "agent.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{HTTP_PORT}"

    @property
    def rpc_address(self) -> str:
        return f"{self.ip}:{SERVER_RPC_PORT}"

    def write_config(self, config: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2, sort_keys=True))

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== proconsul-sim: start #{self.starts} of {self.name} =====\n".encode())
            log.flush()
            cmd = [*Network.command_prefix(self.name), proconsul_command(), "agent", f"-config-file={self.config_path}"]
            self.proc = spawn(lambda: subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, preexec_fn=die_with_parent,
                env=agent_env(),
            ))
        self.paused = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        self.paused = False

    def pause(self) -> None:
        if self.running and not self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running and self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def leave(self, timeout: float = 30.0) -> None:
        """Graceful leave (`PUT /v1/agent/leave`, as `proconsul leave`), then wait for the exit."""
        if not self.running:
            return
        try:
            requests.put(f"{self.url}/v1/agent/leave", timeout=timeout)
        except requests.RequestException:
            pass  # the agent may close the connection as it exits
        self.wait_exit(timeout)

    def wait_exit(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def stop(self) -> None:
        """Teardown: resume if paused, SIGTERM, then SIGKILL if it lingers."""
        if not self.running:
            return
        assert self.proc is not None
        self.resume()
        self.proc.terminate()
        self.wait_exit(10)


class Cluster:
    """Servers s1..sN and clients c1..cM of one run, and their proxied links."""

    def __init__(self, network: Network, links: Links, root: Path, servers: int, clients: int,
                 extra_config: dict[str, Any] | None = None, server_config: dict[str, Any] | None = None,
                 tls: bool = False) -> None:
        self.network = network
        self.links = links
        self.root = root
        self.extra_config = extra_config or {}
        self.server_config = server_config or {}
        self.tls = tls  # verified TLS on every server RPC link (the proxies forward the bytes)
        self.nodes: dict[str, Node] = {}
        for i in range(1, servers + 1):
            self._add(f"s{i}", server=True)
        for i in range(1, clients + 1):
            self._add(f"c{i}", server=False)

    def _add(self, name: str, server: bool) -> None:
        ip = self.network.add_node(name)
        self.nodes[name] = Node(name, ip, server, self.root)

    @property
    def servers(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.server]

    @property
    def clients(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.server]

    def by_ip(self, ip: str) -> Node | None:
        return next((n for n in self.nodes.values() if n.ip == ip), None)

    def configure(self) -> None:
        """Plan every directed link's proxy, then write each agent's config."""
        for src in self.nodes.values():
            for dst in self.servers:
                if dst is not src:
                    self.links.plan(src.name, dst.name, dst.rpc_address)
        server_ips = [s.ip for s in self.servers]
        for node in self.nodes.values():
            config: dict[str, Any] = {
                "node_name": node.name,
                "datacenter": "dc1",
                "data_dir": str(node.data_dir),
                "bind_addr": node.ip,
                "client_addr": node.ip,
                "retry_join": [ip for ip in server_ips if ip != node.ip],
                "retry_interval": "1s",
                "log_level": "INFO",
                "dial_overrides": self.links.dial_overrides(node.name),
                **self.extra_config,
            }
            if self.tls:
                config.update(self._tls_config(node))
            if node.server:
                config.update({
                    "server": True,
                    "bootstrap_expect": len(self.servers),
                    "performance": {"raft_multiplier": 1},
                    **self.server_config,
                })
            node.write_config(config)

    def _tls_config(self, node: Node) -> dict[str, Any]:
        """Certificates from `proconsul tls` (a CA for the run, a server or client pair per node)
        and Consul's full verification on server RPC."""
        ca_dir = self.root / "tls-ca"
        if not (ca_dir / "consul-agent-ca.pem").exists():
            ca_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([proconsul_command(), "tls", "ca", "create"], cwd=ca_dir, check=True,
                           capture_output=True, timeout=60)
        own = node.dir / "tls"
        own.mkdir(parents=True, exist_ok=True)
        kind = "server" if node.server else "client"
        subprocess.run([proconsul_command(), "tls", "cert", "create", f"-{kind}", "-dc", "dc1",
                        f"-ca={ca_dir / 'consul-agent-ca.pem'}", f"-key={ca_dir / 'consul-agent-ca-key.pem'}"],
                       cwd=own, check=True, capture_output=True, timeout=60)
        return {
            "ca_file": str(ca_dir / "consul-agent-ca.pem"),
            "cert_file": str(own / f"dc1-{kind}-consul-0.pem"),
            "key_file": str(own / f"dc1-{kind}-consul-0-key.pem"),
            "verify_incoming_rpc": True,
            "verify_outgoing": True,
            "verify_server_hostname": True,
        }

    def start(self, timeout: float = 90.0) -> None:
        for node in self.nodes.values():
            node.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90.0, nodes: list[Node] | None = None) -> None:
        """Every given (default: running) agent knows the leader and sees every member alive."""
        targets = nodes if nodes is not None else [n for n in self.nodes.values() if n.running]
        want = {n.name for n in self.nodes.values() if n.running}

        def ready() -> bool:
            for node in targets:
                if not node.running:
                    raise RuntimeError(f"{node.name} exited with {node.proc.returncode if node.proc else '?'}; "
                                       f"see {node.log_path}")
                if not self.leader_seen_by(node):
                    return False
                members = requests.get(f"{node.url}/v1/agent/members", timeout=5).json()
                alive = {m["Name"] for m in members if m.get("Status") == 1}
                if not want <= alive:
                    return False
            return True

        wait_until(ready, timeout, "the cluster to form (leader known, every member alive)")

    def leader_seen_by(self, node: Node) -> Node | None:
        try:
            resp = requests.get(f"{node.url}/v1/status/leader", timeout=5)
        except requests.RequestException:
            return None
        addr = resp.json() if resp.status_code == 200 else ""
        return self.by_ip(addr.rsplit(":", 1)[0]) if addr else None

    def leader(self, timeout: float = 30.0) -> Node:
        """The leader a majority of reachable servers agree on (waits for one)."""

        def agreed() -> Node | None:
            seen: dict[str, int] = {}
            for server in self.servers:
                if server.running and not server.paused:
                    leader = self.leader_seen_by(server)
                    if leader is not None:
                        seen[leader.name] = seen.get(leader.name, 0) + 1
            if not seen:
                return None
            name, votes = max(sorted(seen.items()), key=lambda kv: kv[1])
            return self.nodes[name] if votes * 2 > len(self.servers) else None

        return wait_until(agreed, timeout, "a leader agreed on by a majority of the servers")

    def teardown(self, grace_s: float = 10.0) -> None:
        """Stop every agent at once: SIGTERM all (resuming paused ones), then wait for all within
        one shared grace period, SIGKILL whoever lingers. Never raises before every agent was
        signalled, so no agent outlives the run whatever else failed."""
        running = [n for n in self.nodes.values() if n.running]
        for node in running:
            try:
                node.resume()
                assert node.proc is not None
                node.proc.terminate()
            except ProcessLookupError:
                pass  # it exited between the check and the signal
        deadline = time.monotonic() + grace_s
        for node in running:
            node.wait_exit(max(0.1, deadline - time.monotonic()))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except RuntimeError:
            raise
        except Exception as exc:  # the cluster may refuse while it settles
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")
