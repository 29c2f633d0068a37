"""Check runners: turn check definitions into periodic probes whose results feed local state.

Owns running the agent's health checks: TTL timers; HTTP, TCP, UDP and gRPC (grpc.health.v1)
probes; script checks (only when enabled); alias checks that mirror another node's or service's
health (local state for this agent's services, a blocking catalog query for other nodes). Each
interval check starts staggered, never overlaps itself (one task runs probe, then sleeps), is
bounded by its timeout, and goes through Consul's flap thresholds (`success_before_passing`,
`failures_before_warning`, `failures_before_critical`) before its status changes. `h2ping`,
`docker` and `os_service` checks are not supported: they report critical with a reason rather
than pretending to pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp

from proconsul.local.flap import FlapGate, FlapSettings, Report
from proconsul.rpc_api import QueryOptions, ServerAccess
from proconsul.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING, CheckDefinition

logger = logging.getLogger(__name__)

FLAP_OFF = FlapSettings()  # flap detection off: the default for a runner built on its own

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_SCRIPT_TIMEOUT_S = 30.0
# Consul's checks.MinInterval: shorter intervals are raised to it.
MIN_INTERVAL_S = 1.0
OUTPUT_LIMIT = 4096
# Alias checks on another node re-ask with a blocking query of at most this long (Consul: 1m).
ALIAS_MAX_QUERY_S = 60.0
# Interval-based types run by the probe loop.
PROBE_TYPES = ("http", "tcp", "udp", "grpc", "script")
# Types proconsul knows but does not run; they report critical with this reason.
UNSUPPORTED_TYPES = {
    "h2ping": "h2ping checks are not supported by proconsul",
    "docker": "docker checks are not supported by proconsul",
    "os_service": "os_service checks are not supported by proconsul",
}


GRPC_EXTRA_MISSING = (
    "gRPC checks need proconsul's optional grpc extra (pip install 'proconsul[grpc]'; the .deb and .rpm "
    "include it), which is not installed"
)


class StatusHandler:
    """Consul's flap thresholds between a probe's result and the reported status.

    Passing and warning results count as successes, critical ones as failures. The counters
    start at their thresholds, so the first result after start is reported at once (as
    Consul's NewStatusHandler does); afterwards `success_before_passing` consecutive successes
    are needed to leave a failure and `failures_before_critical` consecutive failures to turn
    critical, with warning reported from `failures_before_warning` (default: the critical one).
    """

    def __init__(self, definition: CheckDefinition, report: Report) -> None:
        self.definition = definition
        self.report = report
        self.success_before_passing = definition.success_before_passing
        self.failures_before_critical = definition.failures_before_critical
        self.failures_before_warning = definition.failures_before_warning or definition.failures_before_critical
        self.successes = self.success_before_passing
        self.failures = self.failures_before_critical

    def update(self, status: str, output: str) -> None:
        cid = self.definition.id
        if status in (HEALTH_PASSING, HEALTH_WARNING):
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_before_passing:
                self.report(cid, status, output)
            return
        self.failures += 1
        self.successes = 0
        if self.failures >= self.failures_before_critical:
            self.report(cid, status, output)
        elif self.failures >= self.failures_before_warning:
            self.report(cid, HEALTH_WARNING, output)


# Script checks run in their own small pool, so they can neither stall the event loop nor queue
# up behind (or in front of) the Raft fsyncs that use the default executor.
_SCRIPT_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="script-check")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_script(args: list[str], timeout: float, holder: list[subprocess.Popen[bytes]]) -> tuple[int | None, bytes]:
    """(exit code, output), or (None, partial output) when killed at the timeout."""
    try:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so a timeout kills the whole tree
        )
    except OSError as exc:
        return 2, f"failed to run {args[0]!r}: {exc}".encode()
    holder.append(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        return None, out
    return proc.returncode, out


class CheckRunner:
    """One running check. `start()` schedules it; `stop()` cancels it."""

    def __init__(
        self,
        definition: CheckDefinition,
        report: Report,
        session: aiohttp.ClientSession | None,
        rng: random.Random,
        script_allowed: bool,
        local: Any = None,
        server: ServerAccess | None = None,
        flap: FlapSettings = FLAP_OFF,
    ) -> None:
        self.definition = definition
        self.report = report
        # Flap detection (local/flap.py) judges what the thresholds let through.
        gated: Report = FlapGate(definition.id, flap, report) if flap.applies_to(definition.flap_detection) else report
        self.handler = StatusHandler(definition, gated)
        self.session = session
        self.rng = rng
        self.script_allowed = script_allowed
        self.local = local  # LocalState, for alias checks on this agent's services
        self.server = server  # this agent's way to the catalog, for alias checks on other nodes
        self.task: asyncio.Task[None] | None = None
        self._ttl_handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        d = self.definition
        if d.type == "maintenance":
            return  # a maintenance check is critical by definition and runs nothing
        if d.type == "ttl":
            self.reset_ttl()
            return
        loop = asyncio.get_running_loop()
        if d.type in PROBE_TYPES:
            if d.type == "script" and not self.script_allowed:
                self.report(d.id, HEALTH_CRITICAL, "script checks are disabled on this agent")
                return
            self.task = loop.create_task(self._loop(), name=f"check:{d.id}")
            return
        if d.type == "alias":
            runner = self._alias_local() if not d.alias_node else self._alias_remote()
            self.task = loop.create_task(runner, name=f"check:{d.id}")
            return
        if d.type:
            reason = UNSUPPORTED_TYPES.get(d.type, f"{d.type} checks are not supported by proconsul")
            self.report(d.id, HEALTH_CRITICAL, reason)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self._ttl_handle is not None:
            self._ttl_handle.cancel()
            self._ttl_handle = None

    # TTL -------------------------------------------------------------------------------------

    def reset_ttl(self) -> None:
        if self._ttl_handle is not None:
            self._ttl_handle.cancel()
        self._ttl_handle = asyncio.get_running_loop().call_later(self.definition.ttl_s, self._ttl_expired)

    def _ttl_expired(self) -> None:
        self._ttl_handle = None
        self.report(self.definition.id, HEALTH_CRITICAL, "TTL expired")

    # interval checks ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        interval = max(self.definition.interval_s, MIN_INTERVAL_S)
        # Stagger the first run so that many checks do not fire together (capped at 1s so a
        # new check reports soon after registration).
        await asyncio.sleep(self.rng.uniform(0, 1.0))
        while True:
            try:
                status, output = await self._probe_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a probe must never kill its loop
                status, output = HEALTH_CRITICAL, f"check failed: {exc}"
            self.handler.update(status, output[:OUTPUT_LIMIT])
            # The next run starts an interval after this one ended: never two at once.
            await asyncio.sleep(interval)

    async def _probe_once(self) -> tuple[str, str]:
        d = self.definition
        if d.type == "http":
            return await self._http()
        if d.type == "tcp":
            return await self._tcp()
        if d.type == "udp":
            return await self._udp()
        if d.type == "grpc":
            return await self._grpc()
        return await self._script()

    async def _http(self) -> tuple[str, str]:
        d = self.definition
        assert self.session is not None
        timeout = d.timeout_s or DEFAULT_TIMEOUT_S
        method = d.method or "GET"
        headers = {k: ", ".join(v) for k, v in d.header.items()}
        headers.setdefault("User-Agent", "Consul Health Check")
        headers.setdefault("Accept", "text/plain, text/*, */*")
        ssl_ctx: ssl.SSLContext | bool | None = None
        if d.http.startswith("https://") and d.tls_skip_verify:
            ssl_ctx = False
        try:
            async with self.session.request(
                method,
                d.http,
                headers=headers,
                data=d.body.encode() if d.body else None,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=not d.disable_redirects,
                ssl=ssl_ctx,
                server_hostname=d.tls_server_name or None,
            ) as resp:
                body = await resp.content.read(OUTPUT_LIMIT)
                text = body.decode("utf-8", "replace")
                summary = f"HTTP {method} {d.http}: {resp.status} {resp.reason} Output: {text}"
                if 200 <= resp.status < 300:
                    return HEALTH_PASSING, summary
                if resp.status == 429:
                    return HEALTH_WARNING, summary
                return HEALTH_CRITICAL, summary
        except TimeoutError:
            return HEALTH_CRITICAL, f"Get {d.http}: timeout after {timeout:g}s"
        except aiohttp.ClientConnectorError as exc:
            # Consul (Go's net/http) words it: Get "URL": dial tcp HOST:PORT: connect: <reason>
            err = exc.os_error
            reason = os.strerror(err.errno).lower() if err is not None and err.errno else str(err or exc)
            verb = method.capitalize()
            return HEALTH_CRITICAL, f'{verb} "{d.http}": dial tcp {exc.host}:{exc.port}: connect: {reason}'
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return HEALTH_CRITICAL, f"{method} {d.http}: {exc}"

    async def _tcp(self) -> tuple[str, str]:
        d = self.definition
        timeout = d.timeout_s or DEFAULT_TIMEOUT_S
        host, port = _split_host_port(d.tcp)
        try:
            # asyncio.timeout, not wait_for, here and in _udp: a removed check's cancellation
            # arriving as the probe completes must stop its runner (CPython gh-86296).
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return HEALTH_CRITICAL, f"dial tcp {d.tcp}: i/o timeout"
        except (OSError, ValueError) as exc:
            return HEALTH_CRITICAL, f"dial tcp {d.tcp}: {exc}"
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return HEALTH_PASSING, f"TCP connect {d.tcp}: Success"

    async def _udp(self) -> tuple[str, str]:
        """Consul's UDP check: send an empty datagram on a connected socket, wait for a reply.

        A reply, or silence until the timeout, is passing; an error (the ICMP port-unreachable
        that Linux reports on a connected socket as "connection refused") is critical.
        """
        d = self.definition
        timeout = d.timeout_s or DEFAULT_TIMEOUT_S
        host, port = _split_host_port(d.udp)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (OSError, TimeoutError) as exc:
            return HEALTH_CRITICAL, f"dial udp {d.udp}: {exc}"
        family, _, proto, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        local: Any = ("", 0)
        try:
            sock.setblocking(False)
            sock.connect(address)
            local = sock.getsockname()
            sock.send(b"")
            async with asyncio.timeout(timeout):
                await loop.sock_recv(sock, 1)
        except TimeoutError:
            pass  # nothing came back, not even a refusal: passing, as Consul
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            return HEALTH_CRITICAL, f"read udp {local[0]}:{local[1]}->{address[0]}:{address[1]}: read: {reason}"
        finally:
            sock.close()
        return HEALTH_PASSING, f"UDP connect {d.udp}: Success"

    async def _grpc(self) -> tuple[str, str]:
        """grpc.health.v1 Check against `host:port[/service]`, a fresh connection each time."""
        try:  # imported here: only agents with gRPC checks pay for loading it
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError as exc:
            # grpcio is the optional `grpc` extra: without it the check says what to install.
            return HEALTH_CRITICAL, f"{GRPC_EXTRA_MISSING} ({exc})"

        d = self.definition
        timeout = d.timeout_s or DEFAULT_TIMEOUT_S
        target, _, service = d.grpc.partition("/")
        if d.grpc_use_tls:
            options = []
            if d.tls_server_name:
                options.append(("grpc.ssl_target_name_override", d.tls_server_name))
            channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        else:
            channel = grpc.aio.insecure_channel(target)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = "".join(part.title() for part in exc.code().name.split("_"))
            return HEALTH_CRITICAL, f"rpc error: code = {code} desc = {exc.details()}"
        finally:
            await channel.close()
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return HEALTH_CRITICAL, f"gRPC {d.grpc} serving status: {name}"
        return HEALTH_PASSING, f"gRPC check {d.grpc}: success"

    async def _script(self) -> tuple[str, str]:
        """Run the script off the event loop: forking a large process from the loop stalled it for
        milliseconds per spawn (bench/check_loop_lag.py, 200 script checks at 1s)."""
        d = self.definition
        timeout = d.timeout_s or DEFAULT_SCRIPT_TIMEOUT_S
        holder: list[subprocess.Popen[bytes]] = []
        loop = asyncio.get_running_loop()
        try:
            returncode, out = await loop.run_in_executor(_SCRIPT_POOL, _run_script, list(d.args), timeout, holder)
        except asyncio.CancelledError:
            if holder:
                _kill_group(holder[0])  # the check was removed: take its process tree with it
            raise
        if returncode is None:
            return HEALTH_CRITICAL, f"Timed out ({timeout:g}s) running check"
        text = out.decode("utf-8", "replace")[:OUTPUT_LIMIT]
        if returncode == 0:
            return HEALTH_PASSING, text
        if returncode == 1:
            return HEALTH_WARNING, text
        return HEALTH_CRITICAL, text

    # alias checks ------------------------------------------------------------------------------

    def _alias_result(self, checks: list[dict[str, Any]], service_exists: bool | None) -> tuple[str, str]:
        """Consul's CheckAlias.processChecks over rendered checks (Node, CheckID, ServiceID...)."""
        d = self.definition
        status, message = HEALTH_PASSING, "No checks found."
        service_found = False
        for chk in checks:
            if chk["CheckID"] == d.id and chk.get("Node", "") in ("", (self.local.node_name if self.local is not None else "")):
                continue  # never mirror ourselves
            if d.alias_node and chk.get("Node") != d.alias_node:
                continue
            match = bool(d.alias_service) and chk.get("ServiceID") == d.alias_service
            if chk.get("ServiceID") and not match:
                continue
            if match:
                service_found = True
            if chk["Status"] in (HEALTH_CRITICAL, HEALTH_WARNING):
                status = chk["Status"]
                message = f'Aliased check "{chk["Name"]}" failing: {chk.get("Output", "")}'
                if status == HEALTH_CRITICAL:
                    break
            elif status == HEALTH_PASSING:
                message = "All checks passing."
        if d.alias_service and not service_found and not service_exists:
            status = HEALTH_CRITICAL
            message = f"Service {d.alias_service} could not be found on node {d.alias_node}"
        return status, message

    async def _alias_local(self) -> None:
        """Alias of a service (or the node) on this agent: re-evaluated on every local change."""
        local = self.local
        if local is None:
            self.report(self.definition.id, HEALTH_CRITICAL, "alias checks need the agent's local state")
            return
        changed = asyncio.Event()
        local.add_watcher(changed.set)
        try:
            while True:
                changed.clear()
                rendered = [
                    {
                        "Node": local.node_name,
                        "CheckID": cid,
                        "Name": c.definition.name,
                        "Status": c.status,
                        "Output": c.output,
                        "ServiceID": c.definition.service_id,
                    }
                    for cid, c in sorted(local.checks.items())
                ]
                exists = self.definition.alias_service in local.services
                status, output = self._alias_result(rendered, exists)
                self.handler.update(status, output)
                await changed.wait()
        finally:
            local.remove_watcher(changed.set)

    async def _alias_remote(self) -> None:
        """Alias of another node (or a service on it): a blocking Health.NodeChecks query."""
        d = self.definition
        if self.server is None:
            self.report(d.id, HEALTH_CRITICAL, "alias checks need the agent's server connection")
            return
        index = 0
        attempt = 0
        while True:
            opts = QueryOptions(min_index=index, max_wait_s=ALIAS_MAX_QUERY_S, allow_stale=True)
            try:
                meta, checks = await self.server.query("Health.NodeChecks", {"node": d.alias_node}, opts)
                exists: bool | None = None
                if d.alias_service and not any(c.get("ServiceID") == d.alias_service for c in checks):
                    _, services = await self.server.query(
                        "Catalog.NodeServices", {"node": d.alias_node}, QueryOptions(allow_stale=True)
                    )
                    exists = any(s.get("ID") == d.alias_service for s in (services or {}).get("Services", []))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                if attempt > 1:
                    self.handler.update(HEALTH_CRITICAL, f"Failure checking aliased node or service: {exc}")
                await asyncio.sleep(min(0.5 * 2 ** min(attempt, 6), 30.0))
                continue
            attempt = 0
            # Always block on the next query, so a quiet catalog cannot turn this into a hot loop.
            index = max(meta.index, 1)
            status, output = self._alias_result(list(checks), exists)
            self.handler.update(status, output)


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class CheckManager:
    """Starts, replaces and stops the runners for the checks in local state."""

    def __init__(
        self,
        report: Report,
        enable_script_checks: bool,
        enable_local_script_checks: bool,
        local: Any = None,
        server: ServerAccess | None = None,
        flap: Callable[[], FlapSettings] = FlapSettings,
    ) -> None:
        self.report = report
        self.flap = flap  # read when a check starts, so a reload applies to checks added afterwards
        self.enable_script_checks = enable_script_checks
        self.enable_local_script_checks = enable_local_script_checks
        self.local = local
        self.server = server
        self.runners: dict[str, CheckRunner] = {}
        self.rng = random.Random()
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession()

    def script_allowed(self, source: str) -> bool:
        """Consul: API-registered script checks need enable_script_checks; config-file ones
        either that or enable_local_script_checks."""
        if source == "config":
            return self.enable_script_checks or self.enable_local_script_checks
        return self.enable_script_checks

    def add(self, definition: CheckDefinition, source: str) -> None:
        self.remove(definition.id)
        runner = CheckRunner(
            definition, self.report, self.session, self.rng, self.script_allowed(source), self.local, self.server,
            self.flap(),
        )
        self.runners[definition.id] = runner
        runner.start()

    def remove(self, check_id: str) -> None:
        runner = self.runners.pop(check_id, None)
        if runner is not None:
            runner.stop()

    def ttl_touched(self, check_id: str) -> None:
        runner = self.runners.get(check_id)
        if runner is not None and runner.definition.type == "ttl":
            runner.reset_ttl()

    async def close(self) -> None:
        for cid in list(self.runners):
            self.remove(cid)
        if self.session is not None:
            await self.session.close()
            self.session = None
