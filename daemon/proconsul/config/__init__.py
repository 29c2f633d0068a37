"""Agent configuration: loading, merging and validating it the way Consul's agent does.

Owns:
- Go durations (`parse_duration`, `format_duration`): the only place Consul's `"10s"` strings are
  parsed; other modules import these.
- The `proconsul agent` flag set (`agent_flagset`) and the mapping of each flag to its config key.
- Reading `-config-file` / `-config-dir` sources (JSON and HCL1) in command-line order, inline
  `-hcl` fragments, and Consul's merge rules (agent/config/merge.go): scalars later-wins, lists
  append, maps replaced whole when non-empty, nested objects merged field by field.
- Type checking every key of every source, then semantic validation of the merged result; every
  problem is collected and raised at once in `ConfigError`, each naming its source and key.
- The frozen `RuntimeConfig` (nested frozen dataclasses) whose field defaults are the one defaults
  table, the `RELOADABLE` set and `diff()` used by SIGHUP reload.

Source order, as Consul's builder: defaults, dev defaults (`-dev`), list-valued flags (so flag
lists come first and files append to them), config files and directories in the order given,
scalar and map flags (so flags win over files), then `-hcl` fragments (which win over flags).
"""

from __future__ import annotations

import base64
import fcntl
import ipaddress
import json
import logging
import math
import os
import re
import socket
import struct
import typing
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from proconsul.flags import FlagError, FlagSet, ParsedFlags

__all__ = [
    "ACL",
    "RELOADABLE",
    "SOA",
    "TLS",
    "ACLTokens",
    "Addresses",
    "Autopilot",
    "ConfigError",
    "DNSConfig",
    "HTTPConfig",
    "Limits",
    "LoadResult",
    "Performance",
    "Ports",
    "RuntimeConfig",
    "TLSSection",
    "Telemetry",
    "UIConfig",
    "UnixSockets",
    "agent_flagset",
    "diff",
    "format_duration",
    "load",
    "load_from",
    "parse_duration",
    "validate_paths",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Go durations

_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go accepts
    "\u03bcs": 1_000,  # Greek mu, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([a-z\u00b5\u03bc]+)")
_MAX_NS = (1 << 63) - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(text: str | float) -> float:
    """Parse a Go duration ("300ms", "1.5h", "1m30s", "-1s", "0") into float seconds.

    A number (not a string) is taken as nanoseconds, which is how Go's time.Duration appears in
    JSON bodies of the HTTP API. Agent config files accept only strings for durations (Consul's
    decoder is not weakly typed); the config loader enforces that before calling this.
    Raises ValueError with a message naming the bad input.
    """
    # ValueError (not TypeError) for every bad input: callers catch one exception type.
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")  # noqa: TRY004
    if isinstance(text, (int, float)):
        # isnan() of a huge int overflows converting it to float: only floats can be NaN.
        if (isinstance(text, float) and math.isnan(text)) or abs(text) > _MAX_NS:  # out of int64 ns
            raise ValueError(f"invalid duration {text!r}")
        return int(text) / 1e9
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}")  # noqa: TRY004
    original = text
    sign = 1
    if text[:1] in ("-", "+"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'invalid duration "{original}"')
    total = 0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or (not match.group(1) and not match.group(2)):
            if match is None and text[pos:].replace(".", "").isdigit():
                raise ValueError(f'missing unit in duration "{original}"')
            raise ValueError(f'invalid duration "{original}"')
        whole, frac, unit = match.groups()
        scale = _NS.get(unit)
        if scale is None:
            raise ValueError(f'unknown unit "{unit}" in duration "{original}"')
        value = int(whole or "0") * scale
        if frac:
            # Exact integer arithmetic, truncating below a nanosecond as Go does.
            value += int(frac) * scale // (10 ** len(frac))
        total += value
        if total > _MAX_NS + (1 if sign < 0 else 0):
            raise ValueError(f'invalid duration "{original}"')
        pos = match.end()
        if pos < len(text) and not (text[pos].isdigit() or text[pos] == "."):
            raise ValueError(f'invalid duration "{original}"')
    return sign * total / 1e9


def _frac(value: int, digits: int) -> str:
    whole, rest = divmod(value, 10**digits)
    tail = str(rest).rjust(digits, "0").rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


def format_duration(seconds: float) -> str:
    """Format seconds as Go's time.Duration.String(): "10s", "1m30s", "1.5s", "1h0m0s", "0s"."""
    ns = round(seconds * 1e9)
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u == 0:
        return "0s"
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_frac(u, 3)}\u00b5s"
    if u < 1_000_000_000:
        return f"{sign}{_frac(u, 6)}ms"
    minutes, rest = divmod(u, 60_000_000_000)
    out = _frac(rest, 9) + "s"
    if minutes:
        hours, minutes = divmod(minutes, 60)
        out = f"{minutes}m{out}"
        if hours:
            out = f"{hours}h{out}"
    return sign + out


# ---------------------------------------------------------------------------------------------
# RuntimeConfig: the field defaults below are THE defaults table (Consul's agent/config/default.go).
# Role-dependent defaults (leave_on_terminate, skip_leave_on_interrupt, ports.grpc_tls) and dev
# mode overrides are applied in `_build`, and say so in their comment.


@dataclass(frozen=True)
class Ports:
    dns: int = 8600  # port; 8600; DNS over UDP and TCP. -1 (or any value <= 0) disables
    http: int = 8500  # port; 8500; HTTP API
    https: int = -1  # port; -1 (off); HTTPS API needs TLS material
    grpc: int = -1  # port; -1 (off); 8502 in -dev as Consul
    grpc_tls: int = -1  # port; 8503 on servers, -1 on clients (derived); Consul 1.14+ layout
    serf_lan: int = 8301  # port; 8301; LAN gossip, TCP and UDP
    serf_wan: int = 8302  # port; 8302; WAN gossip (servers), TCP and UDP
    server: int = 8300  # port; 8300; server RPC and raft


@dataclass(frozen=True)
class Addresses:
    # Each: tuple of IPs or "unix:///path"; empty means "use client_addr".
    dns: tuple[str, ...] = ()  # addresses; (): client_addr; DNS cannot be a unix socket
    http: tuple[str, ...] = ()  # addresses; (): client_addr
    https: tuple[str, ...] = ()  # addresses; (): client_addr
    grpc: tuple[str, ...] = ()  # addresses; (): client_addr
    grpc_tls: tuple[str, ...] = ()  # addresses; (): client_addr


@dataclass(frozen=True)
class SOA:
    refresh: int = 3600  # seconds; 3600; SOA refresh as Consul's RuntimeSOAConfig
    retry: int = 600  # seconds; 600
    expire: int = 86400  # seconds; 86400
    min_ttl: int = 0  # seconds; 0; negative-answer TTL


@dataclass(frozen=True)
class DNSConfig:
    allow_stale: bool = True  # bool; true; any server answers DNS, as Consul
    max_stale_s: float = 87600 * 3600.0  # seconds; 87600h (10 years): stale reads always allowed
    node_ttl_s: float = 0.0  # seconds; 0; TTL of node answers (0 = no caching)
    service_ttl_s: dict[str, float] = field(default_factory=dict)  # name (or "*") -> seconds; {}
    enable_truncate: bool = True  # bool; true (Consul: false); set TC when UDP answers are cut, so resolvers retry over TCP instead of silently getting a partial set
    only_passing: bool = False  # bool; false; warning checks still answer unless set
    recursor_strategy: str = "sequential"  # "sequential" | "random"; sequential
    recursor_timeout_s: float = 2.0  # seconds; 2s; per upstream recursor query
    disable_compression: bool = False  # bool; false
    a_record_limit: int = 0  # count; 0 = unlimited
    udp_answer_limit: int = 3  # count; 3; as Consul
    enable_additional_node_meta_txt: bool = True  # bool; true; node meta as TXT in additional
    soa: SOA = SOA()  # SOA record timers
    use_cache: bool = False  # bool; false; agent cache for DNS
    cache_max_age_s: float = 0.0  # seconds; 0


@dataclass(frozen=True)
class Performance:
    raft_multiplier: int = 5  # factor 1..10; 5 (Consul's default; 1 in -dev and for production)
    leave_drain_time_s: float = 5.0  # seconds; 5s; a leaving server keeps serving this long
    rpc_hold_timeout_s: float = 7.0  # seconds; 7s; how long RPCs retry during leader elections


@dataclass(frozen=True)
class Limits:
    http_max_conns_per_client: int = 200  # connections per client IP; 200
    https_handshake_timeout_s: float = 5.0  # seconds; 5s
    rpc_handshake_timeout_s: float = 5.0  # seconds; 5s
    rpc_rate: float = -1.0  # requests/s per agent; -1 = unlimited, as Consul
    rpc_max_burst: int = 1000  # requests; 1000
    rpc_max_conns_per_client: int = 100  # connections; 100
    kv_max_value_size: int = 524288  # bytes; 512 KiB = raft's suggested max entry size
    txn_max_req_len: int = 524288  # bytes; 512 KiB, same reason


@dataclass(frozen=True)
class ACLTokens:
    initial_management: str = ""  # token; ""; legacy alias "master"
    default: str = ""  # token; ""; used for requests that carry no token
    agent: str = ""  # token; ""; the agent's own internal operations
    agent_recovery: str = ""  # token; ""; legacy alias "agent_master"
    replication: str = ""  # token; ""
    config_file_service_registration: str = ""  # token; ""; services/checks from config files


@dataclass(frozen=True)
class ACL:
    enabled: bool = False  # bool; false
    default_policy: str = "allow"  # "allow" | "deny"; allow
    down_policy: str = "extend-cache"  # allow|deny|extend-cache|async-cache; extend-cache
    enable_token_persistence: bool = False  # bool; false; tokens set by API saved in data_dir
    enable_key_list_policy: bool = False  # bool; false
    enable_token_replication: bool = False  # bool; false
    policy_ttl_s: float = 30.0  # seconds; 30s
    role_ttl_s: float = 30.0  # seconds; 30s
    token_ttl_s: float = 30.0  # seconds; 30s
    tokens: ACLTokens = ACLTokens()


@dataclass(frozen=True)
class Telemetry:
    prometheus_retention_time_s: float = 0.0  # seconds; 0 = prometheus endpoint off
    disable_hostname: bool = False  # bool; false
    prefix_filter: tuple[str, ...] = ()  # "+prefix"/"-prefix" rules; ()
    filter_default: bool = True  # bool; true; metrics not matched by prefix_filter are kept
    metrics_prefix: str = "consul"  # string; "consul" so dashboards built for Consul work
    statsd_address: str = ""  # host:port; ""
    statsite_address: str = ""  # host:port; ""
    dogstatsd_addr: str = ""  # host:port; ""
    dogstatsd_tags: tuple[str, ...] = ()  # tags; ()


@dataclass(frozen=True)
class Autopilot:
    cleanup_dead_servers: bool = True  # bool; true
    last_contact_threshold_s: float = 0.2  # seconds; 200ms
    max_trailing_logs: int = 250  # entries; 250
    min_quorum: int = 0  # servers; 0 = no floor
    server_stabilization_time_s: float = 10.0  # seconds; 10s


@dataclass(frozen=True)
class HTTPConfig:
    response_headers: dict[str, str] = field(default_factory=dict)  # header -> value; {}
    block_endpoints: tuple[str, ...] = ()  # path prefixes answered 403; ()
    allow_write_http_from: tuple[str, ...] = ()  # CIDRs; () = writes allowed from anywhere
    use_cache: bool = True  # bool; true
    max_header_bytes: int = 0  # bytes; 0 = server default


@dataclass(frozen=True)
class UIConfig:
    enabled: bool = False  # bool; false (true in -dev); legacy key "ui"
    dir: str = ""  # path; ""; legacy key "ui_dir"
    content_path: str = "/ui/"  # URL path; "/ui/"; legacy key "ui_content_path"


@dataclass(frozen=True)
class UnixSockets:
    user: str = ""  # user name or uid; "" = process user
    group: str = ""  # group name or gid; ""
    mode: str = ""  # octal string such as "0770"; ""


@dataclass(frozen=True)
class TLSSection:
    # Unset fields of internal_rpc/https/grpc inherit from tls.defaults (done in _build).
    ca_file: str = ""  # path; ""
    ca_path: str = ""  # path; ""
    cert_file: str = ""  # path; ""
    key_file: str = ""  # path; ""
    verify_incoming: bool = False  # bool; false
    verify_outgoing: bool = False  # bool; false
    verify_server_hostname: bool = False  # bool; false (only meaningful for internal_rpc)
    tls_min_version: str = "TLSv1_2"  # string; TLSv1_2
    tls_cipher_suites: str = ""  # comma-separated; "" = library default


@dataclass(frozen=True)
class TLS:
    defaults: TLSSection = TLSSection()
    internal_rpc: TLSSection = TLSSection()
    https: TLSSection = TLSSection()
    grpc: TLSSection = TLSSection()


@dataclass(frozen=True)
class RuntimeConfig:
    """The agent's effective configuration. Durations are float seconds (`_s`)."""

    # Identity
    dev: bool = False  # bool; false; -dev only (never from files): in-memory server, see _DEV
    datacenter: str = "dc1"  # DNS label, lower-cased; dc1
    primary_datacenter: str = ""  # DNS label; "" -> datacenter (derived)
    data_dir: str | None = None  # path; required unless -dev (None in dev: nothing persisted)
    node_name: str = ""  # string; "" -> the hostname (derived)
    node_id: str | None = None  # UUID (lower-case); None: the agent generates and persists one
    disable_host_node_id: bool = True  # bool; true: random node ID, not one from host info
    server: bool = False  # bool; false
    bootstrap: bool = False  # bool; false; single-server self-election (true in -dev)
    bootstrap_expect: int = 0  # servers; 0; 1 means bootstrap, as Consul
    # Addresses
    bind_addr: str = "0.0.0.0"  # IP; 0.0.0.0 (127.0.0.1 in -dev); cluster listeners
    advertise_addr: str = ""  # IP; "" -> bind_addr, or the single private IPv4 if bind is ANY
    advertise_addr_wan: str = ""  # IP; "" -> advertise_addr (derived)
    serf_lan: str = ""  # IP; "" -> bind_addr; LAN gossip bind
    serf_wan: str = ""  # IP; "" -> bind_addr; WAN gossip bind
    client_addr: tuple[str, ...] = ("127.0.0.1",)  # IPs; 127.0.0.1; HTTP/DNS/gRPC listeners
    addresses: Addresses = Addresses()
    ports: Ports = Ports()
    # Joining
    retry_join: tuple[str, ...] = ()  # addresses; (); also fed by start_join/-join
    retry_join_wan: tuple[str, ...] = ()  # addresses; ()
    retry_interval_s: float = 30.0  # seconds; 30s
    retry_interval_wan_s: float = 30.0  # seconds; 30s
    retry_max: int = 0  # attempts; 0 = forever; the agent exits 1 when exhausted
    retry_max_wan: int = 0  # attempts; 0 = forever
    start_join: tuple[str, ...] = ()  # addresses; (); deprecated alias of retry_join (warned)
    start_join_wan: tuple[str, ...] = ()  # addresses; (); deprecated
    rejoin_after_leave: bool = False  # bool; false: a leave is a permanent intent
    leave_on_terminate: bool = False  # bool; true on clients, false on servers (derived)
    skip_leave_on_interrupt: bool = False  # bool; true on servers, false on clients (derived)
    reconnect_timeout_s: float = 72 * 3600.0  # seconds; 72h; at least 8h
    reconnect_timeout_wan_s: float = 72 * 3600.0  # seconds; 72h; at least 8h
    advertise_reconnect_timeout_s: float = 0.0  # seconds; 0 = others use their reconnect_timeout; clients only, no floor
    # Logging and process
    log_level: str = "INFO"  # TRACE|DEBUG|INFO|WARN|ERROR, upper-cased; INFO (DEBUG in -dev)
    log_json: bool = False  # bool; false
    log_file: str = ""  # path; "" = stderr only
    log_rotate_bytes: int = 0  # bytes; 0 = no size limit
    log_rotate_duration_s: float = 24 * 3600.0  # seconds; 24h, as Consul's logger
    log_rotate_max_files: int = 0  # files; 0 = keep all, -1 = keep none
    enable_syslog: bool = False  # bool; false
    syslog_facility: str = "LOCAL0"  # syslog facility name; LOCAL0
    pid_file: str = ""  # path; "" = none
    enable_debug: bool = False  # bool; false (true in -dev); /debug/pprof-like endpoints
    # UI
    ui_config: UIConfig = UIConfig()
    # Gossip encryption
    encrypt: str = ""  # base64 key of 16, 24 or 32 bytes; ""
    encrypt_verify_incoming: bool = True  # bool; true
    encrypt_verify_outgoing: bool = True  # bool; true
    disable_keyring_file: bool = False  # bool; false (true in -dev)
    # DNS
    domain: str = "consul."  # FQDN, lower-cased, trailing dot; "consul."
    alt_domain: str = ""  # FQDN; ""
    recursors: tuple[str, ...] = ()  # upstream "ip" or "ip:port"; ()
    dns_config: DNSConfig = DNSConfig()
    # Checks and services
    enable_script_checks: bool = False  # bool; false: script checks are remote code execution
    enable_local_script_checks: bool = False  # bool; defaults to enable_script_checks
    services: tuple[dict[str, Any], ...] = ()  # raw service definitions as written
    checks: tuple[dict[str, Any], ...] = ()  # raw check definitions as written
    watches: tuple[dict[str, Any], ...] = ()  # raw watch definitions
    node_meta: dict[str, str] = field(default_factory=dict)  # key -> value; {}
    check_update_interval_s: float = 300.0  # seconds; 5m; output-only changes sync this often
    check_output_max_size: int = 4096  # bytes; 4 KiB
    discard_check_output: bool = False  # bool; false
    # Consul's hidden (non-user-configurable) timings, settable for tests; not in Consul's docs.
    ae_interval_s: float = 60.0  # seconds; 1m; anti-entropy full-sync base interval, scaled by cluster size
    check_reap_interval_s: float = 30.0  # seconds; 30s; how often deregister_critical_service_after is enforced
    check_deregister_interval_min_s: float = 60.0  # seconds; 1m; floor for deregister_critical_service_after
    sync_coordinate_rate_target: float = 64.0  # updates/s; 64; cluster-wide coordinate updates the servers take
    sync_coordinate_interval_min_s: float = 15.0  # seconds; 15s; floor of each agent's coordinate update interval
    reconnect_interval_s: float = 30.0  # seconds; 30s (serf ReconnectInterval); how often a failed member is retried
    # Test-only (not Consul): "host:port" -> "host:port" redirections for outbound server RPC and Raft
    # connections, so the simulation harness can route every directed link through its own proxy.
    dial_overrides: dict[str, str] = field(default_factory=dict)  # address -> address; {}
    # Test-only (not Consul), a deliberately broken build: a follower answers default-mode reads
    # from its own store instead of forwarding them to the leader. The chaos suite turns it on to
    # prove its linearizability checker catches the stale reads this causes. Never set it.
    unsafe_follower_local_reads: bool = False  # bool; false
    # Subsystems
    performance: Performance = Performance()
    limits: Limits = Limits()
    acl: ACL = ACL()
    telemetry: Telemetry = Telemetry()
    autopilot: Autopilot = Autopilot()
    http_config: HTTPConfig = HTTPConfig()
    unix_sockets: UnixSockets = UnixSockets()
    tls: TLS = TLS()
    # Queries and sessions
    session_ttl_min_s: float = 10.0  # seconds; 10s; shortest session TTL accepted
    default_query_time_s: float = 300.0  # seconds; 300s; blocking query wait without ?wait=
    max_query_time_s: float = 600.0  # seconds; 600s; cap on ?wait=
    discovery_max_stale_s: float = 0.0  # seconds; 0 = off
    translate_wan_addrs: bool = False  # bool; false
    disable_remote_exec: bool = True  # bool; true
    disable_update_check: bool = False  # bool; false (proconsul never phones home anyway)
    disable_coordinates: bool = False  # bool; false
    # Raft
    raft_protocol: int = 3  # version; 3 is the only one supported, as Consul
    raft_snapshot_threshold: int = 16384  # entries; 16384
    raft_snapshot_interval_s: float = 30.0  # seconds; 30s
    raft_trailing_logs: int = 10000  # entries; 10000
    # Reload
    auto_reload_config: bool = False  # bool; false; watch config files and reload on change
    sources: tuple[str, ...] = ()  # config files loaded, in merge order (for agent/self, reload)

    @property
    def ui_enabled(self) -> bool:
        return self.ui_config.enabled


_DEFAULTS = RuntimeConfig()  # the defaults table, as an instance for the builder to read


def hostname() -> str:
    """The default node name (a function so tests can replace it)."""
    return socket.gethostname()


# Fields that a SIGHUP reload can apply without restart. Dotted names are sub-fields whose
# siblings need a restart (e.g. ACL tokens reload, the ACL enabled flag does not).
RELOADABLE: frozenset[str] = frozenset(
    {
        "services",
        "checks",
        "watches",
        "log_level",
        "node_meta",
        "acl.tokens",
        "limits",
        "discard_check_output",
        "addresses.http",
        "telemetry.prefix_filter",
        "raft_snapshot_threshold",
        "raft_snapshot_interval_s",
        "raft_trailing_logs",
        "dns_config",
        "recursors",
        "check_update_interval_s",
        "sources",
        # Read when the signal arrives (command/agent), so a reload changes the next stop.
        "leave_on_terminate",
        "skip_leave_on_interrupt",
    }
)


def diff(old: RuntimeConfig, new: RuntimeConfig) -> tuple[list[str], list[str]]:
    """Compare two configs: (changed fields that reload applies, changed fields needing a restart).

    Names are field names; inside nested dataclasses only the changed sub-fields are named
    (dotted) unless the whole nested field is reloadable. Order follows the dataclass fields.
    """
    reloadable: list[str] = []
    restart: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        for f in fields(a):
            name = prefix + f.name
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if va == vb:
                continue
            if name in RELOADABLE:
                reloadable.append(name)
            elif is_dataclass(va) and is_dataclass(vb):
                walk(va, vb, name + ".")
            else:
                restart.append(name)

    walk(old, new, "")
    return reloadable, restart


# ---------------------------------------------------------------------------------------------
# Schema: every key a config file may hold, with its kind. Nested dicts are objects merged
# field by field. The runtime field is the key, plus "_s" for durations.

STR, BOOL, INT, UINT, FLOAT, DUR = "str", "bool", "int", "uint", "float", "duration"
STRLIST, STRMAP, DURMAP, RAWLIST, IGNORED = "strlist", "strmap", "durmap", "rawlist", "ignored"
_LIST_KINDS = (STRLIST, RAWLIST)
_MAP_KINDS = (STRMAP, DURMAP)

_TLS_SECTION = {
    "ca_file": STR,
    "ca_path": STR,
    "cert_file": STR,
    "key_file": STR,
    "verify_incoming": BOOL,
    "verify_outgoing": BOOL,
    "verify_server_hostname": BOOL,
    "tls_min_version": STR,
    "tls_cipher_suites": STR,
    "use_auto_cert": IGNORED,
}

SCHEMA: dict[str, Any] = {
    "datacenter": STR,
    "primary_datacenter": STR,
    "data_dir": STR,
    "node_name": STR,
    "node_id": STR,
    "disable_host_node_id": BOOL,
    "server": BOOL,
    "bootstrap": BOOL,
    "bootstrap_expect": INT,
    "bind_addr": STR,
    "advertise_addr": STR,
    "advertise_addr_wan": STR,
    "serf_lan": STR,
    "serf_wan": STR,
    "client_addr": STR,
    "addresses": {"dns": STR, "http": STR, "https": STR, "grpc": STR, "grpc_tls": STR},
    "ports": {
        "dns": INT,
        "http": INT,
        "https": INT,
        "grpc": INT,
        "grpc_tls": INT,
        "serf_lan": INT,
        "serf_wan": INT,
        "server": INT,
        "proxy_min_port": IGNORED,
        "proxy_max_port": IGNORED,
        "sidecar_min_port": IGNORED,
        "sidecar_max_port": IGNORED,
        "expose_min_port": IGNORED,
        "expose_max_port": IGNORED,
    },
    "retry_join": STRLIST,
    "retry_join_wan": STRLIST,
    "retry_interval": DUR,
    "retry_interval_wan": DUR,
    "retry_max": INT,
    "retry_max_wan": INT,
    "start_join": STRLIST,
    "start_join_wan": STRLIST,
    "rejoin_after_leave": BOOL,
    "leave_on_terminate": BOOL,
    "skip_leave_on_interrupt": BOOL,
    "reconnect_timeout": DUR,
    "reconnect_timeout_wan": DUR,
    "advertise_reconnect_timeout": DUR,
    "log_level": STR,
    "log_json": BOOL,
    "log_file": STR,
    "log_rotate_bytes": INT,
    "log_rotate_duration": DUR,
    "log_rotate_max_files": INT,
    "enable_syslog": BOOL,
    "syslog_facility": STR,
    "pid_file": STR,
    "enable_debug": BOOL,
    "ui_config": {
        "enabled": BOOL,
        "dir": STR,
        "content_path": STR,
        "metrics_provider": IGNORED,
        "metrics_provider_files": IGNORED,
        "metrics_provider_options_json": IGNORED,
        "metrics_proxy": IGNORED,
        "dashboard_url_templates": IGNORED,
    },
    "encrypt": STR,
    "encrypt_verify_incoming": BOOL,
    "encrypt_verify_outgoing": BOOL,
    "disable_keyring_file": BOOL,
    "domain": STR,
    "alt_domain": STR,
    "recursors": STRLIST,
    "dns_config": {
        "allow_stale": BOOL,
        "max_stale": DUR,
        "node_ttl": DUR,
        "service_ttl": DURMAP,
        "enable_truncate": BOOL,
        "only_passing": BOOL,
        "recursor_strategy": STR,
        "recursor_timeout": DUR,
        "disable_compression": BOOL,
        "a_record_limit": INT,
        "udp_answer_limit": INT,
        "enable_additional_node_meta_txt": BOOL,
        "soa": {"refresh": UINT, "retry": UINT, "expire": UINT, "min_ttl": UINT},
        "use_cache": BOOL,
        "cache_max_age": DUR,
        "prefer_namespace": IGNORED,
    },
    "enable_script_checks": BOOL,
    "enable_local_script_checks": BOOL,
    "services": RAWLIST,
    "checks": RAWLIST,
    "watches": RAWLIST,
    "node_meta": STRMAP,
    "check_update_interval": DUR,
    "check_output_max_size": INT,
    "discard_check_output": BOOL,
    "ae_interval": DUR,
    "check_reap_interval": DUR,
    "check_deregister_interval_min": DUR,
    "sync_coordinate_rate_target": FLOAT,
    "sync_coordinate_interval_min": DUR,
    "reconnect_interval": DUR,
    "dial_overrides": STRMAP,
    "unsafe_follower_local_reads": BOOL,
    "performance": {"raft_multiplier": INT, "leave_drain_time": DUR, "rpc_hold_timeout": DUR},
    "limits": {
        "http_max_conns_per_client": INT,
        "https_handshake_timeout": DUR,
        "rpc_handshake_timeout": DUR,
        "rpc_rate": FLOAT,
        "rpc_max_burst": INT,
        "rpc_max_conns_per_client": INT,
        "kv_max_value_size": UINT,
        "txn_max_req_len": UINT,
        "request_limits": IGNORED,
    },
    "acl": {
        "enabled": BOOL,
        "default_policy": STR,
        "down_policy": STR,
        "enable_token_persistence": BOOL,
        "enable_key_list_policy": BOOL,
        "enable_token_replication": BOOL,
        "policy_ttl": DUR,
        "role_ttl": DUR,
        "token_ttl": DUR,
        "tokens": {
            "initial_management": STR,
            "default": STR,
            "agent": STR,
            "agent_recovery": STR,
            "replication": STR,
            "config_file_service_registration": STR,
            "dns": IGNORED,
            "managed_service_provider": IGNORED,
        },
        "msp_disable_bootstrap": IGNORED,
    },
    "telemetry": {
        "prometheus_retention_time": DUR,
        "disable_hostname": BOOL,
        "prefix_filter": STRLIST,
        "filter_default": BOOL,
        "metrics_prefix": STR,
        "statsd_address": STR,
        "statsite_address": STR,
        "dogstatsd_addr": STR,
        "dogstatsd_tags": STRLIST,
        "circonus_api_app": IGNORED,
        "circonus_api_token": IGNORED,
        "circonus_api_url": IGNORED,
        "circonus_broker_id": IGNORED,
        "circonus_broker_select_tag": IGNORED,
        "circonus_check_display_name": IGNORED,
        "circonus_check_force_metric_activation": IGNORED,
        "circonus_check_id": IGNORED,
        "circonus_check_instance_id": IGNORED,
        "circonus_check_search_tag": IGNORED,
        "circonus_check_tags": IGNORED,
        "circonus_submission_interval": IGNORED,
        "circonus_submission_url": IGNORED,
        "enable_host_metrics": IGNORED,
        "retry_failed_connection": IGNORED,
    },
    "autopilot": {
        "cleanup_dead_servers": BOOL,
        "last_contact_threshold": DUR,
        "max_trailing_logs": INT,
        "min_quorum": UINT,
        "server_stabilization_time": DUR,
        "disable_upgrade_migration": IGNORED,
        "redundancy_zone_tag": IGNORED,
        "upgrade_version_tag": IGNORED,
    },
    "http_config": {
        "response_headers": STRMAP,
        "block_endpoints": STRLIST,
        "allow_write_http_from": STRLIST,
        "use_cache": BOOL,
        "max_header_bytes": INT,
    },
    "unix_sockets": {"user": STR, "group": STR, "mode": STR},
    "tls": {
        "defaults": dict(_TLS_SECTION),
        "internal_rpc": dict(_TLS_SECTION),
        "https": dict(_TLS_SECTION),
        "grpc": dict(_TLS_SECTION),
    },
    "session_ttl_min": DUR,
    "default_query_time": DUR,
    "max_query_time": DUR,
    "discovery_max_stale": DUR,
    "translate_wan_addrs": BOOL,
    "disable_remote_exec": BOOL,
    "disable_update_check": BOOL,
    "disable_coordinates": BOOL,
    "raft_protocol": INT,
    "raft_snapshot_threshold": INT,
    "raft_snapshot_interval": DUR,
    "raft_trailing_logs": INT,
    "auto_reload_config": BOOL,
    # Consul keys proconsul accepts and ignores with a warning, so Consul configs still load.
    **{
        key: IGNORED
        for key in (
            "advertise_addr_ipv4",
            "advertise_addr_ipv6",
            "advertise_addr_wan_ipv4",
            "advertise_addr_wan_ipv6",
            "audit",
            "auto_config",
            "auto_encrypt",
            "cache",
            "cloud",
            "config_entries",
            "connect",
            "disable_anonymous_signature",
            "disable_http_unprintable_char_filter",
            "enable_agent_tls_for_checks",
            "enable_central_service_config",
            "experiments",
            "gossip_lan",
            "gossip_wan",
            "license_path",
            "locality",
            "non_voting_server",
            "partition",
            "peering",
            "primary_gateways",
            "primary_gateways_interval",
            "protocol",
            "raft_boltdb",
            "raft_logstore",
            "read_replica",
            "reporting",
            "rpc",
            "segment",
            "segments",
            "serf_lan_allowed_cidrs",
            "serf_wan_allowed_cidrs",
            "server_name",
            "server_rejoin_age_max",
            "snapshot_agent",
            "tagged_addresses",
            "use_streaming_backend",
            "xds",
        )
    },
}

# Legacy top-level keys Consul still maps (with a deprecation warning) to their new homes.
_LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "ui": ("ui_config", "enabled"),
    "ui_dir": ("ui_config", "dir"),
    "ui_content_path": ("ui_config", "content_path"),
    "acl_datacenter": ("primary_datacenter",),
    "acl_default_policy": ("acl", "default_policy"),
    "acl_down_policy": ("acl", "down_policy"),
    "acl_ttl": ("acl", "token_ttl"),
    "acl_token": ("acl", "tokens", "default"),
    "acl_agent_token": ("acl", "tokens", "agent"),
    "acl_master_token": ("acl", "tokens", "initial_management"),
    "acl_agent_master_token": ("acl", "tokens", "agent_recovery"),
    "acl_replication_token": ("acl", "tokens", "replication"),
    "enable_acl_replication": ("acl", "enable_token_replication"),
    "acl_enable_key_list_policy": ("acl", "enable_key_list_policy"),
    "ca_file": ("tls", "defaults", "ca_file"),
    "ca_path": ("tls", "defaults", "ca_path"),
    "cert_file": ("tls", "defaults", "cert_file"),
    "key_file": ("tls", "defaults", "key_file"),
    "verify_incoming": ("tls", "defaults", "verify_incoming"),
    "verify_outgoing": ("tls", "defaults", "verify_outgoing"),
    "verify_server_hostname": ("tls", "internal_rpc", "verify_server_hostname"),
    "tls_min_version": ("tls", "defaults", "tls_min_version"),
    "tls_cipher_suites": ("tls", "defaults", "tls_cipher_suites"),
}
# Legacy names inside acl.tokens (Consul 1.11 renamed them).
_LEGACY_TOKEN_KEYS = {"master": "initial_management", "agent_master": "agent_recovery"}

# Dev mode defaults, like Consul's DevSource (merged right after the defaults).
_DEV: dict[str, Any] = {
    "bind_addr": "127.0.0.1",
    "disable_keyring_file": True,
    "enable_debug": True,
    "ui_config": {"enabled": True},
    "log_level": "DEBUG",
    "server": True,
    "performance": {"raft_multiplier": 1},
    "ports": {"grpc": 8502},
}


# ---------------------------------------------------------------------------------------------
# Errors and results


class ConfigError(Exception):
    """The configuration is invalid; `.errors` lists every problem, each naming source and key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class LoadResult:
    config: RuntimeConfig
    warnings: list[str]


@dataclass
class _Source:
    """One config layer: its display name, raw content and (for flags) the flag per key."""

    name: str
    data: dict[str, Any]
    flag_for: dict[str, str] = field(default_factory=dict)  # dotted key -> "-flag"

    def where(self, key: str) -> str:
        flag = self.flag_for.get(key)
        return f"{self.name}: {flag}" if flag else f"{self.name}: {key}"


class _Collector:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        # dotted key -> "source: key" (or "command line: -flag") of the value that won.
        self.origin: dict[str, str] = {}

    def at(self, key: str, message: str) -> None:
        """Record an error about a merged key, naming the source that set it when known."""
        where = self.origin.get(key)
        self.errors.append(f"{where}: {message}" if where else f"{key}: {message}")


# ---------------------------------------------------------------------------------------------
# Per-source type checking


def _show(value: Any) -> str:
    """Render a bad value the way it appeared in JSON, for error messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_leaf(kind: str, value: Any) -> tuple[Any, str | None]:
    """Convert one value of `kind`; returns (value, None) or (None, error message)."""
    if kind == STR:
        if isinstance(value, str):
            return value, None
        return None, f"expected a string, got {_show(value)}"
    if kind == BOOL:
        # Consul's decoder is not weakly typed: "true" (a string) is an error, as there.
        if isinstance(value, bool):
            return value, None
        return None, f"expected a boolean, got {_show(value)}"
    if kind in (INT, UINT):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if kind == UINT and value < 0:
                return None, f"expected a non-negative integer, got {value}"
            return value, None
        return None, f"expected an integer, got {_show(value)}"
    if kind == FLOAT:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return None, f"expected a number, got {_show(value)}"
    if kind == DUR:
        if not isinstance(value, str):
            return None, f'expected a duration string such as "10s", got {_show(value)}'
        try:
            return parse_duration(value), None
        except ValueError as exc:
            return None, f"expected a duration: {exc}"
    if kind == STRLIST:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value), None
        return None, f"expected a list of strings, got {_show(value)}"
    if kind in (STRMAP, DURMAP):
        if not isinstance(value, dict):
            return None, f"expected an object of strings, got {_show(value)}"
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(v, str):
                return None, f"{k}: expected a string, got {_show(v)}"
            if kind == DURMAP:
                try:
                    out[k] = parse_duration(v)
                except ValueError as exc:
                    return None, f"{k}: expected a duration: {exc}"
            else:
                out[k] = v
        return out, None
    if kind == RAWLIST:
        items = [value] if isinstance(value, dict) else value
        if isinstance(items, list) and all(isinstance(v, dict) for v in items):
            return list(items), None
        return None, f"expected a list of objects, got {_show(value)}"
    raise AssertionError(kind)


def _lookup(schema: dict[str, Any], key: str) -> str | None:
    """Find the schema key for `key`: exact, else case-insensitive (mapstructure matches so)."""
    if key in schema:
        return key
    folded = key.lower()
    for candidate in schema:
        if candidate.lower() == folded:
            return candidate
    return None


def _check_object(
    raw: dict[str, Any], schema: dict[str, Any], prefix: str, src: _Source, out: _Collector
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = _lookup(schema, raw_key) if isinstance(raw_key, str) else None
        path = prefix + (key or str(raw_key))
        if key is None:
            out.errors.append(f"{src.where(path)}: invalid config key {path}")
            continue
        kind = schema[key]
        if kind == IGNORED:
            out.warnings.append(f"{src.name}: config key {path} is not supported by proconsul; ignored")
            continue
        # Consul's HookWeakDecodeFromSlice: a one-element list stands for its element (HCL1
        # blocks decode as lists).
        if (
            isinstance(value, list)
            and len(value) == 1
            and (isinstance(kind, dict) or kind not in _LIST_KINDS)
        ):
            value = value[0]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                out.errors.append(f"{src.where(path)}: expected an object, got {_show(value)}")
                continue
            result[key] = _check_object(value, kind, path + ".", src, out)
            continue
        converted, problem = _check_leaf(kind, value)
        if problem is not None:
            out.errors.append(f"{src.where(path)}: {problem}")
            continue
        result[key] = converted
    return result


def _normalize_legacy(src: _Source, out: _Collector) -> dict[str, Any]:
    """Fold Consul's singular/legacy keys into their current places; returns a new dict."""
    data = dict(src.data)
    # service/check (singular) join the lists after them, as Consul appends c2.Service to
    # c2.Services. In HCL1 a repeated `service {}` block arrives as a list.
    for single, plural in (("service", "services"), ("check", "checks")):
        if single in data:
            value = data.pop(single)
            items = value if isinstance(value, list) else [value]
            existing = data.get(plural, [])
            if isinstance(existing, dict):
                existing = [existing]
            if isinstance(existing, list):
                data[plural] = existing + items
            else:
                out.errors.append(f"{src.where(plural)}: expected a list of objects, got {_show(existing)}")
                data.pop(plural)
    if isinstance(data.get("watches"), dict):
        data["watches"] = [data["watches"]]
    for old, new_path in _LEGACY_KEYS.items():
        if old not in data:
            continue
        value = data.pop(old)
        new_key = ".".join(new_path)
        out.warnings.append(f"{src.name}: config key {old} is deprecated; use {new_key}")
        node = data
        for part in new_path[:-1]:
            child = node.get(part)
            if isinstance(child, list) and len(child) == 1:
                child = child[0]
            if not isinstance(child, dict):
                child = {}
            child = dict(child)
            node[part] = child
            node = child
        node.setdefault(new_path[-1], value)  # the new key wins when both are given, as Consul
        if old in src.flag_for:
            src.flag_for[new_key] = src.flag_for[old]
    acl = data.get("acl")
    if isinstance(acl, dict) and isinstance(acl.get("tokens"), dict):
        tokens = dict(acl["tokens"])
        for old, new in _LEGACY_TOKEN_KEYS.items():
            if old in tokens:
                out.warnings.append(
                    f"{src.name}: config key acl.tokens.{old} is deprecated; use acl.tokens.{new}"
                )
                tokens.setdefault(new, tokens.pop(old))
                tokens.pop(old, None)
        data["acl"] = {**acl, "tokens": tokens}
    return data


def _validate_definitions(layer: dict[str, Any], src: _Source, out: _Collector) -> None:
    """Check service and check definitions with the same decoder the HTTP API uses."""
    if not layer.get("services") and not layer.get("checks"):
        return
    from proconsul import structs  # lazy: structs imports parse_duration from here

    for key, decode in (("services", structs.decode_service), ("checks", structs.decode_check)):
        for i, raw in enumerate(layer.get(key, [])):
            try:
                decode(raw)
            except structs.DecodeError as exc:
                for problem in exc.errors:
                    out.errors.append(f"{src.name}: {key}[{i}].{problem}")


# ---------------------------------------------------------------------------------------------
# Merging


def _merge(
    base: dict[str, Any],
    layer: dict[str, Any],
    schema: dict[str, Any],
    src: _Source,
    out: _Collector,
    prefix: str = "",
) -> None:
    """Merge `layer` into `base` in place by Consul's rules, recording where each value came from."""
    for key, value in layer.items():
        kind = schema[key]
        path = prefix + key
        if isinstance(kind, dict):
            _merge(base.setdefault(key, {}), value, kind, src, out, path + ".")
            continue
        if kind in _LIST_KINDS:
            base[key] = base.get(key, []) + value
            if value:
                out.origin[path] = src.where(path)
        elif kind in _MAP_KINDS:
            if value:  # a later map replaces an earlier one only when it is non-empty
                base[key] = value
                out.origin[path] = src.where(path)
        else:
            base[key] = value
            out.origin[path] = src.where(path)


# ---------------------------------------------------------------------------------------------
# Reading sources


def _parse_text(text: str, fmt: str, name: str, out: _Collector) -> dict[str, Any] | None:
    try:
        if fmt == "json":
            data = json.loads(text)
        else:
            import hcl  # pyhcl: HCL1, as Consul's hashicorp/hcl v1

            data = hcl.loads(text)
    except Exception as exc:  # noqa: BLE001 - pyhcl raises assorted exception types
        out.errors.append(f"{name}: failed to parse {fmt.upper()}: {exc}")
        return None
    if not isinstance(data, dict):
        out.errors.append(f"{name}: expected an object at the top level")
        return None
    return data


def _format_of(path: str) -> str | None:
    if path.endswith(".json"):
        return "json"
    if path.endswith(".hcl"):
        return "hcl"
    return None


def _read_path(path: str, config_format: str | None, out: _Collector) -> list[_Source]:
    """Sources from one -config-file or -config-dir argument (a file or a directory)."""
    try:
        is_dir = os.path.isdir(path)
        if not is_dir:
            os.stat(path)
    except OSError as exc:
        out.errors.append(f"{path}: cannot read config: {exc.strerror or exc}")
        return []
    if is_dir:
        try:
            names = sorted(os.listdir(path))  # lexical order by name, as Consul
        except OSError as exc:
            out.errors.append(f"{path}: cannot read config directory: {exc.strerror or exc}")
            return []
        files = []
        for name in names:
            full = os.path.join(path, name)
            if os.path.isdir(full):  # follows symlinks; no recursion into sub-directories
                continue
            files.append(full)
    else:
        files = [path]
    sources = []
    for file in files:
        fmt = config_format or _format_of(file)
        if fmt is None:
            out.warnings.append(
                f"skipping file {file}, extension must be .hcl or .json, or config format must be set"
            )
            continue
        try:
            with open(file, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            out.errors.append(f"{file}: cannot read config: {exc}")
            continue
        if text == "":  # Consul skips empty sources
            sources.append(_Source(file, {}))
            continue
        data = _parse_text(text, fmt, file, out)
        if data is not None:
            sources.append(_Source(file, data))
    return sources


# ---------------------------------------------------------------------------------------------
# Flags

# flag name -> dotted config key. Flags not listed here (dev, config-*, hcl) steer loading.
FLAG_KEYS: dict[str, str] = {
    "advertise": "advertise_addr",
    "advertise-wan": "advertise_addr_wan",
    "allow-write-http-from": "http_config.allow_write_http_from",
    "alt-domain": "alt_domain",
    "auto-reload-config": "auto_reload_config",
    "bind": "bind_addr",
    "bootstrap": "bootstrap",
    "bootstrap-expect": "bootstrap_expect",
    "check_output_max_size": "check_output_max_size",
    "client": "client_addr",
    "data-dir": "data_dir",
    "datacenter": "datacenter",
    "dc": "datacenter",
    "default-query-time": "default_query_time",
    "disable-host-node-id": "disable_host_node_id",
    "disable-keyring-file": "disable_keyring_file",
    "dns-port": "ports.dns",
    "domain": "domain",
    "enable-local-script-checks": "enable_local_script_checks",
    "enable-script-checks": "enable_script_checks",
    "encrypt": "encrypt",
    "grpc-port": "ports.grpc",
    "grpc-tls-port": "ports.grpc_tls",
    "http-port": "ports.http",
    "https-port": "ports.https",
    "join": "start_join",
    "join-wan": "start_join_wan",
    "log-file": "log_file",
    "log-json": "log_json",
    "log-level": "log_level",
    "log-rotate-bytes": "log_rotate_bytes",
    "log-rotate-duration": "log_rotate_duration",
    "log-rotate-max-files": "log_rotate_max_files",
    "max-query-time": "max_query_time",
    "node": "node_name",
    "node-id": "node_id",
    "node-meta": "node_meta",
    "pid-file": "pid_file",
    "raft-protocol": "raft_protocol",
    "recursor": "recursors",
    "rejoin": "rejoin_after_leave",
    "retry-interval": "retry_interval",
    "retry-interval-wan": "retry_interval_wan",
    "retry-join": "retry_join",
    "retry-join-wan": "retry_join_wan",
    "retry-max": "retry_max",
    "retry-max-wan": "retry_max_wan",
    "serf-lan-bind": "serf_lan",
    "serf-lan-port": "ports.serf_lan",
    "serf-wan-bind": "serf_wan",
    "serf-wan-port": "ports.serf_wan",
    "server": "server",
    "server-port": "ports.server",
    "syslog": "enable_syslog",
    "ui": "ui_config.enabled",
    "ui-content-path": "ui_config.content_path",
    "ui-dir": "ui_config.dir",
}

_DURATION_FLAGS = {
    "default-query-time",
    "max-query-time",
    "log-rotate-duration",
    "retry-interval",
    "retry-interval-wan",
}
_BOOL_FLAGS = {
    "auto-reload-config",
    "bootstrap",
    "disable-host-node-id",
    "disable-keyring-file",
    "enable-local-script-checks",
    "enable-script-checks",
    "log-json",
    "rejoin",
    "server",
    "syslog",
    "ui",
}
_INT_FLAGS = {
    "bootstrap-expect",
    "check_output_max_size",
    "dns-port",
    "grpc-port",
    "grpc-tls-port",
    "http-port",
    "https-port",
    "log-rotate-bytes",
    "log-rotate-max-files",
    "raft-protocol",
    "retry-max",
    "retry-max-wan",
    "serf-lan-port",
    "serf-wan-port",
    "server-port",
}
_LIST_FLAGS = {
    "allow-write-http-from",
    "join",
    "join-wan",
    "node-meta",
    "recursor",
    "retry-join",
    "retry-join-wan",
}

_FLAG_HELP = {
    "advertise": "Sets the advertise address to use.",
    "advertise-wan": "Sets address to advertise on WAN instead of -advertise address.",
    "alt-domain": "Alternate domain to use for DNS interface.",
    "bind": "Sets the bind address for cluster communication.",
    "bootstrap-expect": "Sets server to expect bootstrap mode.",
    "client": "Sets the address to bind for client access (HTTP, DNS, gRPC).",
    "config-dir": "Directory of .json/.hcl config files, read in lexical order. Repeatable.",
    "config-file": "A JSON or HCL config file. Repeatable.",
    "config-format": "Config files are in this format irrespective of their extension: hcl or json.",
    "data-dir": "Path to a data directory to store agent state.",
    "datacenter": "Datacenter of the agent.",
    "dc": "Alias of -datacenter.",
    "dev": "Starts the agent in development mode (in-memory server).",
    "hcl": "HCL config fragment. Repeatable.",
    "join": "Address of an agent to join at start time. Repeatable.",
    "node": "Name of this node. Must be unique in the cluster.",
    "node-meta": "Metadata key:value pair for this node. Repeatable.",
    "recursor": "Address of an upstream DNS server. Repeatable.",
    "retry-join": "Address of an agent to join, retried until it succeeds. Repeatable.",
    "server": "Switches agent to server mode.",
    "ui": "Enables the built-in web UI server.",
}


def _duration_flag_value(text: str) -> str:
    parse_duration(text)  # validate now (Go's flag package rejects it at parse time)...
    return text  # ...but keep the text: flag values go through the same checks as files


def agent_flagset() -> FlagSet:
    """The `proconsul agent` flags (Consul's agent/config/flags.go, plus -dc)."""
    fs = FlagSet(
        "agent",
        "Usage: proconsul agent [options]\n\n  Starts the proconsul agent and runs until an interrupt is received.",
    )
    fs.bool("dev", help=_FLAG_HELP["dev"])
    fs.list("config-file", help=_FLAG_HELP["config-file"])
    fs.list("config-dir", help=_FLAG_HELP["config-dir"])
    fs.string("config-format", help=_FLAG_HELP["config-format"])
    fs.list("hcl", help=_FLAG_HELP["hcl"])
    for name, key in FLAG_KEYS.items():
        text = _FLAG_HELP.get(name, f"Sets {key}.")
        if name in _BOOL_FLAGS:
            fs.bool(name, help=text)
        elif name in _INT_FLAGS:
            fs.int(name, help=text)
        elif name in _LIST_FLAGS:
            fs.list(name, help=text)
        elif name in _DURATION_FLAGS:
            fs.custom(name, _duration_flag_value, help=text)
        else:
            fs.string(name, help=text)
    return fs


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def _flag_sources(flags: ParsedFlags) -> tuple[_Source, _Source]:
    """(list-valued flags, other flags) as two sources: lists go before files, others after."""
    lists = _Source("command line", {})
    values = _Source("command line", {})
    for name, value in flags.given:
        key = FLAG_KEYS.get(name)
        if key is None:
            continue
        if name == "node-meta":
            # "key:value"; no colon means an empty value, as Consul's flag.
            meta_key, _, meta_value = value.partition(":")
            meta = values.data.setdefault("node_meta", {})
            meta[meta_key] = meta_value
            values.flag_for[key] = "-" + name
        elif name in _LIST_FLAGS:
            current = lists.data
            for part in key.split(".")[:-1]:
                current = current.setdefault(part, {})
            current.setdefault(key.split(".")[-1], []).append(value)
            lists.flag_for[key] = "-" + name
        else:
            _set_dotted(values.data, key, value)
            values.flag_for[key] = "-" + name
    return lists, values


# ---------------------------------------------------------------------------------------------
# Host address discovery and go-sockaddr templates (the subset operators use)

_SIOCGIFADDR = 0x8915
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_PRIVATE_V4 = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
]


def interface_addresses() -> list[tuple[str, str]]:
    """(interface, IP) for every up interface: IPv4 via ioctl, IPv6 from /proc/net/if_inet6.

    A module-level function so tests (and other platforms) can replace it.
    """
    result: list[tuple[str, str]] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            req = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack("H", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, req)[16:18])[0]
                if not flags & _IFF_UP:
                    continue
                addr = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, req)[20:24]
            except OSError:
                continue
            result.append((name, socket.inet_ntoa(addr)))
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6:
                    result.append((parts[5], str(ipaddress.IPv6Address(bytes.fromhex(parts[0])))))
    except OSError:
        pass
    return result


def _private_ipv4() -> list[str]:
    return [
        ip
        for _, ip in interface_addresses()
        if ipaddress.ip_address(ip).version == 4 and any(ipaddress.ip_address(ip) in n for n in _PRIVATE_V4)
    ]


def _public_ipv6() -> list[str]:
    out = []
    for _, ip in interface_addresses():
        addr = ipaddress.ip_address(ip)
        if addr.version == 6 and addr.is_global:
            out.append(ip)
    return out


def _public_ipv4() -> list[str]:
    return [
        ip
        for _, ip in interface_addresses()
        if ipaddress.ip_address(ip).version == 4 and ipaddress.ip_address(ip).is_global
    ]


def _iface_ips(name: str) -> list[str]:
    ips = [ip for iface, ip in interface_addresses() if iface == name]
    if not ips:
        raise ValueError(f'no IP address on interface "{name}"')
    return ips


_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_TEMPLATE_FUNCS: dict[str, Callable[[list[str]], list[str]]] = {
    "GetPrivateIP": lambda a: _private_ipv4()[:1],
    "GetPrivateIPs": lambda a: _private_ipv4(),
    "GetPublicIP": lambda a: _public_ipv4()[:1],
    "GetPublicIPs": lambda a: _public_ipv4(),
    "GetInterfaceIP": lambda a: [ip for ip in _iface_ips(a[0]) if ipaddress.ip_address(ip).version == 4][:1],
    "GetInterfaceIPs": lambda a: _iface_ips(a[0]),
}


def expand_template(text: str) -> str:
    """Expand the go-sockaddr templates proconsul supports; plain text passes through.

    Supported: GetPrivateIP(s), GetPublicIP(s), GetInterfaceIP "name", GetInterfaceIPs "name".
    Pipelines (`| include ...`) are not supported and raise ValueError.
    """

    def one(match: re.Match[str]) -> str:
        parts = match.group(1).split()
        if not parts or parts[0] not in _TEMPLATE_FUNCS or "|" in parts:
            raise ValueError(f"unsupported go-sockaddr template {match.group(0)!r}")
        args = [p.strip('"') for p in parts[1:]]
        if parts[0].startswith("GetInterface") and len(args) != 1:
            raise ValueError(f"{parts[0]} needs one interface name")
        return " ".join(_TEMPLATE_FUNCS[parts[0]](args))

    return _TEMPLATE.sub(one, text)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _is_any(text: str) -> bool:
    return text in ("0.0.0.0", "::", "[::]")


# ---------------------------------------------------------------------------------------------
# Building and semantic validation

_BASIC_NAME = re.compile(r"^[a-z0-9_-]+$")
_DNS_INVALID = re.compile(r"[^A-Za-z0-9\-]+")
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_LOG_LEVELS = {"TRACE", "DEBUG", "INFO", "WARN", "ERR", "ERROR"}
_FACILITIES = {
    "KERN", "USER", "MAIL", "DAEMON", "AUTH", "SYSLOG", "LPR", "NEWS", "UUCP", "CRON", "AUTHPRIV", "FTP",
    *(f"LOCAL{i}" for i in range(8)),
}  # fmt: skip
_CONTENT_PATH = re.compile(r"^[A-Za-z0-9/_-]+$")


def _field_name(key: str, kind: Any) -> str:
    return key + "_s" if kind in (DUR, DURMAP) else key


def _kwargs(cls: type, merged: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments for dataclass `cls` from the merged values its schema covers."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in merged.items():
        kind = schema[key]
        name = _field_name(key, kind)
        if name not in hints:
            continue
        if isinstance(kind, dict):
            kwargs[name] = hints[name](**_kwargs(hints[name], value, kind))
        elif kind in _LIST_KINDS:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return kwargs


def _split_addrs(text: str) -> list[str]:
    return text.split()


def _build(
    merged: dict[str, Any], dev: bool, sources: list[str], out: _Collector, check_paths: bool = True
) -> RuntimeConfig | None:
    kw = _kwargs(RuntimeConfig, merged, SCHEMA)
    server = bool(merged.get("server", False))

    def merged_get(path: str, default: Any = None) -> Any:
        node: Any = merged
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    # -- identity
    datacenter = merged_get("datacenter", _DEFAULTS.datacenter).lower()
    kw["datacenter"] = datacenter
    if not _BASIC_NAME.match(datacenter):
        out.at(
            "datacenter",
            f"datacenter can only contain lowercase alphanumeric, - or _ characters. received: {datacenter!r}",
        )
    primary = merged_get("primary_datacenter", "").lower()
    if primary and not _BASIC_NAME.match(primary):
        out.at(
            "primary_datacenter",
            f"primary_datacenter can only contain lowercase alphanumeric, - or _ characters. received: {primary!r}",
        )
    kw["primary_datacenter"] = primary or datacenter
    kw["dev"] = dev
    data_dir = merged_get("data_dir") or None
    kw["data_dir"] = None if dev and not data_dir else data_dir
    if not dev and not data_dir:
        out.errors.append("data_dir cannot be empty (set data_dir, -data-dir, or use -dev)")
    elif data_dir and check_paths and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        out.at("data_dir", f"data_dir {data_dir!r} is not a directory")
    node_name = (merged_get("node_name") or hostname()).strip()
    kw["node_name"] = node_name
    if not node_name:
        out.at("node_name", "node_name cannot be empty")
    elif _DNS_INVALID.search(node_name):
        out.warnings.append(
            f"Node name {node_name!r} will not be discoverable via DNS due to invalid characters. "
            "Valid characters include all alpha-numerics and dashes."
        )
    elif len(node_name) > 63:
        out.warnings.append(
            f"Node name {node_name!r} will not be discoverable via DNS due to it being too long."
        )
    node_id = merged_get("node_id") or None
    if node_id is not None:
        try:
            node_id = str(uuid.UUID(node_id)).lower()
            if len(merged_get("node_id")) != 36:
                raise ValueError
        except ValueError:
            out.at(
                "node_id", f"node_id must be a UUID (8-4-4-4-12 hex digits), got {merged_get('node_id')!r}"
            )
            node_id = None
    kw["node_id"] = node_id

    # -- roles
    bootstrap = bool(merged_get("bootstrap", False))
    expect = int(merged_get("bootstrap_expect", _DEFAULTS.bootstrap_expect))
    if expect == 1:
        out.warnings.append("BootstrapExpect is set to 1; this is the same as Bootstrap mode.")
        bootstrap, expect = True, 0
    if bootstrap and not server:
        out.at("bootstrap", "'bootstrap = true' requires 'server = true'")
    if expect < 0:
        out.at(
            "bootstrap_expect", f"bootstrap_expect cannot be {expect}. Must be greater than or equal to zero"
        )
    elif expect > 0:
        if not server:
            out.at("bootstrap_expect", "'bootstrap_expect > 0' requires 'server = true'")
        if dev:
            out.at("bootstrap_expect", "'bootstrap_expect > 0' not allowed in dev mode")
        if bootstrap:
            out.at("bootstrap_expect", "'bootstrap_expect > 0' and 'bootstrap = true' are mutually exclusive")
    if server and not dev and not bootstrap:
        if expect == 2:
            out.warnings.append(
                "bootstrap_expect = 2: A cluster with 2 servers will provide no failure tolerance."
            )
        elif expect > 2 and expect % 2 == 0:
            out.warnings.append(
                "bootstrap_expect is even number: A cluster with an even number of servers does not achieve optimum fault tolerance."
            )
    if server and bootstrap and not dev:
        out.warnings.append("bootstrap = true: do not enable unless necessary")
    # Consul's dev mode server bootstraps itself; say so here so other modules need not know.
    kw["bootstrap"] = bootstrap or (dev and server and expect == 0)
    kw["bootstrap_expect"] = expect
    kw["leave_on_terminate"] = merged_get("leave_on_terminate", not server)
    kw["skip_leave_on_interrupt"] = merged_get("skip_leave_on_interrupt", server)
    kw["enable_local_script_checks"] = merged_get(
        "enable_local_script_checks", bool(merged_get("enable_script_checks", False))
    )

    # -- ports: <= 0 disables (-1), above 65535 is an error
    ports = dict(merged_get("ports", {}))
    if "grpc_tls" not in ports and server:
        ports["grpc_tls"] = 8503
    for name in ("dns", "http", "https", "grpc", "grpc_tls", "serf_lan", "serf_wan", "server"):
        if name in ports:
            if ports[name] <= 0:
                ports[name] = -1
            elif ports[name] > 65535:
                out.at(f"ports.{name}", f"invalid port: {ports[name]}")
    kw["ports"] = Ports(**ports)

    # -- addresses
    def expand(key: str, text: str) -> list[str] | None:
        try:
            return _split_addrs(expand_template(text))
        except ValueError as exc:
            out.at(key, f"error parsing {text!r}: {exc}")
            return None

    bind_text = merged_get("bind_addr", _DEFAULTS.bind_addr)
    bind = expand("bind_addr", bind_text) or []
    bind_addr = "0.0.0.0"
    if not bind:
        out.at("bind_addr", "bind_addr cannot be empty")
    elif len(bind) > 1:
        out.at(
            "bind_addr",
            "bind_addr cannot contain multiple addresses. Use 'addresses.{dns,http,https}' instead.",
        )
    elif bind[0].startswith("unix://"):
        out.at("bind_addr", "bind_addr cannot be a unix socket")
    elif not _is_ip(bind[0]):
        out.at("bind_addr", f"bind_addr must be an ip address, got {bind[0]!r}")
    else:
        bind_addr = bind[0].strip("[]")
    kw["bind_addr"] = bind_addr

    def single_ip(key: str) -> str:
        text = merged_get(key, "")
        if not text:
            return ""
        addrs = expand(key, text)
        if addrs is None:
            return ""
        if len(addrs) != 1 or not _is_ip(addrs[0]):
            out.at(key, f"{key} must be a single ip address, got {text!r}")
            return ""
        if _is_any(addrs[0]):
            out.at(key, f"{key} cannot be 0.0.0.0, :: or [::]")
            return ""
        return addrs[0].strip("[]")

    advertise = single_ip("advertise_addr")
    if not advertise:
        advertise = bind_addr
        if _is_any(bind_addr) and "advertise_addr" not in merged:
            v6 = ipaddress.ip_address(bind_addr).version == 6
            kind, found = ("public IPv6", _public_ipv6()) if v6 else ("private IPv4", _private_ipv4())
            if not found:
                out.at("bind_addr", f"No {kind} address found")
            elif len(found) > 1:
                out.at(
                    "bind_addr",
                    f"Multiple {kind} addresses found. Please configure one with 'bind' and/or 'advertise'.",
                )
            else:
                advertise = found[0]
    kw["advertise_addr"] = advertise
    kw["advertise_addr_wan"] = single_ip("advertise_addr_wan") or advertise
    kw["serf_lan"] = single_ip("serf_lan") or bind_addr
    kw["serf_wan"] = single_ip("serf_wan") or bind_addr

    client_text = merged_get("client_addr", " ".join(_DEFAULTS.client_addr))
    client = expand("client_addr", client_text) or []
    if not client:
        out.warnings.append(
            "client_addr is empty, client services (DNS, HTTP, HTTPS, GRPC) will not be listening for connections"
        )
    for addr in client:
        if addr.startswith("unix://"):
            out.at("client_addr", "client_addr cannot be a unix socket")
        elif not _is_ip(addr):
            out.at("client_addr", f"client_addr: invalid ip address: {addr}")
    kw["client_addr"] = tuple(a.strip("[]") for a in client)
    addr_kw: dict[str, tuple[str, ...]] = {}
    for name, text in merged_get("addresses", {}).items():
        addrs = expand(f"addresses.{name}", text) or []
        for addr in addrs:
            if addr.startswith("unix://"):
                if name == "dns":
                    out.at("addresses.dns", "DNS address cannot be a unix socket")
            elif not _is_ip(addr):
                out.at(f"addresses.{name}", f"invalid ip address: {addr}")
        addr_kw[name] = tuple(a if a.startswith("unix://") else a.strip("[]") for a in addrs)
    kw["addresses"] = Addresses(**addr_kw)

    for key in ("retry_join", "retry_join_wan", "start_join", "start_join_wan"):
        expanded: list[str] = []
        for entry in merged_get(key, []):
            expanded.extend((expand(key, entry) or []) if "{{" in entry else [entry])
        kw[key] = tuple(expanded)
        if merged_get(key) and key.startswith("start_join"):
            out.warnings.append(
                f"{key} (and -join/-join-wan) is deprecated; use retry_join{key[len('start_join') :]}"
            )

    recursors: list[str] = []
    for entry in merged_get("recursors", []):
        for addr in expand("recursors", entry) or []:
            if addr.startswith("unix://"):
                out.at("recursors", f"DNS Recursors cannot be unix sockets: {addr}")
            elif _is_any(addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr):
                out.at("recursors", "DNS recursor address cannot be 0.0.0.0, :: or [::]")
            elif addr not in recursors:
                recursors.append(addr)
    kw["recursors"] = tuple(recursors)

    # -- DNS
    domain = merged_get("domain", _DEFAULTS.domain).lower()
    kw["domain"] = domain if domain.endswith(".") else domain + "."
    alt = merged_get("alt_domain", "").lower()
    if alt:
        alt = alt if alt.endswith(".") else alt + "."
        first = alt.split(".", 1)[0]
        if first in ("service", "connect", "node", "query", "addr", datacenter):
            out.at(
                "alt_domain", f"alt_domain cannot start with {{service,connect,node,query,addr,{datacenter}}}"
            )
    kw["alt_domain"] = alt
    dns = kw.get("dns_config", DNSConfig())
    if dns.udp_answer_limit < 0:
        out.at(
            "dns_config.udp_answer_limit",
            f"dns_config.udp_answer_limit cannot be {dns.udp_answer_limit}. Must be greater than or equal to zero",
        )
    if dns.a_record_limit < 0:
        out.at(
            "dns_config.a_record_limit",
            f"dns_config.a_record_limit cannot be {dns.a_record_limit}. Must be greater than or equal to zero",
        )
    if dns.recursor_strategy not in ("sequential", "random", ""):
        out.at("dns_config.recursor_strategy", f"invalid strategy: {dns.recursor_strategy!r}")

    # -- logging
    level = merged_get("log_level", _DEFAULTS.log_level).upper()
    if level not in _LOG_LEVELS:
        out.at(
            "log_level",
            f"Invalid log level: {merged_get('log_level')!r}. Valid log levels are: TRACE, DEBUG, INFO, WARN, ERROR",
        )
    kw["log_level"] = "ERROR" if level == "ERR" else level
    facility = merged_get("syslog_facility", _DEFAULTS.syslog_facility).upper()
    if facility not in _FACILITIES:
        out.at("syslog_facility", f"unknown syslog facility {merged_get('syslog_facility')!r}")
    kw["syslog_facility"] = facility

    # -- the rest of the semantic checks Consul makes
    raft_mult = merged_get("performance.raft_multiplier", _DEFAULTS.performance.raft_multiplier)
    if not 1 <= raft_mult <= 10:
        out.at(
            "performance.raft_multiplier",
            f"performance.raft_multiplier cannot be {raft_mult}. Must be between 1 and 10",
        )
    if merged_get("raft_protocol", _DEFAULTS.raft_protocol) != 3:
        out.at(
            "raft_protocol",
            f"raft_protocol version {merged_get('raft_protocol')} is not supported by this version of Consul",
        )
    for key in ("reconnect_timeout", "reconnect_timeout_wan"):
        value = merged_get(key)
        if value is not None and value < 8 * 3600:
            out.at(key, f"{key} must be >= 8h")
    if server and merged_get("advertise_reconnect_timeout", 0) != 0:
        out.at("advertise_reconnect_timeout", "advertise_reconnect_timeout can only be used on a client")
    if merged_get("advertise_reconnect_timeout", 0) < 0:
        out.at("advertise_reconnect_timeout", "advertise_reconnect_timeout must not be negative")
    if merged_get("reconnect_interval", 1.0) <= 0:
        out.at("reconnect_interval", "reconnect_interval must be positive")
    if merged_get("autopilot.max_trailing_logs", 0) < 0:
        out.at(
            "autopilot.max_trailing_logs", "autopilot.max_trailing_logs must be greater than or equal to zero"
        )
    for key in ("ae_interval", "check_reap_interval"):
        if merged_get(key, 1.0) <= 0:
            out.at(key, f"{key} must be positive")
    for key in ("sync_coordinate_rate_target", "sync_coordinate_interval_min"):
        if merged_get(key, 1.0) <= 0:
            out.at(key, f"{key} must be positive")
    if merged_get("check_output_max_size", _DEFAULTS.check_output_max_size) < 1:
        out.at(
            "check_output_max_size",
            "check_output_max_size must be positive, to discard check output use the discard_check_output flag",
        )
    for key, allowed in (
        ("acl.default_policy", ("allow", "deny")),
        ("acl.down_policy", ("allow", "deny", "extend-cache", "async-cache")),
    ):
        value = merged_get(key)
        if value is not None and value not in allowed:
            out.at(key, f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    meta = merged_get("node_meta", {})
    if len(meta) > 64:
        out.at("node_meta", "node_meta invalid: Node metadata cannot contain more than 64 key/value pairs")
    for k, v in meta.items():
        if not _META_KEY.match(k):
            out.at("node_meta", f"node_meta invalid: Key contains invalid characters: {k!r}")
        elif len(k) > 128:
            out.at("node_meta", f"node_meta invalid: Key is too long (limit: 128 characters): {k!r}")
        elif k.startswith("consul-"):
            out.at(
                "node_meta", f"node_meta invalid: Key prefix 'consul-' is reserved for internal use: {k!r}"
            )
        if len(v) > 512:
            out.at("node_meta", f"node_meta invalid: Value is too long (limit: 512 characters): {k!r}")
    key_text = merged_get("encrypt", "")
    if key_text:
        try:
            raw_key = base64.b64decode(key_text, validate=True)
        except ValueError as exc:
            out.at("encrypt", f"encrypt has invalid key: {exc}")
        else:
            if len(raw_key) not in (16, 24, 32):
                out.at(
                    "encrypt",
                    f"encrypt has invalid key: key size must be 16, 24 or 32 bytes, got {len(raw_key)}",
                )
    ui = kw.get("ui_config", UIConfig())
    if not _CONTENT_PATH.match(ui.content_path):
        out.at(
            "ui_config.content_path",
            f"ui-content-path can only contain alphanumeric, -, _, or /. received: {ui.content_path!r}",
        )
    if not dev and ui.enabled and ui.dir:
        out.at(
            "ui_config.dir",
            "Both the ui_config.enabled and ui_config.dir (or -ui and -ui-dir) were specified, please provide only one.",
        )
    # Consul's UIPathBuilder normalises the content path to "/path/".
    stripped = ui.content_path.strip("/")
    kw["ui_config"] = UIConfig(ui.enabled, ui.dir, f"/{stripped}/" if stripped else "/")
    mode = merged_get("unix_sockets.mode")
    if mode:
        try:
            int(mode, 8)
        except ValueError:
            out.at("unix_sockets.mode", f"invalid mode: {mode}")

    # -- TLS: internal_rpc/https/grpc inherit unset fields from defaults
    tls_merged = merged_get("tls", {})
    defaults = tls_merged.get("defaults", {})
    sections = {
        name: TLSSection(**_kwargs(TLSSection, {**defaults, **tls_merged.get(name, {})}, _TLS_SECTION))
        for name in ("internal_rpc", "https", "grpc")
    }
    kw["tls"] = TLS(defaults=TLSSection(**_kwargs(TLSSection, defaults, _TLS_SECTION)), **sections)

    kw["services"] = tuple(merged_get("services", []))
    kw["checks"] = tuple(merged_get("checks", []))
    kw["watches"] = tuple(merged_get("watches", []))
    kw["sources"] = tuple(sources)
    return RuntimeConfig(**kw)


# ---------------------------------------------------------------------------------------------
# Entry points


def _assemble(
    file_args: list[str],
    config_format: str | None,
    dev: bool,
    flag_lists: _Source | None,
    flag_values: _Source | None,
    hcl_fragments: list[str],
    check_paths: bool = True,
) -> tuple[RuntimeConfig | None, _Collector]:
    out = _Collector()
    if config_format not in (None, "", "hcl", "json"):
        out.errors.append("command line: -config-format: -config-format must be either 'hcl' or 'json'")
        return None, out
    sources: list[_Source] = []
    if dev:
        sources.append(_Source("dev", dict(_DEV)))
    if flag_lists is not None:
        sources.append(flag_lists)
    files: list[_Source] = []
    for path in file_args:
        files.extend(_read_path(path, config_format or None, out))
    sources.extend(files)
    if flag_values is not None:
        sources.append(flag_values)
    for i, fragment in enumerate(hcl_fragments):
        name = f"command line: -hcl[{i}]"
        data = _parse_text(fragment, "hcl", name, out)
        if data is not None:
            sources.append(_Source(name, data))
    merged: dict[str, Any] = {}
    for src in sources:
        data = _normalize_legacy(src, out)
        layer = _check_object(data, SCHEMA, "", src, out)
        _validate_definitions(layer, src, out)
        _merge(merged, layer, SCHEMA, src, out)
    config = _build(merged, dev, [s.name for s in files], out, check_paths)
    return config, out


def load_from(flags: ParsedFlags) -> LoadResult:
    """Build the configuration from already-parsed agent flags (reload re-runs this)."""
    file_args = [value for name, value in flags.given if name in ("config-file", "config-dir")]
    lists, values = _flag_sources(flags)
    config, out = _assemble(
        file_args,
        flags.values.get("config-format"),
        bool(flags.values.get("dev")),
        lists,
        values,
        list(flags.values.get("hcl") or []),
    )
    if out.errors or config is None:
        raise ConfigError(out.errors)
    for warning in out.warnings:
        log.debug("config warning: %s", warning)
    return LoadResult(config=config, warnings=out.warnings)


def load(argv: list[str]) -> LoadResult:
    """Parse `proconsul agent` arguments and build the configuration.

    Raises FlagError/HelpRequested for command-line syntax, ConfigError with every problem.
    """
    flags = agent_flagset().parse(argv)
    if flags.args:
        raise FlagError(f"unexpected argument(s): {' '.join(flags.args)}")
    return load_from(flags)


def validate_paths(paths: Iterable[str], config_format: str | None = None) -> list[str]:
    """Every error in the given config files/directories, as `proconsul validate` reports them.

    Like `consul validate`, the files must form a complete agent configuration: data_dir is
    required (Consul's validate runs the agent's full validation, data_dir check included), but
    host-specific checks on the data directory itself are skipped.
    """
    _, out = _assemble(list(paths), config_format, False, None, None, [], check_paths=False)
    return out.errors


def validate_paths_with_warnings(
    paths: Iterable[str], config_format: str | None = None
) -> tuple[list[str], list[str]]:
    """Like validate_paths, also returning the warnings (for `proconsul validate` output)."""
    _, out = _assemble(list(paths), config_format, False, None, None, [], check_paths=False)
    return out.errors, out.warnings
