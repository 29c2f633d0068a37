"""The ACL rules language (proconsul.acl.rules): HCL and JSON, what is valid, merging."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proconsul.acl import rules
from proconsul.acl.rules import Rules, RulesError, merge, parse

HCL = """
key_prefix "" { policy = "read" }
key "foo/bar" { policy = "write" }
service_prefix "web" { policy = "write" intentions = "read" }
node "n1" { policy = "deny" }
session_prefix "" { policy = "write" }
agent_prefix "" { policy = "read" }
event "deploy" { policy = "write" }
query_prefix "" { policy = "read" }
operator = "read"
keyring = "write"
acl = "read"
"""


def test_hcl_rules_parse_into_exact_prefix_and_single_rules() -> None:
    r = parse(HCL)
    assert r.prefix["key"] == {"": "read"}
    assert r.exact["key"] == {"foo/bar": "write"}
    assert r.prefix["service"] == {"web": "write"}
    assert r.exact["node"] == {"n1": "deny"}
    assert r.prefix["session"] == {"": "write"}
    assert r.prefix["agent"] == {"": "read"}
    assert r.exact["event"] == {"deploy": "write"}
    assert r.prefix["query"] == {"": "read"}
    assert r.single == {"operator": "read", "keyring": "write", "acl": "read"}


def test_json_rules_parse_the_same_as_hcl() -> None:
    text = json.dumps({
        "key_prefix": {"": {"policy": "read"}}, "key": {"foo/bar": {"policy": "write"}},
        "operator": "read",
    })
    r = parse(text)
    assert r.prefix["key"] == {"": "read"} and r.exact["key"] == {"foo/bar": "write"}
    assert r.single == {"operator": "read"}


def test_empty_rules_are_valid_and_grant_nothing() -> None:
    assert parse("").is_empty()
    assert parse("   \n").is_empty()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('key "a" { policy = "admin" }', "Invalid key policy"),
        ('service "a" { policy = "list" }', "Invalid service policy"),  # list is for keys only
        ('operator = "list"', "Invalid operator policy"),
        ('bogus "a" { policy = "read" }', "unknown rule type"),
        ('key "a" { policy = "read" colour = "red" }', "unknown attribute"),
        ('key "a" {', "Failed to parse ACL rules"),
        ('keyring { policy = "read" }', "Invalid keyring policy"),
    ],
)
def test_invalid_rules_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(RulesError, match=reason):
        parse(text)


def test_key_list_policy_is_accepted_for_keys() -> None:
    assert parse('key_prefix "a/" { policy = "list" }').prefix["key"] == {"a/": "list"}


def test_merge_keeps_the_strongest_access_for_the_same_rule() -> None:
    a = parse('key "x" { policy = "read" }\nkey_prefix "p" { policy = "write" }\noperator = "write"')
    b = parse('key "x" { policy = "write" }\nkey_prefix "p" { policy = "deny" }\noperator = "read"')
    c = parse('key "x" { policy = "list" }')
    m = merge([a, b, c])
    assert m.exact["key"]["x"] == "write"  # write > read > list
    assert m.prefix["key"]["p"] == "deny"  # deny beats everything
    assert m.single["operator"] == "write"


# --------------------------------------------------------------------------- properties

ACCESS = st.sampled_from(["deny", "read", "write"])
NAMES = st.text(alphabet="abc/-_", max_size=6)
RULE_SETS = st.builds(
    lambda exact, prefix, single: Rules(exact={"key": exact, "service": dict(exact)},
                                        prefix={"key": prefix, "node": dict(prefix)}, single=single),
    st.dictionaries(NAMES, ACCESS, max_size=4),
    st.dictionaries(NAMES, ACCESS, max_size=4),
    st.dictionaries(st.sampled_from(["operator", "keyring", "acl"]), ACCESS, max_size=3),
)


def _norm(r: Rules) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], dict[str, str]]:
    return ({k: v for k, v in r.exact.items() if v}, {k: v for k, v in r.prefix.items() if v}, r.single)


@settings(max_examples=200, deadline=None)
@given(RULE_SETS)
def test_rendered_rules_parse_back_to_the_same_rules(r: Rules) -> None:
    assert _norm(parse(rules.render_json(r))) == _norm(r)


@settings(max_examples=200, deadline=None)
@given(st.lists(RULE_SETS, min_size=1, max_size=4))
def test_merge_is_order_independent_and_idempotent(parts: list[Rules]) -> None:
    m = merge(parts)
    assert _norm(merge(list(reversed(parts)))) == _norm(m)
    assert _norm(merge([m, m])) == _norm(m)
    assert _norm(merge([m, *parts])) == _norm(m)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='key_prefix"{}= \npolicyreadwritedenylist[]:,#/*', max_size=80))
def test_arbitrary_text_parses_or_is_a_rules_error(text: str) -> None:
    try:
        result = parse(text)
    except RulesError:
        return
    for table in (result.exact, result.prefix):
        for names in table.values():
            assert set(names.values()) <= {"deny", "list", "read", "write"}
