"""Config honesty (house rule 9): which accepted keys are honoured, which are inert, which refuse.

Owns three disjoint lists that together cover every non-IGNORED key of `SCHEMA` (a test walks the
schema to keep it so):
- `IMPLEMENTED`: keys something outside `config/` reads and acts on.
- `INERT`: accepted, no effect, not security-relevant; set to a non-default value, `validate` and
  start-up warn, naming the source and key.
- `REFUSED`: security-relevant and not honoured (client verification on gRPC, auto_encrypt);
  set to anything but an explicitly disabling value, `validate` and start-up fail naming the source
  and key. Keys of kind IGNORED in `REFUSED_IGNORED` refuse the same way unless every value inside
  them is off (false, empty, zero); other IGNORED keys are warned about when loaded.
Also `UNIX_SOCKET_KEYS`: addresses that would listen on a unix socket, which is not supported.
Values set by the `-dev` layer are proconsul's own choice and are not reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from proconsul.config.model import DEFAULTS
from proconsul.config.result import Collector
from proconsul.config.schema import LIST_KINDS, SCHEMA, field_name

__all__ = [
    "IMPLEMENTED",
    "INERT",
    "REFUSED",
    "REFUSED_IGNORED",
    "UNIX_SOCKET_KEYS",
    "check",
    "refuse_ignored",
]

_MATERIAL_TLS_KEYS = ("ca_file", "ca_path", "cert_file", "key_file", "tls_min_version", "tls_cipher_suites")
_HONOURED_TLS_KEYS = (*_MATERIAL_TLS_KEYS, "verify_incoming", "verify_outgoing")
# Verification proconsul cannot give yet: client certificates on gRPC (there is no gRPC listener).
# section -> the fields that, effectively true there, refuse.
# (Consul itself rejects tls.grpc.verify_outgoing and verify_server_hostname outside internal_rpc,
# and gRPC never inherits verify_outgoing: build.py reports those.)
# https.verify_outgoing is honoured vacuously: as in Consul without enable_agent_tls_for_checks
# (refused), the agent dials no HTTPS endpoint with the agent's TLS settings; HTTP checks use their
# own tls_* fields.
_UNHONOURED_VERIFY = {
    "grpc": ("verify_incoming",),
}
_INVALID_TLS_KEYS = (
    "tls.grpc.verify_outgoing", "tls.defaults.verify_server_hostname", "tls.https.verify_server_hostname",
    "tls.grpc.verify_server_hostname",
)

IMPLEMENTED: frozenset[str] = frozenset(
    {
        "datacenter", "primary_datacenter", "data_dir", "node_name", "node_id", "server", "bootstrap",
        "bootstrap_expect", "bind_addr", "advertise_addr", "advertise_addr_wan", "serf_lan", "serf_wan",
        "client_addr", "addresses.dns", "addresses.http", "addresses.https",
        "ports.dns", "ports.http", "ports.https", "ports.serf_lan", "ports.serf_wan", "ports.server",
        "retry_join", "retry_join_wan", "retry_interval", "retry_interval_wan", "retry_max", "retry_max_wan",
        "start_join", "start_join_wan", "rejoin_after_leave", "leave_on_terminate", "skip_leave_on_interrupt",
        "reconnect_timeout", "reconnect_timeout_wan", "advertise_reconnect_timeout",
        "log_level", "log_json", "log_file", "log_rotate_bytes", "log_rotate_duration", "log_rotate_max_files",
        "enable_syslog", "syslog_facility", "pid_file",
        "encrypt", "disable_keyring_file", "domain", "alt_domain", "recursors",
        "dns_config.allow_stale", "dns_config.max_stale", "dns_config.node_ttl", "dns_config.service_ttl",
        "dns_config.enable_truncate", "dns_config.only_passing", "dns_config.recursor_strategy",
        "dns_config.recursor_timeout", "dns_config.disable_compression", "dns_config.a_record_limit",
        "dns_config.udp_answer_limit", "dns_config.enable_additional_node_meta_txt",
        "dns_config.soa.refresh", "dns_config.soa.retry", "dns_config.soa.expire", "dns_config.soa.min_ttl",
        "enable_script_checks", "enable_local_script_checks", "services", "checks", "watches", "node_meta",
        "check_update_interval", "check_output_max_size", "discard_check_output",
        "check_flap_detection.enabled", "check_flap_detection.window", "check_flap_detection.high_threshold",
        "check_flap_detection.low_threshold",
        "ae_interval", "check_reap_interval", "check_deregister_interval_min", "sync_coordinate_rate_target",
        "sync_coordinate_interval_min", "reconnect_interval", "dial_overrides", "unsafe_follower_local_reads",
        "unsafe_reads_before_first_apply",
        "performance.raft_multiplier", "performance.leave_drain_time", "performance.rpc_hold_timeout",
        "limits.kv_max_value_size", "limits.txn_max_req_len", "limits.http_max_conns_per_client",
        "limits.https_handshake_timeout",
        "http_config.allow_write_http_from", "http_config.block_endpoints", "http_config.response_headers",
        # proconsul.local.cache via http/cached.py: false leaves `?cached` ignored.
        "http_config.use_cache",
        # proconsul.http.ui: the web UI, its custom directory and its URL path.
        "ui_config.enabled", "ui_config.dir", "ui_config.content_path",
        # The ACL system (proconsul.acl, http/acl_gate.py, docs/ACL.md). A client agent caches a
        # token with its policies and roles as one entry, kept for the shortest of token_ttl,
        # policy_ttl (when it has policies) and role_ttl (when it has roles).
        # config_file_service_registration travels with those services' syncs; DNS answers with
        # tokens.dns, else the default token.
        "acl.enabled", "acl.default_policy", "acl.down_policy", "acl.enable_token_persistence",
        "acl.enable_key_list_policy", "acl.token_ttl", "acl.policy_ttl", "acl.role_ttl",
        "acl.tokens.default", "acl.tokens.agent", "acl.tokens.config_file_service_registration",
        "acl.tokens.initial_management", "acl.tokens.agent_recovery", "acl.tokens.dns",
        "autopilot.cleanup_dead_servers", "autopilot.min_quorum",
        # proconsul.server.autopilot_health: server health and the dead-server cleanup's timing.
        "autopilot.last_contact_threshold", "autopilot.max_trailing_logs", "autopilot.server_stabilization_time",
        # proconsul.http.debug: the event-loop profiles under /v1/agent/debug/pprof/.
        "enable_debug",
        "session_ttl_min", "default_query_time", "max_query_time", "disable_coordinates", "discovery_max_stale",
        "raft_snapshot_threshold", "raft_snapshot_interval", "raft_trailing_logs",
        # proconsul.http.workers: read-replica worker processes on servers (1 elsewhere, logged).
        "http_workers",
        # Only 3 is accepted (build.py), which is the protocol proconsul speaks.
        "raft_protocol",
        # proconsul.metrics: /v1/agent/metrics and its Prometheus format.
        "telemetry.prometheus_retention_time", "telemetry.disable_hostname", "telemetry.metrics_prefix",
        # proconsul.metrics.statsd: go-metrics' statsd and DogStatsD (UDP) and statsite (TCP) sinks.
        "telemetry.statsd_address", "telemetry.dogstatsd_addr", "telemetry.dogstatsd_tags",
        "telemetry.statsite_address",
        # proconsul.metrics.registry: go-metrics' allow/block prefixes (reloadable) and default.
        "telemetry.prefix_filter", "telemetry.filter_default",
        # proconsul.tls: the HTTPS listener's material and client verification, TLS on the server
        # port (tls/rpc.py: incoming, outgoing, server names), reloaded on SIGHUP. What the
        # defaults would reach beyond that (gRPC) is checked by _tls_reach below.
        *(f"tls.{section}.{key}" for section in ("defaults", "https", "internal_rpc") for key in _HONOURED_TLS_KEYS),
        "tls.internal_rpc.verify_server_hostname",
        "limits.rpc_handshake_timeout",  # first byte and TLS handshake on the server port
    }
)  # fmt: skip

INERT: frozenset[str] = frozenset(
    {
        "disable_host_node_id",  # node IDs are always random
        "addresses.grpc", "addresses.grpc_tls",  # no gRPC listener
        "ports.grpc",  # no gRPC listener (-dev sets it as Consul does; not reported)
        "encrypt_verify_incoming", "encrypt_verify_outgoing",  # gossip is always verified when encrypted
        "dns_config.use_cache", "dns_config.cache_max_age",
        "limits.rpc_rate", "limits.rpc_max_burst", "limits.rpc_max_conns_per_client",
        "unix_sockets.user", "unix_sockets.group", "unix_sockets.mode",  # unix sockets are refused
        "translate_wan_addrs",
        "disable_update_check",  # proconsul never checks for updates
        "auto_reload_config",  # reload on SIGHUP or `proconsul reload`
        "disable_remote_exec",  # remote exec is never run, whatever the value
        # Material for the gRPC listener proconsul does not run: without verification demanded
        # (refused below), it changes nothing.
        *(f"tls.grpc.{key}" for key in _MATERIAL_TLS_KEYS),
    }
)  # fmt: skip


def _unset(value: Any, default: Any) -> bool:
    return value == default


def _port_off(value: Any, default: Any) -> bool:
    return isinstance(value, int) and value <= 0  # any value <= 0 disables the listener


def _invalid(value: Any, default: Any) -> bool:
    return True  # an error wherever it is set (build.py, as Consul), so never silently accepted


# Key -> "is this value harmless?" (explicitly disabling, or the default proconsul honours).
REFUSED: dict[str, Callable[[Any, Any], bool]] = {
    "ports.grpc_tls": _port_off,
    # Set directly in a section proconsul does not secure: refused unless false.
    **{f"tls.{section}.{key}": _unset for section, keys in _UNHONOURED_VERIFY.items() for key in keys},
    **{key: _invalid for key in _INVALID_TLS_KEYS},
    # ACL replication between datacenters is not built (every datacenter keeps its own tokens):
    # an operator who turns it on expects the primary's tokens and policies in this datacenter.
    "acl.enable_token_replication": _unset,
    "acl.tokens.replication": _unset,
    # A header-size limit an operator sets to bound what a client may make the agent hold; the
    # HTTP server enforces aiohttp's own per-line limits instead (8 KiB a line), not this total.
    "http_config.max_header_bytes": _unset,
}

# IGNORED keys that are security settings: refused unless every value inside is off.
REFUSED_IGNORED: frozenset[str] = frozenset(
    {
        # Each would leave an operator believing traffic is encrypted, restricted or audited.
        # (connect and auto_config fail closed without proconsul support, so they only warn.)
        "auto_encrypt", "audit", "enable_agent_tls_for_checks", "serf_lan_allowed_cidrs",
        "serf_wan_allowed_cidrs", "tls.defaults.use_auto_cert", "tls.internal_rpc.use_auto_cert",
        "tls.https.use_auto_cert", "tls.grpc.use_auto_cert",
    }
)  # fmt: skip

UNIX_SOCKET_KEYS: frozenset[str] = frozenset(
    {"addresses.http", "addresses.https", "addresses.grpc", "addresses.grpc_tls"}
)

_REFUSAL = "is not supported yet: refusing to start with it set"


def _all_off(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_all_off(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_off(v) for v in value)
    return value in (False, None, "", 0)


def refuse_ignored(path: str, value: Any) -> str | None:
    """The refusal message for an IGNORED key that is a security setting set on, else None."""
    if path in REFUSED_IGNORED and not _all_off(value):
        return f"{path} {_REFUSAL}"
    return None


def _leaves(
    merged: dict[str, Any], schema: dict[str, Any], prefix: str = ""
) -> Iterator[tuple[str, Any, Any]]:
    for key, value in merged.items():
        kind = schema[key]
        if isinstance(kind, dict):
            yield from _leaves(value, kind, prefix + key + ".")
        else:
            yield prefix + key, kind, value


def _default(path: str, kind: Any) -> Any:
    node: Any = DEFAULTS
    parts = path.split(".")
    for part in parts[:-1]:
        node = getattr(node, part)
    value = getattr(node, field_name(parts[-1], kind), None)
    return list(value) if kind in LIST_KINDS and isinstance(value, tuple) else value


def _tls_reach(merged: dict[str, Any], out: Collector) -> None:
    """Refuse a tls.defaults verification that a section proconsul does not secure inherits.

    Consul's precedence: a section's own value wins, else tls.defaults (legacy top-level keys fold
    into tls.defaults, except verify_incoming_rpc/_https and verify_server_hostname, which land in
    their section, and legacy verify_incoming also sets tls.grpc.verify_incoming = false).
    """
    tls = merged.get("tls") or {}
    defaults = tls.get("defaults") or {}
    for field in ("verify_incoming", "verify_outgoing"):
        if defaults.get(field) is not True:
            continue
        reached = [
            s
            for s, fields in _UNHONOURED_VERIFY.items()
            if field in fields and field not in (tls.get(s) or {})
        ]
        if reached:
            key = f"tls.defaults.{field}"
            overrides = " and ".join(f"tls.{s}.{field} = false" for s in reached)
            out.at(
                key,
                f"{key} also applies to {', '.join('tls.' + s for s in reached)}, where verification "
                f"{_REFUSAL} (set {overrides} to keep it to what proconsul honours)",
            )


def check(merged: dict[str, Any], out: Collector) -> None:
    """Refuse unhonoured security settings and warn about inert keys, naming source and key."""
    for path, kind, value in _leaves(merged, SCHEMA):
        where = out.origin.get(path, "")
        if where.startswith("dev:"):
            continue
        if path in UNIX_SOCKET_KEYS and isinstance(value, str) and "unix://" in value:
            out.at(path, f"{path} = {value!r}: unix sockets {_REFUSAL}")
        elif path in REFUSED and not REFUSED[path](value, _default(path, kind)):
            out.at(path, f"{path} {_REFUSAL}")
        elif path in INERT and value != _default(path, kind):
            out.warnings.append(
                f"{where or path}: config key {path} is accepted but not implemented by proconsul: it has no effect"
            )
    _tls_reach(merged, out)
