"""The Consul-compatible HTTP API: aiohttp server wiring and the /v1 route modules."""
