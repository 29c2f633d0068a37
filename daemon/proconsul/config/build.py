"""Turning the merged raw config into a `RuntimeConfig`, with Consul's semantic checks.

Owns `build()`: one small builder per config section (identity, roles, ports, bind and advertise
addresses, client addresses, joins and recursors, DNS, logging, limits and timings, ACL and node
meta, encryption and UI, TLS), each filling its fields of the constructor arguments and recording
every problem in the `Collector` (errors name the source that set the key). Role-dependent
defaults (leave_on_terminate, skip_leave_on_interrupt, ports.grpc_tls) and dev-mode derivations
are applied here.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import ssl
import typing
import uuid
from typing import Any

import netaddr

from proconsul.config import interfaces
from proconsul.config.interfaces import expand_template, is_any, is_ip
from proconsul.config.model import (
    DEFAULTS,
    TLS,
    Addresses,
    CheckFlapDetection,
    DNSConfig,
    Ports,
    RuntimeConfig,
    TLSSection,
    UIConfig,
)
from proconsul.config.result import Collector
from proconsul.config.schema import LIST_KINDS, SCHEMA, TLS_SECTION_SCHEMA, field_name
from proconsul.metrics.registry import parse_prefix_filter
from proconsul.metrics.statsd import split_address
from proconsul.tls import context as tls_context
from proconsul.tls.rpc import TLSConfigurator

__all__ = ["build"]

_BASIC_NAME = re.compile(r"^[a-z0-9_-]+$")
_DNS_INVALID = re.compile(r"[^A-Za-z0-9\-]+")
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_LOG_LEVELS = {"TRACE", "DEBUG", "INFO", "WARN", "ERR", "ERROR"}
_FACILITIES = {
    "KERN", "USER", "MAIL", "DAEMON", "AUTH", "SYSLOG", "LPR", "NEWS", "UUCP", "CRON", "AUTHPRIV", "FTP",
    *(f"LOCAL{i}" for i in range(8)),
}  # fmt: skip
_CONTENT_PATH = re.compile(r"^[A-Za-z0-9/_-]+$")


def _kwargs(cls: type, merged: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments for dataclass `cls` from the merged values its schema covers."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in merged.items():
        kind = schema[key]
        name = field_name(key, kind)
        if name not in hints:
            continue
        if isinstance(kind, dict):
            kwargs[name] = hints[name](**_kwargs(hints[name], value, kind))
        elif kind in LIST_KINDS:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return kwargs


class _Ctx:
    """What every section builder shares: the merged raw config, the kwargs being built, the
    collector, and the facts several sections depend on."""

    def __init__(self, merged: dict[str, Any], dev: bool, out: Collector, check_paths: bool) -> None:
        self.merged = merged
        self.dev = dev
        self.out = out
        self.check_paths = check_paths
        self.server = bool(merged.get("server", False))
        self.kw: dict[str, Any] = _kwargs(RuntimeConfig, merged, SCHEMA)

    def get(self, path: str, default: Any = None) -> Any:
        node: Any = self.merged
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def expand(self, key: str, text: str) -> list[str] | None:
        try:
            return expand_template(text).split()
        except ValueError as exc:
            self.out.at(key, f"error parsing {text!r}: {exc}")
            return None


def _identity(c: _Ctx) -> None:
    out = c.out
    datacenter = c.get("datacenter", DEFAULTS.datacenter).lower()
    c.kw["datacenter"] = datacenter
    if not _BASIC_NAME.match(datacenter):
        out.at(
            "datacenter",
            f"datacenter can only contain lowercase alphanumeric, - or _ characters. received: {datacenter!r}",
        )
    primary = c.get("primary_datacenter", "").lower()
    if primary and not _BASIC_NAME.match(primary):
        out.at(
            "primary_datacenter",
            f"primary_datacenter can only contain lowercase alphanumeric, - or _ characters. received: {primary!r}",
        )
    c.kw["primary_datacenter"] = primary or datacenter
    c.kw["dev"] = c.dev
    data_dir = c.get("data_dir") or None
    c.kw["data_dir"] = None if c.dev and not data_dir else data_dir
    if not c.dev and not data_dir:
        out.errors.append("data_dir cannot be empty (set data_dir, -data-dir, or use -dev)")
    elif data_dir and c.check_paths and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        out.at("data_dir", f"data_dir {data_dir!r} is not a directory")
    node_name = (c.get("node_name") or interfaces.hostname()).strip()
    c.kw["node_name"] = node_name
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
    node_id = c.get("node_id") or None
    if node_id is not None:
        try:
            node_id = str(uuid.UUID(node_id)).lower()
            if len(c.get("node_id")) != 36:
                raise ValueError
        except ValueError:
            out.at("node_id", f"node_id must be a UUID (8-4-4-4-12 hex digits), got {c.get('node_id')!r}")
            node_id = None
    c.kw["node_id"] = node_id


def _roles(c: _Ctx) -> None:
    out, server, dev = c.out, c.server, c.dev
    bootstrap = bool(c.get("bootstrap", False))
    expect = int(c.get("bootstrap_expect", DEFAULTS.bootstrap_expect))
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
    c.kw["bootstrap"] = bootstrap or (dev and server and expect == 0)
    c.kw["bootstrap_expect"] = expect
    c.kw["leave_on_terminate"] = c.get("leave_on_terminate", not server)
    c.kw["skip_leave_on_interrupt"] = c.get("skip_leave_on_interrupt", server)
    c.kw["enable_local_script_checks"] = c.get(
        "enable_local_script_checks", bool(c.get("enable_script_checks", False))
    )


def _ports(c: _Ctx) -> None:
    """Ports: <= 0 disables (-1), above 65535 is an error; grpc_tls defaults to 8503 on servers."""
    ports = dict(c.get("ports", {}))
    if "grpc_tls" not in ports and c.server:
        ports["grpc_tls"] = 8503
    for name in ("dns", "http", "https", "grpc", "grpc_tls", "serf_lan", "serf_wan", "server"):
        if name in ports:
            if ports[name] <= 0:
                ports[name] = -1
            elif ports[name] > 65535:
                c.out.at(f"ports.{name}", f"invalid port: {ports[name]}")
    c.kw["ports"] = Ports(**ports)


def _single_ip(c: _Ctx, key: str) -> str:
    text = c.get(key, "")
    if not text:
        return ""
    addrs = c.expand(key, text)
    if addrs is None:
        return ""
    if len(addrs) != 1 or not is_ip(addrs[0]):
        c.out.at(key, f"{key} must be a single ip address, got {text!r}")
        return ""
    if is_any(addrs[0]):
        c.out.at(key, f"{key} cannot be 0.0.0.0, :: or [::]")
        return ""
    return addrs[0].strip("[]")


def _bind_and_advertise(c: _Ctx) -> None:
    out = c.out
    bind = c.expand("bind_addr", c.get("bind_addr", DEFAULTS.bind_addr)) or []
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
    elif not is_ip(bind[0]):
        out.at("bind_addr", f"bind_addr must be an ip address, got {bind[0]!r}")
    else:
        bind_addr = bind[0].strip("[]")
    c.kw["bind_addr"] = bind_addr
    advertise = _single_ip(c, "advertise_addr")
    if not advertise:
        advertise = bind_addr
        if is_any(bind_addr) and "advertise_addr" not in c.merged:
            v6 = ipaddress.ip_address(bind_addr).version == 6
            kind, found = (
                ("public IPv6", interfaces.public_ipv6())
                if v6
                else ("private IPv4", interfaces.private_ipv4())
            )
            if not found:
                out.at("bind_addr", f"No {kind} address found")
            elif len(found) > 1:
                out.at(
                    "bind_addr",
                    f"Multiple {kind} addresses found. Please configure one with 'bind' and/or 'advertise'.",
                )
            else:
                advertise = found[0]
    c.kw["advertise_addr"] = advertise
    c.kw["advertise_addr_wan"] = _single_ip(c, "advertise_addr_wan") or advertise
    c.kw["serf_lan"] = _single_ip(c, "serf_lan") or bind_addr
    c.kw["serf_wan"] = _single_ip(c, "serf_wan") or bind_addr


def _client_addresses(c: _Ctx) -> None:
    out = c.out
    client = c.expand("client_addr", c.get("client_addr", " ".join(DEFAULTS.client_addr))) or []
    if not client:
        out.warnings.append(
            "client_addr is empty, client services (DNS, HTTP, HTTPS, GRPC) will not be listening for connections"
        )
    for addr in client:
        if addr.startswith("unix://"):
            out.at("client_addr", "client_addr cannot be a unix socket")
        elif not is_ip(addr):
            out.at("client_addr", f"client_addr: invalid ip address: {addr}")
    c.kw["client_addr"] = tuple(a.strip("[]") for a in client)
    addr_kw: dict[str, tuple[str, ...]] = {}
    for name, text in c.get("addresses", {}).items():
        addrs = c.expand(f"addresses.{name}", text) or []
        for addr in addrs:
            if addr.startswith("unix://"):
                if name == "dns":
                    out.at("addresses.dns", "DNS address cannot be a unix socket")
            elif not is_ip(addr):
                out.at(f"addresses.{name}", f"invalid ip address: {addr}")
        addr_kw[name] = tuple(a if a.startswith("unix://") else a.strip("[]") for a in addrs)
    c.kw["addresses"] = Addresses(**addr_kw)


def _joins_and_recursors(c: _Ctx) -> None:
    out = c.out
    for key in ("retry_join", "retry_join_wan", "start_join", "start_join_wan"):
        expanded: list[str] = []
        for entry in c.get(key, []):
            expanded.extend((c.expand(key, entry) or []) if "{{" in entry else [entry])
        c.kw[key] = tuple(expanded)
        if c.get(key) and key.startswith("start_join"):
            out.warnings.append(
                f"{key} (and -join/-join-wan) is deprecated; use retry_join{key[len('start_join') :]}"
            )
    recursors: list[str] = []
    for entry in c.get("recursors", []):
        for addr in c.expand("recursors", entry) or []:
            if addr.startswith("unix://"):
                out.at("recursors", f"DNS Recursors cannot be unix sockets: {addr}")
            elif is_any(addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr):
                out.at("recursors", "DNS recursor address cannot be 0.0.0.0, :: or [::]")
            elif addr not in recursors:
                recursors.append(addr)
    c.kw["recursors"] = tuple(recursors)


def _dns(c: _Ctx) -> None:
    out = c.out
    domain = c.get("domain", DEFAULTS.domain).lower()
    c.kw["domain"] = domain if domain.endswith(".") else domain + "."
    alt = c.get("alt_domain", "").lower()
    if alt:
        alt = alt if alt.endswith(".") else alt + "."
        first = alt.split(".", 1)[0]
        datacenter = c.kw["datacenter"]
        if first in ("service", "connect", "node", "query", "addr", datacenter):
            out.at(
                "alt_domain", f"alt_domain cannot start with {{service,connect,node,query,addr,{datacenter}}}"
            )
    c.kw["alt_domain"] = alt
    dns = c.kw.get("dns_config", DNSConfig())
    for key in ("udp_answer_limit", "a_record_limit"):
        value = getattr(dns, key)
        if value < 0:
            out.at(
                f"dns_config.{key}",
                f"dns_config.{key} cannot be {value}. Must be greater than or equal to zero",
            )
    if dns.recursor_strategy not in ("sequential", "random", ""):
        out.at("dns_config.recursor_strategy", f"invalid strategy: {dns.recursor_strategy!r}")


def _logging(c: _Ctx) -> None:
    level = c.get("log_level", DEFAULTS.log_level).upper()
    if level not in _LOG_LEVELS:
        c.out.at(
            "log_level",
            f"Invalid log level: {c.get('log_level')!r}. Valid log levels are: TRACE, DEBUG, INFO, WARN, ERROR",
        )
    c.kw["log_level"] = "ERROR" if level == "ERR" else level
    facility = c.get("syslog_facility", DEFAULTS.syslog_facility).upper()
    if facility not in _FACILITIES:
        c.out.at("syslog_facility", f"unknown syslog facility {c.get('syslog_facility')!r}")
    c.kw["syslog_facility"] = facility


def _timings(c: _Ctx) -> None:
    """Raft, reconnect and the hidden timings: the range checks Consul makes."""
    out = c.out
    raft_mult = c.get("performance.raft_multiplier", DEFAULTS.performance.raft_multiplier)
    if not 1 <= raft_mult <= 10:
        out.at(
            "performance.raft_multiplier",
            f"performance.raft_multiplier cannot be {raft_mult}. Must be between 1 and 10",
        )
    if c.get("raft_protocol", DEFAULTS.raft_protocol) != 3:
        out.at(
            "raft_protocol",
            f"raft_protocol version {c.get('raft_protocol')} is not supported by this version of Consul",
        )
    for key in ("reconnect_timeout", "reconnect_timeout_wan"):
        value = c.get(key)
        if value is not None and value < 8 * 3600:
            out.at(key, f"{key} must be >= 8h")
    if c.server and c.get("advertise_reconnect_timeout", 0) != 0:
        out.at("advertise_reconnect_timeout", "advertise_reconnect_timeout can only be used on a client")
    if c.get("advertise_reconnect_timeout", 0) < 0:
        out.at("advertise_reconnect_timeout", "advertise_reconnect_timeout must not be negative")
    if c.get("reconnect_interval", 1.0) <= 0:
        out.at("reconnect_interval", "reconnect_interval must be positive")
    if c.get("autopilot.max_trailing_logs", 0) < 0:
        out.at(
            "autopilot.max_trailing_logs", "autopilot.max_trailing_logs must be greater than or equal to zero"
        )
    for key in (
        "ae_interval",
        "check_reap_interval",
        "sync_coordinate_rate_target",
        "sync_coordinate_interval_min",
    ):
        if c.get(key, 1.0) <= 0:
            out.at(key, f"{key} must be positive")
    if not 1 <= c.get("http_workers", 1) <= 64:
        out.at("http_workers", "http_workers must be between 1 and 64")
    if c.get("check_output_max_size", DEFAULTS.check_output_max_size) < 1:
        out.at(
            "check_output_max_size",
            "check_output_max_size must be positive, to discard check output use the discard_check_output flag",
        )


def _acl_and_node_meta(c: _Ctx) -> None:
    out = c.out
    for key, allowed in (
        ("acl.default_policy", ("allow", "deny")),
        ("acl.down_policy", ("allow", "deny", "extend-cache", "async-cache")),
    ):
        value = c.get(key)
        if value is not None and value not in allowed:
            out.at(key, f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    meta = c.get("node_meta", {})
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


def _encrypt_ui_sockets(c: _Ctx) -> None:
    out = c.out
    key_text = c.get("encrypt", "")
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
    ui = c.kw.get("ui_config", UIConfig())
    if not _CONTENT_PATH.match(ui.content_path):
        out.at(
            "ui_config.content_path",
            f"ui-content-path can only contain alphanumeric, -, _, or /. received: {ui.content_path!r}",
        )
    if not c.dev and ui.enabled and ui.dir:
        out.at(
            "ui_config.dir",
            "Both the ui_config.enabled and ui_config.dir (or -ui and -ui-dir) were specified, please provide only one.",
        )
    # Consul's UIPathBuilder normalises the content path to "/path/".
    stripped = ui.content_path.strip("/")
    c.kw["ui_config"] = UIConfig(ui.enabled, ui.dir, f"/{stripped}/" if stripped else "/")
    mode = c.get("unix_sockets.mode")
    if mode:
        try:
            int(mode, 8)
        except ValueError:
            out.at("unix_sockets.mode", f"invalid mode: {mode}")


def _tls(c: _Ctx) -> None:
    """TLS: internal_rpc/https/grpc inherit unset fields from defaults; the https section (what
    proconsul serves with) must make a working context, checked by building it."""
    tls_merged = c.get("tls", {})
    defaults = tls_merged.get("defaults", {})
    sections = {
        name: TLSSection(**_kwargs(TLSSection, {**defaults, **tls_merged.get(name, {})}, TLS_SECTION_SCHEMA))
        for name in ("internal_rpc", "https", "grpc")
    }
    c.kw["tls"] = TLS(defaults=TLSSection(**_kwargs(TLSSection, defaults, TLS_SECTION_SCHEMA)), **sections)
    _tls_stanza_rules(c, tls_merged)
    _tls_internal_rpc(c, sections["internal_rpc"])
    https_set = {**defaults, **tls_merged.get("https", {})}
    material = [k for k in ("cert_file", "key_file", "ca_file", "ca_path", "verify_incoming") if https_set.get(k)]
    rpc = sections["internal_rpc"]
    if (c.server and not c.dev) or rpc.verify_outgoing or rpc.verify_server_hostname:
        # Server RPC uses what tls.defaults gives (proconsul.tls.rpc): only https's own keys can be unused.
        material = [k for k in material if tls_merged.get("https", {}).get(k)]
    if c.kw["ports"].https <= 0:
        if material:
            # Only the HTTPS listener uses them; say so rather than let them look honoured.
            c.out.warnings.append(
                f"{_tls_origin(c, material[0])}: TLS settings for HTTPS are configured but ports.https is not "
                "set: no listener uses them"
            )
        _tls_files(c, sections["https"])
        return
    if not sections["https"].cert_file or not sections["https"].key_file:
        c.out.at(
            "ports.https", "ports.https is set but tls.https (or tls.defaults) has no cert_file and key_file"
        )
        _tls_files(c, sections["https"])
        return
    try:
        tls_context.server_context(sections["https"])
    except tls_context.TLSSettingError as exc:
        if exc.field not in ("tls_min_version", "tls_cipher_suites"):  # reported by _tls_stanza_rules
            c.out.errors.append(f"{_tls_origin(c, exc.field)}: {exc}")


def _tls_internal_rpc(c: _Ctx, section: TLSSection) -> None:
    """Server RPC TLS must make working contexts: a server with a certificate (or verify_incoming)
    serves TLS on ports.server, verify_outgoing/verify_server_hostname dial with the CA."""
    try:
        TLSConfigurator(section, None, "dc", "consul", server=c.server and not c.dev)
    except tls_context.TLSSettingError as exc:
        if exc.field not in ("tls_min_version", "tls_cipher_suites"):  # reported by _tls_stanza_rules
            c.out.errors.append(f"{_tls_origin(c, exc.field, 'internal_rpc')}: tls.internal_rpc: {exc}")


def _tls_stanza_rules(c: _Ctx, tls_merged: dict[str, Any]) -> None:
    """Consul's checks on the stanza itself: keys valid only in one section, each written
    tls_min_version and tls_cipher_suites (none configurable when the minimum is TLS 1.3)."""
    if "verify_outgoing" in tls_merged.get("grpc", {}):
        c.out.at("tls.grpc.verify_outgoing", "verify_outgoing is not valid in the tls.grpc stanza")
    for name in ("defaults", "https", "grpc"):
        if "verify_server_hostname" in tls_merged.get(name, {}):
            c.out.at(
                f"tls.{name}.verify_server_hostname",
                "verify_server_hostname is only valid in the tls.internal_rpc stanza",
            )
    default_version = tls_merged.get("defaults", {}).get("tls_min_version", "TLSv1_2")
    for name in ("defaults", "internal_rpc", "https", "grpc"):
        section = tls_merged.get(name, {})
        version = section.get("tls_min_version", default_version)
        try:
            if "tls_min_version" in section:
                tls_context.min_version(version)
            if "tls_cipher_suites" in section:
                if tls_context.MIN_VERSIONS.get(version) is ssl.TLSVersion.TLSv1_3:
                    raise tls_context.TLSSettingError(
                        "tls_cipher_suites", "TLS 1.3 cipher suites are not configurable"
                    )
                tls_context.openssl_ciphers(section["tls_cipher_suites"])
        except tls_context.TLSSettingError as exc:
            c.out.at(f"tls.{name}.{exc.field}", f"tls.{name}.{exc}")


def _tls_origin(c: _Ctx, field: str, section: str = "https") -> str:
    """Where a section's `field` came from: its own key, else the tls.defaults one."""
    for key in (f"tls.{section}.{field}", f"tls.defaults.{field}"):
        if c.get(key) is not None:
            return c.out.origin.get(key, key)
    return f"tls.{section}.{field}"


def _tls_files(c: _Ctx, section: TLSSection) -> None:
    """Set files must still exist and parse, so a typo is found before HTTPS is switched on."""
    try:
        tls_context.check_files(section)  # version and ciphers: _tls_stanza_rules
    except tls_context.TLSSettingError as exc:
        c.out.errors.append(f"{_tls_origin(c, exc.field)}: {exc}")


def _check_flap_detection(c: _Ctx) -> None:
    """check_flap_detection: writing the block turns it on; a window and two ordered shares."""
    block = c.get("check_flap_detection")
    if block is None:
        return
    settings = CheckFlapDetection(**{"enabled": True, **_kwargs(CheckFlapDetection, block, SCHEMA["check_flap_detection"])})
    if settings.window < 2:
        c.out.at("check_flap_detection.window", "check_flap_detection.window must be at least 2")
    if not 0 < settings.low_threshold <= settings.high_threshold <= 1:
        c.out.at("check_flap_detection.high_threshold",
                 "check_flap_detection needs 0 < low_threshold <= high_threshold <= 1")
    c.kw["check_flap_detection"] = settings


def _http(c: _Ctx) -> None:
    """http_config: the networks allowed to write must parse as CIDRs (or plain addresses)."""
    for cidr in c.get("http_config.allow_write_http_from", []) or []:
        try:
            netaddr.IPNetwork(cidr)  # what http/access.py builds its IPSet from
        except (netaddr.AddrFormatError, ValueError, TypeError):
            c.out.at("http_config.allow_write_http_from", f"allow_write_http_from: invalid CIDR {cidr!r}")


def _telemetry(c: _Ctx) -> None:
    """The metric sinks' addresses must be host:port (the sinks send to them); a prefix_filter
    rule Consul would skip is skipped with its warning."""
    _, _, problems = parse_prefix_filter(c.get("telemetry.prefix_filter", []) or [])
    where = c.out.origin.get("telemetry.prefix_filter", "telemetry.prefix_filter")
    c.out.warnings.extend(f"{where}: {problem}" for problem in problems)
    for key in ("statsd_address", "dogstatsd_addr", "statsite_address"):
        address = c.get(f"telemetry.{key}")
        if address:
            try:
                split_address(address)
            except ValueError as exc:
                c.out.at(f"telemetry.{key}", f"telemetry.{key}: {exc}")


# In order: later sections read what earlier ones derived (e.g. _dns reads the datacenter).
_SECTIONS = (
    _identity,
    _roles,
    _ports,
    _bind_and_advertise,
    _client_addresses,
    _joins_and_recursors,
    _dns,
    _logging,
    _timings,
    _acl_and_node_meta,
    _encrypt_ui_sockets,
    _tls,
    _http,
    _check_flap_detection,
    _telemetry,
)


def build(
    merged: dict[str, Any], dev: bool, sources: list[str], out: Collector, check_paths: bool = True
) -> RuntimeConfig:
    """The RuntimeConfig for a merged config; problems go to `out` (the caller checks it)."""
    c = _Ctx(merged, dev, out, check_paths)
    for section in _SECTIONS:
        section(c)
    c.kw["services"] = tuple(c.get("services", []))
    c.kw["checks"] = tuple(c.get("checks", []))
    c.kw["watches"] = tuple(c.get("watches", []))
    c.kw["sources"] = tuple(sources)
    return RuntimeConfig(**c.kw)
