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
from proconsul.state.records import DirEntry, HealthCheck, Node, ServiceInstance, Session


class CommandType(IntEnum):
    REGISTER = 1
    DEREGISTER = 2
    KVS = 3
    SESSION = 4
    TXN = 5
    NOOP = 6  # written by a new leader to commit entries of earlier terms
    RESTORE = 7  # replace the whole store with a snapshot's (`PUT /v1/snapshot`)
    COORDINATE_BATCH_UPDATE = 8  # network coordinates batched by the leader (Coordinate.Update)
    ACL = 9  # token, policy and role writes, bootstrap and the leader's ACL initialisation


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
    """One KV operation; `entry.modify_index` carries the CAS index for cas/delete-cas."""

    op: str
    entry: DirEntry


@dataclass(frozen=True, slots=True)
class SessionOp:
    op: str  # "create" | "destroy"
    session: Session


@dataclass(frozen=True, slots=True)
class Txn:
    """An atomic list of KV operations: all apply or none does."""

    ops: tuple[KVS, ...] = field(default_factory=tuple)


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


Command = Register | Deregister | KVS | SessionOp | Txn | Noop | Restore | CoordinateBatchUpdate | ACLOp


def encode(command: Command) -> bytes:
    """Encode a command as msgpack bytes: [type, payload]."""
    if isinstance(command, KVS):
        payload: Any = [command.op, command.entry.to_wire()]
        kind = CommandType.KVS
    elif isinstance(command, Register):
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
        payload = [[op.op, op.entry.to_wire()] for op in command.ops]
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
    elif isinstance(command, ACLOp):
        payload = [command.op, command.payload]
        kind = CommandType.ACL
    else:  # pragma: no cover - the Union is closed
        raise TypeError(f"not a command: {command!r}")
    return msgpack.packb([int(kind), payload], use_bin_type=True)


def decode(data: bytes) -> Command:
    """Decode bytes produced by `encode`; raises ValueError on anything else."""
    try:
        kind, payload = msgpack.unpackb(data, raw=False)
        kind = CommandType(kind)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"undecodable command: {exc}") from exc
    if kind is CommandType.KVS:
        return KVS(payload[0], DirEntry.from_wire(payload[1]))
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
        return Txn(tuple(KVS(op, DirEntry.from_wire(e)) for op, e in payload))
    if kind is CommandType.RESTORE:
        return Restore(bytes(payload))
    if kind is CommandType.COORDINATE_BATCH_UPDATE:
        return CoordinateBatchUpdate(tuple((str(n), str(seg), Coordinate.from_wire(c)) for n, seg, c in payload))
    if kind is CommandType.ACL:
        return ACLOp(str(payload[0]), payload[1])
    return Noop()
