"""Check runners: turn check definitions into periodic probes whose results feed local state.

Owns running the agent's health checks: TTL timers, HTTP and TCP probes, and script checks
(only when enabled), each staggered at start, never overlapping itself, bounded by its timeout,
and passed through Consul's flap thresholds (`success_before_passing`,
`failures_before_warning`, `failures_before_critical`) before the status changes. Types that
need more machinery (grpc, alias, udp, h2ping, docker, os_service) report critical with a reason
until their runners exist, rather than pretending to pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import ssl
from collections.abc import Callable

import aiohttp

from proconsul.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING, CheckDefinition

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_SCRIPT_TIMEOUT_S = 30.0
OUTPUT_LIMIT = 4096

Report = Callable[[str, str, str], None]  # (check ID, status, output)


class StatusHandler:
    """Applies the consecutive success/failure thresholds before reporting a status."""

    def __init__(self, definition: CheckDefinition, report: Report) -> None:
        self.definition = definition
        self.report = report
        self.successes = 0
        self.failures = 0

    def update(self, status: str, output: str) -> None:
        d = self.definition
        if status == HEALTH_PASSING:
            self.successes += 1
            self.failures = 0
            if self.successes >= d.success_before_passing:
                self.report(d.id, status, output)
            return
        self.failures += 1
        self.successes = 0
        if status == HEALTH_CRITICAL and d.failures_before_warning and d.failures_before_critical:
            if self.failures >= d.failures_before_critical:
                self.report(d.id, HEALTH_CRITICAL, output)
            elif self.failures >= d.failures_before_warning:
                self.report(d.id, HEALTH_WARNING, output)
            return
        threshold = d.failures_before_critical if status == HEALTH_CRITICAL else d.failures_before_warning
        if self.failures >= threshold:
            self.report(d.id, status, output)


class CheckRunner:
    """One running check. `start()` schedules it; `stop()` cancels it."""

    def __init__(
        self,
        definition: CheckDefinition,
        report: Report,
        session: aiohttp.ClientSession | None,
        rng: random.Random,
        script_allowed: bool,
    ) -> None:
        self.definition = definition
        self.report = report
        self.handler = StatusHandler(definition, report)
        self.session = session
        self.rng = rng
        self.script_allowed = script_allowed
        self.task: asyncio.Task[None] | None = None
        self._ttl_handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        d = self.definition
        if d.type == "maintenance":
            return  # a maintenance check is critical by definition and runs nothing
        if d.type == "ttl":
            self.reset_ttl()
            return
        if d.type in ("http", "tcp", "script"):
            if d.type == "script" and not self.script_allowed:
                self.report(d.id, HEALTH_CRITICAL, "script checks are disabled on this agent")
                return
            self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"check:{d.id}")
            return
        if d.type:
            self.report(d.id, HEALTH_CRITICAL, f"{d.type} checks are not supported by this agent yet")

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
        d = self.definition
        # Stagger the first run over one interval so that many checks do not fire together.
        await asyncio.sleep(self.rng.uniform(0, min(d.interval_s, 1.0)))
        while True:
            try:
                status, output = await self._probe_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a probe must never kill its loop
                status, output = HEALTH_CRITICAL, f"check failed: {exc}"
            self.handler.update(status, output[:OUTPUT_LIMIT])
            await asyncio.sleep(d.interval_s)

    async def _probe_once(self) -> tuple[str, str]:
        d = self.definition
        if d.type == "http":
            return await self._http()
        if d.type == "tcp":
            return await self._tcp()
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
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return HEALTH_CRITICAL, f"{method} {d.http}: {exc}"

    async def _tcp(self) -> tuple[str, str]:
        d = self.definition
        timeout = d.timeout_s or DEFAULT_TIMEOUT_S
        host, _, port = d.tcp.rpartition(":")
        host = host.strip("[]")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
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

    async def _script(self) -> tuple[str, str]:
        d = self.definition
        timeout = d.timeout_s or DEFAULT_SCRIPT_TIMEOUT_S
        proc = await asyncio.create_subprocess_exec(
            *d.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout kills the whole tree
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
            return HEALTH_CRITICAL, f"Timed out ({timeout:g}s) running check"
        text = out.decode("utf-8", "replace")[:OUTPUT_LIMIT]
        if proc.returncode == 0:
            return HEALTH_PASSING, text
        if proc.returncode == 1:
            return HEALTH_WARNING, text
        return HEALTH_CRITICAL, text


class CheckManager:
    """Starts, replaces and stops the runners for the checks in local state."""

    def __init__(self, report: Report, enable_script_checks: bool, enable_local_script_checks: bool) -> None:
        self.report = report
        self.enable_script_checks = enable_script_checks
        self.enable_local_script_checks = enable_local_script_checks
        self.runners: dict[str, CheckRunner] = {}
        self.rng = random.Random()
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession()

    def add(self, definition: CheckDefinition, source: str) -> None:
        self.remove(definition.id)
        allowed = self.enable_script_checks or (self.enable_local_script_checks and source == "config")
        runner = CheckRunner(definition, self.report, self.session, self.rng, allowed)
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
