"""The package's import discipline.

House rule 1: the sans-I/O cores import no asyncio, socket, time, os or subprocess. And DESIGN.md's
layout: the import graph of `daemon/proconsul` (every import, also inside functions) has no cycle and
no import against the layer order; `layering_problems` is the checker, tested on synthetic graphs below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "proconsul"
FORBIDDEN = {"asyncio", "socket", "time", "os", "subprocess", "threading", "selectors"}
PURE = sorted(
    [*PACKAGE.glob("state/*.py"), *PACKAGE.glob("acl/*.py"), PACKAGE / "raft" / "core.py", PACKAGE / "raft" / "quorum.py",
     PACKAGE / "gossip" / "core.py", PACKAGE / "gossip" / "broadcast.py", PACKAGE / "wire.py",
     PACKAGE / "filter.py", PACKAGE / "structs.py", PACKAGE / "coordinate.py"]
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", [p for p in PURE if p.exists()], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_module_has_no_io_imports(path: Path) -> None:
    assert not (_imports(path) & FORBIDDEN), f"{path} imports {_imports(path) & FORBIDDEN}"


def test_the_scan_covers_the_state_store() -> None:
    assert PACKAGE / "state" / "store.py" in PURE and (PACKAGE / "state" / "store.py").exists()


# --------------------------------------------------------------------------- import graph (issue 14)
#
# The layer of each top-level unit of `proconsul` (a subpackage, or a module of the package itself).
# A module may import modules of its own unit (no cycles, though) and modules of units in strictly
# LOWER layers; never a unit of the same layer (peers stay independent) nor a higher one. This is
# DESIGN.md's "cli -> agent -> http/dns -> local/server -> serf/raft/state -> gossip, rpc_api, shared
# leaves", made exact:
#   - `config` sits below everything that reads configuration and above the leaves and `gossip`
#     (which has its own `gossip/config.py`).
#   - `local` sits above `server`: this agent's state syncs to a server through the server's RPC
#     interface (anti-entropy), while nothing on the server side knows about the local agent.
#   - the shared leaves may use one another (`transport` frames with `wire`); the cycle check keeps
#     them honest.
#   - `proconsul` itself (the package's `__init__`, the version) is a leaf; `__main__` is the top.
LAYERS: dict[str, int] = {
    "__main__": 10,
    "cli": 9,
    "agent": 8,
    "http": 7,
    "dns": 7,
    "local": 6,
    "server": 5,
    "serf": 4,
    "raft": 4,
    "state": 4,
    "config": 3,
    # The ACL core (rules, authorizer, records): protocol-free, below the state store that keeps them.
    "acl": 2,
    "gossip": 2,
    "tls": 2,
    "rpc_api": 2,
    **{leaf: 1 for leaf in (
        "proconsul", "structs", "filter", "coordinate", "durations", "wire", "transport", "tasks",
        "api_client", "flags", "safe_json", "go_regexp", "malformed_log", "listen",
        # The telemetry registry: every subsystem records into it, it imports no other unit.
        "metrics",
        # The web UI's static assets (HTML/CSS/JS as package data); http/ui.py serves them.
        "ui",
    )},
}
LEAF_LAYER = 1

# Units that must stay independent of Consul altogether, with the only units they may import.
# Raft is a generic replicated log (bytes in, bytes out through a state-machine Protocol): the
# errors it raises are its own, translated at the server boundary, and command decoding is passed in.
SELF_CONTAINED: dict[str, frozenset[str]] = {
    # malformed_log only marks log lines about refused network input (rate-limited by the agent).
    # metrics: hashicorp/raft's own metric names, recorded into the registry it is handed.
    "raft": frozenset({"wire", "transport", "tasks", "malformed_log", "metrics"}),
}

# Edges tolerated for now, each with the reason and the change that removes it.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()

Graph = dict[str, set[str]]


def unit_of(module: str) -> str:
    """`proconsul.server.leader` -> `server`; `proconsul.structs` -> `structs`; `proconsul` -> itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package: Path = PACKAGE) -> Graph:
    """Every `proconsul` module -> the `proconsul` modules it imports, anywhere in its body.

    Module-level, function-level and `TYPE_CHECKING` imports all count; `from proconsul import x`
    names the submodule `x` when there is one; relative imports are resolved against the package.
    """
    paths = {_module_name(p, package): p for p in package.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {}
    for module, path in paths.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found = [resolve(a.name) for a in node.names if a.name.split(".")[0] == "proconsul"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if is_package else module.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join([*here, base] if base else here)
                if base.split(".")[0] != "proconsul":
                    continue
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else resolve(base) for a in node.names]
            else:
                continue
            targets.update(t for t in found if t and t != module)
        graph[module] = targets
    return graph


def _cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layering_problems(
    graph: Graph,
    layers: dict[str, int] = LAYERS,
    self_contained: dict[str, frozenset[str]] = SELF_CONTAINED,
    exceptions: frozenset[tuple[str, str]] = KNOWN_EXCEPTIONS,
) -> list[str]:
    """Every cycle and every import against the layer order in `graph`, as readable lines."""
    problems: list[str] = []
    kept = {src: {dst for dst in dsts if (src, dst) not in exceptions} for src, dsts in graph.items()}
    for src in sorted(kept):
        here = unit_of(src)
        for dst in sorted(kept[src]):
            there = unit_of(dst)
            if here == there:
                continue
            if here not in layers or there not in layers:
                problems.append(f"{src} -> {dst}: unit {here if here not in layers else there!r} has no layer")
            elif here in self_contained and there not in self_contained[here]:
                problems.append(f"{src} -> {dst}: {here} may import only {sorted(self_contained[here])}")
            elif layers[there] > layers[here] or (layers[there] == layers[here] != LEAF_LAYER):
                problems.append(
                    f"{src} -> {dst}: {here} (layer {layers[here]}) may not import {there} (layer {layers[there]})"
                )
    for cycle in _cycles(kept):
        problems.append("import cycle: " + " <-> ".join(cycle))
    return problems


def test_the_package_has_no_cycles_and_no_upward_imports() -> None:
    problems = layering_problems(import_graph())
    assert not problems, "\n".join(problems)


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {unit_of(m) for m in import_graph()}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_known_exceptions_are_still_needed() -> None:
    graph = import_graph()
    stale = [edge for edge in KNOWN_EXCEPTIONS if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"remove from KNOWN_EXCEPTIONS: {stale}"


def test_the_graph_sees_function_level_relative_and_from_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "proconsul"
    (pkg / "server").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "structs.py").write_text("")
    (pkg / "server" / "__init__.py").write_text("")
    (pkg / "server" / "leader.py").write_text("def f():\n    from proconsul.serf import lan\n")
    (pkg / "server" / "rpc.py").write_text("from . import leader\nfrom ..structs import x\n")
    (pkg / "serf").mkdir()
    (pkg / "serf" / "__init__.py").write_text("")
    (pkg / "serf" / "lan.py").write_text("import proconsul.server.leader\nfrom proconsul import structs\n")
    graph = import_graph(pkg)
    assert graph["proconsul.server.leader"] == {"proconsul.serf.lan"}
    assert graph["proconsul.server.rpc"] == {"proconsul.server.leader", "proconsul.structs"}
    assert graph["proconsul.serf.lan"] == {"proconsul.server.leader", "proconsul.structs"}


GOOD: Graph = {
    "proconsul.cli.main": {"proconsul.agent.agent", "proconsul.api_client"},
    "proconsul.agent.agent": {"proconsul.http.server", "proconsul.server.rpc", "proconsul.config"},
    "proconsul.http.server": {"proconsul.server.rpc", "proconsul.state.render"},
    "proconsul.server.rpc": {"proconsul.server.leader", "proconsul.state.store", "proconsul.rpc_api"},
    "proconsul.server.leader": {"proconsul.serf.lan"},
    "proconsul.serf.lan": {"proconsul.gossip.node"},
    "proconsul.state.store": {"proconsul.state.records", "proconsul.coordinate"},
    "proconsul.raft.node": {"proconsul.raft.core", "proconsul.wire", "proconsul.transport"},
    "proconsul.transport": {"proconsul.wire"},
    "proconsul.api_client": {"proconsul.flags"},
}


def _with(graph: Graph, src: str, dst: str) -> Graph:
    bad = {k: set(v) for k, v in graph.items()}
    bad.setdefault(src, set()).add(dst)
    return bad


def test_checker_accepts_a_well_layered_graph() -> None:
    assert layering_problems(GOOD, exceptions=frozenset()) == []


def test_checker_fails_on_an_upward_import() -> None:
    problems = layering_problems(_with(GOOD, "proconsul.server.queries", "proconsul.http.render"))
    assert problems == ["proconsul.server.queries -> proconsul.http.render: server (layer 5) may not import http (layer 7)"]


def test_checker_fails_on_a_leaf_importing_upward() -> None:
    problems = layering_problems(_with(GOOD, "proconsul.structs", "proconsul.config"), exceptions=frozenset())
    assert problems == ["proconsul.structs -> proconsul.config: structs (layer 1) may not import config (layer 3)"]


def test_checker_fails_on_an_import_between_peers_of_one_layer() -> None:
    problems = layering_problems(_with(GOOD, "proconsul.serf.lan", "proconsul.state.store"))
    assert problems == ["proconsul.serf.lan -> proconsul.state.store: serf (layer 4) may not import state (layer 4)"]


def test_checker_keeps_raft_free_of_consul() -> None:
    problems = layering_problems(_with(GOOD, "proconsul.raft.node", "proconsul.rpc_api"))
    assert problems == [
        "proconsul.raft.node -> proconsul.rpc_api: raft may import only ['malformed_log', 'metrics', 'tasks', 'transport', 'wire']"
    ]


def test_checker_fails_on_a_unit_without_a_layer() -> None:
    problems = layering_problems(_with(GOOD, "proconsul.newthing", "proconsul.structs"))
    assert problems == ["proconsul.newthing -> proconsul.structs: unit 'newthing' has no layer"]


def test_checker_fails_on_a_cycle_inside_one_package() -> None:
    problems = layering_problems(_with(GOOD, "proconsul.serf.lan", "proconsul.serf.pool") | {"proconsul.serf.pool": {"proconsul.serf.lan"}})
    assert problems == ["import cycle: proconsul.serf.lan <-> proconsul.serf.pool"]


def test_checker_fails_on_a_cycle_across_layers_once_per_cycle() -> None:
    problems = layering_problems(_with(GOOD, "proconsul.serf.lan", "proconsul.server.leader"))
    assert problems == [
        "proconsul.serf.lan -> proconsul.server.leader: serf (layer 4) may not import server (layer 5)",
        "import cycle: proconsul.serf.lan <-> proconsul.server.leader",
    ]


def test_checker_reports_a_long_cycle_among_leaves() -> None:
    graph = _with(_with(GOOD, "proconsul.wire", "proconsul.flags"), "proconsul.flags", "proconsul.transport")
    assert layering_problems(graph) == [
        "import cycle: proconsul.flags <-> proconsul.transport <-> proconsul.wire",
    ]


def test_checker_honours_known_exceptions() -> None:
    graph = _with(_with(GOOD, "proconsul.structs", "proconsul.config"), "proconsul.config", "proconsul.structs")
    assert layering_problems(graph, exceptions=frozenset({("proconsul.structs", "proconsul.config")})) == []
    assert layering_problems(graph) == [
        "proconsul.structs -> proconsul.config: structs (layer 1) may not import config (layer 3)",
        "import cycle: proconsul.config <-> proconsul.structs",
    ]
