"""Store records rendered as Consul's JSON objects.

Owns the exact field names and shapes that Consul's HTTP API returns for nodes, services,
checks, KV entries and sessions, so that every route module renders a record the same way. Pure
functions of the records; it lives beside them so the server's named queries (which answer in
this form) and `http/` both use it without the server importing upward.
"""

from __future__ import annotations

import base64
from typing import Any

from proconsul.state import protection
from proconsul.state.records import DirEntry, HealthCheck, Node, ServiceInstance, Session


def _weights(svc: ServiceInstance) -> dict[str, int]:
    return {"Passing": svc.weights[0], "Warning": svc.weights[1]}


def node(n: Node) -> dict[str, Any]:
    return {
        "ID": n.id,
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": dict(n.tagged_addresses) or None,
        "Meta": dict(n.meta) or None,
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    }


def catalog_node(n: Node) -> dict[str, Any]:
    """`/v1/catalog/nodes` items (Consul always sends TaggedAddresses lan/wan there)."""
    out = node(n)
    tagged = dict(n.tagged_addresses)
    if n.address:
        tagged.setdefault("lan", n.address)
        tagged.setdefault("lan_ipv4", n.address)
        tagged.setdefault("wan", n.address)
        tagged.setdefault("wan_ipv4", n.address)
    out["TaggedAddresses"] = tagged or None
    out["Meta"] = dict(n.meta)
    return out


_PROXY_KINDS = frozenset({"connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"})


def service(svc: ServiceInstance) -> dict[str, Any]:
    """A NodeService as `/v1/catalog/node` and health entries show it.

    Go's omitempty on NodeService drops Kind, TaggedAddresses and Port when empty or zero;
    Proxy and Connect are structs, never omitted; PeerName has no omitempty there.
    """
    out: dict[str, Any] = {}
    if svc.kind:
        out["Kind"] = svc.kind
    out["ID"] = svc.id
    out["Service"] = svc.service
    out["Tags"] = list(svc.tags)
    out["Address"] = svc.address
    if svc.tagged_addresses:
        out["TaggedAddresses"] = dict(svc.tagged_addresses)
    out["Meta"] = dict(svc.meta)
    if svc.port:
        out["Port"] = svc.port
    out["Weights"] = _weights(svc)
    out["EnableTagOverride"] = svc.enable_tag_override
    if threshold := protection.threshold_of(svc):
        out[protection.THRESHOLD_FIELD] = threshold  # proconsul's own field, only when set
    out["Proxy"] = svc.extra.get("Proxy") or {"Mode": "", "MeshGateway": {}, "Expose": {}}
    out["Connect"] = svc.extra.get("Connect") or {}
    out["PeerName"] = ""
    out["CreateIndex"] = svc.create_index
    out["ModifyIndex"] = svc.modify_index
    return out


def agent_service(svc: ServiceInstance, datacenter: str) -> dict[str, Any]:
    """An AgentService as `/v1/agent/services` and `/v1/agent/service/:id` show it.

    Consul builds it from the api package's struct: Port always present, no raft indexes or
    PeerName, Proxy only for proxies and gateways, Connect only for a Connect-native service.
    """
    out: dict[str, Any] = {}
    if svc.kind:
        out["Kind"] = svc.kind
    out["ID"] = svc.id
    out["Service"] = svc.service
    out["Tags"] = list(svc.tags)
    out["Meta"] = dict(svc.meta)
    out["Port"] = svc.port
    out["Address"] = svc.address
    if svc.tagged_addresses:
        out["TaggedAddresses"] = dict(svc.tagged_addresses)
    out["Weights"] = _weights(svc)
    out["EnableTagOverride"] = svc.enable_tag_override
    if threshold := protection.threshold_of(svc):
        out[protection.THRESHOLD_FIELD] = threshold  # proconsul's own field, only when set
    if svc.kind in _PROXY_KINDS:
        out["Proxy"] = svc.extra.get("Proxy") or {"MeshGateway": {}, "Expose": {}}
    connect = svc.extra.get("Connect") or {}
    if connect.get("Native"):
        out["Connect"] = {"Native": True}
    out["Datacenter"] = datacenter
    return out


def service_node(n: Node, svc: ServiceInstance) -> dict[str, Any]:
    """`/v1/catalog/service/:name` items: node fields plus flattened `ServiceXxx` fields.

    Of the ServiceNode fields only ServiceTaggedAddresses (and PeerName) carry omitempty;
    ServiceLocality is a pointer without it, so it is always there, null when unset.
    """
    out: dict[str, Any] = {
        "ID": n.id,
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": dict(n.tagged_addresses) or None,
        "NodeMeta": dict(n.meta),
        "ServiceKind": svc.kind,
        "ServiceID": svc.id,
        "ServiceName": svc.service,
        "ServiceTags": list(svc.tags),
        "ServiceAddress": svc.address,
    }
    if svc.tagged_addresses:
        out["ServiceTaggedAddresses"] = dict(svc.tagged_addresses)
    out.update({
        "ServiceWeights": _weights(svc),
        "ServiceMeta": dict(svc.meta),
        "ServicePort": svc.port,
        "ServiceSocketPath": "",
        "ServiceEnableTagOverride": svc.enable_tag_override,
        "ServiceProxy": svc.extra.get("Proxy") or {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "ServiceConnect": svc.extra.get("Connect") or {},
        "ServiceLocality": None,
        "CreateIndex": svc.create_index,
        "ModifyIndex": svc.modify_index,
    })
    return out


def check(c: HealthCheck) -> dict[str, Any]:
    return {
        "Node": c.node,
        "CheckID": c.check_id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": list(c.service_tags),
        "Type": c.type,
        "Interval": c.interval,
        "Timeout": c.timeout,
        "ExposedPort": 0,
        "Definition": dict(c.definition),
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    }


def dir_entry(e: DirEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        # Consul stores an empty body as a nil []byte, which Go's encoder writes as null, not "".
        "Value": base64.b64encode(e.value).decode() if e.value else None,
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    }
    if e.session:
        out["Session"] = e.session
    return out


def txn_result(r: Any) -> dict[str, Any]:
    """One transaction result as Consul's TxnResult: {"KV"|"Node"|"Service"|"Check": ...}."""
    if isinstance(r, DirEntry):
        return {"KV": dir_entry(r)}
    if isinstance(r, Node):
        return {"Node": node(r)}
    if isinstance(r, ServiceInstance):
        return {"Service": service(r)}
    if isinstance(r, HealthCheck):
        return {"Check": check(r)}
    raise TypeError(f"not a transaction result: {r!r}")


def session(s: Session) -> dict[str, Any]:
    return {
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay_ns,
        "Behavior": s.behavior,
        "TTL": s.ttl,
        "NodeChecks": list(s.node_checks),
        "ServiceChecks": [{"ID": cid, "Namespace": ns} for cid, ns in s.service_checks] or None,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    }
