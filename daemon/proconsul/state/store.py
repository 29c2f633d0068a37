"""The state store: catalog, KV and session tables, their indexes, watches and snapshots.

Owns the replicated data and Consul's index semantics. Every mutation happens at one log index
(the Raft index), passed in by the FSM; `CreateIndex`/`ModifyIndex`/`LockIndex` derive from it.
Reads return immutable records plus the index a blocking query compares against, following
Consul's state store: a KV read answers the entry's ModifyIndex, a miss or a prefix read the
highest index of the entries and tombstones below it, catalog reads the per-service or per-table
index.

Watches are one-shot callbacks registered on topics, as Consul's memdb watch sets are on index
entries: a table, a service name, a node name or a KV prefix, so a blocking read is woken only by
a change to what it reads (a health read of `web` by writes touching `web`, a read of one key by
writes under its prefix). A write marks the topics it touched; at the end of the command the
store looks those topics up and fires what is parked there, so the cost of a write does not grow
with the number of parked watches. The store never awaits; the asyncio side turns callbacks into
events.

Services are also indexed by name (name -> (node, service ID)), so reading one service costs what
it returns, not a scan of every instance.

Not thread-safe: the agent's event loop is the only caller.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from proconsul.acl.records import ACLPolicy, ACLRole, ACLToken
from proconsul.coordinate import Coordinate
from proconsul.state import prepared_query as pq
from proconsul.state.records import DirEntry, HealthCheck, Node, PreparedQuery, ServiceInstance, Session
from proconsul.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING

TABLES = (
    "nodes", "services", "checks", "kvs", "tombstones", "sessions", "coordinates", "prepared_queries",
    "acl_tokens", "acl_policies", "acl_roles",
)


class StoreError(Exception):
    """A command was rejected by the store's rules; the message is shown to the client."""


# Watch topics: ("t", table), ("s", service name), ("n", node name), ("k", KV prefix).
Topic = tuple[str, str]


@dataclass(frozen=True, slots=True)
class WatchSet:
    """What a blocking read waits on: whole tables, KV keys under a prefix (instead of the KV
    tables), services and nodes by name. See `Store.watch`."""

    tables: tuple[str, ...] = ()
    kv_prefix: str | None = None
    services: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()


class _Watch:
    __slots__ = ("topics", "fire", "active")

    def __init__(self, topics: tuple[Topic, ...], fire: Callable[[], None]) -> None:
        self.topics = topics
        self.fire = fire
        self.active = True


class Store:
    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, dict[str, ServiceInstance]] = {}  # node -> service ID -> instance
        self.checks: dict[str, dict[str, HealthCheck]] = {}  # node -> check ID -> check
        self.kv: dict[str, DirEntry] = {}
        self._kv_sorted: list[str] = []
        self.tombstones: dict[str, int] = {}  # deleted key -> index of deletion
        self.sessions: dict[str, Session] = {}
        # node -> segment -> network coordinate (Consul's coordinates table; "" is the LAN segment).
        self.coordinates: dict[str, dict[str, Coordinate]] = {}
        self.prepared_queries: dict[str, PreparedQuery] = {}  # ID -> query
        # The operator's autopilot configuration (Consul's autopilot-config table): None until
        # first set, then (fields by Consul's names, CreateIndex, ModifyIndex).
        self.autopilot_config: tuple[dict[str, Any], int, int] | None = None
        # ACL records (state/acl.py applies their commands): tokens by AccessorID with a SecretID
        # index, policies and roles by ID, and the index of the last bootstrap (0 = never).
        self.acl_tokens: dict[str, ACLToken] = {}
        self.acl_secrets: dict[str, str] = {}
        self.acl_policies: dict[str, ACLPolicy] = {}
        self.acl_roles: dict[str, ACLRole] = {}
        self.acl_bootstrap_index = 0
        self.table_index: dict[str, int] = {t: 0 for t in TABLES}
        self.service_index: dict[str, int] = {}  # service name -> last index touching it
        self.last_index = 0
        # Added to each Raft index before it reaches the store (see FSM: a restored snapshot
        # can carry indexes above the log's, and X-Consul-Index must never go backwards).
        self.index_offset = 0
        # Parked watches by topic, and how many watch each KV prefix length (a changed key is
        # matched against its own prefixes of those lengths only).
        self._watches: dict[Topic, dict[_Watch, None]] = {}
        self._watch_total = 0
        self._kv_prefix_lens: dict[int, int] = {}
        # service name -> {(node, service ID)}: the catalog's by-name index.
        self._by_service: dict[str, dict[tuple[str, str], None]] = {}
        # /v1/catalog/services without filters, kept while the services table index stays.
        self._services_cache: tuple[int, dict[str, list[str]]] | None = None
        # Changes accumulated while a command applies; watches fire once at the end.
        self._dirty_tables: set[str] = set()
        self._dirty_keys: list[str] = []
        self._dirty_services: set[str] = set()
        self._dirty_nodes: set[str] = set()
        self._dirty_all = False
        self._undo: list[Callable[[], None]] | None = None
        # Lock-delay bookkeeping, as Consul keeps it: not replicated state but each server's own
        # memory of when released locks may be taken again. Time is injected (monotonic seconds;
        # without a clock, as in tests and decoded snapshots, it stands still at 0).
        self.now: Callable[[], float] = now or (lambda: 0.0)
        self.lock_delays: dict[str, float] = {}

    # ------------------------------------------------------------------------------- watches

    def watch(
        self,
        tables: Iterable[str],
        fire: Callable[[], None],
        kv_prefix: str | None = None,
        services: Iterable[str] = (),
        nodes: Iterable[str] = (),
    ) -> _Watch:
        """Register a one-shot callback for the next change to any of `tables`, `services` (by
        name) or `nodes` (by name).

        With `kv_prefix`, the `kvs`/`tombstones` tables are watched through the prefix only: a
        KV change fires it when a changed key starts with the prefix. The callback runs
        synchronously at the end of the applying command.
        """
        topics: list[Topic] = []
        for t in tables:
            if kv_prefix is not None and t in ("kvs", "tombstones"):
                continue
            topics.append(("t", t))
        if kv_prefix is not None:
            topics.append(("k", kv_prefix))
            n = len(kv_prefix)
            self._kv_prefix_lens[n] = self._kv_prefix_lens.get(n, 0) + 1
        topics.extend(("s", name) for name in services)
        topics.extend(("n", name) for name in nodes)
        w = _Watch(tuple(dict.fromkeys(topics)), fire)
        for topic in w.topics:
            self._watches.setdefault(topic, {})[w] = None
        self._watch_total += 1
        return w

    def watch_set(self, ws: WatchSet, fire: Callable[[], None]) -> _Watch:
        return self.watch(ws.tables, fire, kv_prefix=ws.kv_prefix, services=ws.services, nodes=ws.nodes)

    def unwatch(self, w: _Watch) -> None:
        if w.active:
            self._drop(w)

    def _drop(self, w: _Watch) -> None:
        w.active = False
        self._watch_total -= 1
        for topic in w.topics:
            parked = self._watches.get(topic)
            if parked is not None:
                parked.pop(w, None)
                if not parked:
                    del self._watches[topic]
            if topic[0] == "k":
                n = len(topic[1])
                left = self._kv_prefix_lens.get(n, 0) - 1
                if left > 0:
                    self._kv_prefix_lens[n] = left
                else:
                    self._kv_prefix_lens.pop(n, None)

    def watch_count(self) -> int:
        """Watches registered and not yet fired or removed: parked blocking reads."""
        return self._watch_total

    def touch(self, table: str, index: int) -> None:
        """Mark `table` changed at `index` (undone with the transaction; watches fire at `finish`)."""
        if self._undo is not None:
            old = self.table_index[table]
            self._undo.append(lambda: self.table_index.__setitem__(table, old))
        self.table_index[table] = index
        self._dirty_tables.add(table)

    def _touch_service(self, name: str, index: int) -> None:
        self._log_undo_dict(self.service_index, name)
        self.service_index[name] = index
        self._dirty_services.add(name)

    def _touch_node(self, name: str) -> None:
        self._dirty_nodes.add(name)

    def finish(self, index: int) -> None:
        """Close one applied command: advance the index and fire the watches on what it touched.

        The cost is that of the touched topics and the watches they fire, not of every parked
        watch."""
        if index > self.last_index:
            self.last_index = index
        if not self._watches:
            # Nothing parked, so nothing to fire: forget what was touched in place (no fresh
            # containers, no topic lookups). A watch registered later is not fired by earlier
            # changes either way.
            self._dirty_tables.clear()
            self._dirty_keys.clear()
            self._dirty_services.clear()
            self._dirty_nodes.clear()
            self._dirty_all = False
            return
        tables, keys = self._dirty_tables, self._dirty_keys
        services, nodes, everything = self._dirty_services, self._dirty_nodes, self._dirty_all
        # Fresh containers for what was touched only (a KV write touches no service or node).
        if tables:
            self._dirty_tables = set()
        if keys:
            self._dirty_keys = []
        if services:
            self._dirty_services = set()
        if nodes:
            self._dirty_nodes = set()
        self._dirty_all = False
        if everything:
            fired = {w: None for parked in self._watches.values() for w in parked}
        else:
            if not (tables or services or nodes or keys):
                return
            fired = {}
            watches = self._watches
            for table in tables:
                fired.update(watches.get(("t", table), {}))
            for name in services:
                fired.update(watches.get(("s", name), {}))
            for name in nodes:
                fired.update(watches.get(("n", name), {}))
            if keys and self._kv_prefix_lens:
                lens = sorted(self._kv_prefix_lens)
                for key in dict.fromkeys(keys):
                    for n in lens:
                        if n > len(key):
                            break
                        fired.update(watches.get(("k", key[:n]), {}))
        for w in fired:
            self._drop(w)
        for w in fired:
            w.fire()

    # by-name service index ----------------------------------------------------------------

    def _index_service(self, name: str, node: str, service_id: str, add: bool) -> None:
        entry = (node, service_id)
        members = self._by_service.get(name)
        present = members is not None and entry in members
        if present == add:
            return
        if add:
            self._by_service.setdefault(name, {})[entry] = None
        else:
            assert members is not None
            del members[entry]
            if not members:
                del self._by_service[name]
        if self._undo is not None:
            self._undo.append(lambda: self._index_service(name, node, service_id, not add))

    def _rebuild_service_index(self) -> None:
        self._by_service = {}
        for node, per in self.services.items():
            for sid, svc in per.items():
                self._by_service.setdefault(svc.service, {})[(node, sid)] = None
        self._services_cache = None

    # ------------------------------------------------------------------------------- catalog

    def ensure_registration(
        self,
        index: int,
        node: Node,
        service: ServiceInstance | None,
        checks: tuple[HealthCheck, ...],
        skip_node_update: bool,
    ) -> None:
        """Apply a catalog register at `index`, validating everything before changing anything."""
        existing = self.nodes.get(node.node)
        if node.id:
            for other in self.nodes.values():
                if other.id == node.id and other.node != node.node:
                    raise StoreError(
                        f'Failed inserting node: Error while renaming Node ID: "{node.id}": '
                        f'Node name {other.node} is reserved by node {node.id} with name {other.node}'
                    )
        if service is not None and not service.service:
            raise StoreError("Must provide service name with ID")
        for check in checks:
            if check.service_id and check.service_id != (service.id if service else None):
                if check.service_id not in self.services.get(node.node, {}):
                    raise StoreError(
                        f'Failed to register check: Unknown service ID "{check.service_id}" '
                        f'for check ID "{check.check_id}"'
                    )
        if existing is None or not skip_node_update:
            self._ensure_node(index, node)
        if service is not None:
            self._ensure_service(index, node.node, service)
        for check in checks:
            self._ensure_check(index, check)

    def _ensure_node(self, index: int, node: Node) -> None:
        existing = self.nodes.get(node.node)
        if existing is not None:
            if (
                existing.id == (node.id or existing.id)
                and existing.address == node.address
                and existing.datacenter == (node.datacenter or existing.datacenter)
                and dict(existing.tagged_addresses) == dict(node.tagged_addresses)
                and dict(existing.meta) == dict(node.meta)
            ):
                return  # unchanged: no index bump, so blocking readers are not woken
            record = replace(
                node,
                id=node.id or existing.id,
                create_index=existing.create_index,
                modify_index=index,
            )
        else:
            record = replace(node, create_index=index, modify_index=index)
        self._log_undo_dict(self.nodes, node.node)
        self.nodes[node.node] = record
        self.touch("nodes", index)
        self._touch_node(node.node)
        for svc in self.services.get(node.node, {}).values():
            self._touch_service(svc.service, index)

    def _ensure_service(self, index: int, node: str, service: ServiceInstance) -> None:
        per_node = self.services.setdefault(node, {})
        existing = per_node.get(service.id)
        service = replace(service, node=node)
        if existing is not None:
            if replace(existing, create_index=0, modify_index=0) == replace(service, create_index=0, modify_index=0):
                return
            record = replace(service, create_index=existing.create_index, modify_index=index)
            if existing.service != service.service:
                self._touch_service(existing.service, index)
                self._index_service(existing.service, node, service.id, add=False)
        else:
            record = replace(service, create_index=index, modify_index=index)
        self._log_undo_dict(per_node, service.id)
        per_node[service.id] = record
        self._index_service(record.service, node, service.id, add=True)
        self.touch("services", index)
        self._touch_node(node)
        self._touch_service(record.service, index)
        # Service checks carry the service's name and tags: refresh them when the service changes.
        for check in list(self.checks.get(node, {}).values()):
            if check.service_id == service.id and (
                check.service_name != record.service or check.service_tags != record.tags
            ):
                self._ensure_check(index, replace(check, service_name=record.service, service_tags=record.tags))

    def _ensure_check(self, index: int, check: HealthCheck) -> None:
        if check.node not in self.nodes:
            raise StoreError(f'Missing node registration for "{check.node}"')
        svc = None
        if check.service_id:
            svc = self.services.get(check.node, {}).get(check.service_id)
            if svc is None:
                raise StoreError(f'Missing service registration for check "{check.check_id}"')
            check = replace(check, service_name=svc.service, service_tags=svc.tags)
        per_node = self.checks.setdefault(check.node, {})
        existing = per_node.get(check.check_id)
        if existing is not None:
            if replace(existing, create_index=0, modify_index=0) == replace(check, create_index=0, modify_index=0):
                return
            record = replace(check, create_index=existing.create_index, modify_index=index)
        else:
            record = replace(check, create_index=index, modify_index=index)
        self._log_undo_dict(per_node, check.check_id)
        per_node[check.check_id] = record
        self.touch("checks", index)
        self._touch_node(check.node)
        if svc is not None:
            self._touch_service(svc.service, index)
        else:
            # A node check changes the health of every service on the node.
            for s in self.services.get(check.node, {}).values():
                self._touch_service(s.service, index)
        if record.status == HEALTH_CRITICAL:
            self._invalidate_sessions_for_check(index, check.node, check.check_id)

    def deregister(self, index: int, node: str, service_id: str = "", check_id: str = "") -> None:
        if node not in self.nodes:
            return  # Consul treats deregistering an unknown node as a no-op success
        if service_id:
            self._delete_service(index, node, service_id)
        if check_id:
            self._delete_check(index, node, check_id)
        if not service_id and not check_id:
            for sid in sorted(self.services.get(node, {})):
                self._delete_service(index, node, sid)
            for cid in sorted(self.checks.get(node, {})):
                self._delete_check(index, node, cid)
            self._log_undo_dict(self.nodes, node)
            del self.nodes[node]
            self.services.pop(node, None)
            self.checks.pop(node, None)
            self.touch("nodes", index)
            self._touch_node(node)
            if node in self.coordinates:
                # A node's coordinates live and die with its registration, as in Consul.
                self._log_undo_dict(self.coordinates, node)
                del self.coordinates[node]
                self.touch("coordinates", index)
            for sess in sorted(s.id for s in self.sessions.values() if s.node == node):
                self.destroy_session(index, sess)

    def _delete_service(self, index: int, node: str, service_id: str) -> None:
        per_node = self.services.get(node, {})
        svc = per_node.get(service_id)
        if svc is None:
            return
        for cid, check in sorted(self.checks.get(node, {}).items()):
            if check.service_id == service_id:
                self._delete_check(index, node, cid)
        self._log_undo_dict(per_node, service_id)
        del per_node[service_id]
        self._index_service(svc.service, node, service_id, add=False)
        self.touch("services", index)
        self._touch_node(node)
        self._touch_service(svc.service, index)

    def _delete_check(self, index: int, node: str, check_id: str) -> None:
        per_node = self.checks.get(node, {})
        check = per_node.get(check_id)
        if check is None:
            return
        self._log_undo_dict(per_node, check_id)
        del per_node[check_id]
        self.touch("checks", index)
        self._touch_node(node)
        if check.service_name:
            self._touch_service(check.service_name, index)
        else:
            for s in self.services.get(node, {}).values():
                self._touch_service(s.service, index)
        self._invalidate_sessions_for_check(index, node, check_id)

    # catalog reads ---------------------------------------------------------------------------

    def catalog_index(self, *tables: str) -> int:
        return max((self.table_index[t] for t in tables), default=0)

    def list_nodes(self) -> tuple[int, list[Node]]:
        return self.catalog_index("nodes"), [self.nodes[n] for n in sorted(self.nodes)]

    def list_services(self) -> tuple[int, dict[str, list[str]]]:
        index = self.catalog_index("services")
        cached = self._services_cache
        if cached is not None and cached[0] == index:
            return index, cached[1]
        out: dict[str, list[str]] = {}
        for name in sorted(self._by_service):
            tags: set[str] = set()
            for node, sid in self._by_service[name]:
                tags.update(self.services[node][sid].tags)
            out[name] = sorted(tags)
        self._services_cache = (index, out)
        return index, out

    def index_for_service(self, name: str) -> int:
        idx = self.service_index.get(name)
        if idx:
            return idx
        # An unknown service answers the table index so that a later registration wakes it.
        return self.catalog_index("nodes", "services")

    def service_instances(self, name: str) -> list[ServiceInstance]:
        """Every instance of `name`, by node then service ID, from the by-name index."""
        members = self._by_service.get(name)
        if not members:
            return []
        services = self.services
        return [services[node][sid] for node, sid in sorted(members)]

    def service_instances_any_case(self, name: str) -> list[ServiceInstance]:
        """Every instance whose service name equals `name` in any case (as DNS and prepared
        queries match), by node then service ID. Costs the number of service names plus what
        it returns."""
        wanted = name.lower()
        members = [m for n, ms in self._by_service.items() if n.lower() == wanted for m in ms]
        services = self.services
        return [services[node][sid] for node, sid in sorted(members)]

    def node_services(self, node: str) -> tuple[int, Node | None, list[ServiceInstance]]:
        idx = self.catalog_index("nodes", "services")
        n = self.nodes.get(node)
        if n is None:
            return idx, None, []
        per = self.services.get(node, {})
        return idx, n, [per[s] for s in sorted(per)]

    def node_checks(self, node: str) -> tuple[int, list[HealthCheck]]:
        per = self.checks.get(node, {})
        return self.catalog_index("checks"), [per[c] for c in sorted(per)]

    def service_checks(self, name: str) -> tuple[int, list[HealthCheck]]:
        """The checks of `name`'s instances, by node then check ID."""
        out = []
        by_node: dict[str, set[str]] = {}
        for node, sid in self._by_service.get(name, {}):
            by_node.setdefault(node, set()).add(sid)
        for node in sorted(by_node):
            per = self.checks.get(node, {})
            sids = by_node[node]
            out.extend(per[cid] for cid in sorted(per) if per[cid].service_id in sids)
        return self.index_for_service(name), out

    def checks_in_state(self, state: str) -> tuple[int, list[HealthCheck]]:
        out = []
        for node in sorted(self.checks):
            for cid in sorted(self.checks[node]):
                c = self.checks[node][cid]
                if state == "any" or c.status == state:
                    out.append(c)
        return self.catalog_index("checks"), out

    def checks_for_instance(self, svc: ServiceInstance) -> list[HealthCheck]:
        """Node checks first, then the service's own checks, each sorted by ID."""
        per = self.checks.get(svc.node, {})
        node_level = [per[c] for c in sorted(per) if not per[c].service_id]
        own = [per[c] for c in sorted(per) if per[c].service_id == svc.id]
        return node_level + own

    # ------------------------------------------------------------------------------------ kv

    def _log_undo_dict(self, table: dict[str, Any], key: str) -> None:
        if self._undo is None:
            return
        if key in table:
            old = table[key]
            self._undo.append(lambda: table.__setitem__(key, old))
        else:
            self._undo.append(lambda: table.pop(key, None))

    def _kv_put(self, index: int, entry: DirEntry) -> None:
        key = entry.key
        if key not in self.kv:
            bisect.insort(self._kv_sorted, key)
            if self._undo is not None:
                self._undo.append(lambda: self._kv_sorted.remove(key))
        self._log_undo_dict(self.kv, key)
        self.kv[key] = entry
        if key in self.tombstones:
            self._log_undo_dict(self.tombstones, key)
            del self.tombstones[key]
        self.touch("kvs", index)
        self._dirty_keys.append(key)

    def kv_delete(self, index: int, key: str) -> None:
        """Delete `key` (if present) leaving a tombstone; inside `begin`/`commit`."""
        if key not in self.kv:
            return
        self._log_undo_dict(self.kv, key)
        del self.kv[key]
        pos = bisect.bisect_left(self._kv_sorted, key)
        del self._kv_sorted[pos]
        if self._undo is not None:
            self._undo.append(lambda: bisect.insort(self._kv_sorted, key))
        self._log_undo_dict(self.tombstones, key)
        self.tombstones[key] = index
        self.touch("kvs", index)
        self.touch("tombstones", index)
        self._dirty_keys.append(key)

    def kv_keys_under(self, prefix: str) -> list[str]:
        lo = bisect.bisect_left(self._kv_sorted, prefix)
        out = []
        for i in range(lo, len(self._kv_sorted)):
            k = self._kv_sorted[i]
            if not k.startswith(prefix):
                break
            out.append(k)
        return out

    def kv_max_index(self) -> int:
        return max(self.table_index["kvs"], self.table_index["tombstones"])

    def kv_get(self, key: str) -> tuple[int, DirEntry | None]:
        entry = self.kv.get(key)
        if entry is not None:
            return entry.modify_index, entry
        return self.kv_max_index(), None

    def kv_list(self, prefix: str) -> tuple[int, list[DirEntry]]:
        entries = [self.kv[k] for k in self.kv_keys_under(prefix)]
        idx = max((e.modify_index for e in entries), default=0)
        for key, tomb_index in self.tombstones.items():
            if tomb_index > idx and key.startswith(prefix):
                idx = tomb_index
        if idx == 0:
            idx = self.kv_max_index()
        return idx, entries

    def kv_set(self, index: int, entry: DirEntry) -> bool:
        return self.kv_set_fields(index, entry.key, entry.value, entry.flags)

    def kv_set_fields(self, index: int, key: str, value: bytes | None, flags: int) -> bool:
        """`kv_set` from the three fields a set reads (the follower's apply decodes only those)."""
        existing = self.kv.get(key)
        # Built directly rather than with dataclasses.replace, which showed in every member's
        # write-path profile (it rebuilds a kwargs dict from the fields on every call).
        if existing is not None:
            entry = DirEntry(key, value, flags, existing.session, existing.lock_index, existing.create_index, index)
        else:
            entry = DirEntry(key, value, flags, "", 0, index, index)
        if self._undo is not None:
            self._kv_put(index, entry)
            return True
        # `_kv_put` outside a transaction (nothing to undo), spelled out: every member's apply
        # of every KV write comes here, and the two calls showed in the follower's profile.
        if existing is None:
            bisect.insort(self._kv_sorted, key)
        self.kv[key] = entry
        if key in self.tombstones:
            del self.tombstones[key]
        self.table_index["kvs"] = index
        self._dirty_tables.add("kvs")
        self._dirty_keys.append(key)
        return True

    def kv_cas(self, index: int, entry: DirEntry) -> bool:
        existing = self.kv.get(entry.key)
        if entry.modify_index == 0 and existing is not None:
            return False
        if entry.modify_index != 0 and (existing is None or existing.modify_index != entry.modify_index):
            return False
        return self.kv_set(index, entry)

    def kv_delete_cas(self, index: int, key: str, cas_index: int) -> bool:
        existing = self.kv.get(key)
        if existing is None or existing.modify_index != cas_index:
            return existing is None
        self.kv_delete(index, key)
        return True

    def kv_delete_tree(self, index: int, prefix: str) -> None:
        for key in self.kv_keys_under(prefix):
            self.kv_delete(index, key)

    def kv_lock(self, index: int, entry: DirEntry, unchanged_since: int = 0) -> bool:
        """Acquire `entry.key` for `entry.session`; False when another session holds it.

        With `unchanged_since` (the index at which the writer checked the lock-delay), also
        False when the key is free but was written or deleted after that index: the free lock
        may be the release of an invalidated holder whose lock-delay the check could not see.
        The writer retries and then meets the delay, as Consul's clients do on a refused acquire.
        """
        session = self.sessions.get(entry.session)
        if not entry.session or session is None:
            raise StoreError(f'invalid session "{entry.session}"')
        existing = self.kv.get(entry.key)
        if existing is not None and existing.session and existing.session != entry.session:
            return False
        if unchanged_since:
            if existing is None:
                changed_at = self.tombstones.get(entry.key, 0)
            else:
                changed_at = 0 if existing.session == entry.session else existing.modify_index
            if changed_at > unchanged_since:
                return False
        if existing is not None:
            lock_index = existing.lock_index if existing.session == entry.session else existing.lock_index + 1
            record = replace(
                entry, create_index=existing.create_index, modify_index=index, lock_index=lock_index
            )
        else:
            record = replace(entry, create_index=index, modify_index=index, lock_index=1)
        self._kv_put(index, record)
        return True

    def kv_unlock(self, index: int, entry: DirEntry) -> bool:
        existing = self.kv.get(entry.key)
        if existing is None or existing.session != entry.session:
            return False
        record = replace(
            entry,
            session="",
            create_index=existing.create_index,
            modify_index=index,
            lock_index=existing.lock_index,
        )
        self._kv_put(index, record)
        return True

    # ------------------------------------------------------------------------------ sessions

    def create_session(self, index: int, session: Session) -> None:
        if session.node not in self.nodes:
            raise StoreError("Missing node registration")  # Consul's ErrMissingNode, word for word
        per = self.checks.get(session.node, {})
        for cid in session.check_ids():
            check = per.get(cid)
            if check is None:
                raise StoreError(f"Missing check '{cid}' registration")
            if check.status == HEALTH_CRITICAL:
                raise StoreError(f"Check '{cid}' is in critical state")
        self._log_undo_dict(self.sessions, session.id)
        self.sessions[session.id] = replace(session, create_index=index, modify_index=index)
        self.touch("sessions", index)

    def destroy_session(self, index: int, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return
        self._log_undo_dict(self.sessions, session_id)
        del self.sessions[session_id]
        self.touch("sessions", index)
        held = [e for e in self.kv.values() if e.session == session_id]
        if held and session.lock_delay_ns > 0:
            until = self.now() + session.lock_delay_ns / 1e9
            for entry in held:
                self.lock_delays[entry.key] = max(self.lock_delays.get(entry.key, 0.0), until)
        for entry in sorted(held, key=lambda e: e.key):
            if session.behavior == "delete":
                self.kv_delete(index, entry.key)
            else:
                self._kv_put(index, replace(entry, session="", modify_index=index))
        # Queries bound to the session die with it, as Consul's session invalidation deletes them.
        for qid in sorted(q.id for q in self.prepared_queries.values() if q.session == session_id):
            self.prepared_query_delete(index, qid)

    def _invalidate_sessions_for_check(self, index: int, node: str, check_id: str) -> None:
        doomed = sorted(
            s.id for s in self.sessions.values() if s.node == node and check_id in s.check_ids()
        )
        for sid in doomed:
            self.destroy_session(index, sid)

    def lock_delay_active(self, key: str) -> bool:
        """True while a lock released by an invalidated session may not be re-acquired."""
        until = self.lock_delays.get(key)
        if until is None:
            return False
        if self.now() >= until:
            del self.lock_delays[key]
            return False
        return True

    def get_session(self, session_id: str) -> tuple[int, Session | None]:
        return self.table_index["sessions"], self.sessions.get(session_id)

    def node_sessions(self, node: str) -> tuple[int, list[Session]]:
        found = sorted((s for s in self.sessions.values() if s.node == node), key=lambda s: s.id)
        return self.table_index["sessions"], found

    def list_sessions(self) -> tuple[int, list[Session]]:
        return self.table_index["sessions"], sorted(self.sessions.values(), key=lambda s: s.id)

    # --------------------------------------------------------------------------- coordinates

    def coordinate_batch_update(self, index: int, updates: Iterable[tuple[str, str, Coordinate]]) -> None:
        """Upsert (node, segment, coordinate) triples at `index`.

        As Consul: an invalid coordinate (NaN, infinity) or one for a node not in the catalog
        (it may not have registered yet; its next update will land) is skipped silently, and
        the table index moves even when every update was skipped.
        """
        for node, segment, coord in updates:
            if not coord.is_valid() or node not in self.nodes:
                continue
            per = self.coordinates.get(node)
            if per is None:
                self._log_undo_dict(self.coordinates, node)
                per = self.coordinates[node] = {}
            self._log_undo_dict(per, segment)
            per[segment] = coord
        self.touch("coordinates", index)

    def list_coordinates(self) -> tuple[int, list[tuple[str, str, Coordinate]]]:
        """Every (node, segment, coordinate), sorted by node then segment."""
        out = [(n, seg, self.coordinates[n][seg]) for n in sorted(self.coordinates) for seg in sorted(self.coordinates[n])]
        return self.table_index["coordinates"], out

    def node_coordinates(self, node: str) -> tuple[int, dict[str, Coordinate]]:
        """One node's coordinates by segment (empty when it has none)."""
        per = self.coordinates.get(node, {})
        return self.table_index["coordinates"], {seg: per[seg] for seg in sorted(per)}

    # ------------------------------------------------------------------------ prepared queries

    def prepared_query_set(self, index: int, query: PreparedQuery, must_exist: bool = False) -> None:
        """Create or replace `query` at `index`, with the integrity checks of Consul's store."""
        if not query.id:
            raise StoreError("Missing query ID")
        existing = self.prepared_queries.get(query.id)
        if must_exist and existing is None:
            raise StoreError(f"Cannot modify non-existent prepared query: '{query.id}'")
        is_template = bool(query.definition["Template"]["Type"])
        for other in self.prepared_queries.values():
            if other.id == query.id:
                continue
            # Names are unique in any case (Consul's name index is lower-cased).
            if query.name and other.name.lower() == query.name.lower():
                raise StoreError(f"name '{query.name}' aliases an existing query name")
            if not query.name and is_template and not other.name and other.definition["Template"]["Type"]:
                raise StoreError("a query template with an empty name already exists")
        if query.name and pq.is_uuid(query.name) and query.name in self.prepared_queries:
            raise StoreError(f"name '{query.name}' aliases an existing query ID")
        if query.session and query.session not in self.sessions:
            raise StoreError(f'invalid session "{query.session}"')
        if is_template:
            try:
                pq.compile_template(query.definition)
            except pq.QueryError as exc:
                raise StoreError(str(exc)) from None
        create = existing.create_index if existing is not None else index
        self._log_undo_dict(self.prepared_queries, query.id)
        self.prepared_queries[query.id] = replace(query, create_index=create, modify_index=index)
        self.touch("prepared_queries", index)

    def prepared_query_delete(self, index: int, query_id: str) -> None:
        if query_id not in self.prepared_queries:
            raise StoreError(f"Cannot modify non-existent prepared query: '{query_id}'")
        self._log_undo_dict(self.prepared_queries, query_id)
        del self.prepared_queries[query_id]
        self.touch("prepared_queries", index)

    def list_prepared_queries(self) -> tuple[int, list[PreparedQuery]]:
        """Every query, by ID (Consul's list order)."""
        qs = self.prepared_queries
        return self.table_index["prepared_queries"], [qs[i] for i in sorted(qs)]

    # --------------------------------------------------------------------------- transactions

    def begin(self) -> None:
        """Start recording undo steps so that a failed transaction can be rolled back."""
        self._undo = []

    def commit(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        undo, self._undo = self._undo or [], None
        for step in reversed(undo):
            step()
        self._dirty_tables.clear()
        self._dirty_keys.clear()
        self._dirty_services.clear()
        self._dirty_nodes.clear()

    # ---------------------------------------------------------------------- autopilot config

    def autopilot_set_config(self, index: int, config: dict[str, Any], cas_index: int | None) -> bool:
        """Set the autopilot configuration; with `cas_index`, only if its ModifyIndex matches."""
        current = self.autopilot_config
        if cas_index is not None and (current[2] if current else 0) != cas_index:
            return False
        if self._undo is not None:
            self._undo.append(lambda: setattr(self, "autopilot_config", current))
        self.autopilot_config = (dict(config), current[1] if current else index, index)
        return True

    # ------------------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """Serialise every table and index (msgpack); `restore` gives back an equal store."""
        return self.snapshot_view()()

    def snapshot_view(self) -> Callable[[], bytes]:
        """A consistent view of every table now, and the function that serialises it.

        Taking the view costs only lists of references (records are immutable and a write
        replaces them), so it runs on the event loop at the index being snapshotted; the
        returned function touches nothing of the live store and may run in another thread
        while writes continue. It encodes record by record (`_pack_stream`), so the thread
        never holds the GIL for long and the loop keeps running (one `packb` of the whole
        state would hold it for the whole encode).
        """
        view: dict[str, Any] = {
            "v": 1,
            "last_index": self.last_index,
            "table_index": dict(self.table_index),
            "service_index": dict(self.service_index),
            "nodes": list(self.nodes.values()),
            "services": [s for per in self.services.values() for s in per.values()],
            "checks": [c for per in self.checks.values() for c in per.values()],
            "kv": list(self.kv.values()),
            "tombstones": dict(self.tombstones),
            "sessions": list(self.sessions.values()),
            "index_offset": self.index_offset,
            "coordinates": [(n, seg, c) for n, per in self.coordinates.items() for seg, c in per.items()],
            "prepared_queries": list(self.prepared_queries.values()),
            "autopilot": list(self.autopilot_config) if self.autopilot_config else None,
            "acl": {
                "tokens": list(self.acl_tokens.values()),
                "policies": list(self.acl_policies.values()),
                "roles": list(self.acl_roles.values()),
                "bootstrap_index": self.acl_bootstrap_index,
            },
        }
        return lambda: _pack_stream(view)

    def restore(self, blob: bytes) -> None:
        """Replace every table with a snapshot's (`decode` then `adopt`)."""
        self.adopt(Store.decode(blob))

    @staticmethod
    def decode(blob: bytes) -> Store:
        """A new store holding a snapshot's tables; raises on a malformed blob.

        Touches no existing store, so it may run in another thread; decodes record by record
        for the same reason as `snapshot_view`. The result is only for `adopt`.
        """
        data = _unpack_stream(blob)
        if data.get("v") != 1:
            raise ValueError(f"unknown snapshot version {data.get('v')!r}")
        out = Store()
        for raw in data["nodes"]:
            n = Node.from_wire(raw)
            out.nodes[n.node] = n
        for raw in data["services"]:
            s = ServiceInstance.from_wire(raw)
            out.services.setdefault(s.node, {})[s.id] = s
        for raw in data["checks"]:
            c = HealthCheck.from_wire(raw)
            out.checks.setdefault(c.node, {})[c.check_id] = c
        for raw in data["kv"]:
            e = DirEntry.from_wire(raw)
            out.kv[e.key] = e
        out._kv_sorted = sorted(out.kv)
        out.tombstones = dict(data["tombstones"])
        out.sessions = {s.id: s for s in (Session.from_wire(r) for r in data["sessions"])}
        out.table_index = {t: int(data["table_index"].get(t, 0)) for t in TABLES}
        out.service_index = dict(data["service_index"])
        out.last_index = int(data["last_index"])
        out.index_offset = int(data.get("index_offset", 0))
        for node, segment, raw in data.get("coordinates", []):
            out.coordinates.setdefault(node, {})[segment] = Coordinate.from_wire(raw)
        queries = (PreparedQuery.from_wire(r) for r in data.get("prepared_queries", []))
        out.prepared_queries = {q.id: q for q in queries}
        ap = data.get("autopilot")
        out.autopilot_config = (dict(ap[0]), int(ap[1]), int(ap[2])) if ap else None
        acl = data.get("acl", {})
        out.acl_tokens = {t.accessor_id: t for t in (ACLToken.from_wire(w) for w in acl.get("tokens", []))}
        out.acl_secrets = {t.secret_id: t.accessor_id for t in out.acl_tokens.values()}
        out.acl_policies = {p.id: p for p in (ACLPolicy.from_wire(w) for w in acl.get("policies", []))}
        out.acl_roles = {r.id: r for r in (ACLRole.from_wire(w) for w in acl.get("roles", []))}
        out.acl_bootstrap_index = int(acl.get("bootstrap_index", 0))
        out._rebuild_service_index()  # derived, so built here too, off the loop
        return out

    def adopt(self, loaded: Store) -> None:
        """Take over the tables of a `decode`d store (cheap: references) and wake every watcher."""
        for name in _SNAPSHOT_FIELDS:
            setattr(self, name, getattr(loaded, name))
        self._by_service = loaded._by_service
        self._services_cache = None
        # Every watcher must re-read: the world changed under it.
        self._dirty_all = True
        self.finish(self.last_index)

    def advance_all_indexes(self, index: int) -> None:
        """Raise every table's index to `index` (after a restore: every reader must re-read)."""
        for t in TABLES:
            self.table_index[t] = max(self.table_index[t], index)
        for name in self.service_index:
            self.service_index[name] = max(self.service_index[name], index)
        self._dirty_all = True


def aggregate_status(checks: Iterable[HealthCheck]) -> str:
    """Worst status wins: critical > warning > passing (Consul's AggregatedStatus)."""
    worst = HEALTH_PASSING
    for c in checks:
        if c.status == HEALTH_CRITICAL:
            return HEALTH_CRITICAL
        if c.status == HEALTH_WARNING:
            worst = HEALTH_WARNING
    return worst


# What a snapshot carries: the replicated tables and indexes (not watches, lock delays, clock).
_SNAPSHOT_FIELDS = (
    "nodes", "services", "checks", "kv", "_kv_sorted", "tombstones", "sessions", "table_index",
    "service_index", "last_index", "index_offset", "coordinates", "prepared_queries",
    "autopilot_config", "acl_tokens", "acl_secrets", "acl_policies", "acl_roles", "acl_bootstrap_index",
)
# Keys of a snapshot whose values are lists of records, at the top level and under "acl".
_RECORD_LISTS = frozenset(
    ("nodes", "services", "checks", "kv", "sessions", "coordinates", "prepared_queries", "tokens", "policies", "roles")
)


def _wire(item: Any) -> Any:
    if isinstance(item, tuple):  # a coordinate: (node, segment, Coordinate)
        return [item[0], item[1], item[2].to_wire()]
    return item.to_wire()


def _pack_stream(view: dict[str, Any]) -> bytes:
    """`msgpack.packb(...)` of the view with each record as its `to_wire()`, byte for byte,
    written one record at a time (a short hold of the GIL each)."""
    packer = msgpack.Packer(use_bin_type=True)
    out: list[bytes] = []

    def pack_map(mapping: dict[str, Any]) -> None:
        out.append(packer.pack_map_header(len(mapping)))
        for key, value in mapping.items():
            out.append(packer.pack(key))
            if key in _RECORD_LISTS and isinstance(value, list):
                out.append(packer.pack_array_header(len(value)))
                out.extend(packer.pack(_wire(item)) for item in value)
            elif key == "acl":
                pack_map(value)
            else:
                out.append(packer.pack(value))

    pack_map(view)
    return b"".join(out)


def _unpack_stream(blob: bytes) -> dict[str, Any]:
    """`msgpack.unpackb(blob)` of a snapshot, reading its record lists one record at a time."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(blob), 1 << 20))
    unpacker.feed(blob)

    def read_map() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key in _RECORD_LISTS:
                out[key] = [unpacker.unpack() for _ in range(unpacker.read_array_header())]
            elif key == "acl":
                out[key] = read_map()
            else:
                out[key] = unpacker.unpack()
        return out

    try:
        data = read_map()
    except msgpack.OutOfData:
        raise ValueError("snapshot is truncated") from None
    if unpacker.tell() != len(blob):
        raise ValueError("snapshot has trailing data")
    return data
