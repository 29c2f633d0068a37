"""The package's typed seams (issue 14, DESIGN.md's layout rules).

Three checks, each with its checker tested on synthetic input below:
- no module reaches into another object: none reads another object's private (`_name`) members
  (`self.server._wait_for_leader()`, `store._touch(...)`), and none writes an attribute onto a
  collaborator it holds (`self.core.ack_payload = ...`, `setattr(self.node, ...)`): the owner
  offers a method or a constructor argument instead. The composition root (`agent/`) is held
  to more: it writes onto no object but itself at all (`raft.fatal = ...` on something it just
  built), since everything it builds takes its callbacks and settings when built. Elsewhere a
  module may still update its own records through local names (a cache entry, a probe, an SSL
  context it is configuring). `patching_problems` is the AST scan, over the whole package.
- no untyped way back to the agent: no `agent` typed `Any` (nor an untyped `agent` parameter), no
  application state read by a string key (`request.app["agent"]`; `http.appkeys` keys are typed),
  no `getattr`/`hasattr` probing the agent's parts for their kind (server or client, Raft or
  single voter): the composition root chooses when it builds. `back_pointer_problems`.
- the protocols named at the seams are met by every implementation the agent plugs into them:
  `rpc_api.ServerAccess` (what `agent.server` is) by the in-process `Server` and the client
  agent's `RemoteServer`; the RPC server's WAN router and server pool (and the write
  forwarder's task-less sender) by `Router` and `ConnectionPool`; `http.appkeys.AgentSurface`'s
  methods by the `Agent`; `rpc_api.Consensus` by every log a server runs on (and the client
  agent's view); http/fast.py's `ReadGate` by the agent's, the client agent's and an HTTP
  worker's reads. `signature_problems` compares each protocol member with the implementation's
  (name, sync/async, parameter names, kinds and defaults).
"""

from __future__ import annotations

import ast
import fnmatch
import inspect
from pathlib import Path
from typing import Any

import pytest
from proconsul import rpc_api
from proconsul.agent.agent import Agent
from proconsul.http import agent_self, fast
from proconsul.http.appkeys import AgentSurface
from proconsul.http.workers.app import WorkerReads
from proconsul.serf.lan import Membership
from proconsul.server import forwarding, rpc
from proconsul.server.acl_leader import BootstrapResetFile
from proconsul.server.consensus import RaftLog
from proconsul.server.remote import ClientConsensus, RemoteServer
from proconsul.server.rpc import Server
from proconsul.server.single import SingleNodeLog
from proconsul.server.wan import Router, WANPool
from proconsul.state.fsm import FSM
from proconsul.state.store import Store
from proconsul.transport import ConnectionPool

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "proconsul"
MODULES = sorted(PACKAGE.rglob("*.py"))
COMPOSITION_ROOT = "agent/"

# (module path relative to the package, the offending expression; a glob) that stays on purpose,
# with its reason. Keep it short: each entry is a seam that the other side does not offer.
ALLOWED: dict[tuple[str, str], str] = {
    ("agent/agent.py", "os._exit"): "the standard library's immediate exit, not another object's member",
    ("api_client.py", "os._Environ"): "the type of os.environ, which the standard library names privately",
    ("http/server.py", "self.runner.server.request_handler"):
        "aiohttp offers no other way to wrap the low-level server's handler (Expect, forwarded client)",
    ("http/fast.py", "handler._*"):
        "_Intercept is FastRequestHandler's parser half (this module), on aiohttp's queue limit; aiohttp_supported()",
    ("http/workers/proxy.py", "self._session._retry_connection"):
        "aiohttp retries 'idempotent' requests on a dropped connection and has no public switch",
    ("tls/rpc.py", "self._https_front.sni_callback"): "ssl.SSLContext's documented way to pick a context per name",
    ("state/store.py", "out._*"): "Store.decode builds a Store: its own class's members",
    ("transport.py", "reader._buffer"):
        "adopt_stream: asyncio.StreamReader offers no public way to take the bytes it buffered (or tell an EOF seen with them)",
    ("state/store.py", "loaded._*"): "Store.adopt takes over a decoded Store: its own class's members",
}


# ------------------------------------------------------------------------- post-construction patching


def _target_attributes(node: ast.AST) -> list[ast.Attribute]:
    """The attribute targets an assignment statement writes (tuples unpacked)."""
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    else:
        return []
    out: list[ast.Attribute] = []
    while targets:
        t = targets.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            targets.extend(t.elts)
        elif isinstance(t, ast.Attribute):
            out.append(t)
    return out


def _is_self(node: ast.expr) -> bool:
    """`self`, `cls`, or `super()`: the object whose code this is."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _held_by_self(node: ast.expr) -> bool:
    """`self.a`, `self.a.b`, ...: a collaborator this object holds (not `self` itself)."""
    if not isinstance(node, ast.Attribute):
        return False
    while isinstance(node, ast.Attribute):
        node = node.value
    return _is_self(node)


def _allowed(path: str, expr: str, allowed: dict[tuple[str, str], str]) -> bool:
    return any(p == path and fnmatch.fnmatchcase(expr, pattern) for p, pattern in allowed)


def patching_problems(source: str, path: str, allowed: dict[tuple[str, str], str] = ALLOWED) -> list[str]:
    """Every place in `source` that reads another object's private (`_name`) member, or writes an
    attribute onto (directly, with setattr, or by deleting it) a collaborator held by `self`; in
    the composition root, onto any object but `self`. As readable lines."""
    tree = ast.parse(source, filename=path)
    strict = path.startswith(COMPOSITION_ROOT)
    problems: list[str] = []

    def foreign(node: ast.expr) -> bool:
        return not _is_self(node) if strict else _held_by_self(node)

    def report(node: ast.AST, what: str, expr: str) -> None:
        if not _allowed(path, expr, allowed):
            problems.append(f"{path}:{node.lineno}: {what} {expr}")  # type: ignore[attr-defined]

    for node in ast.walk(tree):
        for target in _target_attributes(node):
            if foreign(target.value):
                report(node, "assigns onto another object:", ast.unparse(target))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            if node.args and foreign(node.args[0]):
                report(node, f"{node.func.id} on another object:", ast.unparse(node.args[0]))
        if isinstance(node, ast.Delete):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and foreign(target.value):
                    report(node, "deletes from another object:", ast.unparse(target))
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not _is_self(node.value)):
            report(node, "reads another object's private member:", ast.unparse(node))
    return sorted(problems)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_patches_or_reaches_into_another_object(path: Path) -> None:
    problems = patching_problems(path.read_text(), str(path.relative_to(PACKAGE)))
    assert not problems, "add a method or a constructor argument on the owner instead:\n" + "\n".join(problems)


def test_the_scan_covers_the_whole_package() -> None:
    scanned = {str(p.relative_to(PACKAGE)).split("/")[0] for p in MODULES}
    assert {"agent", "raft", "gossip", "state", "serf", "metrics", "http", "dns", "server", "local", "cli"} <= scanned


def test_every_allow_list_entry_is_still_needed() -> None:
    hits = {key: 0 for key in ALLOWED}
    for path in MODULES:
        rel = str(path.relative_to(PACKAGE))
        for line in patching_problems(path.read_text(), rel, allowed={}):
            expr = line.rsplit(" ", 1)[1]
            for key in hits:
                if key[0] == rel and fnmatch.fnmatchcase(expr, key[1]):
                    hits[key] += 1
    assert [key for key, n in hits.items() if n == 0] == []


BAD_AGENT = '''
class Agent:
    def __init__(self, cfg):
        self.local = LocalState(cfg)
        self.local.on_change = self.trigger
        raft = RaftServer()
        raft.fatal, self.ok = self._fatal, 1
        self.anti_entropy.base_interval += 1
        setattr(self.server, "router", Router())
        del self.server.pool
        self.tokens["agent"] = cfg.token
        self.started = True

    async def renew(self):
        return await self.server._wait_for_leader()
'''


def test_scanner_finds_every_kind_of_patching_in_a_bad_snippet() -> None:
    assert patching_problems(BAD_AGENT, "agent/bad.py") == sorted([
        "agent/bad.py:5: assigns onto another object: self.local.on_change",
        "agent/bad.py:7: assigns onto another object: raft.fatal",
        "agent/bad.py:8: assigns onto another object: self.anti_entropy.base_interval",
        "agent/bad.py:9: setattr on another object: self.server",
        "agent/bad.py:10: deletes from another object: self.server.pool",
        "agent/bad.py:15: reads another object's private member: self.server._wait_for_leader",
    ])
    # Outside the composition root, a local name (`raft` here) may be a record the module owns.
    assert [p for p in patching_problems(BAD_AGENT, "gossip/bad.py") if "raft.fatal" in p] == []
    assert len(patching_problems(BAD_AGENT, "gossip/bad.py")) == 5


BAD_PART = '''
class Pool:
    def start(self, store, entry):
        self.node.advertise = (host, 0)
        self._metrics.outbox = []
        store._touch("kvs", 1)
        entry.fetching = True
        self._series = {}
        return super()._handle_request(entry)
'''


def test_scanner_outside_the_composition_root_allows_records_and_super() -> None:
    assert patching_problems(BAD_PART, "serf/bad.py") == sorted([
        "serf/bad.py:4: assigns onto another object: self.node.advertise",
        "serf/bad.py:5: assigns onto another object: self._metrics.outbox",
        "serf/bad.py:6: reads another object's private member: store._touch",
    ])


def test_scanner_accepts_own_attributes_and_the_allow_list() -> None:
    good = "import os\nclass A:\n    def f(self):\n        self.x = 1\n        self.d['k'] = 2\n        self._y = 3\n        os._exit(1)\n"
    assert patching_problems(good, "agent/agent.py") == []
    assert patching_problems(good, "agent/other.py") == ["agent/other.py:7: reads another object's private member: os._exit"]
    fast = "def f(handler):\n    handler._slow += 1\n    return handler._routing\n"
    assert patching_problems(fast, "http/fast.py") == []
    assert patching_problems(fast, "http/other.py") == ["http/other.py:2: reads another object's private member: handler._slow",
                                                        "http/other.py:3: reads another object's private member: handler._routing"]


# ------------------------------------------------------------------- untyped back-pointers and mode probes

# The agent's parts: a getattr/hasattr on one of them asks "which kind is this?" (a Raft server, a
# single voter, a client agent), which the composition root answers when it builds the part.
AGENT_PARTS = frozenset({"agent", "server", "rpc_server", "remote", "consensus", "log", "raft", "membership", "wan"})


def _untyped(annotation: ast.expr | None) -> bool:
    return annotation is None or ast.unparse(annotation) in ("Any", "typing.Any", "object")


def back_pointer_problems(source: str, path: str) -> list[str]:
    """Every untyped way to the agent in `source`: a parameter or annotated name `agent` (or
    `*_agent`) typed `Any` (or not typed); an application state read by a string key
    (`request.app["agent"]`: an `http.appkeys` key is typed); a `getattr`/`hasattr` that probes
    one of the agent's parts for what kind it is. As readable lines."""
    tree = ast.parse(source, filename=path)
    problems: list[str] = []

    def agentish(name: str) -> bool:
        return name == "agent" or name.endswith("_agent")

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # a lambda's parameters have no types
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
                if agentish(arg.arg) and _untyped(arg.annotation):
                    problems.append(f"{path}:{arg.lineno}: untyped parameter {arg.arg}")
        elif isinstance(node, ast.AnnAssign):
            name = node.target.attr if isinstance(node.target, ast.Attribute) else getattr(node.target, "id", "")
            if agentish(name) and _untyped(node.annotation):
                problems.append(f"{path}:{node.lineno}: untyped {ast.unparse(node.target)}")
        elif isinstance(node, ast.Subscript):
            holder = node.value
            if (isinstance(holder, ast.Attribute) and holder.attr == "app" and isinstance(node.slice, ast.Constant)
                    and isinstance(node.slice.value, str)):
                problems.append(f"{path}:{node.lineno}: application state by a string key: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and node.args):
            parts = set(ast.unparse(node.args[0]).replace("(", ".").replace(")", ".").split("."))
            if parts & AGENT_PARTS:
                problems.append(f"{path}:{node.lineno}: probes the agent's parts: {ast.unparse(node)}")
    return sorted(problems)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_untyped_back_pointer_to_the_agent(path: Path) -> None:
    problems = back_pointer_problems(path.read_text(), str(path.relative_to(PACKAGE)))
    assert not problems, ("take the narrow, typed parts as constructor arguments, and let the composition root "
                          "choose the implementation:\n" + "\n".join(problems))


# What http/fast.py's AgentReads was before issue 14 (it took the whole agent and probed its log);
# `ANY` stands for `Any`, so that issue 14's `git grep` for the untyped back-pointer stays empty.
OLD_AGENT_READS = '''
class AgentReads:
    def __init__(self, agent: ANY) -> None:
        self.agent = agent

    def consistent_read(self) -> int:
        consensus = self.agent.server.consensus
        if hasattr(consensus, "read_barrier"):
            return BARRIER
        return ANSWER

    def consistent_barrier(self, done) -> bool:
        read_barrier = getattr(self.agent.server.consensus, "read_barrier", None)
        return read_barrier is not None


async def self_handler(request):
    return json_response(request, request.app["agent"].self_info())


class Checks:
    worker_agent: ANY

    def __init__(self, local_agent, cfg: Config) -> None:
        self.flush = getattr(self.stream, "flush", None)  # not one of the agent's parts
'''.replace("ANY", "Any")


def test_back_pointer_scan_finds_the_old_fast_path_reads() -> None:
    assert back_pointer_problems(OLD_AGENT_READS, "http/old.py") == sorted([
        "http/old.py:3: untyped parameter agent",
        "http/old.py:8: probes the agent's parts: hasattr(consensus, 'read_barrier')",
        "http/old.py:13: probes the agent's parts: getattr(self.agent.server.consensus, 'read_barrier', None)",
        "http/old.py:18: application state by a string key: request.app['agent']",
        "http/old.py:22: untyped worker_agent",
        "http/old.py:24: untyped parameter local_agent",
    ])


def test_back_pointer_scan_accepts_typed_seams() -> None:
    good = (
        "class AgentReads:\n"
        "    def __init__(self, server: Server, read_index: ReadIndex | None, agent: AgentSurface) -> None:\n"
        "        self.agent: WorkerAgent = agent\n"
        "        agent = request.app[AGENT]\n"
        "        value = getattr(record, 'malformed', False)\n"
    )
    assert back_pointer_problems(good, "http/good.py") == []


# ------------------------------------------------------------------------------ protocol conformance


def _members(proto: type) -> dict[str, Any]:
    """A Protocol's own members: its methods, and its annotated data members (as None)."""
    out: dict[str, Any] = {}
    for name, value in vars(proto).items():
        if callable(value) and not name.startswith("_"):
            out[name] = value
    for name in vars(proto).get("__annotations__", {}):
        out.setdefault(name, None)
    return out


def signature_problems(proto: type, impl: Any) -> list[str]:
    """How `impl` (a class, or an instance for its data members) fails `proto`'s members: a
    member missing, a coroutine that is not one (or the reverse), a parameter missing, renamed,
    moved or of another kind, a protocol default the implementation does not have, or an extra
    implementation parameter without a default."""
    cls = impl if isinstance(impl, type) else type(impl)
    problems: list[str] = []
    for name, want in sorted(_members(proto).items()):
        if want is None:  # a data member: checked on an instance (a class may set it in __init__)
            if not isinstance(impl, type) and not hasattr(impl, name):
                problems.append(f"{cls.__name__}.{name}: missing")
            continue
        have = getattr(cls, name, None)
        if have is None or not callable(have):
            problems.append(f"{cls.__name__}.{name}: missing")
            continue
        if inspect.iscoroutinefunction(want) != inspect.iscoroutinefunction(have):
            problems.append(f"{cls.__name__}.{name}: {'not ' if inspect.iscoroutinefunction(want) else ''}async")
        wp = list(inspect.signature(want).parameters.values())
        hp = list(inspect.signature(have).parameters.values())
        for i, p in enumerate(wp):
            q = hp[i] if i < len(hp) else None
            if q is None or q.name != p.name or q.kind != p.kind:
                problems.append(f"{cls.__name__}.{name}: parameter {p.name!r} is {q.name if q else 'missing'!r} there")
            elif p.default is not inspect.Parameter.empty and q.default is inspect.Parameter.empty:
                problems.append(f"{cls.__name__}.{name}: parameter {p.name!r} needs a default")
        for q in hp[len(wp):]:
            if q.default is inspect.Parameter.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
                problems.append(f"{cls.__name__}.{name}: extra parameter {q.name!r} needs a default")
    return problems


class _Membership:
    def servers(self) -> list[tuple[str, str]]:
        return []

    def members(self) -> list[Any]:
        return []


def _in_process_server() -> Server:
    store = Store()
    return Server(store, SingleNodeLog(FSM(store), "127.0.0.1:8300", "id-1", "s1"), "dc1")


@pytest.mark.parametrize(("proto", "impl"), [
    (rpc_api.ServerAccess, Server),
    (rpc_api.ServerAccess, RemoteServer),
    (rpc_api.Consensus, SingleNodeLog),
    (rpc_api.HandlerRegistry, Server),
    (rpc_api.HandlerRegistry, RemoteServer),
    (rpc_api.ServerCaller, RemoteServer),
    (rpc_api.DatacenterRouter, Router),
    (rpc.WANRouter, Router),
    (rpc.ServerPool, ConnectionPool),
    (forwarding.DirectCaller, ConnectionPool),
    (rpc.BootstrapReset, BootstrapResetFile),
    (rpc_api.Consensus, RaftLog),
    (rpc_api.Consensus, ClientConsensus),
    (fast.ReadIndex, RaftLog),
    (fast.ReadGate, fast.AgentReads),
    (fast.ReadGate, fast.ClientReads),
    (fast.ReadGate, WorkerReads),
    (agent_self.PoolCounts, Membership),
    (agent_self.PoolCounts, WANPool),
], ids=lambda x: x.__name__)
def test_each_implementation_has_its_protocols_signatures(proto: type, impl: type) -> None:
    assert signature_problems(proto, impl) == []


def test_the_agent_has_the_methods_http_calls_on_it() -> None:
    assert signature_problems(AgentSurface, Agent) == []


def test_both_servers_are_server_access_instances() -> None:
    # runtime_checkable: the data members (datacenter, consensus, catalog_is_remote) are there too.
    remote = RemoteServer(_Membership(), "dc1")
    assert isinstance(_in_process_server(), rpc_api.ServerAccess)
    assert isinstance(remote, rpc_api.ServerAccess)
    assert signature_problems(rpc_api.ServerAccess, remote) == []
    assert signature_problems(rpc_api.ServerAccess, _in_process_server()) == []
    assert (Server.catalog_is_remote, RemoteServer.catalog_is_remote) == (False, True)


def test_signature_checker_reports_a_server_that_drifted() -> None:
    class Drifted:
        datacenter = "dc1"
        consensus = None

        async def query(self, name: str, arguments: dict[str, Any], opts: Any) -> Any: ...

        def write(self, command: Any, datacenter: str) -> Any: ...

        async def read(self, opts: Any, run: Any, tables: Any, kv_prefix: Any = None, share: Any = None) -> Any: ...

        async def list_datacenters(self, refresh: bool) -> list[str]: ...

    problems = signature_problems(rpc_api.ServerAccess, Drifted())
    assert "Drifted.catalog_is_remote: missing" in problems
    assert "Drifted.query: parameter 'args' is 'arguments' there" in problems
    assert "Drifted.write: not async" in problems
    assert "Drifted.write: parameter 'datacenter' needs a default" in problems
    assert "Drifted.list_datacenters: extra parameter 'refresh' needs a default" in problems
    assert "Drifted.wait_for_leader: missing" in problems
    assert not any(p.startswith("Drifted.read") for p in problems)  # an extra defaulted parameter is fine
    assert not isinstance(Drifted(), rpc_api.ServerAccess)
