"""Scenario descriptions: one TOML file each in this directory (or any path given to `run`).

A scenario names the cluster (servers, clients, extra agent config), the workloads, the nemesis
schedule generator (fault kinds, window lengths) and the checkers' bounds. `load` validates a
file and returns a `Scenario`; every error names the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..nemesis import KINDS

HERE = Path(__file__).resolve().parent
WORKLOADS = ("cas_register", "grow_only_set", "mutex", "discovery")


class ScenarioError(ValueError):
    pass


@dataclass
class Scenario:
    name: str
    path: Path
    description: str
    servers: int
    clients: int
    time_limit_s: float
    workloads: dict[str, dict[str, Any]]
    nemesis: dict[str, Any]
    checks: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)  # every agent
    server_config: dict[str, Any] = field(default_factory=dict)  # servers only
    tls: bool = False  # certificates for every agent, verified TLS on server RPC


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    builtin = HERE / f"{name_or_path}.toml"
    if builtin.exists():
        return builtin
    raise ScenarioError(f"no scenario {name_or_path!r}: give a .toml path or one of: {', '.join(names())}")


def load(name_or_path: str) -> Scenario:
    path = resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None

    def need(key: str, kind: type, default: Any = None) -> Any:
        value = data.get(key, default)
        if value is None:
            raise ScenarioError(f"{path}: `{key}` is required")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            raise ScenarioError(f"{path}: `{key}` must be a {kind.__name__}, got {value!r}")
        return value

    servers = need("servers", int, 3)
    if servers < 1:
        raise ScenarioError(f"{path}: `servers` must be at least 1")
    workloads = need("workloads", dict, {})
    for wname in workloads:
        if wname not in WORKLOADS:
            raise ScenarioError(f"{path}: unknown workload `workloads.{wname}`; known: {', '.join(WORKLOADS)}")
    nemesis = need("nemesis", dict, {})
    for kind in nemesis.get("kinds", []):
        if kind not in KINDS:
            raise ScenarioError(f"{path}: unknown fault kind {kind!r} in `nemesis.kinds`; known: {', '.join(KINDS)}")
    config = need("config", dict, {})
    return Scenario(
        name=path.stem,
        path=path,
        description=need("description", str, ""),
        servers=servers,
        clients=need("clients", int, 0),
        time_limit_s=need("time_limit_s", float, 60.0),
        workloads=workloads,
        nemesis=nemesis,
        checks=need("checks", dict, {}),
        config=dict(config.get("agent", {})),
        server_config=dict(config.get("server", {})),
        tls=need("tls", bool, False),
    )
