"""Which permission an FSM command needs, as Consul's endpoints check it.

Owns the mapping from a write (catalog register/deregister, KV, session, transaction) to the
permissions its caller's token must hold: the HTTP handlers check it before proposing, and a server
checks it again for a write that arrives over RPC with the caller's token (`Client.Write`), so a
client agent's request is authorised by the server that resolves the token. Lookups (the name of a
service being deregistered, the node of a session being destroyed) come from the caller.
"""

from __future__ import annotations

from collections.abc import Callable

from proconsul.acl.authorizer import Authorizer, PermissionDenied
from proconsul.acl.rules import LIST, READ, WRITE
from proconsul.state import commands
from proconsul.state.records import Node

ServiceName = Callable[[str, str], str | None]  # (node, service ID) -> service name
SessionNode = Callable[[str], str | None]  # session ID -> node
NodeUnchanged = Callable[[Node], bool]  # is this node already registered exactly so?


def authorize(
    authz: Authorizer,
    command: commands.Command,
    service_name: ServiceName = lambda node, sid: None,
    session_node: SessionNode = lambda sid: None,
    node_unchanged: NodeUnchanged = lambda node: False,
) -> None:
    """Raise PermissionDenied unless `authz` may apply `command`."""
    if authz.management:
        return
    if isinstance(command, commands.Register):
        # Creating or changing the node itself needs node:write (Consul's vetRegisterWithACL).
        if not command.skip_node_update and not node_unchanged(command.node):
            authz.require("node", command.node.node, WRITE)
        if command.service is not None:
            authz.require("service", command.service.service, WRITE)
        for check in command.checks:
            if check.service_id and command.service is not None and check.service_id == command.service.id:
                continue
            if check.service_id:
                name = check.service_name or service_name(command.node.node, check.service_id) or ""
                authz.require("service", name, WRITE)
            else:
                authz.require("node", command.node.node, WRITE)
        return
    if isinstance(command, commands.Deregister):
        if command.service_id:
            name = service_name(command.node, command.service_id)
            if name is not None and authz.allowed("service", name, WRITE):
                return
        authz.require("node", command.node, WRITE)
        return
    if isinstance(command, commands.KVS):
        authorize_kv(authz, command)
        return
    if isinstance(command, commands.Txn):
        for op in command.ops:
            authorize_txn_op(authz, op, session_node)
        return
    if isinstance(command, commands.SessionOp):
        node = command.session.node if command.op == "create" else (session_node(command.session.id) or "")
        authz.require("session", node, WRITE)
        return
    if isinstance(command, commands.ACLOp):
        if command.op == commands.ACLOpKind.BOOTSTRAP:
            return  # needs no token: the store allows it once (or with the reset index)
        if command.op != commands.ACLOpKind.INIT:
            authz.require_single("acl", WRITE)
            return
    # Everything else (restore, ACL init, coordinates, noop) is management-only over RPC.
    authz.require_management()


def authorize_kv(authz: Authorizer, op: commands.KVS) -> None:
    key = op.entry.key
    if op.op == commands.KVOp.DELETE_TREE:
        if not authz.key_write_prefix(key):
            raise PermissionDenied(authz.accessor, "key", WRITE, key)
    elif op.op in commands.KV_WRITE_VERBS:
        authz.require("key", key, WRITE)
    elif op.op == commands.KVOp.GET_TREE:
        authz.require("key", key, LIST if authz.allowed("key", key, LIST) else READ)
    else:
        authz.require("key", key, READ)


def authorize_txn_op(
    authz: Authorizer, op: commands.TxnOp, session_node: SessionNode = lambda sid: None
) -> None:
    """One transaction operation: KV as its endpoint; Node, Service and Check operations need
    read (for `get`) or write on the node, the service, or the check's service (its node when it
    has none), as Consul's txn endpoint vets them; a Session delete needs session:write on the
    session's node."""
    if isinstance(op, commands.KVS):
        authorize_kv(authz, op)
        return
    if authz.management:
        return
    if isinstance(op, commands.TxnSessionOp):
        authz.require("session", session_node(op.session_id) or "", WRITE)
        return
    access = READ if op.verb == "get" else WRITE
    if isinstance(op, commands.TxnNodeOp):
        authz.require("node", op.node.node, access)
    elif isinstance(op, commands.TxnServiceOp):
        authz.require("service", op.service.service, access)
    elif isinstance(op, commands.TxnCheckOp):
        if op.check.service_id:
            authz.require("service", op.check.service_name, access)
        else:
            authz.require("node", op.check.node, access)


def same_node(stored: Node | None, wanted: Node) -> bool:
    """A registration leaves the node as it is (so service:write alone is enough for it)."""
    return stored is not None and (
        stored.id == wanted.id or not wanted.id
    ) and stored.address == wanted.address and dict(stored.meta) == dict(wanted.meta) and dict(
        stored.tagged_addresses) == dict(wanted.tagged_addresses or stored.tagged_addresses)
