"""Store records rendered as Consul's JSON objects.

Owns the exact field names and shapes that Consul's HTTP API returns for nodes, services,
checks, KV entries and sessions, so that every route module renders a record the same way. Pure
functions of the records; it lives beside them so the server's named queries (which answer in
this form) and `http/` both use it without the server importing upward.
"""

from __future__ import annotations

import base64
from typing import Any

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


def service(svc: ServiceInstance, datacenter: str = "") -> dict[str, Any]:
    """A NodeService as `/v1/agent/services`, `/v1/catalog/node` and health entries show it."""
    out: dict[str, Any] = {
        "ID": svc.id,
        "Service": svc.service,
        "Tags": list(svc.tags),
        "Address": svc.address,
        "TaggedAddresses": dict(svc.tagged_addresses) or None,
        "Meta": dict(svc.meta),
        "Port": svc.port,
        "Weights": _weights(svc),
        "EnableTagOverride": svc.enable_tag_override,
        "Proxy": svc.extra.get("Proxy") or {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "Connect": svc.extra.get("Connect") or {},
        "PeerName": "",
        "CreateIndex": svc.create_index,
        "ModifyIndex": svc.modify_index,
    }
    if svc.kind:
        out["Kind"] = svc.kind
    if datacenter:
        out["Datacenter"] = datacenter
    return out


def agent_service(svc: ServiceInstance, datacenter: str) -> dict[str, Any]:
    out = service(svc, datacenter)
    out.pop("CreateIndex")
    out.pop("ModifyIndex")
    out.pop("PeerName")
    return out


def service_node(n: Node, svc: ServiceInstance) -> dict[str, Any]:
    """`/v1/catalog/service/:name` items: node fields plus flattened `ServiceXxx` fields."""
    return {
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
        "ServiceTaggedAddresses": dict(svc.tagged_addresses) or None,
        "ServiceWeights": _weights(svc),
        "ServiceMeta": dict(svc.meta),
        "ServicePort": svc.port,
        "ServiceSocketPath": "",
        "ServiceEnableTagOverride": svc.enable_tag_override,
        "ServiceProxy": svc.extra.get("Proxy") or {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "ServiceConnect": svc.extra.get("Connect") or {},
        "CreateIndex": svc.create_index,
        "ModifyIndex": svc.modify_index,
    }


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
        "Value": base64.b64encode(e.value).decode() if e.value is not None else None,
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    }
    if e.session:
        out["Session"] = e.session
    return out


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
