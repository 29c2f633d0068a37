"""proconsul's chaos harness: real clusters behind toxiproxy-API proxies, nemesis, workloads, checkers.

`proconsul-sim run SCENARIO --seed N` is the entry point (`proconsul_sim.cli`); docs/simulation.md
explains how to run a scenario, read its report and reproduce a failure from its seed.
"""
