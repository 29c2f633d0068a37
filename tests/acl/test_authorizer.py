"""The Authorizer (proconsul.acl.authorizer): Consul's resolution and precedence.

The table follows Consul's ACL rules documentation: an exact rule wins over any prefix rule, the
longest matching prefix wins over shorter ones, a deny rule refuses every access level, several
policies merge with deny > write > read > list, and with no matching rule the default policy
decides (allow-all still keeps acl:read/write to management tokens).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proconsul.acl.authorizer import Authorizer, PermissionDenied
from proconsul.acl.records import (
    GLOBAL_MANAGEMENT_ID,
    ACLPolicy,
    ACLRole,
    ACLToken,
    Link,
    NodeIdentity,
    ServiceIdentity,
    global_management_policy,
    resolve,
)
from proconsul.acl.rules import Rules, merge, parse


def authz(*texts: str, default_allow: bool = False) -> Authorizer:
    return Authorizer(merge(parse(t) for t in texts), default_allow, False, "acc-1")


POLICY = """
key_prefix "" { policy = "read" }
key_prefix "foo/" { policy = "write" }
key_prefix "foo/private/" { policy = "deny" }
key "foo/private/shared" { policy = "read" }
key_prefix "list/" { policy = "list" }
service_prefix "" { policy = "read" }
service "web" { policy = "write" }
service_prefix "db" { policy = "deny" }
"""


@pytest.mark.parametrize(
    ("resource", "name", "access", "allowed"),
    [
        ("key", "bar", "read", True),  # the "" prefix
        ("key", "bar", "write", False),
        ("key", "foo/x", "write", True),  # longer prefix wins
        ("key", "foo/private/x", "read", False),  # longest prefix: deny refuses even read
        ("key", "foo/private/x", "list", False),
        ("key", "foo/private/shared", "read", True),  # exact beats every prefix
        ("key", "foo/private/shared", "write", False),
        ("key", "list/a", "list", True),  # list grants list only
        ("key", "list/a", "read", False),
        ("key", "foo/x", "list", True),  # write implies read and list
        ("service", "web", "write", True),
        ("service", "webber", "write", False),  # "web" is exact, not a prefix
        ("service", "webber", "read", True),
        ("service", "db-main", "read", False),
        ("node", "any", "read", False),  # no rule: default deny
    ],
)
def test_precedence_table(resource: str, name: str, access: str, allowed: bool) -> None:
    assert authz(POLICY).allowed(resource, name, access) is allowed


def test_several_policies_merge_deny_over_write_over_read() -> None:
    a = 'key "k" { policy = "read" }'
    b = 'key "k" { policy = "write" }'
    c = 'key "k" { policy = "deny" }'
    assert authz(a, b).allowed("key", "k", "write")
    assert not authz(a, b, c).allowed("key", "k", "read")
    assert not authz(b, c).allowed("key", "k", "write")


def test_default_policy_is_the_fallback() -> None:
    assert authz(default_allow=True).allowed("key", "x", "write")
    assert not authz(default_allow=False).allowed("key", "x", "read")
    # A matching rule overrides the default in both directions.
    assert not authz('key "x" { policy = "deny" }', default_allow=True).allowed("key", "x", "read")
    assert authz('key "x" { policy = "read" }', default_allow=False).allowed("key", "x", "read")


def test_default_allow_keeps_the_acl_system_to_management() -> None:
    a = authz(default_allow=True)
    assert a.allowed_single("operator", "write")
    assert not a.allowed_single("acl", "read")
    assert authz('acl = "read"', default_allow=True).allowed_single("acl", "read")
    assert not authz('acl = "read"').allowed_single("acl", "write")


def test_key_write_prefix_needs_write_on_everything_below() -> None:
    a = authz('key_prefix "a/" { policy = "write" }\nkey "a/b/keep" { policy = "read" }')
    assert a.key_write_prefix("a/c/")
    assert not a.key_write_prefix("a/")  # a/b/keep is read only
    assert not a.key_write_prefix("z/")


def test_denial_message_is_consuls_text() -> None:
    with pytest.raises(PermissionDenied) as exc:
        authz(POLICY).require("key", "foo/private/x", "read")
    assert str(exc.value) == (
        "Permission denied: token with AccessorID 'acc-1' lacks permission 'key:read' on \"foo/private/x\""
    )
    with pytest.raises(PermissionDenied) as exc:
        authz(POLICY).require_single("operator", "write")
    assert str(exc.value) == "Permission denied: token with AccessorID 'acc-1' lacks permission 'operator:write'"


def _lookup(*policies: ACLPolicy) -> dict[str, ACLPolicy]:
    return {p.id: p for p in policies}


def test_global_management_makes_a_management_token() -> None:
    token = ACLToken("a", "s", policies=(Link(GLOBAL_MANAGEMENT_ID),))
    a = resolve(token, _lookup(global_management_policy(1)).get, lambda r: None, False, "dc1")
    assert a.management and a.allowed_single("acl", "write") and a.allowed("key", "x", "write")


def test_roles_and_identities_add_their_rules() -> None:
    p = ACLPolicy("p1", "kv", rules='key "k" { policy = "write" }')
    role = ACLRole("r1", "ops", policies=(Link("p1"),), node_identities=(NodeIdentity("n9", "dc1"),))
    token = ACLToken("a", "s", roles=(Link("r1"),), service_identities=(ServiceIdentity("web"),))
    a = resolve(token, _lookup(p).get, {"r1": role}.get, False, "dc1")
    assert a.allowed("key", "k", "write")  # through the role's policy
    assert a.allowed("node", "n9", "write")  # the role's node identity
    assert a.allowed("service", "web", "write") and a.allowed("service", "web-sidecar-proxy", "write")
    assert a.allowed("service", "other", "read") and not a.allowed("service", "other", "write")
    assert not a.management


def test_policies_for_other_datacenters_and_missing_links_do_not_apply() -> None:
    p = ACLPolicy("p1", "kv", rules='key "k" { policy = "write" }', datacenters=("dc2",))
    token = ACLToken("a", "s", policies=(Link("p1"), Link("gone")))
    a = resolve(token, _lookup(p).get, lambda r: None, False, "dc1")
    assert not a.allowed("key", "k", "write")


# --------------------------------------------------------------------------- properties

SEGMENTS = st.text(alphabet="ab/", max_size=5)
ACCESS = st.sampled_from(["deny", "list", "read", "write"])
ORDER = {"deny": 0, "list": 1, "read": 2, "write": 3}


def _brute_force(rules: Rules, name: str, default_allow: bool, access: str) -> bool:
    """The reference: exact rule, else the longest prefix, else the default."""
    exact = rules.exact.get("key", {})
    if name in exact:
        rule = exact[name]
    else:
        matches = sorted((p for p in rules.prefix.get("key", {}) if name.startswith(p)), key=len)
        if not matches:
            return default_allow
        rule = rules.prefix["key"][matches[-1]]
    if rule == "deny":
        return False
    return ORDER[rule] >= ORDER[access]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(SEGMENTS, ACCESS, max_size=5),
    st.dictionaries(SEGMENTS, ACCESS, max_size=5),
    SEGMENTS,
    st.booleans(),
    st.sampled_from(["list", "read", "write"]),
)
def test_resolution_matches_the_reference(exact: dict[str, str], prefix: dict[str, str], name: str,
                                          default_allow: bool, access: str) -> None:
    rules = Rules(exact={"key": exact}, prefix={"key": prefix})
    a = Authorizer(rules, default_allow)
    assert a.allowed("key", name, access) is _brute_force(rules, name, default_allow, access)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(SEGMENTS, ACCESS, max_size=4), st.dictionaries(SEGMENTS, ACCESS, max_size=4), SEGMENTS)
def test_adding_a_deny_policy_never_grants_more(a_rules: dict[str, str], b_rules: dict[str, str], name: str) -> None:
    base = Rules(prefix={"key": a_rules})
    denied = merge([base, Rules(prefix={"key": {p: "deny" for p in b_rules}})])
    for access in ("list", "read", "write"):
        if Authorizer(denied, False).allowed("key", name, access):
            assert Authorizer(base, False).allowed("key", name, access)
