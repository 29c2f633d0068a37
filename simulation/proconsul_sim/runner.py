"""One chaos run from start to verdict, inside the run's private network namespace:

network + firewall -> toxiproxy server -> proxies + agent configs -> agents -> workloads,
discovery sampler and nemesis for `time_limit_s` -> heal everything, wait for the cluster ->
final reads -> checkers -> result.json, history.json, plot.png. Everything started here is
stopped in `finally`, whatever failed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from .checkers import (
    check_bounded_staleness,
    check_cas_register,
    check_discovery,
    check_grow_only_set,
    check_mutex,
    check_read_your_writes,
)
from .checkers.base import CheckResult
from .history import History, Op
from .launcher import Cluster
from .nemesis import Nemesis, generate_schedule
from .netns import HOST_IP, Firewall, Network
from .proxies import Links, ToxiproxyServer, resolve_toxiproxy
from .scenarios import Scenario
from .workloads import CasRegister, DiscoverySampler, GrowOnlySet, Mutex, Workload

log = logging.getLogger("proconsul_sim")

# Default reads are not linearizable in one documented window (docs/DURABILITY.md, "Default"):
# a deposed leader answers them for up to about one election timeout (1 s at raft_multiplier 1).
# The checker lets a default read take effect up to this long before it was invoked
# (`check_cas_register(read_staleness_s=...)`).
DEFAULT_STALE_READ_BOUND_S = 3.0
# `?stale` reads may be as old as the answering server's X-Consul-LastContact plus this much: a
# follower applies a commit one heartbeat after the leader. Its last contact counts only once it
# applied what the leader had committed (raft/node.py `_heard_from_leader`); before that fix it
# restarted at 0 on the first heartbeat after a heal, and minority-partition seed 1 served a read
# over 1 s older than its LastContact of 3 ms, which this slack catches (docs/simulation.md).
DEFAULT_STALE_SLACK_S = 1.0


def schedule_for(scenario: Scenario, seed: int, time_limit_s: float) -> list:
    n = scenario.nemesis
    kinds = list(n.get("kinds", []))
    if not kinds:
        return []
    return generate_schedule(
        seed, kinds, time_limit_s,
        servers=[f"s{i}" for i in range(1, scenario.servers + 1)],
        clients=[f"c{i}" for i in range(1, scenario.clients + 1)],
        fault_s=tuple(n.get("fault_s", [8.0, 12.0])),
        quiet_s=tuple(n.get("quiet_s", [4.0, 8.0])),
        first_at_s=float(n.get("first_at_s", 5.0)),
        tail_s=float(n.get("tail_s", 8.0)),
        toxic=n.get("toxic", {}),
    )


def run(scenario: Scenario, seed: int, out_dir: Path, time_limit_s: float | None = None,
        toxiproxy: str = "auto") -> dict[str, Any]:
    time_limit = float(time_limit_s if time_limit_s is not None else scenario.time_limit_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    schedule = schedule_for(scenario, seed, time_limit)
    network = Network()
    firewall = Firewall()
    proxy_server = ToxiproxyServer(HOST_IP, resolve_toxiproxy(toxiproxy), out_dir / "toxiproxy.log")
    history = History()  # replaced once the cluster is up: t=0 is the start of the workloads
    workloads: list[Workload] = []
    sampler: DiscoverySampler | None = None
    nemesis: Nemesis | None = None
    cluster: Cluster | None = None
    harness_errors: list[str] = []
    t_started = time.monotonic()
    # Seconds spent in each phase, for result.json (docs/simulation.md records typical values).
    phases: dict[str, float] = {}
    phase_start = [t_started]

    def phase_done(name: str) -> None:
        now = time.monotonic()
        phases[name] = round(now - phase_start[0], 2)
        phase_start[0] = now

    try:
        network.setup()
        firewall.setup()
        proxy_server.start()
        links = Links(proxy_server)
        cluster = Cluster(network, links, out_dir / "nodes", scenario.servers, scenario.clients,
                          extra_config=scenario.config, server_config=scenario.server_config,
                          tls=scenario.tls)
        cluster.configure()
        links.create_all()
        log.info("starting %d servers, %d clients", scenario.servers, scenario.clients)
        cluster.start()
        phase_done("setup")
        agents = list(cluster.nodes.values())
        history = History()
        w = scenario.workloads
        if "discovery" in w:
            sampler = DiscoverySampler(cluster.servers, cluster.clients, history.clock,
                                       float(w["discovery"].get("interval_s", 0.5)))
            sampler.register_services()
        for name, cls in (("cas_register", CasRegister), ("grow_only_set", GrowOnlySet), ("mutex", Mutex)):
            if name in w:
                opts = dict(w[name])
                workers = int(opts.pop("workers", 4))
                delay = float(opts.pop("mean_delay_s", 0.1))
                workloads.append(cls(history, agents, seed + len(workloads), workers=workers,
                                     mean_delay_s=delay, **opts))

        def node_event(event: str, node: str, at: float) -> None:
            if sampler is not None and any(c.name == node for c in cluster.clients):
                sampler.record({"event": event, "time": at, "node": node})

        nemesis = Nemesis(cluster, links, firewall, schedule, history.clock, node_event)
        for i, workload in enumerate(workloads):
            workload.start(base_process=i * 100_000)
        if sampler is not None:
            sampler.start()
        nemesis.offset = history.clock()
        nemesis.start()
        log.info("running workloads for %.0fs with %d scheduled faults", time_limit, len(schedule))
        time.sleep(time_limit)
        nemesis.stop()
        nemesis.heal_everything()
        phase_done("workload")
        try:
            # Serf's reconnect loop retries failed members every 30 s: a healed cluster is whole
            # again by then, with no operator action.
            cluster.wait_ready(timeout=float(scenario.checks.get("recovery_s", 45.0)))
        except TimeoutError as exc:
            harness_errors.append(f"cluster did not recover after healing: {exc}")
        phase_done("recovery")
        for workload in workloads:
            workload.stop_event.set()  # all at once: their in-flight requests end together
        for workload in workloads:
            workload.stop()
        for workload in workloads:
            workload.finish(agents)
        if sampler is not None:
            # Samples past the last heal, so "came back" can be judged.
            sampler.stop_event.wait(min(5.0, float(w["discovery"].get("bound_s", 30.0))))
            sampler.stop()
        harness_errors += nemesis.errors + [e for wl in workloads for e in wl.errors]
        phase_done("final_reads")
    finally:
        for workload in workloads:
            workload.stop_event.set()
        if sampler is not None:
            sampler.stop_event.set()
        if nemesis is not None:
            nemesis.stop_event.set()
        if cluster is not None:
            cluster.teardown()
        proxy_server.stop()
        network.teardown()
        phase_done("teardown")

    checks = run_checks(scenario, history, sampler)
    phase_done("checks")
    meta = {
        "time_limit_s": time_limit,
        "servers": scenario.servers,
        "clients": scenario.clients,
        "toxiproxy": proxy_server.kind,
        "schedule": [dataclasses.asdict(f) for f in schedule],
        "harness_errors": harness_errors,
        "wall_time_s": round(time.monotonic() - t_started, 1),
        "phases_s": phases,
        "nodes_dir": "nodes",
        "reproduce": f"proconsul-sim run {scenario.path if scenario.path.parent.name != 'scenarios' else scenario.name}"
                     f" --seed {seed} --time-limit {time_limit:g}",
    }
    if sampler is not None:
        (out_dir / "discovery.json").write_text(json.dumps(sampler.observations, indent=1) + "\n")
    from .report import write_result

    result = write_result(out_dir, scenario=scenario.name, seed=seed, history=history, checks=checks,
                          nemesis=nemesis.timeline if nemesis else [], meta=meta)
    try:
        from .plot import plot_run

        plot_run(out_dir / "plot.png", history, nemesis.timeline if nemesis else [])
    except Exception as exc:  # a plot is a convenience; its failure must not hide the verdict
        log.warning("plot failed: %r", exc)
    return result


def run_checks(scenario: Scenario, history: History, sampler: DiscoverySampler | None) -> list[CheckResult]:
    c = scenario.checks
    w = scenario.workloads
    checks: list[CheckResult] = []
    if "cas_register" in w:
        bound = float(c.get("stale_read_bound_s", DEFAULT_STALE_READ_BOUND_S))

        def register_op(op: Op) -> bool:
            # ?stale reads promise no recency of their own: bounded-staleness judges them.
            return op.f in ("write", "cas") or (op.f == "read" and op.extra.get("mode") != "stale")

        def staleness(op: Op) -> float:
            return bound if op.extra.get("mode") == "default" else 0.0

        checks.append(check_cas_register(history, budget_s=float(c.get("linearizability_budget_s", 60.0)),
                                         include=register_op, read_staleness_s=staleness,
                                         name="linearizable-kv"))
        checks.append(check_read_your_writes(history))
        checks.append(check_bounded_staleness(
            history, slack_s=float(c.get("stale_slack_s", DEFAULT_STALE_SLACK_S)), missing_header_bound_s=bound,
            budget_s=float(c.get("staleness_budget_s", 30.0))))
    if "grow_only_set" in w:
        checks.append(check_grow_only_set(history))
    if "mutex" in w:
        checks.append(check_mutex(history))
    if sampler is not None:
        checks.append(check_discovery(sampler.observations, float(w["discovery"].get("bound_s", 30.0))))
    return checks
