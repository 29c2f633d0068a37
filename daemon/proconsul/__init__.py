"""proconsul: Consul's service discovery and configuration system as a Python host daemon.

This module owns only the version identity reported by `proconsul version` and `/v1/agent/self`.
"""

__version__ = "0.1.0"
# The Consul version we match for API behaviour; clients such as consul-template read it.
CONSUL_COMPAT_VERSION = "1.17.0"
