"""Service and check definitions as users write them, decoded once for every entry point.

Owns the decoding of Consul's service and check definition objects, which arrive from three
places with the same schema: agent config files (snake_case, strict about unknown keys), the
agent HTTP API (`/v1/agent/service/register`, `/v1/agent/check/register`: PascalCase or
snake_case, unknown keys ignored as Go's JSON decoder does) and `/v1/catalog/register`.

Key matching follows Go: encoding/json matches field names case-insensitively, and Consul
additionally translates snake_case aliases, so a key is canonicalised by lower-casing it and
dropping underscores (`deregister_critical_service_after` == `DeregisterCriticalServiceAfter`).
Errors are collected, never raised one at a time, each naming the key path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proconsul.durations import parse_duration

HEALTH_PASSING = "passing"
HEALTH_WARNING = "warning"
HEALTH_CRITICAL = "critical"
HEALTH_MAINT = "maintenance"
HEALTH_ANY = "any"
CHECK_STATUSES = (HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL)

SERF_CHECK_ID = "serfHealth"
SERF_CHECK_NAME = "Serf Health Status"
NODE_MAINT_CHECK_ID = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"


class DecodeError(ValueError):
    """A definition could not be decoded; `.errors` lists every problem as `key: reason`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def canonical_key(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


@dataclass(frozen=True, slots=True)
class CheckDefinition:
    """One health check as defined on an agent (the check runner's input)."""

    id: str
    name: str
    service_id: str = ""
    notes: str = ""
    status: str = ""  # initial status; "" means the Consul default (critical)
    type: str = ""  # ttl | http | tcp | script | grpc | alias | udp | h2ping | docker | os_service
    interval_s: float = 0.0
    timeout_s: float = 0.0
    ttl_s: float = 0.0
    http: str = ""
    method: str = ""
    header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    body: str = ""
    tls_server_name: str = ""
    tls_skip_verify: bool = False
    disable_redirects: bool = False
    tcp: str = ""
    tcp_use_tls: bool = False
    udp: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    args: tuple[str, ...] = ()
    alias_node: str = ""
    alias_service: str = ""
    h2ping: str = ""
    docker_container_id: str = ""
    os_service: str = ""
    deregister_critical_service_after_s: float = 0.0
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    output_max_size: int = 0
    flap_detection: bool | None = None  # proconsul's FlapDetection; None: the agent's check_flap_detection


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    """One service as defined on an agent, with its checks (IDs already assigned)."""

    id: str
    name: str
    tags: tuple[str, ...] = ()
    address: str = ""
    tagged_addresses: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    socket_path: str = ""
    kind: str = ""
    weights: tuple[int, int] = (1, 1)  # (passing, warning)
    enable_tag_override: bool = False
    checks: tuple[CheckDefinition, ...] = ()
    # Anything else the caller sent that we keep verbatim (Proxy, Connect, Locality...).
    extra: Mapping[str, Any] = field(default_factory=dict)
    # proconsul's ProtectionThreshold (0 = off): below this fraction of passing instances,
    # `?passing` and DNS answer every instance (see proconsul.server.protection).
    protection_threshold: float = 0.0


# ---------------------------------------------------------------------------------------------
# Field readers: each takes (value, path, errors) and returns the converted value or None.


def _duration(value: Any, path: str, errors: list[str]) -> float | None:
    if isinstance(value, bool):
        errors.append(f"{path}: expected a duration, got a boolean")
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        errors.append(f"{path}: {exc}")
        return None


def _string(value: Any, path: str, errors: list[str]) -> str | None:
    if isinstance(value, str):
        return value
    errors.append(f"{path}: expected a string, got {_type_name(value)}")
    return None


def _int(value: Any, path: str, errors: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # HCL and JSON configs sometimes carry numbers as strings; Consul's weak decoding allows it.
        if isinstance(value, str):
            try:
                return int(value, 10)
            except ValueError:
                pass
        errors.append(f"{path}: expected an integer, got {_type_name(value)}")
        return None
    if isinstance(value, float) and not value.is_integer():
        errors.append(f"{path}: expected an integer, got {value}")
        return None
    return int(value)


def _fraction(value: Any, path: str, errors: list[str]) -> float | None:
    """A number in [0, 1] (strings allowed, as weak decoding allows for numbers)."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not 0.0 <= number <= 1.0:  # NaN fails both comparisons
        errors.append(f"{path}: expected a number between 0 and 1, got {value!r}"[:200])
        return None
    return number


def _bool(value: Any, path: str, errors: list[str]) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    errors.append(f"{path}: expected a boolean, got {_type_name(value)}")
    return None


def _string_list(value: Any, path: str, errors: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(f"{path}: expected a list of strings, got {_type_name(value)}")
        return None
    return tuple(value)


def _string_map(value: Any, path: str, errors: list[str]) -> dict[str, str] | None:
    if value is None:
        return {}
    if isinstance(value, list):  # HCL1 renders a block as a list of one map
        merged: dict[str, Any] = {}
        for part in value:
            if isinstance(part, dict):
                merged.update(part)
        value = merged
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        errors.append(f"{path}: expected a map of strings, got {_type_name(value)}")
        return None
    return dict(value)


def _header(value: Any, path: str, errors: list[str]) -> dict[str, tuple[str, ...]] | None:
    if value is None:
        return {}
    if isinstance(value, list):
        merged: dict[str, Any] = {}
        for part in value:
            if isinstance(part, dict):
                merged.update(part)
        value = merged
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a map of string lists, got {_type_name(value)}")
        return None
    out: dict[str, tuple[str, ...]] = {}
    for name, vals in value.items():
        if isinstance(vals, str):
            vals = [vals]
        got = _string_list(vals, f"{path}.{name}", errors)
        if got is not None:
            out[str(name)] = got
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_Reader = Callable[[Any, str, list[str]], Any]

# canonical key -> (attribute name, reader)
_CHECK_FIELDS: dict[str, tuple[str, _Reader]] = {
    "id": ("id", _string),
    "checkid": ("id", _string),
    "name": ("name", _string),
    "serviceid": ("service_id", _string),
    "notes": ("notes", _string),
    "status": ("status", _string),
    "interval": ("interval_s", _duration),
    "timeout": ("timeout_s", _duration),
    "ttl": ("ttl_s", _duration),
    "http": ("http", _string),
    "method": ("method", _string),
    "header": ("header", _header),
    "body": ("body", _string),
    "tlsservername": ("tls_server_name", _string),
    "tlsskipverify": ("tls_skip_verify", _bool),
    "disableredirects": ("disable_redirects", _bool),
    "tcp": ("tcp", _string),
    "tcpusetls": ("tcp_use_tls", _bool),
    "udp": ("udp", _string),
    "grpc": ("grpc", _string),
    "grpcusetls": ("grpc_use_tls", _bool),
    "args": ("args", _string_list),
    "scriptargs": ("args", _string_list),
    "aliasnode": ("alias_node", _string),
    "aliasservice": ("alias_service", _string),
    "h2ping": ("h2ping", _string),
    "h2pingusetls": ("", _bool),
    "dockercontainerid": ("docker_container_id", _string),
    "shell": ("", _string),
    "osservice": ("os_service", _string),
    "deregistercriticalserviceafter": ("deregister_critical_service_after_s", _duration),
    "successbeforepassing": ("success_before_passing", _int),
    "failuresbeforewarning": ("failures_before_warning", _int),
    "failuresbeforecritical": ("failures_before_critical", _int),
    "outputmaxsize": ("output_max_size", _int),
    "flapdetection": ("flap_detection", _bool),
    # Accepted and ignored, as Consul ignores them outside their features.
    "type": ("", _string),
    "node": ("", _string),
    "servicename": ("", _string),
    "servicetags": ("", _string_list),
    "definition": ("", lambda v, p, e: v),
    "exposedport": ("", _int),
    "namespace": ("", _string),
    "partition": ("", _string),
    "script": ("", _string),
}

_SERVICE_FIELDS: dict[str, tuple[str, _Reader]] = {
    "id": ("id", _string),
    "name": ("name", _string),
    "tags": ("tags", _string_list),
    "address": ("address", _string),
    "meta": ("meta", _string_map),
    "port": ("port", _int),
    "socketpath": ("socket_path", _string),
    "kind": ("kind", _string),
    "enabletagoverride": ("enable_tag_override", _bool),
    "protectionthreshold": ("protection_threshold", _fraction),
}
_SERVICE_KEPT = {
    "taggedaddresses": "TaggedAddresses",
    "proxy": "Proxy",
    "connect": "Connect",
    "locality": "Locality",
    "namespace": "Namespace",
    "partition": "Partition",
    "token": "Token",
}


def _check_type(attrs: dict[str, Any]) -> str:
    if attrs.get("docker_container_id"):
        return "docker"  # before args: a docker check's args run in the container, never here
    if attrs.get("args"):
        return "script"
    for attr, name in (
        ("http", "http"),
        ("tcp", "tcp"),
        ("udp", "udp"),
        ("grpc", "grpc"),
        ("h2ping", "h2ping"),
        ("os_service", "os_service"),
    ):
        if attrs.get(attr):
            return name
    if attrs.get("ttl_s"):
        return "ttl"
    if attrs.get("alias_node") or attrs.get("alias_service"):
        return "alias"
    return ""


def _decode_check_into(
    raw: Any, path: str, errors: list[str], strict: bool, require_type: bool
) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        errors.append(f"{path or 'check'}: expected an object, got {_type_name(raw)}")
        return None
    attrs: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    for key, value in raw.items():
        spec = _CHECK_FIELDS.get(canonical_key(str(key)))
        if spec is None:
            if strict:
                errors.append(f"{prefix}{key}: invalid config key")
            continue
        attr, reader = spec
        if value is None:
            continue
        converted = reader(value, f"{prefix}{key}", errors)
        if attr and converted is not None:
            attrs[attr] = converted
    kind = _check_type(attrs)
    attrs["type"] = kind
    status = attrs.get("status", "")
    if status and status not in CHECK_STATUSES:
        errors.append(f"{prefix}status: invalid initial health check status {status!r}")
    if require_type or attrs:
        if not kind:
            errors.append(
                f"{path or 'check'}: invalid check definition: one of ttl, http, tcp, udp, grpc, "
                "args, alias_node/alias_service, h2ping, docker_container_id or os_service is required"
            )
        elif kind in ("http", "tcp", "udp", "grpc", "h2ping", "script", "docker", "os_service") and not attrs.get(
            "interval_s"
        ):
            errors.append(f"{prefix}interval: interval is required for {kind} checks")
    if attrs.get("interval_s") is not None and attrs.get("interval_s", 0) < 0:
        errors.append(f"{prefix}interval: must not be negative")
    if attrs.get("timeout_s") is not None and attrs.get("timeout_s", 0) < 0:
        errors.append(f"{prefix}timeout: must not be negative")
    return attrs


def decode_check(raw: Any, *, strict: bool = True, default_service_id: str = "") -> CheckDefinition:
    """Decode a standalone check definition (config `check` block or `/v1/agent/check/register`).

    Raises DecodeError with every problem. `name` is required; `id` defaults to the name.
    """
    errors: list[str] = []
    attrs = _decode_check_into(raw, "", errors, strict, require_type=True)
    if attrs is not None and not attrs.get("name"):
        errors.append("name: missing check name")
    if errors or attrs is None:
        raise DecodeError(errors)
    attrs.setdefault("service_id", default_service_id)
    attrs.setdefault("id", attrs["name"])
    if not attrs["id"]:
        attrs["id"] = attrs["name"]
    return CheckDefinition(**attrs)


def decode_service(raw: Any, *, strict: bool = True) -> ServiceDefinition:
    """Decode a service definition with its embedded `check`/`checks`.

    Raises DecodeError with every problem. `name` is required; `id` defaults to the name; service
    checks get `service:<id>` IDs (`service:<id>:<n>` when there are several), as Consul assigns.
    """
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise DecodeError([f"service: expected an object, got {_type_name(raw)}"])
    attrs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    raw_checks: list[tuple[str, Any]] = []
    for key, value in raw.items():
        ck = canonical_key(str(key))
        if ck == "check":
            if value is not None:
                items = value if isinstance(value, list) else [value]
                raw_checks.extend((str(key), v) for v in items)
            continue
        if ck == "checks":
            if value is None:
                continue
            if not isinstance(value, list):
                errors.append(f"{key}: expected a list of checks, got {_type_name(value)}")
                continue
            raw_checks.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
            continue
        if ck == "weights":
            if value is None:
                continue
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if not isinstance(value, dict):
                errors.append(f"{key}: expected an object, got {_type_name(value)}")
                continue
            passing, warning = 1, 1
            for wk, wv in value.items():
                got = _int(wv, f"{key}.{wk}", errors)
                if canonical_key(wk) == "passing" and got is not None:
                    passing = got
                elif canonical_key(wk) == "warning" and got is not None:
                    warning = got
                elif strict and canonical_key(wk) not in ("passing", "warning"):
                    errors.append(f"{key}.{wk}: invalid config key")
            if passing < 1:
                errors.append(f"{key}.Passing: Passing must be greater than 0")
            attrs["weights"] = (passing, max(warning, 0))
            continue
        if ck in _SERVICE_KEPT:
            if value is not None:
                extra[_SERVICE_KEPT[ck]] = value
                if ck == "taggedaddresses":
                    attrs["tagged_addresses"] = _tagged_addresses(value, str(key), errors)
            continue
        spec = _SERVICE_FIELDS.get(ck)
        if spec is None:
            if strict:
                errors.append(f"{key}: invalid config key")
            continue
        attr, reader = spec
        if value is None:
            continue
        converted = reader(value, str(key), errors)
        if converted is not None:
            attrs[attr] = converted
    if not attrs.get("name"):
        errors.append("name: missing service name")
    port = attrs.get("port", 0)
    if not 0 <= port <= 65535:
        errors.append(f"port: {port} is not a valid port")
    decoded_checks: list[dict[str, Any]] = []
    for path, raw_check in raw_checks:
        before = len(errors)
        check_attrs = _decode_check_into(raw_check, path, errors, strict, require_type=True)
        if check_attrs is not None and len(errors) == before:
            decoded_checks.append(check_attrs)
    if errors:
        raise DecodeError(errors)
    service_id = attrs.get("id") or attrs["name"]
    attrs["id"] = service_id
    checks: list[CheckDefinition] = []
    for n, check_attrs in enumerate(decoded_checks, start=1):
        if not check_attrs.get("id"):
            check_attrs["id"] = f"service:{service_id}" if len(decoded_checks) == 1 else f"service:{service_id}:{n}"
        if not check_attrs.get("name"):
            check_attrs["name"] = f"Service '{attrs['name']}' check"
        check_attrs["service_id"] = service_id
        checks.append(CheckDefinition(**check_attrs))
    attrs["checks"] = tuple(checks)
    attrs["extra"] = extra
    return ServiceDefinition(**attrs)


def _tagged_addresses(value: Any, path: str, errors: list[str]) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object, got {_type_name(value)}")
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in value.items():
        if not isinstance(entry, dict):
            errors.append(f"{path}.{name}: expected an object with Address and Port")
            continue
        address, port = "", 0
        for k, v in entry.items():
            if canonical_key(k) == "address":
                address = _string(v, f"{path}.{name}.{k}", errors) or ""
            elif canonical_key(k) == "port":
                port = _int(v, f"{path}.{name}.{k}", errors) or 0
        out[str(name)] = {"Address": address, "Port": port}
    return out
