"""Network isolation of one run: a private network + mount namespace, a bridge, one network
namespace per node, and the nftables rules that cut or degrade gossip between nodes.

Layout inside the run's private namespace (nothing of it is visible outside, and all of it
vanishes when the run's process tree exits):

    runner, toxiproxy server  -- 10.77.0.1 on bridge `simbr0`
    node s1 (own netns "s1")  -- 10.77.0.11 on veth, enslaved to the bridge
    node s2 ...               -- 10.77.0.12 ...

Node-to-node packets cross the bridge, so a `bridge`-family nftables chain on the forward hook
sees exactly them: the proxied RPC links go node -> 10.77.0.1 (toxiproxy) -> node and are never
forwarded between two node addresses, which leaves gossip (serf LAN, UDP and TCP) as the only
node-to-node traffic the rules act on.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping

# Set in the environment of the process re-executed inside `unshare`: the proof that we are in
# a namespace this harness made, checked before any `ip`/`nft` command runs.
PRIVATE_NAMESPACE_ENV = "PROCONSUL_SIM_PRIVATE_NETNS"

BRIDGE = "simbr0"
SUBNET_PREFIX = "10.77.0"
HOST_IP = f"{SUBNET_PREFIX}.1"  # the runner's (and toxiproxy's) address on the bridge
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
FIRST_NODE_HOST = 11
NFT_TABLE = "proconsul_sim"


class NamespaceError(RuntimeError):
    """The run cannot get the isolation it needs (not root, no `unshare`, ...)."""


def in_private_namespace() -> bool:
    return os.environ.get(PRIVATE_NAMESPACE_ENV) == "1"


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGKILL when the thread that started it goes away.

    Runs in the child between fork and exec. With it on `unshare` (whose `--kill-child` passes
    the kill on to the run) and on every process the run starts, killing the outer
    `proconsul-sim` (say, by a test's timeout) takes the whole run with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def reexec_in_private_namespace(argv: list[str]) -> int:
    """Run `python -m proconsul_sim.cli ARGV` inside a fresh network + mount namespace.

    The cleanup is the kernel's, whatever kills this process: `unshare` gets a parent-death
    SIGKILL when this process dies, its `--kill-child` then kills the run, the run's agents and
    toxiproxy die by their own parent-death signal, and the namespaces go with the last of them.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        raise NamespaceError("`unshare` (util-linux) is required to isolate the run's network")
    if os.geteuid() != 0:
        raise NamespaceError("proconsul-sim run needs root (network namespaces, nftables)")
    env = dict(os.environ, **{PRIVATE_NAMESPACE_ENV: "1"})
    cmd = [unshare, "--net", "--mount", "--fork", "--kill-child", "--",
           sys.executable, "-m", "proconsul_sim.cli", *argv]
    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def _run(*cmd: str, stdin: str | None = None) -> None:
    if not in_private_namespace():
        raise NamespaceError(f"refusing to run {' '.join(cmd)!r} outside the run's private namespace")
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise NamespaceError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")


class Network:
    """The bridge and the per-node namespaces of one run."""

    def __init__(self) -> None:
        self.node_ips: dict[str, str] = {}
        self._ready = False

    def setup(self) -> None:
        # Named namespaces live under /run/netns: a tmpfs private to our mount namespace keeps
        # their handles from appearing (or lingering) on the host.
        _run("mount", "--make-rprivate", "/")
        os.makedirs("/run/netns", exist_ok=True)
        _run("mount", "-t", "tmpfs", "proconsul-sim-netns", "/run/netns")
        _run("ip", "link", "set", "lo", "up")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        self._ready = True

    def add_node(self, name: str) -> str:
        """Create namespace `name` with a veth on the bridge; return the node's address."""
        assert self._ready, "Network.setup() first"
        ip = f"{SUBNET_PREFIX}.{FIRST_NODE_HOST + len(self.node_ips)}"
        veth = f"v-{name}"[:15]
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _run("ip", "link", "set", veth, "master", BRIDGE, "up")
        _run("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", name, "link", "set", "eth0", "up")
        _run("ip", "-n", name, "link", "set", "lo", "up")
        self.node_ips[name] = ip
        return ip

    @staticmethod
    def command_prefix(name: str) -> list[str]:
        """Prefix that runs a command inside node `name`'s namespace (`ip netns exec` execs, so
        the pid of the started process is the command's own: signals reach the agent)."""
        return ["ip", "netns", "exec", name]

    def teardown(self) -> None:
        for name in self.node_ips:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.node_ips.clear()


class Firewall:
    """nftables rules on gossip between node addresses, rebuilt atomically on each change.

    `cuts` are directed (src_ip, dst_ip) pairs whose packets are dropped; `udp_loss` maps a
    directed pair to the percentage of its UDP packets dropped at random.
    """

    def __init__(self) -> None:
        self.cuts: set[tuple[str, str]] = set()
        self.udp_loss: dict[tuple[str, str], int] = {}

    def setup(self) -> None:
        self.apply()

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.cuts.update(pairs)
        self.apply()

    def uncut(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.cuts.difference_update(pairs)
        self.apply()

    def set_udp_loss(self, loss: Mapping[tuple[str, str], int]) -> None:
        self.udp_loss.update(loss)
        self.apply()

    def clear_udp_loss(self, pairs: Iterable[tuple[str, str]]) -> None:
        for pair in pairs:
            self.udp_loss.pop(pair, None)
        self.apply()

    def heal_all(self) -> None:
        self.cuts.clear()
        self.udp_loss.clear()
        self.apply()

    def ruleset(self) -> str:
        lines = [
            f"table bridge {NFT_TABLE} {{",
            "  chain gossip {",
            "    type filter hook forward priority 0; policy accept;",
        ]
        # Sorted: the same state always produces the same ruleset text (determinism hygiene).
        for src, dst in sorted(self.cuts):
            lines.append(f"    ip saddr {src} ip daddr {dst} drop")
        for (src, dst), percent in sorted(self.udp_loss.items()):
            lines.append(f"    ip saddr {src} ip daddr {dst} meta l4proto udp numgen random mod 100 < {percent} drop")
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"

    def apply(self) -> None:
        # Declaring then deleting the table makes the script valid whether or not it exists;
        # `nft -f` applies the whole script as one transaction.
        script = f"table bridge {NFT_TABLE}\ndelete table bridge {NFT_TABLE}\n" + self.ruleset()
        _run("nft", "-f", "-", stdin=script)
