"""The agent's configuration model: what a loaded config *is*, not how it is read.

Owns the frozen `RuntimeConfig` (nested frozen dataclasses) whose field defaults are the one
defaults table (Consul's agent/config/default.go), `DEFAULTS` (that table as an instance for the
builders to read), the `RELOADABLE` set and `diff()` used by SIGHUP reload.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

# RuntimeConfig: the field defaults below are THE defaults table (Consul's agent/config/default.go).
# Role-dependent defaults (leave_on_terminate, skip_leave_on_interrupt, ports.grpc_tls) and dev
# mode overrides are applied in `config/build.py`, and say so in their comment.


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
    dns: str = ""  # token; ""; what DNS answers with (else the default token)


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
class CheckFlapDetection:
    # proconsul's own block (not Consul's): see proconsul.local.flap. Writing the block turns it on.
    enabled: bool = False  # bool; false (true when the block is present unless it says otherwise)
    window: int = 20  # results; 20
    high_threshold: float = 0.5  # weighted share of changes; 0.5 starts flapping
    low_threshold: float = 0.25  # weighted share of changes; below 0.25 stops it


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
    advertise_reconnect_timeout_s: float = (
        0.0  # seconds; 0 = others use their reconnect_timeout; clients only, no floor
    )
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
    check_flap_detection: CheckFlapDetection = CheckFlapDetection()  # off unless the block is written
    # Consul's hidden (non-user-configurable) timings, settable for tests; not in Consul's docs.
    ae_interval_s: float = 60.0  # seconds; 1m; anti-entropy full-sync base interval, scaled by cluster size
    check_reap_interval_s: float = (
        30.0  # seconds; 30s; how often deregister_critical_service_after is enforced
    )
    check_deregister_interval_min_s: float = 60.0  # seconds; 1m; floor for deregister_critical_service_after
    sync_coordinate_rate_target: float = (
        64.0  # updates/s; 64; cluster-wide coordinate updates the servers take
    )
    sync_coordinate_interval_min_s: float = (
        15.0  # seconds; 15s; floor of each agent's coordinate update interval
    )
    reconnect_interval_s: float = (
        30.0  # seconds; 30s (serf ReconnectInterval); how often a failed member is retried
    )
    # Test-only (not Consul): "host:port" -> "host:port" redirections for outbound server RPC and Raft
    # connections, so the simulation harness can route every directed link through its own proxy.
    dial_overrides: dict[str, str] = field(default_factory=dict)  # address -> address; {}
    # Test-only (not Consul), a deliberately broken build: a follower answers default-mode reads
    # from its own store instead of forwarding them to the leader. The chaos suite turns it on to
    # prove its linearizability checker catches the stale reads this causes. Never set it.
    unsafe_follower_local_reads: bool = False  # bool; false
    # Test-only (not Consul), a deliberately broken build: a new leader answers default-mode reads
    # as soon as it wins, before it applied its term's first entry, so its store may miss writes
    # its predecessor acknowledged (hashicorp/consul#2644). The chaos suite's read-your-writes
    # checker must catch it (scenarios/broken-new-leader-reads.toml). Never set it.
    unsafe_reads_before_first_apply: bool = False  # bool; false
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
    # HTTP: processes serving HTTP on a server agent (1 = the agent alone; N > 1 adds N-1 worker
    # processes holding read replicas, docs/HTTP-WORKERS.md). Client and -dev agents use 1.
    http_workers: int = 1
    # Reload
    auto_reload_config: bool = False  # bool; false; watch config files and reload on change
    sources: tuple[str, ...] = ()  # config files loaded, in merge order (for agent/self, reload)

    @property
    def ui_enabled(self) -> bool:
        return self.ui_config.enabled


DEFAULTS = RuntimeConfig()  # the defaults table, as an instance for the builder to read


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
        "discovery_max_stale_s",  # read per request by the HTTP layer
        "check_flap_detection",  # checks registered after the reload use the new settings
        "sources",
        # Read by the gossip pools' reconnect loop and reaper on every pass (serf.pool).
        "reconnect_timeout_s",
        "reconnect_timeout_wan_s",
        "reconnect_interval_s",
        # Read when the signal arrives (command/agent), so a reload changes the next stop.
        "leave_on_terminate",
        "skip_leave_on_interrupt",
        # proconsul.tls.rpc re-reads certificates on every reload; server RPC takes every TLS
        # setting per connection, HTTPS only its files (its verify mode, versions and ciphers are
        # fixed when its listener opens).
        "tls.defaults",
        "tls.internal_rpc",
        "tls.https.ca_file",
        "tls.https.ca_path",
        "tls.https.cert_file",
        "tls.https.key_file",
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
