"""Shared plumbing of the benchmarks: ports, processes started and stopped by pid, readiness, CPU.

Owns what every `bench/*.py` needs to run servers as separate processes on loopback and clean
up after itself even on failure; each benchmark keeps only its own load and report.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tree_daemon import (  # (first: this tree's proconsul, not the venv's)
    TREE_DAEMON,
    pythonpath_names_a_daemon,
)

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
PROCONSUL = REPO / ".venv" / "bin" / "proconsul"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port free for both TCP and UDP (the agent's DNS listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((HOST, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def python_exe() -> str:
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def agent_command(http_port: int, dns_port: int, extra: list[str]) -> list[str]:
    """A dev agent on the given loopback ports, through the installed console script."""
    args = ["-dev", f"-http-port={http_port}", f"-dns-port={dns_port}", "-node=bench", *extra]
    if PROCONSUL.exists():
        return [str(PROCONSUL), "agent", *args]
    code = "import sys; from proconsul.agent.agent import run_agent; sys.exit(run_agent(sys.argv[1:]))"
    return [python_exe(), "-c", code, *args]




def tree_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a process a bench starts: agents run this tree's daemon. A shared
    venv's editable install may map `proconsul` to another checkout, so without this a bench
    run from a worktree measured that one. A PYTHONPATH that already names a daemon (another
    tree measured with this bench file) is kept as it is."""
    out = dict(os.environ if env is None else env)
    if not pythonpath_names_a_daemon(out.get("PYTHONPATH", "")):
        paths = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
        out["PYTHONPATH"] = os.pathsep.join([TREE_DAEMON, *paths])
    return out


class Procs:
    """Every process a benchmark starts, stopped by pid (SIGTERM, then SIGKILL) in stop_all()."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], log: Path, cpu: int | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        out = open(log, "wb")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=tree_env(env))
        out.close()
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"# {name} (pid {proc.pid}) ignored SIGTERM; SIGKILL", file=sys.stderr)
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> None:
    """Until `url` answers 200 with a non-empty body (a known leader), or the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}; log:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                body = resp.read()
                if resp.status == 200 and body not in (b"", b'""'):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s}s; log:\n{log.read_text()[-2000:]}")


def http_put(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, data=body, method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (the process, including all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def family_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live children (an agent's HTTP worker processes)."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    total += cpu_seconds(int(entry.name))
            except (OSError, ValueError):
                continue
    return total


def install_loop_lag_monitor(lag_file: str, tick_s: float) -> None:
    """Make `asyncio.run` also run a task that sleeps `tick_s` in a loop and appends
    "<monotonic time> <lag ms>" lines to `lag_file` (how late each wake-up was): an agent started
    with `run_agent` in this process then has its event loop's lag recorded."""
    orig_run = asyncio.run

    async def monitor() -> None:
        buf: list[str] = []
        last_flush = time.monotonic()
        with open(lag_file, "a", buffering=1) as out:
            try:
                while True:
                    t0 = time.perf_counter()
                    await asyncio.sleep(tick_s)
                    lag = time.perf_counter() - t0 - tick_s
                    now = time.monotonic()
                    buf.append(f"{now:.6f} {lag * 1000:.3f}\n")
                    if now - last_flush >= 0.5:  # batched, so the monitor barely adds lag itself
                        out.write("".join(buf))
                        buf.clear()
                        last_flush = now
            finally:
                out.write("".join(buf))

    def run(coro: Any, **kwargs: Any) -> Any:
        async def main() -> Any:
            task = asyncio.get_running_loop().create_task(monitor(), name="bench:lag-monitor")
            try:
                return await coro
            finally:
                task.cancel()

        return orig_run(main(), **kwargs)

    asyncio.run = run  # type: ignore[assignment]
