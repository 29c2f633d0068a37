"""This agent's own services and checks, their persistence, and anti-entropy to the catalog.

Owns the agent's local view (what the operator registered here through the agent API or config
files), the check statuses the check runners report, persistence of API registrations in
`data_dir` so they survive restarts, and the anti-entropy loop that makes the catalog equal to
this view: changes are pushed at once, and a periodic full sync (interval scaled with the
cluster size, with jitter) removes catalog entries for this node that the agent does not know
and restores the ones that went missing. The agent is authoritative for its own node.

Sync failures (no leader) are logged and retried with back-off; local state is never lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from proconsul import safe_json
from proconsul.durations import format_duration
from proconsul.rpc_api import CALLER_TOKEN, QueryOptions, RPCError, ServerAccess
from proconsul.state import commands, protection
from proconsul.state.records import HealthCheck, Node, ServiceInstance
from proconsul.state.store import StoreError
from proconsul.structs import (
    HEALTH_CRITICAL,
    SERF_CHECK_ID,
    CheckDefinition,
    ServiceDefinition,
    decode_check,
    decode_service,
)
from proconsul.tasks import wait_event

logger = logging.getLogger(__name__)

# Consul's check output limit (check_output_max_size): longer output is truncated.
DEFAULT_OUTPUT_MAX_SIZE = 4096
# The service ID the leader registers for the servers; anti-entropy never touches it.
CONSUL_SERVICE_ID = "consul"


class _Synced:
    """Per-entry sync state: which version of the entry the catalog is known to hold.

    Every change the catalog must see bumps `revision`; a sync captures the revision when it
    builds its request and, once the server acknowledged it, records that revision as synced.
    A change made while the request was in flight bumped the revision past the captured one,
    so the entry stays out of sync and the next round sends it (a plain "in sync" flag set
    after the RPC returned would swallow that change until the next full sync).
    """

    revision: int = 0
    synced_revision: int = -1

    @property
    def in_sync(self) -> bool:
        return self.synced_revision == self.revision

    @in_sync.setter
    def in_sync(self, value: bool) -> None:
        if value:
            self.synced_revision = self.revision
        else:
            # A new revision, not just a cleared flag: a sync in flight must not mark it synced.
            self.revision += 1


@dataclass
class LocalService(_Synced):
    definition: ServiceDefinition
    source: str = "api"  # "api" (persisted) | "config" (re-read on reload)
    token: str = ""


@dataclass
class LocalCheck(_Synced):
    definition: CheckDefinition
    status: str
    output: str = ""
    source: str = "api"
    token: str = ""
    # Output-only changes are deferred (check_update_interval); status changes sync at once.
    deferred_output: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # Monotonic time the check turned critical (None when it is not), for the reaper.
    critical_since: float | None = None
    # The pending write-back of an output-only change.
    defer_handle: asyncio.TimerHandle | None = None


def sync_interval_s(cluster_size: int, base_s: float = 60.0) -> float:
    """Consul's scaling: 1m up to 128 nodes, then one more base interval per doubling."""
    if cluster_size <= 128:
        return base_s
    return base_s * (1 + math.ceil(math.log2(cluster_size / 128)))


class LocalState:
    """The agent's services and checks, with change notification and persistence.

    Callbacks (each optional, passed when built):
        on_change: something needs syncing to the catalog (the anti-entropy loop's trigger).
        on_check_added, on_check_removed: a check was added (or replaced) / removed, so its
            runner starts or stops (the check manager).
        check_update_interval: Consul's check_update_interval in seconds, read at each change so
            that a reload applies: output-only changes are written back after interval/2 plus a
            random stagger of up to one interval; 0 writes them at once.
    """

    def __init__(
        self,
        node_name: str,
        node_id: str,
        address: str,
        datacenter: str,
        node_meta: dict[str, str],
        data_dir: str | None,
        output_max_size: int = DEFAULT_OUTPUT_MAX_SIZE,
        *,
        on_change: Callable[[], None] | None = None,
        on_check_added: Callable[[LocalCheck], None] | None = None,
        on_check_removed: Callable[[str], None] | None = None,
        check_update_interval: Callable[[], float] | None = None,
    ) -> None:
        self.node_name = node_name
        self.node_id = node_id
        self.address = address
        self.datacenter = datacenter
        self.node_meta = dict(node_meta)
        self.data_dir = data_dir
        self.output_max_size = output_max_size
        self.services: dict[str, LocalService] = {}
        self.checks: dict[str, LocalCheck] = {}
        # The node record's sync state, as `_Synced` keeps it for services and checks.
        self._node_revision = 0
        self._node_synced_revision = -1
        # Removed locally but maybe still in the catalog: deregistered by the next sync.
        self.deleted_services: set[str] = set()
        self.deleted_checks: set[str] = set()
        self._on_change: Callable[[], None] = on_change or (lambda: None)
        # Bumped on every local change; `wait_for_change` parks hash-blocking reads on it.
        self.generation = 0
        self._change_event = asyncio.Event()
        self._on_check_added: Callable[[LocalCheck], None] = on_check_added or (lambda c: None)
        self._on_check_removed: Callable[[str], None] = on_check_removed or (lambda cid: None)
        self._check_update_interval: Callable[[], float] = check_update_interval or (lambda: 300.0)
        self.rng = random.Random()
        self.clock: Callable[[], float] = time.monotonic
        # Called on any change of a service, a check or a check's result (alias checks).
        self._watchers: list[Callable[[], None]] = []

    @property
    def node_in_sync(self) -> bool:
        return self._node_synced_revision == self._node_revision

    @node_in_sync.setter
    def node_in_sync(self, value: bool) -> None:
        if value:
            self._node_synced_revision = self._node_revision
        else:
            self._node_revision += 1

    def add_watcher(self, callback: Callable[[], None]) -> None:
        self._watchers.append(callback)

    def remove_watcher(self, callback: Callable[[], None]) -> None:
        if callback in self._watchers:
            self._watchers.remove(callback)

    def _notify_watchers(self) -> None:
        for callback in list(self._watchers):
            callback()

    # ----------------------------------------------------------------------------- mutation

    def set_node_meta(self, meta: dict[str, str]) -> None:
        if meta != self.node_meta:
            self.node_meta = dict(meta)
            self.node_in_sync = False
            self._changed()

    def add_service(
        self,
        definition: ServiceDefinition,
        source: str = "api",
        token: str = "",
        replace_existing_checks: bool = False,
        persist: bool = True,
    ) -> None:
        """Register or update a service and its checks (kept status when a check is unchanged)."""
        previous = self.services.get(definition.id)
        self.services[definition.id] = LocalService(definition, source, token)
        self.deleted_services.discard(definition.id)
        new_ids = {c.id for c in definition.checks}
        if replace_existing_checks and previous is not None:
            for cid, chk in list(self.checks.items()):
                if chk.definition.service_id == definition.id and cid not in new_ids:
                    self.remove_check(cid, notify=False)
        for check in definition.checks:
            self.add_check(check, source, token, notify=False, persist=persist)
        if persist and source == "api":
            self._persist("services", definition.id, {"definition": _service_to_json(definition), "token": token})
        self._notify_watchers()
        self._changed()

    def remove_service(self, service_id: str, notify: bool = True) -> bool:
        if service_id not in self.services:
            return False
        del self.services[service_id]
        self.deleted_services.add(service_id)
        for cid, chk in list(self.checks.items()):
            if chk.definition.service_id == service_id:
                # Stays in deleted_checks although deregistering the service removes its checks
                # too: the service may be registered again, without this check, before the
                # deregistration is sent, and then only the check's own deregistration removes it.
                self.remove_check(cid, notify=False)
        self._unpersist("services", service_id)
        self._notify_watchers()
        if notify:
            self._changed()
        return True

    def add_check(
        self,
        definition: CheckDefinition,
        source: str = "api",
        token: str = "",
        notify: bool = True,
        persist: bool = True,
    ) -> None:
        if definition.service_id and definition.service_id not in self.services:
            raise KeyError(f'ServiceID "{definition.service_id}" does not exist')
        previous = self.checks.get(definition.id)
        status = definition.status or HEALTH_CRITICAL
        output = ""
        if previous is not None and previous.definition == definition:
            status, output = previous.status, previous.output
        if previous is not None:
            self._on_check_removed(definition.id)
            _cancel_defer(previous)
        check = LocalCheck(definition, status, output, source, token)
        if status == HEALTH_CRITICAL:
            kept = previous.critical_since if previous is not None and previous.status == status else None
            check.critical_since = kept if kept is not None else self.clock()
        self.checks[definition.id] = check
        self.deleted_checks.discard(definition.id)
        # A service's own checks are persisted with the service; maintenance checks stand alone.
        if persist and source == "api" and (not definition.service_id or definition.type == "maintenance"):
            self._persist("checks", definition.id, {"definition": _check_to_json(definition), "token": token})
        self._on_check_added(check)
        self._notify_watchers()
        if notify:
            self._changed()

    def remove_check(self, check_id: str, notify: bool = True) -> bool:
        if check_id not in self.checks:
            return False
        _cancel_defer(self.checks.pop(check_id))
        self.deleted_checks.add(check_id)
        self._on_check_removed(check_id)
        self._unpersist("checks", check_id)
        self._notify_watchers()
        if notify:
            self._changed()
        return True

    def update_check(self, check_id: str, status: str, output: str) -> None:
        """Record a check result; a status change syncs at once, output-only changes later."""
        check = self.checks.get(check_id)
        if check is None:
            return
        if len(output) > self.output_max_size:
            output = output[: self.output_max_size]
        if check.status == status and check.output == output:
            return
        status_changed = check.status != status
        check.status, check.output = status, output
        if status_changed:
            check.critical_since = self.clock() if status == HEALTH_CRITICAL else None
        interval = self._check_update_interval()
        if status_changed or interval <= 0:
            _cancel_defer(check)
            check.in_sync = False
            self._changed()
        elif not check.deferred_output:
            check.deferred_output = True
            delay = interval / 2 + self.rng.uniform(0, interval)
            try:
                check.defer_handle = asyncio.get_running_loop().call_later(delay, self._write_back, check_id)
            except RuntimeError:  # no event loop (unit tests): the next flush writes it
                check.defer_handle = None
        self._notify_watchers()

    def _write_back(self, check_id: str) -> None:
        check = self.checks.get(check_id)
        if check is None or not check.deferred_output:
            return
        check.deferred_output = False
        check.defer_handle = None
        check.in_sync = False
        self._changed()

    def flush_deferred_output(self) -> None:
        """Write back every deferred output change now."""
        changed = False
        for check in self.checks.values():
            if check.deferred_output:
                _cancel_defer(check)
                check.in_sync = False
                changed = True
        if changed:
            self._changed()

    def critical_services_to_reap(self, min_timeout_s: float) -> list[str]:
        """Services with a check critical for longer than its deregister_critical_service_after.

        As Consul, a timeout below `min_timeout_s` (check_deregister_interval_min, 1m) counts as
        that minimum.
        """
        now = self.clock()
        out: set[str] = set()
        for check in self.checks.values():
            d = check.definition
            if not d.service_id or not d.deregister_critical_service_after_s or check.critical_since is None:
                continue
            if check.status != HEALTH_CRITICAL:
                continue
            timeout = max(d.deregister_critical_service_after_s, min_timeout_s)
            if now - check.critical_since > timeout:
                out.add(d.service_id)
        return sorted(out)

    async def run_reaper(self, interval_s: Callable[[], float], min_timeout_s: Callable[[], float]) -> None:
        """Consul's reapServices loop: every check_reap_interval (30s), deregister the services
        whose checks stayed critical past deregister_critical_service_after."""
        while True:
            await asyncio.sleep(interval_s())
            for sid in self.critical_services_to_reap(min_timeout_s()):
                if sid in self.services:
                    logger.info("agent: check for service %r critical for too long; deregistering the service", sid)
                    self.remove_service(sid)

    # ------------------------------------------------------------------------------- records

    def node_record(self) -> Node:
        tagged = {"lan": self.address, "lan_ipv4": self.address, "wan": self.address, "wan_ipv4": self.address}
        meta = dict(self.node_meta)
        meta.setdefault("consul-network-segment", "")
        return Node(
            node=self.node_name,
            id=self.node_id,
            address=self.address,
            datacenter=self.datacenter,
            tagged_addresses=tagged,
            meta=meta,
        )

    def _changed(self) -> None:
        self.generation += 1
        event, self._change_event = self._change_event, asyncio.Event()
        event.set()
        self._on_change()

    async def wait_for_change(self, timeout_s: float) -> bool:
        """Wait until the next local change (True) or `timeout_s` (False)."""
        return await wait_event(self._change_event, timeout_s)

    def service_record(self, service_id: str) -> ServiceInstance:
        d = self.services[service_id].definition
        return ServiceInstance(
            node=self.node_name,
            id=d.id,
            service=d.name,
            tags=d.tags,
            address=d.address,
            tagged_addresses=d.tagged_addresses,
            meta=d.meta,
            port=d.port,
            weights=d.weights,
            enable_tag_override=d.enable_tag_override,
            kind=d.kind,
            extra={k: v for k, v in d.extra.items() if k in ("Proxy", "Connect")}
            | protection.extra_for(d.protection_threshold),
        )

    def check_record(self, check_id: str) -> HealthCheck:
        c = self.checks[check_id]
        d = c.definition
        svc = self.services.get(d.service_id) if d.service_id else None
        return HealthCheck(
            node=self.node_name,
            check_id=d.id,
            name=d.name,
            status=c.status,
            notes=d.notes,
            output=c.output,
            service_id=d.service_id,
            service_name=svc.definition.name if svc else "",
            service_tags=svc.definition.tags if svc else (),
            type=d.type,
            interval=format_duration(d.interval_s) if d.interval_s else "",
            timeout=format_duration(d.timeout_s) if d.timeout_s else "",
        )

    # --------------------------------------------------------------------------- persistence

    def _path(self, kind: str, item_id: str) -> str | None:
        if not self.data_dir:
            return None
        digest = hashlib.sha256(item_id.encode()).hexdigest()[:32]
        return os.path.join(self.data_dir, kind, digest)

    def _persist(self, kind: str, item_id: str, payload: dict[str, Any]) -> None:
        path = self._path(kind, item_id)
        if path is None:
            return
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = path + ".tmp"
        # 0600 as Consul writes them: a registration can carry a token.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)  # an older .tmp left with wider bits keeps them through O_CREAT
            json.dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _unpersist(self, kind: str, item_id: str) -> None:
        path = self._path(kind, item_id)
        if path and os.path.exists(path):
            os.unlink(path)

    def load_persisted(self) -> list[str]:
        """Restore API-registered services and checks from data_dir; returns warnings."""
        warnings: list[str] = []
        if not self.data_dir:
            return warnings
        for kind in ("services", "checks"):
            folder = os.path.join(self.data_dir, kind)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if name.endswith(".tmp"):
                    continue
                path = os.path.join(folder, name)
                try:
                    with open(path, encoding="utf-8") as fh:
                        # Checked like an HTTP body: an entry written before that check (e.g. a
                        # lone surrogate) would otherwise load and fail every sync and read.
                        payload = safe_json.check_value(json.load(fh))
                    if not isinstance(payload, dict) or not isinstance(payload.get("definition"), dict):
                        raise ValueError("not a persisted definition object")
                    if kind == "services":
                        definition = decode_service(payload["definition"], strict=False)
                        self.add_service(definition, "api", payload.get("token", ""), persist=False)
                    elif payload["definition"].get("Maintenance"):
                        raw = payload["definition"]
                        check = CheckDefinition(
                            id=raw["ID"], name=raw["Name"], notes=raw.get("Notes", ""),
                            service_id=raw.get("ServiceID", ""), status=HEALTH_CRITICAL, type="maintenance",
                        )
                        self.add_check(check, "api", payload.get("token", ""), persist=False)
                    else:
                        check = decode_check(payload["definition"], strict=False)
                        self.add_check(check, "api", payload.get("token", ""), persist=False)
                # Any damage to one file skips that entry only; the rest load and keep syncing.
                except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                    warnings.append(f"skipping persisted {kind[:-1]} {path}: {exc}")
        return warnings

    # ---------------------------------------------------------------------------- anti-entropy

    async def sync_full(self, server: ServerAccess) -> None:
        """Make the catalog's view of this node equal to the local state."""

        _, state = await server.query("Internal.NodeState", {"node": self.node_name}, QueryOptions())
        node = Node.from_wire(state["node"]) if state["node"] is not None else None
        remote_services = {s.id: s for s in (ServiceInstance.from_wire(w) for w in state["services"])}
        remote_checks = {c.check_id: c for c in (HealthCheck.from_wire(w) for w in state["checks"])}
        want_node = self.node_record()
        if node is None or (
            node.address != want_node.address
            or node.id != want_node.id
            or dict(node.meta) != dict(want_node.meta)
            or dict(node.tagged_addresses) != dict(want_node.tagged_addresses)
        ):
            self.node_in_sync = False
        for sid in sorted(remote_services):
            if sid == CONSUL_SERVICE_ID and sid not in self.services:
                continue
            if sid not in self.services:
                await server.write(commands.Deregister(self.node_name, service_id=sid))
        for cid in sorted(remote_checks):
            if cid == SERF_CHECK_ID or cid in self.checks:
                continue
            if remote_checks[cid].service_id == CONSUL_SERVICE_ID:
                continue
            await server.write(commands.Deregister(self.node_name, check_id=cid))
        for sid, local in self.services.items():
            remote = remote_services.get(sid)
            want = self.service_record(sid)
            if remote is None or _strip(remote) != _strip(want, remote):
                local.in_sync = False
        for cid, check in self.checks.items():
            remote_check = remote_checks.get(cid)
            if remote_check is None or _strip(remote_check) != _strip(self.check_record(cid)):
                check.in_sync = False
        await self.sync_changes(server)

    async def sync_changes(self, server: ServerAccess) -> None:
        """Push every out-of-sync service, check and the node itself to the catalog.

        Each entry is marked synced only for the revision captured when its request was built
        (and only if it is still the same entry): a change that lands while the RPC is in
        flight leaves it out of sync for the next round.
        """
        if not self.node_in_sync:
            node_revision = self._node_revision
            await _write(server, commands.Register(self.node_record()), None, "Node info")
            self._node_synced_revision = node_revision
        for sid in sorted(self.deleted_services):
            await server.write(commands.Deregister(self.node_name, service_id=sid))
            # Re-registered meanwhile: the registration is pending in self.services, and a
            # second removal after it left the catalog as the deregistration just made it.
            self.deleted_services.discard(sid)
        for cid in sorted(self.deleted_checks):
            await server.write(commands.Deregister(self.node_name, check_id=cid))
            self.deleted_checks.discard(cid)
        for sid in sorted(self.services):
            local = self.services.get(sid)
            if local is None or local.in_sync:
                continue
            sent_service = (local, local.revision)
            own = [
                (self.checks[cid], self.checks[cid].revision)
                for cid in sorted(self.checks)
                if self.checks[cid].definition.service_id == sid
            ]
            own_checks = tuple(self.check_record(chk.definition.id) for chk, _ in own)
            # As Consul: a service syncs with the token it was registered with, else the agent's.
            register = commands.Register(self.node_record(), self.service_record(sid), own_checks)
            await _write(server, register, local.token or None, f"Service {sid!r}")
            self._mark_synced(self.services.get(sid), *sent_service)
            for chk, revision in own:
                self._mark_synced(self.checks.get(chk.definition.id), chk, revision)
        for cid in sorted(self.checks):
            check = self.checks.get(cid)
            if check is None or check.in_sync:
                continue
            revision = check.revision
            register = commands.Register(self.node_record(), None, (self.check_record(cid),))
            await _write(server, register, check.token or None, f"Check {cid!r}")
            self._mark_synced(self.checks.get(cid), check, revision)

    @staticmethod
    def _mark_synced(current: _Synced | None, sent: _Synced, revision: int) -> None:
        """Record that `sent` at `revision` reached the catalog, if it is still what we hold."""
        if current is sent and sent.revision == revision:
            sent.synced_revision = revision


async def _write(server: ServerAccess, command: commands.Command, token: str | None, what: str) -> None:
    """One anti-entropy write with `token` (None: the agent token). A refusal by the servers'
    ACLs is logged and the entry counts as synced until the next full sync, as Consul does, so
    one entry the token may not write does not hold back the others."""
    carried = CALLER_TOKEN.set(token)
    try:
        await server.write(command)
    except RPCError as exc:
        if not str(exc).startswith(("Permission denied", "ACL not found")):
            raise
        logger.warning("agent: %s update blocked by ACLs: %s", what, exc)
    finally:
        CALLER_TOKEN.reset(carried)


def _cancel_defer(check: LocalCheck) -> None:
    check.deferred_output = False
    if check.defer_handle is not None:
        check.defer_handle.cancel()
        check.defer_handle = None


def _strip(record: Any, like: Any = None) -> Any:
    """A record without its indexes, for comparing the local and the catalog's view."""
    out = replace(record, create_index=0, modify_index=0)
    if isinstance(out, ServiceInstance) and like is not None and out.enable_tag_override:
        # With enable_tag_override, tags edited in the catalog are not reverted.
        out = replace(out, tags=like.tags)
    return out


class AntiEntropy:
    """Runs the sync loop: immediate partial syncs on change, periodic full syncs with jitter.

    `trigger` is what the local state's `on_change` should call (and a leader appearing).
    """

    def __init__(
        self,
        local: LocalState,
        server: ServerAccess,
        rng: random.Random | None = None,
        *,
        base_interval: Callable[[], float] | None = None,
        cluster_size: Callable[[], int] | None = None,
    ) -> None:
        self.local = local
        self.server = server
        self.rng = rng or random.Random()
        self._trigger = asyncio.Event()
        # The LAN pool's size, which stretches the full-sync interval past 128 members.
        self.cluster_size: Callable[[], int] = cluster_size or (lambda: 1)
        # The full-sync base interval before cluster-size scaling: Consul's hidden `ae_interval`
        # (1m); tests shorten it. Read at each sync, so that a reload applies.
        self.base_interval: Callable[[], float] = base_interval or (lambda: 60.0)
        self.synced = asyncio.Event()  # set after the first successful full sync

    def trigger(self) -> None:
        self._trigger.set()

    async def run(self) -> None:
        backoff = 0.5
        next_full = 0.0
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before syncing, never after: a change made while a sync is in flight must
            # leave the trigger set so the loop goes round again (a lost wake-up otherwise delays
            # it to the next full sync).
            self._trigger.clear()
            try:
                if loop.time() >= next_full:
                    await self.local.sync_full(self.server)
                    interval = sync_interval_s(self.cluster_size(), self.base_interval())
                    next_full = loop.time() + interval + self.rng.uniform(0, interval / 16)
                    self.synced.set()
                    logger.debug("anti-entropy: full sync done; next in %.0fs", next_full - loop.time())
                else:
                    await self.local.sync_changes(self.server)
                backoff = 0.5
            except Exception as exc:  # the loop must outlive any one failure
                if isinstance(exc, (RPCError, StoreError)):
                    logger.warning("anti-entropy: sync failed, retrying in %.1fs: %s", backoff, exc)
                else:
                    logger.exception("anti-entropy: unexpected error, retrying in %.1fs", backoff)
                # A trigger (a local change, or a leader becoming known) cuts the wait short.
                await wait_event(self._trigger, backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            await wait_event(self._trigger, next_full - loop.time())


def _service_to_json(d: ServiceDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": d.id,
        "Name": d.name,
        "Tags": list(d.tags),
        "Address": d.address,
        "Meta": dict(d.meta),
        "Port": d.port,
        "Kind": d.kind,
        "Weights": {"Passing": d.weights[0], "Warning": d.weights[1]},
        "EnableTagOverride": d.enable_tag_override,
        "Checks": [_check_to_json(c) for c in d.checks],
    }
    if d.tagged_addresses:
        out["TaggedAddresses"] = dict(d.tagged_addresses)
    if d.protection_threshold:
        out["ProtectionThreshold"] = d.protection_threshold
    return out


def _check_to_json(c: CheckDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {"ID": c.id, "Name": c.name}
    if c.type == "maintenance":
        out["Maintenance"] = True
    for attr, key in (
        ("service_id", "ServiceID"),
        ("notes", "Notes"),
        ("status", "Status"),
        ("http", "HTTP"),
        ("method", "Method"),
        ("body", "Body"),
        ("tcp", "TCP"),
        ("udp", "UDP"),
        ("grpc", "GRPC"),
        ("alias_node", "AliasNode"),
        ("alias_service", "AliasService"),
        ("tls_server_name", "TLSServerName"),
        ("h2ping", "H2PING"),
        ("os_service", "OSService"),
        ("docker_container_id", "DockerContainerID"),
    ):
        if getattr(c, attr):
            out[key] = getattr(c, attr)
    for attr, key in (
        ("interval_s", "Interval"),
        ("timeout_s", "Timeout"),
        ("ttl_s", "TTL"),
        ("deregister_critical_service_after_s", "DeregisterCriticalServiceAfter"),
    ):
        if getattr(c, attr):
            out[key] = format_duration(getattr(c, attr))
    for attr, key in (
        ("tls_skip_verify", "TLSSkipVerify"),
        ("disable_redirects", "DisableRedirects"),
        ("tcp_use_tls", "TCPUseTLS"),
        ("grpc_use_tls", "GRPCUseTLS"),
        ("success_before_passing", "SuccessBeforePassing"),
        ("failures_before_warning", "FailuresBeforeWarning"),
        ("failures_before_critical", "FailuresBeforeCritical"),
        ("output_max_size", "OutputMaxSize"),
    ):
        if getattr(c, attr):
            out[key] = getattr(c, attr)
    if c.flap_detection is not None:
        out["FlapDetection"] = c.flap_detection
    if c.args:
        out["Args"] = list(c.args)
    if c.header:
        out["Header"] = {k: list(v) for k, v in c.header.items()}
    return out
