"""Watches: blocking-query loops that call a handler with Consul's JSON on every change.

Owns what Consul's api/watch package does, for `proconsul watch` and the agent's `watches`
config: parsing a watch definition (`type` key|keyprefix|services|nodes|service|checks|event and
its parameters, `handler_type` script|http, `args`/`handler`, `http_handler_config`) with
Consul's error messages; one fetch per type over the HTTP API returning (index, result) in the
shape the Go api re-encodes; the plan loop (handler on the first result and then only when the
index moved *and* the result differs; back-off of 5s x failures^2 capped at 180s on errors; no
busy loop when the index stays 0 or goes backwards: the wait index resets to 0 and the loop
sleeps a moment); and the script and HTTP handlers (JSON body/stdin, `CONSUL_INDEX`,
`X-Consul-Index`). The agent's watches run through `WatchManager`, each on its own daemon thread
talking to the agent's own HTTP API, as Consul's agent does; reload stops them and starts the
new set.

Plans are synchronous (the CLI is), so the agent runs them on threads, never on its event loop;
a stopped plan finishes its in-flight blocking query and then exits without calling the handler.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proconsul.api_client import APIError, Client, resolve_settings
from proconsul.durations import parse_duration
from proconsul.local.events import uuid_to_uint64

logger = logging.getLogger(__name__)

# Consul's api/watch timings.
RETRY_INTERVAL_S = 5.0
MAX_BACKOFF_S = 180.0
HTTP_HANDLER_TIMEOUT_S = 10.0
# How long a blocking read waits server-side (Consul sends none and gets the 5m default; a
# shorter wait only costs an extra unchanged round trip now and then).
BLOCKING_WAIT = "60s"
# Pause before the next read when the index is 0 or went backwards, so such a server cannot
# make the loop spin.
RESET_PAUSE_S = 1.0


class WatchError(ValueError):
    """The watch definition is invalid; the message is Consul's."""


Fetch = Callable[[Client, int], tuple[int, Any]]
Handler = Callable[[int, Any], None]


@dataclass
class Plan:
    type: str
    fetch: Fetch
    datacenter: str = ""
    token: str = ""
    handler_type: str = ""
    exempt: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------- parsing


def _take_str(params: dict[str, Any], name: str) -> str:
    if name not in params:
        return ""
    value = params.pop(name)
    if not isinstance(value, str):
        raise WatchError(f"Expecting {name} to be a string")
    return value


def _take_bool(params: dict[str, Any], name: str) -> bool:
    if name not in params:
        return False
    value = params.pop(name)
    if not isinstance(value, bool):
        raise WatchError(f"Expecting {name} to be a boolean")
    return value


def _take_str_list(params: dict[str, Any], name: str) -> list[str]:
    if name not in params:
        return []
    value = params.pop(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise WatchError(f"Index {i} of {name} expected to be string")
        return list(value)
    raise WatchError(f"Expecting {name} to be a string or []string")


def kv_pair(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A KV entry as the Go api's KVPair encodes it (Session always present)."""
    out = {
        "Key": entry.get("Key", ""),
        "CreateIndex": entry.get("CreateIndex", 0),
        "ModifyIndex": entry.get("ModifyIndex", 0),
        "LockIndex": entry.get("LockIndex", 0),
        "Flags": entry.get("Flags", 0),
        "Value": entry.get("Value"),
        "Session": entry.get("Session", "") or "",
    }
    return out


def _get(client: Client, path: str, params: list[tuple[str, str]], index: int, stale: bool) -> tuple[int, Any]:
    query = list(params)
    if index:
        query += [("index", str(index)), ("wait", BLOCKING_WAIT)]
    if stale:
        query.append(("stale", ""))
    resp = client.request("GET", path, query, allow_404=True)
    new_index = int(resp.headers.get("x-consul-index", "0") or 0)
    return new_index, (resp.json() if resp.status == 200 else None)


def _key_watch(params: dict[str, Any], stale: bool) -> Fetch:
    key = _take_str(params, "key")
    if not key:
        raise WatchError("Must specify a single key to watch")

    def fetch(client: Client, index: int) -> tuple[int, Any]:
        idx, data = _get(client, "/v1/kv/" + key, [], index, stale)
        return idx, kv_pair(data[0]) if data else None

    return fetch


def _keyprefix_watch(params: dict[str, Any], stale: bool) -> Fetch:
    prefix = _take_str(params, "prefix")
    if not prefix:
        raise WatchError("Must specify a single prefix to watch")

    def fetch(client: Client, index: int) -> tuple[int, Any]:
        idx, data = _get(client, "/v1/kv/" + prefix, [("recurse", "")], index, stale)
        return idx, [kv_pair(e) for e in data] if data else None

    return fetch


def _services_watch(params: dict[str, Any], stale: bool) -> Fetch:
    return lambda client, index: _get(client, "/v1/catalog/services", [], index, stale)


def _nodes_watch(params: dict[str, Any], stale: bool) -> Fetch:
    return lambda client, index: _get(client, "/v1/catalog/nodes", [], index, stale)


def _service_watch(params: dict[str, Any], stale: bool) -> Fetch:
    service = _take_str(params, "service")
    if not service:
        raise WatchError("Must specify a single service to watch")
    tags = _take_str_list(params, "tag")
    passing = _take_bool(params, "passingonly")
    query = [("tag", t) for t in tags] + ([("passing", "1")] if passing else [])

    def fetch(client: Client, index: int) -> tuple[int, Any]:
        idx, data = _get(client, "/v1/health/service/" + service, query, index, stale)
        return idx, data if data is not None else []

    return fetch


def _checks_watch(params: dict[str, Any], stale: bool) -> Fetch:
    service = _take_str(params, "service")
    state = _take_str(params, "state")
    if service and state:
        raise WatchError("Cannot specify service and state")
    if not service and not state:
        state = "any"
    tags = _take_str_list(params, "tag")
    if state:
        path = "/v1/health/state/" + state
        # The Go api's StateTags turns tags into a filter expression.
        query = [("filter", " and ".join(f"{json.dumps(t)} in ServiceTags" for t in tags))] if tags else []
    else:
        path, query = "/v1/health/checks/" + service, []

    def fetch(client: Client, index: int) -> tuple[int, Any]:
        idx, data = _get(client, path, query, index, stale)
        return idx, data if data is not None else []

    return fetch


def _event_watch(params: dict[str, Any], stale: bool) -> Fetch:
    name = _take_str(params, "name")
    query = [("name", name)] if name else []

    def fetch(client: Client, index: int) -> tuple[int, Any]:
        idx, events = _get(client, "/v1/event/list", query, index, False)
        events = events or []
        # Only the events after the one the last index named are new (Consul prunes the same way).
        for i, e in enumerate(events):
            if index and uuid_to_uint64(e["ID"]) == index:
                events = events[i + 1 :]
                break
        return idx, events

    return fetch


_FACTORIES: dict[str, Callable[[dict[str, Any], bool], Fetch]] = {
    "key": _key_watch,
    "keyprefix": _keyprefix_watch,
    "services": _services_watch,
    "nodes": _nodes_watch,
    "service": _service_watch,
    "checks": _checks_watch,
    "event": _event_watch,
}


def parse_http_handler_config(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise WatchError("Failed to parse 'http_handler_config': expected a map")
    path = raw.get("path", "")
    if not path:
        raise WatchError("Failed to parse 'http_handler_config': Requires 'path' to be set")
    timeout_s = HTTP_HANDLER_TIMEOUT_S
    if raw.get("timeout"):
        try:
            timeout_s = parse_duration(str(raw["timeout"]))
        except ValueError as exc:
            raise WatchError(f"Failed to parse 'http_handler_config': Failed to parse timeout: {exc}") from None
    header = {str(k): [str(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
              for k, v in dict(raw.get("header") or {}).items()}
    return {
        "path": str(path),
        "method": str(raw.get("method") or "POST"),
        "timeout_s": timeout_s,
        "header": header,
        "tls_skip_verify": bool(raw.get("tls_skip_verify", False)),
    }


def parse(raw: Mapping[str, Any], exempt: Sequence[str] = ()) -> Plan:
    """Compile a watch definition, as Consul's watch.ParseExempt; parameters must all be used."""
    params = dict(raw)
    datacenter = _take_str(params, "datacenter")
    token = _take_str(params, "token")
    wtype = _take_str(params, "type")
    if not wtype:
        raise WatchError("Watch type must be specified")
    handler_type = _take_str(params, "handler_type")
    extra: dict[str, Any] = {}
    if handler_type == "http":
        if "http_handler_config" not in params:
            raise WatchError("Handler type 'http' requires 'http_handler_config' to be set")
        extra["http_handler_config"] = parse_http_handler_config(params.pop("http_handler_config"))
    factory = _FACTORIES.get(wtype)
    if factory is None:
        raise WatchError(f"Unsupported watch type: {wtype}")
    stale = False if wtype == "event" else _take_bool(params, "stale")
    fetch = factory(params, stale)
    for name in exempt:
        if name in params:
            extra[name] = params.pop(name)
    if params:
        raise WatchError(f"Invalid parameters: [{' '.join(sorted(params))}]")
    return Plan(type=wtype, fetch=fetch, datacenter=datacenter, token=token, handler_type=handler_type, exempt=extra)


# ------------------------------------------------------------------------------- the loop


def run(
    plan: Plan,
    client: Client,
    handler: Handler,
    stop: threading.Event,
    *,
    retry_base_s: float = RETRY_INTERVAL_S,
    max_backoff_s: float = MAX_BACKOFF_S,
    reset_pause_s: float = RESET_PAUSE_S,
) -> None:
    """Run the plan until `stop` is set: fetch, compare, call `handler(index, result)`.

    The handler runs for the first result, then whenever the index moved and the result
    changed. Errors back off (base x failures^2, capped); the wait index resets to 0 when the
    index went backwards and is never left at 0 without a pause, so no server answer can make
    this loop spin.
    """
    failures = 0
    wait_index = 0
    last_index: int | None = None
    last_result: Any = None
    first = True
    while not stop.is_set():
        try:
            index, result = plan.fetch(client, wait_index)
        except (APIError, OSError, ValueError) as exc:
            if stop.is_set():
                return
            failures += 1
            retry = min(retry_base_s * failures * failures, max_backoff_s)
            logger.error("watch: %s watch errored: %s; retry in %.1fs", plan.type, exc, retry)
            wait_index = 0
            stop.wait(retry)
            continue
        if stop.is_set():
            return
        failures = 0
        if index <= 0 or (last_index is not None and index < last_index):
            # A broken or reset index: start over from a fresh read, after a pause.
            wait_index = 0
            stop.wait(reset_pause_s)
        else:
            wait_index = index
        if last_index is not None and index == last_index and not first:
            continue
        last_index = index
        if not first and result == last_result:
            continue
        first = False
        last_result = result
        handler(index, result)


# ----------------------------------------------------------------------------- handlers


def go_json(data: Any, indent: bool = False) -> str:
    """JSON as Go's encoding/json writes it: HTML characters escaped, UTF-8 kept."""
    text = json.dumps(data, indent=4 if indent else None, ensure_ascii=False,
                      separators=None if indent else (",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def script_command(args: Any, shell: bool) -> list[str]:
    """The argv for a handler: a list runs as is; a string (or -shell) runs under $SHELL -c."""
    if isinstance(args, str):
        return [os.environ.get("SHELL") or "/bin/sh", "-c", args]
    argv = [str(a) for a in args]
    if shell:
        return [os.environ.get("SHELL") or "/bin/sh", "-c", " ".join(argv)]
    return argv


def run_script(argv: list[str], index: int, data: Any, capture: bool) -> tuple[int, bytes]:
    """Run a handler with the JSON on stdin and CONSUL_INDEX set; returns (exit code, output)."""
    env = dict(os.environ, CONSUL_INDEX=str(index))
    body = (go_json(data) + "\n").encode()
    proc = subprocess.run(
        argv,
        input=body,
        env=env,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        check=False,
    )
    return proc.returncode, proc.stdout or b""


def script_handler(args: Any) -> Handler:
    def handle(index: int, data: Any) -> None:
        try:
            code, output = run_script(script_command(args, False), index, data, capture=True)
        except OSError as exc:
            logger.error("watch: failed to run handler %s: %s", shlex.join(script_command(args, False)), exc)
            return
        if output:
            logger.info("watch: handler output: %s", output.decode("utf-8", "replace").rstrip())
        if code != 0:
            logger.error("watch: handler exited with %d", code)

    return handle


def http_handler(config: Mapping[str, Any]) -> Handler:
    def handle(index: int, data: Any) -> None:
        body = go_json(data).encode()
        req = urllib.request.Request(config["path"], data=body, method=config["method"])
        for name, values in config["header"].items():
            for value in values:
                req.add_header(name, value)
        req.add_header("Content-Type", "application/json")
        req.add_header("X-Consul-Index", str(index))
        ctx = None
        if config["tls_skip_verify"]:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(req, timeout=config["timeout_s"], context=ctx) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            logger.error("watch: http handler %s answered %d", config["path"], exc.code)
        except (OSError, ValueError) as exc:
            logger.error("watch: failed to call http handler %s: %s", config["path"], exc)

    return handle


# ---------------------------------------------------------------------------- agent side


def parse_agent_watch(raw: Mapping[str, Any]) -> Plan:
    """Validate one `watches` entry as Consul's agent does (handler type, no connect watches)."""
    params = dict(raw)
    handler_type = params.setdefault("handler_type", "script")
    if handler_type not in ("http", "script"):
        raise WatchError(f"Handler type '{handler_type}' not recognized")
    wtype = params.get("type")
    if isinstance(wtype, str) and wtype.startswith("connect_"):
        raise WatchError(f"Watch type {wtype} is not allowed in agent config")
    plan = parse(params, exempt=("handler", "args"))
    if handler_type == "script":
        has_handler, has_args = "handler" in plan.exempt, "args" in plan.exempt
        if has_handler and has_args:
            raise WatchError("Only one watch handler allowed")
        if not has_handler and not has_args:
            raise WatchError("Must define a watch handler")
        if has_args and not (
            isinstance(plan.exempt["args"], (list, tuple)) and all(isinstance(a, str) for a in plan.exempt["args"])
        ):
            raise WatchError("Watch args must be a list of strings")
        if has_handler and not isinstance(plan.exempt["handler"], str):
            raise WatchError("Watch handler must be a string")
    return plan


class WatchManager:
    """The agent's `watches`: one thread per plan against the agent's own HTTP API."""

    def __init__(self) -> None:
        self._running: list[tuple[threading.Event, threading.Thread]] = []

    @staticmethod
    def validate(defs: Sequence[Mapping[str, Any]]) -> tuple[list[Plan], list[str]]:
        plans: list[Plan] = []
        errors: list[str] = []
        for i, raw in enumerate(defs):
            try:
                plans.append(parse_agent_watch(raw))
            except WatchError as exc:
                errors.append(f"Failed to compile watch (watches[{i}]): {exc}")
        return plans, errors

    def start(self, defs: Sequence[Mapping[str, Any]], http_addr: str, token: str = "") -> list[str]:
        """Replace the running watches with `defs`; on any error keep the old ones."""
        plans, errors = self.validate(defs)
        if errors:
            return errors
        self.stop()
        for i, plan in enumerate(plans):
            settings = resolve_settings(
                http_addr=http_addr, token=plan.token or token, datacenter=plan.datacenter, environ={}
            )
            client = Client(settings)
            if plan.handler_type == "http":
                handler = http_handler(plan.exempt["http_handler_config"])
            else:
                handler = script_handler(plan.exempt.get("args", plan.exempt.get("handler")))
            stop = threading.Event()
            thread = threading.Thread(
                target=run, args=(plan, client, handler, stop), name=f"watch-{i}-{plan.type}", daemon=True
            )
            thread.start()
            self._running.append((stop, thread))
        if plans:
            logger.info("watch: %d watches running", len(plans))
        return []

    def stop(self) -> None:
        for stop, _ in self._running:
            stop.set()
        self._running = []

    def count(self) -> int:
        return len(self._running)


def agent_http_addr(bound: Sequence[tuple[str, int]], configured_port: int) -> str:
    """Where the agent's own HTTP API answers: its first bound listener, else the configured
    port on loopback (a wildcard bind is reached on loopback too)."""
    host, port = bound[0] if bound else ("127.0.0.1", configured_port)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_agent_watches(manager: WatchManager, defs: Sequence[Mapping[str, Any]], http_addr: str,
                        token: str, http_enabled: bool = True) -> list[str]:
    """(Re)start the agent's configured watches against its HTTP API at `http_addr`, with the
    agent's `token`; returns the errors (the old ones keep running)."""
    if defs and not http_enabled:
        # The watches are clients of the plain HTTP API; over HTTPS they would need the agent's
        # own client certificate, which is not built yet. Refuse instead of watching nothing.
        return ["watches need the plain HTTP API: ports.http is disabled (HTTPS-only watches are not supported yet)"]
    return manager.start(defs, http_addr, token)
