"""Agent configuration: loading, merging and validating it the way Consul's agent does.

A re-export list only; each concern lives in its own module:
- `model`: the frozen `RuntimeConfig` and its defaults table, `RELOADABLE`, `diff()`.
- `schema`: every key a config file may hold, with its kind; legacy keys; the `-dev` layer.
- `agent_flags`: the `proconsul agent` flag set and flag -> key mapping.
- `load`: reading JSON/HCL files and directories, type checking, merging; `load`, `validate_paths`.
- `build`: merged raw config -> `RuntimeConfig`, one builder per section, with semantic checks.
- `interfaces`: interface lookups by ioctl, go-sockaddr templates, the default node name.
- `honesty`: which keys are implemented, inert (warned) or refused (security, not honoured).
- `result`: `ConfigError`, `LoadResult` and the per-load collector.
Go durations live in `proconsul.durations`.
"""

from proconsul.config import honesty, interfaces
from proconsul.config.agent_flags import FLAG_KEYS, agent_flagset
from proconsul.config.interfaces import expand_template, hostname, interface_addresses
from proconsul.config.load import load, load_from, validate_paths, validate_paths_with_warnings
from proconsul.config.model import (
    ACL,
    DEFAULTS,
    RELOADABLE,
    SOA,
    TLS,
    ACLTokens,
    Addresses,
    Autopilot,
    DNSConfig,
    HTTPConfig,
    Limits,
    Performance,
    Ports,
    RuntimeConfig,
    Telemetry,
    TLSSection,
    UIConfig,
    UnixSockets,
    diff,
)
from proconsul.config.result import ConfigError, LoadResult
from proconsul.config.schema import IGNORED, SCHEMA, field_name

__all__ = [
    "ACL",
    "DEFAULTS",
    "FLAG_KEYS",
    "IGNORED",
    "RELOADABLE",
    "SCHEMA",
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
    "expand_template",
    "field_name",
    "honesty",
    "hostname",
    "interface_addresses",
    "interfaces",
    "load",
    "load_from",
    "validate_paths",
    "validate_paths_with_warnings",
]
