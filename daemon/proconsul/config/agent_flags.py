"""The `proconsul agent` flag set and the mapping of each flag to its config key.

Owns `agent_flagset()` (Consul's agent/config/flags.go, plus -dc), `FLAG_KEYS` (flag -> dotted
config key) and `flag_sources()`, which turns parsed flags into two config layers: list-valued
flags (merged before files, so files append to them) and the others (merged after files, so flags
win).
"""

from __future__ import annotations

from typing import Any

from proconsul.config.result import Source
from proconsul.durations import parse_duration
from proconsul.flags import FlagSet, ParsedFlags

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


def flag_sources(flags: ParsedFlags) -> tuple[Source, Source]:
    """(list-valued flags, other flags) as two sources: lists go before files, others after."""
    lists = Source("command line", {})
    values = Source("command line", {})
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
