"""Prepared queries in the state store: definitions, templates, resolution, integrity, sessions."""

from __future__ import annotations

import pytest
from proconsul.server.snapshot import state_stats
from proconsul.state import commands as cmd
from proconsul.state import prepared_query as pq
from proconsul.state.fsm import FSM
from proconsul.state.records import Node, PreparedQuery, Session
from proconsul.state.store import Store, StoreError

ID1 = "11111111-1111-1111-1111-111111111111"
ID2 = "22222222-2222-2222-2222-222222222222"
ID3 = "33333333-3333-3333-3333-333333333333"


def _query(qid: str, **body: object) -> PreparedQuery:
    body.setdefault("Service", {"Service": "redis"})
    d = pq.normalize(body)
    return PreparedQuery(qid, d["Name"], d["Session"], d)


def _apply(fsm: FSM, index: int, op: str, q: PreparedQuery) -> object:
    # Through the command codec, as Raft carries it.
    return fsm.apply(index, cmd.decode(cmd.encode(cmd.PreparedQueryOp(op, q))))


# ------------------------------------------------------------------------------ normal form


def test_normalize_fills_every_field_in_consuls_shape() -> None:
    d = pq.normalize({"name": "q", "service": {"service": "redis", "tags": ["a"], "failover": {"nearestn": 2}},
                      "dns": {"ttl": "10s"}})
    assert d == {
        "Name": "q", "Session": "", "Token": "",
        "Template": {"Type": "", "Regexp": "", "RemoveEmptyTags": False},
        "Service": {
            "Service": "redis", "SamenessGroup": "",
            "Failover": {"NearestN": 2, "Datacenters": None, "Targets": None},
            "OnlyPassing": False, "IgnoreCheckIDs": None, "Near": "", "Tags": ["a"],
            "NodeMeta": None, "ServiceMeta": None, "Peer": "", "Connect": False,
        },
        "DNS": {"TTL": "10s"},
    }


@pytest.mark.parametrize(("body", "reason"), [
    ({"Name": "q", "Service": {}}, "Must provide a Service name to query"),
    ({"Service": {"Service": "redis"}}, "Must be bound to a session"),
    ({"Name": "q", "Service": {"Service": "r", "Failover": {"NearestN": -1}}}, "Bad NearestN '-1', must be >= 0"),
    ({"Name": "q", "Service": {"Service": "r", "Failover": {"NearestN": 1, "Targets": [{"Datacenter": "dc2"}]}}},
     "Targets cannot be populated with NearestN or Datacenters"),
    ({"Name": "q", "Service": {"Service": "r"}, "DNS": {"TTL": "soon"}}, "Bad DNS TTL 'soon'"),
    ({"Name": "q", "Token": "<hidden>", "Service": {"Service": "r"}}, "redacted token"),
    ({"Name": "q", "Template": {"Type": "other"}, "Service": {"Service": "r"}}, "Bad Template.Type 'other'"),
    ({"Name": "q", "Template": {"Type": "name_prefix_match", "Regexp": "(a"}, "Service": {"Service": "r"}},
     "error parsing regexp: missing closing ): `(a`"),
    ({"Name": "q", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${nope}"}},
     "unknown variable accessed: nope"),
    ({"Name": "q", "Service": {"Service": 7}}, "Service.Service must be a string"),
])
def test_normalize_refuses_what_consul_refuses(body: dict, reason: str) -> None:
    with pytest.raises(pq.QueryError) as err:
        pq.normalize(body)
    assert reason in str(err.value)


def test_regexp_is_re2_and_refuses_backreferences() -> None:
    with pytest.raises(pq.QueryError, match="error parsing regexp"):
        pq.normalize({"Name": "q", "Template": {"Type": "name_prefix_match", "Regexp": r"(a)\1"},
                      "Service": {"Service": "x"}})


# -------------------------------------------------------------------------------- templates


def _template(name: str, regexp: str = "", remove_empty: bool = False, **service: object) -> dict:
    service.setdefault("Service", "${name.full}")
    return pq.normalize({"Name": name, "Template": {"Type": "name_prefix_match", "Regexp": regexp,
                                                    "RemoveEmptyTags": remove_empty}, "Service": service})


def test_interpolation_of_name_parts_and_matches() -> None:
    t = pq.compile_template(_template(
        "geo-db", r"^geo-db-(.*?)-([^\-]+?)$",
        Service="mysql-${match(1)}", Tags=["${match(2)}", "${match(9)}", "x-${name.suffix}"],
        Near="${name.prefix}", NodeMeta={"full": "${name.full}"}, Failover={"Datacenters": ["dc-${match(1)}"]},
    ))
    r = t.render("geo-db-customer-primary")
    s = r["Service"]
    assert s["Service"] == "mysql-customer"
    assert s["Tags"] == ["primary", "", "x--customer-primary"]
    assert s["Near"] == "geo-db"
    assert s["NodeMeta"] == {"full": "geo-db-customer-primary"}
    assert s["Failover"]["Datacenters"] == ["dc-customer"]
    # The stored template is untouched.
    assert t.query["Service"]["Service"] == "mysql-${match(1)}"


def test_no_regexp_match_gives_empty_matches_and_remove_empty_tags() -> None:
    t = pq.compile_template(_template("db", r"^db-(\w+)$", True, Service="svc${match(1)}",
                                      Tags=["${match(1)}", "keep"]))
    r = t.render("db")
    assert r["Service"]["Service"] == "svc" and r["Service"]["Tags"] == ["keep"]
    assert t.render("db-x")["Service"]["Tags"] == ["x", "keep"]


def test_literal_dollar_brace_is_escaped() -> None:
    r = pq.compile_template(_template("a", Service="$${name.full}")).render("abc")
    assert r["Service"]["Service"] == "${name.full}"


# ------------------------------------------------------------------------------- resolution


def _store(*queries: PreparedQuery) -> Store:
    store = Store()
    for i, q in enumerate(queries, start=1):
        store.prepared_query_set(i, q)
    return store


def test_resolve_by_id_then_name_then_longest_prefix() -> None:
    catch_all = PreparedQuery(ID1, "", "", _template("", Service="all-${name.full}"))
    geo = PreparedQuery(ID2, "geo", "", _template("geo", Service="geo-${name.suffix}"))
    static = _query(ID3, Name="geo-static", Service={"Service": "static"})
    store = _store(catch_all, geo, static)
    qs = store.prepared_queries
    assert pq.resolve(qs, ID3)["Service"]["Service"] == "static"
    assert pq.resolve(qs, "geo-static")["Service"]["Service"] == "static"  # static beats the template
    found = pq.resolve(qs, "geo-db")
    assert found["ID"] == ID2 and found["Name"] == "geo" and found["Service"]["Service"] == "geo--db"
    assert pq.resolve(qs, "web")["Service"]["Service"] == "all-web"
    assert pq.resolve(qs, "") is None
    # A template found by its ID renders with the ID as the name, as Consul's does.
    assert pq.resolve(qs, ID2)["Service"]["Service"] == "geo-" + ID2  # no "geo" prefix to trim
    assert pq.resolve(_store(static).prepared_queries, "nothing") is None


# ------------------------------------------------------------------------------- integrity


def test_names_are_unique_and_may_not_alias_ids() -> None:
    store = _store(_query(ID1, Name="q"))
    with pytest.raises(StoreError, match="name 'q' aliases an existing query name"):
        store.prepared_query_set(2, _query(ID2, Name="q"))
    with pytest.raises(StoreError, match=f"name '{ID1}' aliases an existing query ID"):
        store.prepared_query_set(2, _query(ID2, Name=ID1))
    store.prepared_query_set(3, _query(ID1, Name="q", Service={"Service": "other"}))  # the same query keeps its name
    assert store.prepared_queries[ID1].create_index == 1 and store.prepared_queries[ID1].modify_index == 3


def test_one_catch_all_template() -> None:
    store = _store(PreparedQuery(ID1, "", "", _template("")))
    with pytest.raises(StoreError, match="a query template with an empty name already exists"):
        store.prepared_query_set(2, PreparedQuery(ID2, "", "", _template("")))


def test_update_and_delete_of_a_missing_query_fail_without_change() -> None:
    store = Store()
    fsm = FSM(store)
    err = _apply(fsm, 1, "update", _query(ID1, Name="q"))
    assert isinstance(err, StoreError) and str(err) == f"Cannot modify non-existent prepared query: '{ID1}'"
    assert isinstance(_apply(fsm, 2, "delete", PreparedQuery(ID1)), StoreError)
    assert store.prepared_queries == {}
    assert _apply(fsm, 3, "create", _query(ID1, Name="q")) == ID1
    assert _apply(fsm, 4, "delete", PreparedQuery(ID1)) == ID1
    assert store.prepared_queries == {} and store.table_index["prepared_queries"] == 4


def test_session_bound_query_needs_the_session_and_dies_with_it() -> None:
    store = Store()
    fsm = FSM(store)
    store.ensure_registration(1, Node("n1", address="127.0.0.1"), None, (), False)
    with pytest.raises(StoreError, match='invalid session "s-1"'):
        store.prepared_query_set(2, _query(ID1, Session="s-1"))
    store.create_session(3, Session("s-1", node="n1", node_checks=()))
    assert _apply(fsm, 4, "create", _query(ID1, Session="s-1")) == ID1
    assert _apply(fsm, 5, "create", _query(ID2, Name="kept")) == ID2
    fsm.apply(6, cmd.SessionOp("destroy", Session("s-1")))
    assert sorted(store.prepared_queries) == [ID2]
    assert store.table_index["prepared_queries"] == 6


def test_session_invalidated_by_its_node_leaving_deletes_the_query() -> None:
    store = Store()
    store.ensure_registration(1, Node("n1", address="127.0.0.1"), None, (), False)
    store.create_session(2, Session("s-1", node="n1", node_checks=()))
    store.prepared_query_set(3, _query(ID1, Session="s-1"))
    store.deregister(4, "n1")
    assert store.prepared_queries == {}


def test_snapshot_restore_keeps_queries() -> None:
    store = _store(_query(ID1, Name="q", DNS={"TTL": "5s"}), PreparedQuery(ID2, "t", "", _template("t")))
    copy = Store()
    copy.restore(store.snapshot())
    assert copy.prepared_queries == store.prepared_queries
    # `snapshot inspect` counts them as Consul names the table.
    assert ("PreparedQuery", 2) in [(name, n) for name, n, _ in state_stats(store.snapshot())]
    assert pq.resolve(copy.prepared_queries, "tx")["Service"]["Service"] == "tx"
    # A snapshot from before prepared queries existed restores with none.
    older = Store()
    older.restore(Store().snapshot())
    assert older.prepared_queries == {}


@pytest.mark.parametrize("payload", [
    ["create", [ID1, "q", "", {"Service": 5}]],
    ["create", [ID1, "q", "", "not a definition"]],
    ["update", [7, "q", "", {}]],
    ["rename", [ID1, "q", "", {}]],
    ["create"],
])
def test_forged_query_commands_are_refused_before_the_fsm(payload: list) -> None:
    import msgpack

    data = msgpack.packb([int(cmd.CommandType.PREPARED_QUERY), payload], use_bin_type=True)
    with pytest.raises(ValueError):
        cmd.decode(data)


def test_forged_txn_ops_are_refused_before_the_fsm() -> None:
    import msgpack

    for ops in ([["node", "set", [5]]], [["service", "set", 1, ["n", "id", "svc"]]], [["nope", 1, 2]], [[1]]):
        data = msgpack.packb([int(cmd.CommandType.TXN), ops], use_bin_type=True)
        with pytest.raises(ValueError):
            cmd.decode(data)


def test_names_and_prefixes_match_in_any_case() -> None:
    store = _store(_query(ID1, Name="Web-Q"), PreparedQuery(ID2, "Geo-", "", _template("Geo-")))
    assert pq.resolve(store.prepared_queries, "web-q")["ID"] == ID1
    assert pq.resolve(store.prepared_queries, "geo-db")["ID"] == ID2
    with pytest.raises(StoreError, match="name 'WEB-q' aliases an existing query name"):
        store.prepared_query_set(3, _query(ID3, Name="WEB-q"))
