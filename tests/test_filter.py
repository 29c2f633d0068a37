"""Tests for proconsul.filter: Consul's ?filter= language (go-bexpr semantics)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proconsul.filter import (
    AGENT_CHECK,
    AGENT_SERVICE,
    CATALOG_NODE,
    CATALOG_NODE_SERVICES,
    CATALOG_SERVICE_NODE,
    HEALTH_CHECK,
    HEALTH_SERVICE_ENTRY,
    FilterError,
    Schema,
    apply_filter,
    compile_filter,
)

# The three services of the filtering doc's agent example, plus one with
# empty/absent fields.
SERVICES: dict[str, dict[str, Any]] = {
    "redis1": {
        "ID": "redis1",
        "Service": "redis",
        "Tags": ["primary", "production"],
        "Meta": {"env": "production", "foo": "bar"},
        "Port": 1234,
        "Address": "",
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
    },
    "redis2": {
        "ID": "redis2",
        "Service": "redis",
        "Tags": ["secondary", "production"],
        "Meta": {"env": "production", "foo": "bar"},
        "Port": 1235,
        "Address": "",
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
    },
    "redis3": {
        "ID": "redis3",
        "Service": "redis",
        "Tags": ["primary", "qa"],
        "Meta": {"env": "qa"},
        "Port": 1234,
        "Address": "",
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
    },
    "web": {
        "ID": "web",
        "Service": "web",
        "Tags": None,
        "Meta": {},
        "Port": 80,
        "Address": "10.0.0.1",
        "Weights": {"Passing": 10, "Warning": 1},
        "EnableTagOverride": True,
        "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 80}},
    },
}


def ids(expression: str, schema: Schema | None = AGENT_SERVICE) -> list[str]:
    return sorted(apply_filter(expression, SERVICES, schema))


def error_of(expression: str, schema: Schema | None = AGENT_SERVICE) -> str:
    with pytest.raises(FilterError) as info:
        compile_filter(expression, schema)
    return str(info.value)


BOTH = pytest.mark.parametrize("schema", [AGENT_SERVICE, None], ids=["schema", "no-schema"])


# --- the doc's examples -----------------------------------------------------


@BOTH
def test_doc_agent_example(schema: Schema | None) -> None:
    assert ids('Meta.env == "qa"', schema) == ["redis3"]
    assert ids("Meta.env == qa", schema) == ["redis3"]  # the old doc's unquoted form


def test_doc_catalog_and_health_examples() -> None:
    nodes = [
        {"Node": "node-1", "NodeMeta": {"os": "darwin"}, "ServiceTags": ["tag"]},
        {"Node": "node-2", "NodeMeta": {"os": "linux"}, "ServiceTags": ["test", "tag"]},
    ]
    assert apply_filter('NodeMeta.os == "linux"', nodes, CATALOG_SERVICE_NODE) == [nodes[1]]
    checks = [
        {"Node": "node-1", "CheckID": "node-health", "Status": "critical", "ServiceName": ""},
        {"Node": "node-1", "CheckID": "svc-web-health", "Status": "warning", "ServiceName": "web"},
    ]
    assert apply_filter('ServiceName != ""', checks, HEALTH_CHECK) == [checks[1]]


# --- operators on each type -------------------------------------------------


@BOTH
def test_string_operators(schema: Schema | None) -> None:
    assert ids("Service == redis", schema) == ["redis1", "redis2", "redis3"]
    assert ids('Service != "redis"', schema) == ["web"]
    assert ids('"edi" in Service', schema) == ["redis1", "redis2", "redis3"]  # substring
    assert ids('Service contains "we"', schema) == ["web"]
    assert ids('"edi" not in Service', schema) == ["web"]
    assert ids('Service not contains "edi"', schema) == ["web"]
    assert ids('ID matches "^redis[12]$"', schema) == ["redis1", "redis2"]
    assert ids('ID not matches "^redis[12]$"', schema) == ["redis3", "web"]


@BOTH
def test_list_operators(schema: Schema | None) -> None:
    assert ids('"primary" in Tags', schema) == ["redis1", "redis3"]
    assert ids("Tags contains primary", schema) == ["redis1", "redis3"]
    assert ids('"prim" in Tags', schema) == []  # membership, not substring
    assert ids('"primary" not in Tags', schema) == ["redis2", "web"]
    assert ids('Tags not contains "primary"', schema) == ["redis2", "web"]
    assert ids("Tags is empty", schema) == ["web"]  # null list is empty
    assert ids("Tags is not empty", schema) == ["redis1", "redis2", "redis3"]


@BOTH
def test_map_operators(schema: Schema | None) -> None:
    assert ids('"foo" in Meta', schema) == ["redis1", "redis2"]  # key membership
    assert ids('"bar" in Meta', schema) == []  # values are not searched
    assert ids('Meta contains "env"', schema) == ["redis1", "redis2", "redis3"]
    assert ids('"foo" not in Meta', schema) == ["redis3", "web"]
    assert ids("Meta is empty", schema) == ["web"]
    assert ids("Meta is not empty", schema) == ["redis1", "redis2", "redis3"]
    assert ids("Meta.foo == bar", schema) == ["redis1", "redis2"]


@BOTH
def test_missing_map_key(schema: Schema | None) -> None:
    assert ids("Meta.foo != bar", schema) == ["redis3", "web"]
    assert ids('Meta.foo matches "."', schema) == ["redis1", "redis2"]
    assert ids('Meta.foo not matches "."', schema) == ["redis3", "web"]
    assert ids('"a" in Meta.foo', schema) == ["redis1", "redis2"]
    assert ids('"z" not in Meta.foo', schema) == ["redis1", "redis2", "redis3", "web"]


def test_missing_map_key_emptiness_without_schema() -> None:
    # With a schema, strings do not support "is empty" (bexpr); without one
    # the runtime length check applies, and a missing key counts as empty.
    assert ids("Meta.foo is empty", None) == ["redis3", "web"]
    assert ids("Meta.foo is not empty", None) == ["redis1", "redis2"]


@BOTH
def test_int_operators(schema: Schema | None) -> None:
    assert ids("Port == 1234", schema) == ["redis1", "redis3"]
    assert ids('Port == "1234"', schema) == ["redis1", "redis3"]  # quoted values coerce too
    assert ids("Port != 1234", schema) == ["redis2", "web"]
    assert ids('Port == "0x50"', schema) == ["web"]  # strconv.ParseInt base 0
    assert ids("Weights.Passing == 10", schema) == ["web"]


@BOTH
def test_bool_operators(schema: Schema | None) -> None:
    assert ids("EnableTagOverride == true", schema) == ["web"]
    assert ids("EnableTagOverride == True", schema) == ["web"]
    assert ids('EnableTagOverride == "1"', schema) == ["web"]
    assert ids("EnableTagOverride != true", schema) == ["redis1", "redis2", "redis3"]
    assert ids("EnableTagOverride == false", schema) == ["redis1", "redis2", "redis3"]


def test_bad_coercions_are_errors() -> None:
    assert error_of("Port == abc") == (
        "Failed to create boolean expression evaluator: Failed to coerce value "
        '"abc" for selector "Port": strconv.ParseInt: parsing "abc": invalid syntax'
    )
    assert "strconv.ParseBool" in error_of("EnableTagOverride == yes")
    with pytest.raises(FilterError, match="strconv.ParseInt"):
        apply_filter("Port == abc", SERVICES, None)


def test_nested_struct_through_map() -> None:
    assert ids('TaggedAddresses.lan.Address == "10.0.0.1"') == ["web"]
    assert ids("TaggedAddresses.lan.Port == 80") == ["web"]
    assert ids('"lan" in TaggedAddresses') == ["web"]
    assert ids("TaggedAddresses.wan.Port != 80") == sorted(SERVICES)  # missing key


def test_missing_struct_fields_are_zero_values_with_schema() -> None:
    # Consul filters Go structs, where an absent field is its zero value.
    assert ids('Kind == ""') == sorted(SERVICES)
    assert ids("Proxy.LocalServicePort == 0") == sorted(SERVICES)
    assert ids("Proxy.Upstreams is empty") == sorted(SERVICES)
    assert ids("Connect.Native == false") == sorted(SERVICES)
    # Without a schema an absent field is simply absent.
    assert ids('Kind == ""', None) == []
    assert ids('Kind != ""', None) == sorted(SERVICES)


# --- lists of structs: implicit "any" ----------------------------------------


ENTRIES = [
    {
        "Node": {"Node": "n1", "Meta": {"rack": "a"}},
        "Service": {"ID": "web1", "Service": "web", "Tags": ["v1"], "Port": 80},
        "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, {"CheckID": "svc", "Status": "critical"}],
    },
    {
        "Node": {"Node": "n2", "Meta": {}},
        "Service": {"ID": "web2", "Service": "web", "Tags": [], "Port": 81},
        "Checks": [{"CheckID": "serfHealth", "Status": "passing"}],
    },
    {
        "Node": {"Node": "n3"},
        "Service": {"ID": "web3", "Service": "web", "Tags": ["v2"], "Port": 82},
        "Checks": [],
    },
]


def entry_ids(expression: str, schema: Schema | None = HEALTH_SERVICE_ENTRY) -> list[str]:
    return [e["Service"]["ID"] for e in apply_filter(expression, ENTRIES, schema)]


@pytest.mark.parametrize("schema", [HEALTH_SERVICE_ENTRY, None], ids=["schema", "no-schema"])
def test_list_of_structs_is_any(schema: Schema | None) -> None:
    assert entry_ids("Checks.Status == passing", schema) == ["web1", "web2"]
    assert entry_ids("Checks.Status == critical", schema) == ["web1"]
    # != is also "any element differs"; an empty list matches nothing.
    assert entry_ids("Checks.Status != passing", schema) == ["web1"]
    assert entry_ids("not Checks.Status == critical", schema) == ["web2", "web3"]
    assert entry_ids("Checks is empty", schema) == ["web3"]
    assert entry_ids('Checks.CheckID matches "^svc"', schema) == ["web1"]


def test_health_entry_selectors() -> None:
    assert entry_ids("Node.Node == n2") == ["web2"]
    assert entry_ids('Node.Meta.rack == "a"') == ["web1"]
    assert entry_ids("Node.Meta is empty") == ["web2", "web3"]
    assert entry_ids("v1 in Service.Tags") == ["web1"]
    assert entry_ids("Service.Port == 82") == ["web3"]
    assert "is not valid" in error_of("Checks.Foo == x", HEALTH_SERVICE_ENTRY)


# --- logic, precedence, parentheses -------------------------------------------


def test_precedence_not_and_or() -> None:
    # and binds tighter than or; not binds tighter than and.
    assert ids("ID == web or ID == redis1 and Port == 80") == ["web"]
    assert ids("(ID == web or ID == redis1) and Port == 80") == ["web"]
    assert ids("(ID == web or ID == redis1) and Port == 1234") == ["redis1"]
    assert ids("not ID == web and Port == 1234") == ["redis1", "redis3"]
    assert ids("not (ID == web or Port == 1234)") == ["redis2"]
    assert ids("not not ID == web") == ["web"]
    assert ids("ID == redis1 or ID == redis2 or ID == redis3 and Port == 0") == ["redis1", "redis2"]
    assert ids("((ID == web))") == ["web"]
    assert ids("  ( ID == web )  ") == ["web"]


def test_keywords_are_not_reserved() -> None:
    items = [{"not": "x", "and": "y", "in": ["a"]}]
    assert apply_filter("not == x", items) == items
    assert apply_filter("and == y and not == x", items) == items
    assert apply_filter("Service == and or Service == or", [{"Service": "or"}]) == [{"Service": "or"}]


# --- quoting and selectors ----------------------------------------------------


def test_quoting_styles() -> None:
    items = [{"Meta": {"my-key": 'a"b', "path": "c:\\dir", "nl": "x\ny"}}]
    assert apply_filter('Meta["my-key"] == `a"b`', items) == items
    assert apply_filter("Meta.path == `c:\\dir`", items) == items  # raw: no escapes
    assert apply_filter('Meta.path == "c:\\\\dir"', items) == items
    assert apply_filter('Meta.nl == "x\\ny"', items) == items
    assert apply_filter('Meta.nl == "x\\x0ay"', items) == items
    assert apply_filter('Meta.nl == "x\\u000ay"', items) == items
    assert apply_filter('Meta.nl == "x\\012y"', items) == items
    assert apply_filter("Meta.nl == `x\\ny`", items) == []


def test_index_selectors() -> None:
    assert ids('Meta["env"] == qa') == ["redis3"]
    assert ids('Meta[ "env" ] == qa') == ["redis3"]
    assert ids("Meta[`env`] == qa") == ["redis3"]
    assert ids('TaggedAddresses["lan"].Port == 80') == ["web"]
    # A value may itself be written as a selector; its text is the value.
    assert apply_filter("Meta.a == b.c", [{"Meta": {"a": "b.c"}}]) == [{"Meta": {"a": "b.c"}}]


def test_numbers_as_values() -> None:
    items = [{"W": 1.5, "N": -3, "S": "2.5"}]
    assert apply_filter("W == 1.5", items) == items
    assert apply_filter("N == -3", items) == items
    assert apply_filter("2.5 in S", items) == items


def test_selectors_are_case_sensitive() -> None:
    assert error_of("service == redis") == (
        'Failed to create boolean expression evaluator: Selector "service" is not valid'
    )
    assert ids("service == redis", None) == []


# --- errors -------------------------------------------------------------------


def test_unknown_selector_names_the_invalid_prefix() -> None:
    assert (
        error_of("Foo == 1") == 'Failed to create boolean expression evaluator: Selector "Foo" is not valid'
    )
    assert error_of("Weights.Critical == 1").endswith('Selector "Weights.Critical" is not valid')
    assert error_of("Port.Foo == 1").endswith('Selector "Port.Foo" is not valid')
    assert error_of("Tags.x == 1").endswith('Selector "Tags.x" is not valid')


def test_operator_not_supported_for_field() -> None:
    prefix = "Failed to create boolean expression evaluator: "
    assert error_of("Service is empty") == prefix + 'Invalid match operator "Is Empty" for selector "Service"'
    assert error_of('Port contains "1"') == prefix + 'Invalid match operator "In" for selector "Port"'
    assert error_of("Tags == a") == prefix + 'Invalid match operator "Equal" for selector "Tags"'
    assert error_of("Weights == a") == prefix + 'Invalid match operator "Equal" for selector "Weights"'
    assert "Not Matches" in error_of('Meta not matches "x"')


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("", None),
        ("Service", "no match found"),
        ("Service ==", "no match found"),
        ("== web", "no match found"),
        ("Service == web and", "no match found"),
        ("Service == web &&", "no match found"),
        ("(Service == web", "Unmatched parentheses"),
        ("Service == web)", "no match found"),
        ('Service == "web', "Unterminated string literal"),
        ("Service == `web", "Unterminated string literal"),
        ('Service == "a\\"b"', "invalid syntax"),  # bexpr strings end at the first quote
        ('Service == "\\q"', "invalid syntax"),
        ("Port == 08", "Invalid number literal"),
        ("Port == 1x", "Invalid number literal"),
        ('"a" in "b"', "Invalid selector"),
        ("Meta[env] == x", "Invalid index"),
        ('Meta["env" == x', "Unclosed index expression"),
        ('Meta.["env"] == x', "no match found"),  # no dotted-index form in bexpr
        ("Meta . env == x", "no match found"),
        ("not(Service == web)", "no match found"),  # bexpr needs whitespace after not
        ("Service == web and(Port == 1)", "no match found"),
        ('Service contains"x"', "no match found"),
        ("Service is", "no match found"),
        ("Service is not", "no match found"),
        ("Service == web\u00a0", "no match found"),
    ],
)
def test_syntax_errors(expression: str, fragment: str | None) -> None:
    if fragment is None:  # empty expression: the nil filter keeps everything
        assert compile_filter(expression).matches({}) is True
        return
    message = error_of(expression, None)
    assert message.startswith("Failed to create boolean expression evaluator: ")
    assert fragment in message


def test_deep_nesting_is_a_filter_error() -> None:
    with pytest.raises(FilterError, match="too deeply nested"):
        compile_filter("(" * 2000 + "a == b" + ")" * 2000)
    chain = " and ".join(["a == b"] * 3000)
    with pytest.raises(FilterError, match="too deeply nested"):
        compile_filter(chain).matches({"a": "b"})


def test_syntax_error_reports_position() -> None:
    assert "1:12 (11)" in error_of('Service == "web', None)
    assert "2:" in error_of("Service == web\nand", None)


def test_regex() -> None:
    assert ids('ID matches "redis[0-9]"') == ["redis1", "redis2", "redis3"]  # unanchored search
    assert ids('ID matches "(?i)^WEB$"') == ["web"]
    assert ids('ID matches "^web\\\\z"') == ["web"]  # RE2's \z
    assert ids("ID matches `^redis\\d$`") == ["redis1", "redis2", "redis3"]
    message = error_of('ID matches "("')
    assert message.startswith(
        'Failed to create boolean expression evaluator: Failed to compile regular expression "("'
    )
    for unsupported in ("(?=x)", "(?!x)", "(?<=x)y", "(a)\\\\1"):
        assert "Failed to compile regular expression" in error_of(f'ID matches "{unsupported}"', None)
    # Inside a class, '(?=' is literal text, not a lookahead.
    assert apply_filter('ID matches "[(?=]"', [{"ID": "="}]) == [{"ID": "="}]


def test_no_schema_operator_type_mismatch_is_an_error() -> None:
    with pytest.raises(FilterError, match="Invalid match operator"):
        apply_filter("Meta == x", SERVICES)
    with pytest.raises(FilterError, match="Invalid match operator"):
        apply_filter('Port matches "1"', SERVICES)


# --- apply_filter shapes -----------------------------------------------------


def test_dict_input_keeps_keys_and_order() -> None:
    result = apply_filter('"production" in Tags', SERVICES, AGENT_SERVICE)
    assert list(result) == ["redis1", "redis2"]
    assert result["redis1"] is SERVICES["redis1"]


def test_list_input_and_noop() -> None:
    items = list(SERVICES.values())
    assert apply_filter("Port == 80", items, AGENT_SERVICE) == [SERVICES["web"]]
    assert apply_filter(None, items) is items
    assert apply_filter("", SERVICES) is SERVICES


def test_compiled_filter_is_reusable() -> None:
    compiled = compile_filter("Meta.env == production", AGENT_SERVICE)
    assert [compiled.matches(s) for s in SERVICES.values()] == [True, True, False, False]


@pytest.mark.parametrize(
    ("schema", "expression"),
    [
        (AGENT_SERVICE, 'Proxy.Upstreams.MeshGateway.Mode == "local"'),
        (AGENT_SERVICE, "Proxy.TransparentProxy.OutboundListenerPort == 15001"),
        (AGENT_SERVICE, "TaggedAddresses.wan.Address == x"),
        (AGENT_CHECK, '"primary" in ServiceTags and Status == passing'),
        (CATALOG_NODE, 'TaggedAddresses.lan == "10.0.0.1" and Meta is not empty'),
        (CATALOG_SERVICE_NODE, "ServiceProxy.Upstreams is empty and ServiceWeights.Passing == 1"),
        (CATALOG_SERVICE_NODE, "ServiceTaggedAddresses.lan.Port == 80 and ServiceConnect.Native == true"),
        (CATALOG_NODE_SERVICES, "Service == web and Weights.Warning == 1"),
        (HEALTH_CHECK, "Type == ttl"),
        (HEALTH_SERVICE_ENTRY, "Service.Proxy.Upstreams.LocalBindPort == 9191"),
        (HEALTH_SERVICE_ENTRY, "Node.TaggedAddresses.lan matches x and Checks.ServiceTags is empty"),
    ],
)
def test_documented_selectors_validate(schema: Schema, expression: str) -> None:
    compile_filter(expression, schema)


# --- properties ---------------------------------------------------------------

_words = st.sampled_from(["web", "db", "prod", "qa", "x"])
_item = st.fixed_dictionaries(
    {
        "ID": _words,
        "Service": _words,
        "Tags": st.one_of(st.none(), st.lists(_words, max_size=3)),
        "Meta": st.dictionaries(st.sampled_from(["env", "team"]), _words, max_size=2),
        "Port": st.integers(min_value=0, max_value=3),
        "EnableTagOverride": st.booleans(),
    }
)

_atoms = st.one_of(
    st.builds(lambda w: f"Service == {w}", _words),
    st.builds(lambda w: f'Service != "{w}"', _words),
    st.builds(lambda w: f'"{w}" in Tags', _words),
    st.builds(lambda w: f"Tags not contains `{w}`", _words),
    st.builds(lambda w: f"Meta.env == {w}", _words),
    st.builds(lambda k: f'"{k}" in Meta', st.sampled_from(["env", "team"])),
    st.builds(lambda n: f"Port == {n}", st.integers(min_value=0, max_value=3)),
    st.builds(lambda b: f"EnableTagOverride == {b}", st.sampled_from(["true", "false"])),
    st.builds(lambda p: f'ID matches "{p}"', st.sampled_from(["^w", "b$", "."])),
    st.sampled_from(["Tags is empty", "Meta is not empty"]),
)

_exprs = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.builds(lambda a: f"not ({a})", inner),
        st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(expr=_exprs, item=_item, schema=st.sampled_from([AGENT_SERVICE, None]))
def test_not_is_negation(expr: str, item: dict[str, Any], schema: Schema | None) -> None:
    positive = compile_filter(expr, schema).matches(item)
    assert compile_filter(f"not ({expr})", schema).matches(item) is (not positive)
    assert compile_filter(f"not not ({expr})", schema).matches(item) is positive


@settings(max_examples=200, deadline=None)
@given(a=_exprs, b=_exprs, item=_item)
def test_and_or_are_boolean(a: str, b: str, item: dict[str, Any]) -> None:
    ra = compile_filter(a, AGENT_SERVICE).matches(item)
    rb = compile_filter(b, AGENT_SERVICE).matches(item)
    assert compile_filter(f"({a}) and ({b})", AGENT_SERVICE).matches(item) is (ra and rb)
    assert compile_filter(f"({a}) or ({b})", AGENT_SERVICE).matches(item) is (ra or rb)


@settings(max_examples=200, deadline=None)
@given(word=_words, item=_item)
def test_in_and_contains_agree_with_membership(word: str, item: dict[str, Any]) -> None:
    tags = item["Tags"] or []
    assert compile_filter(f'"{word}" in Tags').matches(item) is (word in tags)
    assert compile_filter(f'Tags contains "{word}"', AGENT_SERVICE).matches(item) is (word in tags)
    assert compile_filter(f"{word} not in Tags", AGENT_SERVICE).matches(item) is (word not in tags)


@pytest.mark.timeout(120)
def test_regex_matching_is_linear_not_backtracking() -> None:
    """`^(a+)+$` against 40 `a`s and a `b` is 2^40 steps for a backtracking engine; RE2 answers at
    once, so this finishes (issue 13, item 2). Before the fix it ran into the timeout."""
    items = [{"ID": "a" * 40 + "b"}, {"ID": "a" * 40}, {"ID": "a" * 5000 + "!"}]
    assert apply_filter('ID matches "^(a+)+$"', items) == [{"ID": "a" * 40}]
    assert apply_filter('ID not matches "^(a+)+$"', items) == [items[0], items[2]]


def test_regex_errors_use_gos_wording() -> None:
    assert error_of('ID matches "("', None).endswith("error parsing regexp: missing closing ): `(`")
    assert "invalid or unsupported Perl syntax: `(?=`" in error_of('ID matches "(?=x)"', None)
