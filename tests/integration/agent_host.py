"""Many real client agents in one process: the cheap way to put hundreds of them on one box.

Usage: agent_host.py PREFIX FIRST COUNT JOIN DATA_ROOT [AGENT FLAGS...]

Runs COUNT client agents (`proconsul.agent.agent.Agent`, the code `proconsul agent` runs: LAN
gossip and serf, RPC to the servers, local state and anti-entropy, coordinates, the HTTP API)
on one event loop. Agent i listens on its own loopback address PREFIX.(FIRST + i) with the
standard ports (gossip 8301, HTTP 8500; DNS off), is called `<basename(DATA_ROOT)>-<FIRST + i>`,
keeps its data in DATA_ROOT/<name> (so a second run with the same arguments brings the same
nodes back, as restarted agents) and `-retry-join`s JOIN every second; the AGENT FLAGS go to
every agent.

Process-level control stands for what happens to a host of agents:
- SIGTERM or SIGINT: every agent leaves gracefully (a client's leave_on_terminate), then the
  process exits 0;
- SIGKILL: every agent fails at once, without a word to the others;
- SIGUSR1: the stack of every task on the loop goes to stderr (what a host that hangs waits on).

It prints `ready N` once all N agents have started, then every 5 s a JSON line with its CPU
seconds, RSS and event loop lag (the latest 1 s timer's lateness and the worst since the last
line), for the test and the benchmark to log.

Why a process of agents rather than a process per agent: a `proconsul agent` process costs
about 40 MB and half a second of CPU to start, and its interpreter's own idle work; 200 of them
do not fit beside a test run on a 2-core box. One agent in a shared process costs about 1 MB.
The agents share only the process: logging (WARNING and above, to stderr) and the runtime
gauges, which one agent samples every second and the others once a minute (each sample counts
every task on the loop, which at 200 agents would cost more than the agents themselves).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import sys
import time

from proconsul import config as configmod
from proconsul.agent.agent import Agent

# Runtime gauges of the agents past the first: the process's figures, so one sampler suffices.
QUIET_SAMPLER_INTERVAL_S = 60.0
# Agents started at once.
START_BATCH = 10


def build(prefix: str, first: int, count: int, join: str, root: str, extra: list[str]) -> list[Agent]:
    base = os.path.basename(root.rstrip("/"))
    agents = []
    for i in range(first, first + count):
        ip, name = f"{prefix}.{i}", f"{base}-{i}"
        argv = [f"-bind={ip}", f"-client={ip}", f"-node={name}", f"-data-dir={os.path.join(root, name)}",
                "-dns-port=-1", f"-retry-join={join}", "-retry-interval=1s", *extra]
        flags = configmod.agent_flagset().parse(argv)
        agent = Agent(configmod.load_from(flags).config, flags)
        if agents:
            agent.runtime_metrics.interval_s = QUIET_SAMPLER_INTERVAL_S
        agents.append(agent)
    return agents


async def report(stop: asyncio.Event) -> None:
    """Every 5 s: CPU, RSS and loop lag of this process, as one JSON line."""
    loop = asyncio.get_running_loop()
    worst = lag = 0.0
    last = loop.time()
    while not stop.is_set():
        due = loop.time() + 1.0
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
        lag = max(0.0, loop.time() - due)
        worst = max(worst, lag)
        if loop.time() - last >= 5.0:
            last = loop.time()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(json.dumps({"cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                              "rss_mb": round(usage.ru_maxrss / 1024, 1),
                              "loop_lag_ms": round(lag * 1000), "worst_lag_ms": round(worst * 1000)}), flush=True)
            worst = 0.0


def dump_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=8, file=sys.stderr)
    sys.stderr.flush()


async def run(agents: list[Agent]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    started: list[Agent] = []
    code = 0
    try:
        # In batches: a host of agents boots together, and the first ones' gossip does not hold
        # up the start of the last ones for minutes on a busy box.
        for i in range(0, len(agents), START_BATCH):
            if stop.is_set():
                break
            batch = agents[i:i + START_BATCH]
            started.extend(batch)
            await asyncio.gather(*(agent.start() for agent in batch))
        print(f"ready {len(started)}", flush=True)
        reporter = loop.create_task(report(stop))
        await stop.wait()
        await reporter
        # All leave at once, as a rack of hosts shut down together would.
        for agent in started:
            agent.request_leave()
    finally:
        results = await asyncio.gather(*(agent.stop() for agent in started), return_exceptions=True)
        for agent, result in zip(started, results):
            if isinstance(result, BaseException):
                print(f"{agent.node_name}: stop failed: {result!r}", file=sys.stderr, flush=True)
                code = 1
            elif agent.exit_code:
                code = agent.exit_code
    return code


def main(argv: list[str]) -> int:
    prefix, first, count, join, root, *extra = argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    agents = build(prefix, int(first), int(count), join, root, extra)
    try:
        import uvloop  # type: ignore[import-not-found]  # as `proconsul agent`: faster when installed

        run_loop = uvloop.run
    except ImportError:
        run_loop = asyncio.run
    code = run_loop(run(agents))
    print(f"stopped after {time.monotonic() - started:.1f}s, exit {code}", flush=True)
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
