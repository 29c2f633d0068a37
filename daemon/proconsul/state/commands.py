"""Typed FSM commands: the only way the replicated state changes.

Owns the command vocabulary that Raft replicates and the FSM applies, and its msgpack encoding.
The command type numbers are append-only: a log written by one version must be applied the same
way by the next, so a number is never reused or renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from proconsul.coordinate import Coordinate
from proconsul.state import prepared_query
from proconsul.state.records import DirEntry, HealthCheck, Node, PreparedQuery, ServiceInstance, Session


class CommandType(IntEnum):
    REGISTER = 1
    DEREGISTER = 2
    KVS = 3
    SESSION = 4
    TXN = 5
    NOOP = 6  # written by a new leader to commit entries of earlier terms
    RESTORE = 7  # replace the whole store with a snapshot's (`PUT /v1/snapshot`)
    COORDINATE_BATCH_UPDATE = 8  # network coordinates batched by the leader (Coordinate.Update)
    PREPARED_QUERY = 9  # create, update or delete a prepared query (PreparedQuery.Apply)
    ACL = 10  # token, policy and role writes, bootstrap and the leader's ACL initialisation
    # 11 left for other work in flight when this was added.
    AUTOPILOT_CONFIG = 12  # the operator's autopilot configuration (PUT /v1/operator/autopilot/configuration)


class KVOp:
    SET = "set"
    CAS = "cas"
    LOCK = "lock"
    UNLOCK = "unlock"
    DELETE = "delete"
    DELETE_CAS = "delete-cas"
    DELETE_TREE = "delete-tree"
    GET = "get"
    GET_OR_EMPTY = "get-or-empty"
    GET_TREE = "get-tree"
    CHECK_INDEX = "check-index"
    CHECK_SESSION = "check-session"
    CHECK_NOT_EXISTS = "check-not-exists"


KV_WRITE_VERBS = frozenset(
    {KVOp.SET, KVOp.CAS, KVOp.LOCK, KVOp.UNLOCK, KVOp.DELETE, KVOp.DELETE_CAS, KVOp.DELETE_TREE}
)
KV_VERBS = KV_WRITE_VERBS | {
    KVOp.GET,
    KVOp.GET_OR_EMPTY,
    KVOp.GET_TREE,
    KVOp.CHECK_INDEX,
    KVOp.CHECK_SESSION,
    KVOp.CHECK_NOT_EXISTS,
}


@dataclass(frozen=True, slots=True)
class Register:
    """Catalog register: upsert a node and, optionally, one service and several checks."""

    node: Node
    service: ServiceInstance | None = None
    checks: tuple[HealthCheck, ...] = ()
    skip_node_update: bool = False


@dataclass(frozen=True, slots=True)
class Deregister:
    """Catalog deregister: the whole node, or one service (with its checks), or one check."""

    node: str
    service_id: str = ""
    check_id: str = ""


@dataclass(frozen=True, slots=True)
class KVS:
    """One KV operation; `entry.modify_index` carries the CAS index for cas/delete-cas.

    `checked_at` (acquires only, 0 = none) is the store index at which the writer found the key
    outside any lock-delay. The check and the write are two steps, and a session invalidated
    between them would release the lock without its delay being seen; the FSM refuses such an
    acquire when the key changed after `checked_at`, which decides it from replicated state
    alone, the same on every server.
    """

    op: str
    entry: DirEntry
    checked_at: int = 0


@dataclass(frozen=True, slots=True)
class SessionOp:
    op: str  # "create" | "destroy"
    session: Session


# Consul's catalog verbs in transactions (api.NodeSet, api.ServiceCAS, ...): the same words
# for nodes, services and checks; only `get` reads.
CATALOG_VERBS = frozenset({"set", "cas", "get", "delete", "delete-cas"})
SESSION_VERBS = frozenset({"delete"})


@dataclass(frozen=True, slots=True)
class TxnNodeOp:
    """A transaction's Node operation; `node.modify_index` is the CAS index."""

    verb: str
    node: Node


@dataclass(frozen=True, slots=True)
class TxnServiceOp:
    """A transaction's Service operation on `node`; `service.modify_index` is the CAS index."""

    verb: str
    node: str
    service: ServiceInstance


@dataclass(frozen=True, slots=True)
class TxnCheckOp:
    """A transaction's Check operation; `check.modify_index` is the CAS index."""

    verb: str
    check: HealthCheck


@dataclass(frozen=True, slots=True)
class TxnSessionOp:
    verb: str  # "delete"
    session_id: str


TxnOp = KVS | TxnNodeOp | TxnServiceOp | TxnCheckOp | TxnSessionOp


@dataclass(frozen=True, slots=True)
class Txn:
    """An atomic list of KV, Node, Service, Check and Session operations: all apply or none does."""

    ops: tuple[TxnOp, ...] = field(default_factory=tuple)


def encode_txn_op(op: TxnOp) -> list[Any]:
    # A KV op stays [verb, entry] (logs written before catalog ops existed decode unchanged);
    # the others carry their kind first.
    if isinstance(op, KVS):
        return [op.op, op.entry.to_wire()]
    if isinstance(op, TxnNodeOp):
        return ["node", op.verb, op.node.to_wire()]
    if isinstance(op, TxnServiceOp):
        return ["service", op.verb, op.node, op.service.to_wire()]
    if isinstance(op, TxnCheckOp):
        return ["check", op.verb, op.check.to_wire()]
    return ["session", op.verb, op.session_id]


def _strings(*values: Any) -> None:
    if not all(isinstance(v, str) for v in values):
        raise ValueError("a transaction operation's names must be strings")


def decode_txn_op(raw: list[Any]) -> TxnOp:
    """One operation as `encode_txn_op` wrote it; ValueError (or TypeError) for anything else."""
    if len(raw) == 2:
        return KVS(raw[0], DirEntry.from_wire(raw[1]))
    kind = raw[0]
    if kind == "node":
        node = Node.from_wire(raw[2])
        _strings(raw[1], node.node, node.id, node.address)
        return TxnNodeOp(raw[1], node)
    if kind == "service":
        svc = ServiceInstance.from_wire(raw[3])
        _strings(raw[1], raw[2], svc.id, svc.service)
        return TxnServiceOp(raw[1], raw[2], svc)
    if kind == "check":
        check = HealthCheck.from_wire(raw[2])
        _strings(raw[1], check.node, check.check_id, check.service_id, check.status)
        return TxnCheckOp(raw[1], check)
    if kind == "session":
        _strings(raw[1], raw[2])
        return TxnSessionOp(raw[1], raw[2])
    raise ValueError(f"unknown transaction operation {kind!r}")


def txn_op_writes(op: TxnOp) -> bool:
    """Whether the operation changes state (a transaction of reads only is served as a read)."""
    if isinstance(op, KVS):
        return op.op in KV_WRITE_VERBS
    if isinstance(op, TxnSessionOp):
        return True
    return op.verb != "get"


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Restore:
    """Replace the store with `data` (a `Store.snapshot()` blob), on every server at one index."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CoordinateBatchUpdate:
    """Many nodes' latest coordinates in one entry: (node, segment, coordinate) triples."""

    updates: tuple[tuple[str, str, Coordinate], ...] = ()


@dataclass(frozen=True, slots=True)
class PreparedQueryOp:
    """Create, update or delete one prepared query (the ID is chosen before proposing)."""

    op: str  # "create" | "update" | "delete"
    query: PreparedQuery


@dataclass(frozen=True, slots=True)
class AutopilotSetConfig:
    """Replace the autopilot configuration (Consul's field names, durations in seconds);
    with `cas`, only if its ModifyIndex is still `index` (0: only if never set)."""

    config: tuple[tuple[str, Any], ...]
    cas: bool = False
    index: int = 0


class ACLOpKind:
    INIT = "init"  # payload: initial management token wire or None
    BOOTSTRAP = "bootstrap"  # payload: [token wire, reset index]
    TOKEN_CREATE = "token-create"  # payload: token wire
    TOKEN_UPDATE = "token-update"
    TOKEN_DELETE = "token-delete"  # payload: accessor ID
    POLICY_CREATE = "policy-create"  # payload: policy wire
    POLICY_UPDATE = "policy-update"
    POLICY_DELETE = "policy-delete"  # payload: policy ID
    ROLE_CREATE = "role-create"  # payload: role wire
    ROLE_UPDATE = "role-update"
    ROLE_DELETE = "role-delete"  # payload: role ID


@dataclass(frozen=True, slots=True)
class ACLOp:
    """One ACL write; `payload` is plain data (record wire forms, IDs), see ACLOpKind."""

    op: str
    payload: Any = None


Command = (
    Register | Deregister | KVS | SessionOp | Txn | Noop | Restore | CoordinateBatchUpdate | PreparedQueryOp
    | AutopilotSetConfig | ACLOp
)


_KVS = int(CommandType.KVS)
# msgpack.packb builds a Packer (and its buffer) per call, which was half the cost of encoding
# a KV write; KV writes share one instead. Sharing is safe without a lock: `pack` is one C call
# that runs no Python code for the types a KV command holds (str, bytes, int, None, lists), so
# no other thread or finalizer can enter it meanwhile, and it resets itself after an error. A
# packer keeps its buffer's largest size, so one that packed a large value is replaced.
_KEEP_PACKER = 64 * 1024
_packer = msgpack.Packer(use_bin_type=True)


def _pack_small(obj: Any) -> bytes:
    """`msgpack.packb(obj, use_bin_type=True)` with the shared packer."""
    global _packer
    out = _packer.pack(obj)
    if len(out) > _KEEP_PACKER:
        _packer = msgpack.Packer(use_bin_type=True)
    return out


def encode(command: Command) -> bytes:
    """Encode a command as msgpack bytes: [type, payload]."""
    if isinstance(command, KVS):  # every KV write: the hot case
        payload: Any = [command.op, command.entry.to_wire()]
        if command.checked_at:
            payload.append(command.checked_at)
        return _pack_small([_KVS, payload])
    if isinstance(command, Register):
        payload = [
            command.node.to_wire(),
            command.service.to_wire() if command.service else None,
            [c.to_wire() for c in command.checks],
            command.skip_node_update,
        ]
        kind = CommandType.REGISTER
    elif isinstance(command, Deregister):
        payload = [command.node, command.service_id, command.check_id]
        kind = CommandType.DEREGISTER
    elif isinstance(command, SessionOp):
        payload = [command.op, command.session.to_wire()]
        kind = CommandType.SESSION
    elif isinstance(command, Txn):
        payload = [encode_txn_op(op) for op in command.ops]
        kind = CommandType.TXN
    elif isinstance(command, Noop):
        payload = None
        kind = CommandType.NOOP
    elif isinstance(command, Restore):
        payload = command.data
        kind = CommandType.RESTORE
    elif isinstance(command, CoordinateBatchUpdate):
        payload = [[node, segment, coord.to_wire()] for node, segment, coord in command.updates]
        kind = CommandType.COORDINATE_BATCH_UPDATE
    elif isinstance(command, PreparedQueryOp):
        payload = [command.op, command.query.to_wire()]
        kind = CommandType.PREPARED_QUERY
    elif isinstance(command, AutopilotSetConfig):
        payload = [[list(kv) for kv in command.config], command.cas, command.index]
        kind = CommandType.AUTOPILOT_CONFIG
    elif isinstance(command, ACLOp):
        payload = [command.op, command.payload]
        kind = CommandType.ACL
    else:  # pragma: no cover - the Union is closed
        raise TypeError(f"not a command: {command!r}")
    return msgpack.packb([int(kind), payload], use_bin_type=True)


def _unpack(data: bytes) -> tuple[Any, Any]:
    """(kind, payload) of an encoded command; ValueError when it is not one."""
    try:
        kind, payload = msgpack.unpackb(data, raw=False)
        if type(kind) is not int or kind != _KVS:  # every KV write skips the enum's lookup
            kind = CommandType(kind)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"undecodable command: {exc}") from exc
    return kind, payload


def decode(data: bytes) -> Command:
    """Decode bytes produced by `encode`; raises ValueError on anything else."""
    kind, payload = _unpack(data)
    return _decode(kind, payload)


# What `decode_for_apply` answers for a plain KV set: the only fields the store's set reads.
KVSetFields = tuple[str, Any, Any]


def decode_for_apply(data: bytes) -> Command | KVSetFields:
    """`decode(data)`, except that a plain KV set (the write every member applies most) comes
    back as the tuple (key, value, flags) for `FSM.apply_kv_set`: no KVS and no DirEntry that
    the store would only read three fields of and then rebuild. Only the exact shape `encode`
    writes for a set takes that path ([KVS, ["set", flat entry list]], no `checked_at`); any
    other shape decodes as `decode` does, so both paths build the same state."""
    kind, payload = _unpack(data)
    if kind == _KVS and type(payload) is list and len(payload) == 2:
        op, wire = payload
        if type(op) is str and op == KVOp.SET and type(wire) is list and 0 < len(wire) <= _DIR_ENTRY_FIELDS:
            for v in wire:
                if type(v) is list:
                    break
            else:
                n = len(wire)
                return (wire[0], wire[1] if n > 1 else None, wire[2] if n > 2 else 0)
    return _decode(kind, payload)


def _decode(kind: Any, payload: Any) -> Command:
    if kind == _KVS:
        checked_at = int(payload[2]) if len(payload) > 2 else 0
        return KVS(payload[0], _dir_entry(payload[1]), checked_at)
    if kind is CommandType.REGISTER:
        return Register(
            Node.from_wire(payload[0]),
            ServiceInstance.from_wire(payload[1]) if payload[1] is not None else None,
            tuple(HealthCheck.from_wire(c) for c in payload[2]),
            bool(payload[3]),
        )
    if kind is CommandType.DEREGISTER:
        return Deregister(*payload)
    if kind is CommandType.SESSION:
        return SessionOp(payload[0], Session.from_wire(payload[1]))
    if kind is CommandType.TXN:
        try:
            return Txn(tuple(decode_txn_op(op) for op in payload))
        except (TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ValueError(f"undecodable transaction: {exc}") from None
    if kind is CommandType.RESTORE:
        return Restore(bytes(payload))
    if kind is CommandType.COORDINATE_BATCH_UPDATE:
        return CoordinateBatchUpdate(tuple((str(n), str(seg), Coordinate.from_wire(c)) for n, seg, c in payload))
    if kind is CommandType.PREPARED_QUERY:
        try:
            return _decode_prepared_query(payload)
        except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
            raise ValueError(f"undecodable prepared query command: {exc}") from None
    if kind is CommandType.AUTOPILOT_CONFIG:
        return AutopilotSetConfig(tuple((str(k), v) for k, v in payload[0]), bool(payload[1]), int(payload[2]))
    if kind is CommandType.ACL:
        return ACLOp(str(payload[0]), payload[1])
    return Noop()


_DIR_ENTRY_FIELDS = len(DirEntry.__dataclass_fields__)


def _dir_entry(wire: Any) -> DirEntry:
    """`DirEntry.from_wire`, built positionally when the wire list is the flat shape every
    server writes (no more values than fields, none of them a list): the same object, without
    the keyword dict and the per-value freeze, which every member pays for every KV write."""
    if type(wire) is list and len(wire) <= _DIR_ENTRY_FIELDS:
        for v in wire:
            if type(v) is list:
                break
        else:
            return DirEntry(*wire)
    return DirEntry.from_wire(wire)


def _decode_prepared_query(payload: Any) -> PreparedQueryOp:
    """A prepared query op whose definition is checked as the HTTP endpoint checks it, so that
    a malformed entry (a forged `Raft.Apply`) is refused here instead of failing in the FSM."""
    op, raw = payload
    query = PreparedQuery.from_wire(raw)
    if op not in ("create", "update", "delete") or not isinstance(query.id, str) or not query.id:
        raise ValueError(f"bad prepared query operation {op!r}")
    if op == "delete":
        return PreparedQueryOp(op, PreparedQuery(query.id))
    definition = prepared_query.normalize(query.definition)
    return PreparedQueryOp(op, PreparedQuery(query.id, definition["Name"], definition["Session"], definition,
                                             int(query.create_index), int(query.modify_index)))
