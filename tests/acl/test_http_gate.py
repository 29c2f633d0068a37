"""The ACL gate's route table (http/acl_gate.py) against the real route table.

Every precise check names a route that exists (a typo would silently turn it into management-only),
and the routes without one, which therefore need a management token, are exactly the documented
list in docs/ACL.md: adding a route forces a decision here.
"""

from __future__ import annotations

import re

from proconsul.http import acl_gate
from proconsul.http.server import route_defs

# docs/ACL.md, "Management only": no finer check is wired for these.
MANAGEMENT_ONLY = {
    ("GET", "/v1/snapshot"),
    ("PUT", "/v1/snapshot"),
    ("PUT", "/v1/coordinate/update"),
}


def _routes() -> set[tuple[str, str]]:
    out = set()
    for d in route_defs(acl_enabled=True):
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", d.path)  # type: ignore[attr-defined]
        out.add((d.method, path))  # type: ignore[attr-defined]
    return out


def test_every_precise_check_names_a_real_route() -> None:
    assert set(acl_gate.PRE) - _routes() == set()


def test_routes_without_a_precise_check_are_the_documented_management_only_ones() -> None:
    unchecked = {
        (m, p) for m, p in _routes()
        if (m, p) not in acl_gate.PRE and not p.startswith("/v1/acl/") and p != "/v1/internal/acl/authorize"
        and p.startswith("/v1/")
    }
    assert unchecked == MANAGEMENT_ONLY


def test_filters_name_real_get_routes() -> None:
    gets = {p for m, p in _routes() if m == "GET"}
    assert set(acl_gate.FILTERS) - gets == set()


def test_acl_routes_answer_disabled_without_acls() -> None:
    paths = {d.path for d in route_defs(acl_enabled=False)}  # type: ignore[attr-defined]
    assert "/v1/acl/bootstrap" in paths and "/v1/acl/token/self" in paths
    handlers = {d.handler.__name__ for d in route_defs(acl_enabled=False)  # type: ignore[attr-defined]
                if d.path.startswith("/v1/acl/")}  # type: ignore[attr-defined]
    assert handlers == {"acl_disabled"}
