"""The FSM: applies committed commands to the store, deterministically.

Owns the mapping from a committed log entry (index, command) to store mutations and to the
result returned to whoever proposed it. Apply must be deterministic: the same sequence of
entries gives the same store on every server (no clocks, no randomness, no set ordering).
A command the store rejects (StoreError) changes nothing and its error is the result, so the
entry is still consumed identically everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from proconsul.state import acl as acl_tables
from proconsul.state import commands as cmd
from proconsul.state.records import DirEntry, HealthCheck, Node, ServiceInstance
from proconsul.state.store import Store, StoreError


@dataclass(frozen=True, slots=True)
class TxnError:
    op_index: int
    what: str


# What one transaction operation answers: a KV entry, a node, a service or a check.
TxnRecord = DirEntry | Node | ServiceInstance | HealthCheck


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Either `results` (records per op; None for ops without a result) or `errors`."""

    results: tuple[TxnRecord | None, ...] = ()
    errors: tuple[TxnError, ...] = ()


class FSM:
    def __init__(self, store: Store) -> None:
        self.store = store
        # A snapshot blob this server already decoded off the loop (PUT /v1/snapshot verifies
        # it so) and the store it decodes to: its Restore entry adopts that instead of decoding
        # again on the loop. Decoding is pure, so this gives the same state as on every other
        # server. Used once; the adopted store's tables become the live ones.
        self._decoded: tuple[bytes, Store] | None = None

    def offer_decoded(self, blob: bytes, decoded: Store) -> None:
        """`decoded` is `Store.decode(blob)`, fresh and unshared; see `_decoded`."""
        self._decoded = (blob, decoded)

    def store_index(self, raft_index: int) -> int:
        """The store index (X-Consul-Index, ModifyIndex) of the entry at `raft_index`."""
        return raft_index + self.store.index_offset

    def apply(self, index: int, command: cmd.Command) -> Any:
        """Apply one committed command at Raft `index`; returns its result or a StoreError."""
        store = self.store
        index = self.store_index(index)
        if isinstance(command, cmd.Restore):
            return self._apply_restore(index, command.data)
        try:
            if isinstance(command, cmd.KVS):
                return self._apply_kv(index, command)
            if isinstance(command, cmd.Register):
                store.begin()
                try:
                    store.ensure_registration(
                        index, command.node, command.service, command.checks, command.skip_node_update
                    )
                except StoreError:
                    store.rollback()
                    raise
                store.commit()
                return None
            if isinstance(command, cmd.Deregister):
                store.deregister(index, command.node, command.service_id, command.check_id)
                return None
            if isinstance(command, cmd.SessionOp):
                if command.op == "create":
                    store.create_session(index, command.session)
                    return command.session.id
                store.destroy_session(index, command.session.id)
                return True
            if isinstance(command, cmd.Txn):
                return self._apply_txn(index, command)
            if isinstance(command, cmd.PreparedQueryOp):
                if command.op == "delete":
                    store.prepared_query_delete(index, command.query.id)
                else:
                    store.prepared_query_set(index, command.query, command.op == "update")
                return command.query.id
            if isinstance(command, cmd.ACLOp):
                return acl_tables.apply(store, index, command)
            if isinstance(command, cmd.CoordinateBatchUpdate):
                store.coordinate_batch_update(index, command.updates)
                return None
            if isinstance(command, cmd.AutopilotSetConfig):
                return store.autopilot_set_config(index, dict(command.config), command.index if command.cas else None)
            return None
        except StoreError as exc:
            return exc
        finally:
            store.finish(index)

    def apply_kv_set(self, index: int, key: str, value: bytes | None, flags: int) -> bool:
        """`apply(index, KVS("set", DirEntry(key, value, flags)))` without building either:
        the same store change, result and watch wakeups (a set cannot fail)."""
        store = self.store
        index += store.index_offset
        try:
            return store.kv_set_fields(index, key, value, flags)
        finally:
            store.finish(index)

    def _apply_restore(self, index: int, blob: bytes) -> Any:
        """Replace the store with a snapshot's state, deterministically on every server.

        The snapshot may come from a cluster whose indexes are ahead of this log; the store's
        index offset is raised so that this entry (and every later one) lands above all indexes
        in the snapshot: X-Consul-Index never goes backwards and blocking readers wake up.
        A blob that does not decode changes nothing and is the (same) error everywhere.
        """
        store = self.store
        cached, self._decoded = self._decoded, None
        try:
            # Validate fully before touching the live store.
            probe = cached[1] if cached is not None and cached[0] == blob else Store.decode(blob)
        except Exception as exc:  # msgpack and malformed records raise several types
            store.finish(index)
            return StoreError(f"snapshot restore failed: {exc}")
        raft_index = index - store.index_offset
        offset = store.index_offset
        if probe.last_index >= index:
            offset = probe.last_index + 1 - raft_index
        store.adopt(probe)  # decoded once: the probe's tables become the store's
        store.index_offset = offset
        restored_at = raft_index + offset
        store.advance_all_indexes(restored_at)
        store.finish(restored_at)
        return restored_at

    def _apply_kv(self, index: int, op: cmd.KVS) -> Any:
        store, entry = self.store, op.entry
        if op.op == cmd.KVOp.SET:
            return store.kv_set(index, entry)
        if op.op == cmd.KVOp.CAS:
            return store.kv_cas(index, entry)
        if op.op == cmd.KVOp.DELETE:
            store.begin()
            store.kv_delete(index, entry.key)
            store.commit()
            return True
        if op.op == cmd.KVOp.DELETE_CAS:
            return store.kv_delete_cas(index, entry.key, entry.modify_index)
        if op.op == cmd.KVOp.DELETE_TREE:
            store.kv_delete_tree(index, entry.key)
            return True
        if op.op == cmd.KVOp.LOCK:
            return store.kv_lock(index, entry, unchanged_since=op.checked_at)
        if op.op == cmd.KVOp.UNLOCK:
            return store.kv_unlock(index, entry)
        raise StoreError(f"Invalid KV operation {op.op!r}")

    def _apply_txn(self, index: int, txn: cmd.Txn) -> TxnResult:
        store = self.store
        store.begin()
        results: list[TxnRecord | None] = []
        errors: list[TxnError] = []
        for i, op in enumerate(txn.ops):
            try:
                errors_before = len(errors)
                results.extend(self._txn_op(index, i, op, errors))
                if len(errors) > errors_before:
                    continue
            except StoreError as exc:
                errors.append(TxnError(i, str(exc)))
        if errors:
            store.rollback()
            return TxnResult(errors=tuple(errors))
        store.commit()
        return TxnResult(results=tuple(results))

    def _txn_op(self, index: int, i: int, op: cmd.TxnOp, errors: list[TxnError]) -> list[TxnRecord | None]:
        """Run one txn op; returns its result records (KV values blanked for writes, as Consul)."""
        return txn_op(self.store, index, i, op, errors)


def txn_op(store: Store, index: int, i: int, op: cmd.TxnOp, errors: list[TxnError]) -> list[TxnRecord | None]:
    """One transaction operation of any kind against `store` (reads need no index)."""
    if isinstance(op, cmd.KVS):
        return list(txn_kv_op(store, index, i, op, errors))
    if isinstance(op, cmd.TxnNodeOp):
        return list(_txn_node(store, index, op))
    if isinstance(op, cmd.TxnServiceOp):
        return list(_txn_service(store, index, op))
    if isinstance(op, cmd.TxnCheckOp):
        return list(_txn_check(store, index, op))
    if op.verb != "delete":
        raise StoreError(f'failed to delete session: unknown Session verb "{op.verb}"')
    store.destroy_session(index, op.session_id)
    return []


def _txn_node(store: Store, index: int, op: cmd.TxnNodeOp) -> list[Node]:
    """Consul's txnNode: get, set, cas, delete, delete-cas; set/cas answer the stored node."""
    want = op.node

    def current() -> Node | None:
        if want.id:
            return next((n for n in store.nodes.values() if n.id == want.id), None)
        return store.nodes.get(want.node)

    existing = current()
    if op.verb == "get":
        if existing is None:
            raise StoreError(f'node "{want.node}" doesn\'t exist')
        return [existing]
    if op.verb in ("set", "cas"):
        if op.verb == "cas" and (existing.modify_index if existing is not None else 0) != want.modify_index:
            raise StoreError(f'failed to set node "{want.node}", index is stale')
        if not want.node or not want.address:
            raise StoreError("Must provide node and address")
        store.ensure_registration(index, want, None, (), False)
        found = store.nodes.get(want.node)
        return [found] if found is not None else []
    if op.verb == "delete":
        store.deregister(index, want.node)
        return []
    if op.verb == "delete-cas":
        existing = store.nodes.get(want.node)
        if existing is None or existing.modify_index != want.modify_index:
            raise StoreError(f'failed to delete node "{want.node}", index is stale')
        store.deregister(index, want.node)
        return []
    raise StoreError(f'unknown Node verb "{op.verb}"')


def _txn_service(store: Store, index: int, op: cmd.TxnServiceOp) -> list[ServiceInstance]:
    """Consul's txnService on node `op.node`: get, set, cas, delete, delete-cas."""
    svc, node_name = op.service, op.node
    existing = store.services.get(node_name, {}).get(svc.id)
    if op.verb == "get":
        if existing is None:
            raise StoreError(f'service "{svc.id}" on node "{node_name}" doesn\'t exist')
        return [existing]
    if op.verb in ("set", "cas"):
        if op.verb == "cas" and (existing.modify_index if existing is not None else 0) != svc.modify_index:
            raise StoreError(f'failed to set service "{svc.id}" on node "{node_name}", index is stale')
        node = store.nodes.get(node_name)
        if node is None:
            raise StoreError("Missing node registration")
        store.ensure_registration(index, node, svc, (), True)
        found = store.services.get(node_name, {}).get(svc.id)
        return [found] if found is not None else []
    if op.verb == "delete":
        store.deregister(index, node_name, service_id=svc.id)
        return []
    if op.verb == "delete-cas":
        if existing is None or existing.modify_index != svc.modify_index:
            raise StoreError(f'failed to delete service "{svc.id}" on node "{node_name}", index is stale')
        store.deregister(index, node_name, service_id=svc.id)
        return []
    raise StoreError(f'unknown Service verb "{op.verb}"')


def _txn_check(store: Store, index: int, op: cmd.TxnCheckOp) -> list[HealthCheck]:
    """Consul's txnCheck: get, set, cas, delete, delete-cas."""
    check = op.check
    existing = store.checks.get(check.node, {}).get(check.check_id)
    if op.verb == "get":
        if existing is None:
            raise StoreError(f'check "{check.check_id}" on node "{check.node}" doesn\'t exist')
        return [existing]
    if op.verb in ("set", "cas"):
        if op.verb == "cas" and (existing.modify_index if existing is not None else 0) != check.modify_index:
            raise StoreError(f'failed to set check "{check.check_id}" on node "{check.node}", index is stale')
        node = store.nodes.get(check.node)
        if node is None:
            raise StoreError("Missing node registration")
        if check.service_id and check.service_id not in store.services.get(check.node, {}):
            raise StoreError("Missing service registration")
        store.ensure_registration(index, node, None, (check,), True)
        found = store.checks.get(check.node, {}).get(check.check_id)
        return [found] if found is not None else []
    if op.verb == "delete":
        store.deregister(index, check.node, check_id=check.check_id)
        return []
    if op.verb == "delete-cas":
        if existing is None or existing.modify_index != check.modify_index:
            raise StoreError(f'failed to delete check "{check.check_id}" on node "{check.node}", index is stale')
        store.deregister(index, check.node, check_id=check.check_id)
        return []
    raise StoreError(f'unknown Check verb "{op.verb}"')


def txn_kv_op(store: Store, index: int, i: int, op: cmd.KVS, errors: list[TxnError]) -> list[DirEntry | None]:
    """One KV transaction operation against `store` (reads need no index and change nothing)."""
    e = op.entry
    verb = op.op
    existing = store.kv.get(e.key)

    def fail(what: str) -> list[DirEntry | None]:
        errors.append(TxnError(i, what))
        return []

    def written() -> list[DirEntry | None]:
        now = store.kv.get(e.key)
        return [replace(now, value=None)] if now is not None else []

    if verb == cmd.KVOp.GET:
        if existing is None:
            return fail(f'key "{e.key}" doesn\'t exist')
        return [existing]
    if verb == cmd.KVOp.GET_OR_EMPTY:
        # Consul answers a missing key with the operation's own entry, value blanked.
        return [existing] if existing is not None else [replace(e, value=None)]
    if verb == cmd.KVOp.GET_TREE:
        return [store.kv[k] for k in store.kv_keys_under(e.key)]
    if verb == cmd.KVOp.CHECK_INDEX:
        if existing is None:
            return fail(f'key "{e.key}" doesn\'t exist')
        if existing.modify_index != e.modify_index:
            return fail(
                f'current modify index {existing.modify_index} for key "{e.key}" doesn\'t match '
                f"provided index {e.modify_index}"
            )
        return [replace(existing, value=None)]
    if verb == cmd.KVOp.CHECK_SESSION:
        if existing is None:
            return fail(f'key "{e.key}" doesn\'t exist')
        if existing.session != e.session:
            return fail(f'key "{e.key}" is not currently locked by session "{e.session}"')
        return [replace(existing, value=None)]
    if verb == cmd.KVOp.CHECK_NOT_EXISTS:
        if existing is not None:
            return fail(f'key "{e.key}" exists')
        return []
    if verb == cmd.KVOp.SET:
        store.kv_set(index, e)
        return written()
    if verb == cmd.KVOp.CAS:
        if not store.kv_cas(index, e):
            return fail(f'failed to set key "{e.key}", index is stale')
        return written()
    if verb == cmd.KVOp.LOCK:
        if not store.kv_lock(index, e):
            return fail(f'failed to lock key "{e.key}", lock is already held')
        return written()
    if verb == cmd.KVOp.UNLOCK:
        if not store.kv_unlock(index, e):
            return fail(f'failed to unlock key "{e.key}", lock isn\'t held, or is held by another session')
        return written()
    if verb == cmd.KVOp.DELETE:
        store.kv_delete(index, e.key)
        return []
    if verb == cmd.KVOp.DELETE_CAS:
        if not store.kv_delete_cas(index, e.key, e.modify_index):
            return fail(f'failed to delete key "{e.key}", index is stale')
        return []
    if verb == cmd.KVOp.DELETE_TREE:
        store.kv_delete_tree(index, e.key)
        return []
    return fail(f"unknown KV verb {verb!r}")
