"""Immutable records stored in the state store's tables, and their wire form.

Owns the shape of catalog nodes, service instances, health checks, KV entries and sessions as
the store keeps them. Records are frozen: an update builds a new record, so a reader may hold one
across writes without copying (the store shares them between index versions). Each record can
turn itself into plain msgpack-able values (`to_wire`) and back, for FSM commands and snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    # dataclasses.fields() is slow enough to show in the write path's profile: cache per class.
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    return names


class _Wire:
    """Mixin: positional list encoding in field order (append-only: new fields go last)."""

    __slots__ = ()

    def to_wire(self) -> list[Any]:
        return [getattr(self, n) for n in _names(type(self))]

    @classmethod
    def from_wire(cls: type[T], data: list[Any]) -> T:
        # Not strict: an entry written before a field was appended has fewer values.
        return cls(**{n: _freeze(v) for n, v in zip(_names(cls), data, strict=False)})


@dataclass(frozen=True, slots=True)
class Node(_Wire):
    node: str
    id: str = ""
    address: str = ""
    datacenter: str = ""
    tagged_addresses: Mapping[str, str] = None  # type: ignore[assignment]
    meta: Mapping[str, str] = None  # type: ignore[assignment]
    create_index: int = 0
    modify_index: int = 0

    def __post_init__(self) -> None:
        if self.tagged_addresses is None:
            object.__setattr__(self, "tagged_addresses", {})
        if self.meta is None:
            object.__setattr__(self, "meta", {})


@dataclass(frozen=True, slots=True)
class ServiceInstance(_Wire):
    """A service registered on a node (Consul's NodeService)."""

    node: str
    id: str
    service: str
    tags: tuple[str, ...] = ()
    address: str = ""
    tagged_addresses: Mapping[str, Any] = None  # type: ignore[assignment]
    meta: Mapping[str, str] = None  # type: ignore[assignment]
    port: int = 0
    weights: tuple[int, int] = (1, 1)
    enable_tag_override: bool = False
    kind: str = ""
    extra: Mapping[str, Any] = None  # type: ignore[assignment]  # Proxy, Connect, Locality...
    create_index: int = 0
    modify_index: int = 0

    def __post_init__(self) -> None:
        for name in ("tagged_addresses", "meta", "extra"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, {})
        if isinstance(self.weights, list):
            object.__setattr__(self, "weights", tuple(self.weights))


@dataclass(frozen=True, slots=True)
class HealthCheck(_Wire):
    node: str
    check_id: str
    name: str = ""
    status: str = "critical"
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    type: str = ""
    interval: str = ""  # Go duration text, as Consul shows it in the catalog
    timeout: str = ""
    definition: Mapping[str, Any] = None  # type: ignore[assignment]
    create_index: int = 0
    modify_index: int = 0

    def __post_init__(self) -> None:
        if self.definition is None:
            object.__setattr__(self, "definition", {})


@dataclass(frozen=True, slots=True)
class DirEntry(_Wire):
    key: str
    value: bytes | None = None
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0

    def to_wire(self) -> list[Any]:
        # `_Wire.to_wire` spelled out: every KV write encodes one. Checked against the fields
        # below, so a field appended to the class cannot be left out of the wire form.
        return [self.key, self.value, self.flags, self.session, self.lock_index, self.create_index,
                self.modify_index]


if _names(DirEntry) != ("key", "value", "flags", "session", "lock_index", "create_index", "modify_index"):
    raise TypeError("DirEntry.to_wire must list DirEntry's fields in order")


@dataclass(frozen=True, slots=True)
class Session(_Wire):
    id: str
    name: str = ""
    node: str = ""
    node_checks: tuple[str, ...] = ()
    service_checks: tuple[tuple[str, str], ...] = ()  # (check ID, namespace)
    lock_delay_ns: int = 15_000_000_000
    behavior: str = "release"
    ttl: str = ""
    create_index: int = 0
    modify_index: int = 0

    def check_ids(self) -> tuple[str, ...]:
        return self.node_checks + tuple(c for c, _ in self.service_checks)


@dataclass(frozen=True, slots=True)
class PreparedQuery(_Wire):
    """A prepared query: its ID and name (indexed), its session, and the whole definition in
    its canonical JSON form (`state.prepared_query.normalize`), never mutated once stored."""

    id: str
    name: str = ""
    session: str = ""
    definition: Mapping[str, Any] = None  # type: ignore[assignment]
    create_index: int = 0
    modify_index: int = 0

    def __post_init__(self) -> None:
        if self.definition is None:
            object.__setattr__(self, "definition", {})
