"""`http_config.allow_write_http_from` and `block_endpoints` as `AccessRules` decides them, on
netaddr's IPSet: networks with host bits, bare addresses, IPv6, IPv4-mapped peers, non-IP peers."""

from __future__ import annotations

from proconsul.http.access import BLOCKED_MESSAGE, RESTRICTED_MESSAGE, AccessRules


def test_writes_are_allowed_only_from_the_configured_networks() -> None:
    rules = AccessRules.build((), ["10.1.2.3/8", "192.0.2.7", "fd00::/8"])
    for peer in ("10.200.0.1", "192.0.2.7", "::ffff:10.0.0.9", "fd12::1"):
        assert rules.refusal("PUT", "/v1/kv/x", peer) is None, peer
    for peer in ("11.0.0.1", "192.0.2.8", "fe80::1", "", None, "unix-socket", "::ffff:11.0.0.1"):
        assert rules.refusal("PUT", "/v1/kv/x", peer) == RESTRICTED_MESSAGE, peer
    # Reads are never restricted by source.
    assert rules.refusal("GET", "/v1/kv/x", "11.0.0.1") is None


def test_no_networks_allows_writes_from_anywhere_and_blocks_apply_to_every_method() -> None:
    rules = AccessRules.build(["/v1/acl"], [])
    assert not rules.write_networks
    assert rules.refusal("PUT", "/v1/kv/x", "203.0.113.1") is None
    assert rules.refusal("GET", "/v1/acl/tokens", "127.0.0.1") == BLOCKED_MESSAGE
