"""User event filters: Go's regexp syntax on RE2, linear in the names they are matched against."""

from __future__ import annotations

from dataclasses import replace

import pytest
from proconsul import go_regexp
from proconsul.local.events import EventError, matches, new_event


def test_invalid_filters_are_refused_with_gos_wording() -> None:
    with pytest.raises(EventError, match=r"^Invalid node filter: error parsing regexp: missing closing \): `\(`$"):
        new_event("deploy", b"", node_filter="(")
    with pytest.raises(EventError, match=r"Invalid service filter: .*Perl syntax"):
        new_event("deploy", b"", service_filter="web(?!x)")


@pytest.mark.timeout(120)
def test_filters_match_in_linear_time() -> None:
    """Backtracking would take 2^40 steps per name here (issue 13, item 2)."""
    event = new_event("deploy", b"", node_filter="^(a+)+$", service_filter="^(b+)+$", tag_filter="^(c+)+$")
    services = [("b" * 40 + "x", ["c" * 40]), ("b" * 40, ["c" * 40 + "x", "c" * 40])]
    assert matches(event, "a" * 40, services)
    assert not matches(event, "a" * 40 + "b", services)
    assert not matches(event, "a" * 40, [("b" * 40, ["c" * 40 + "x"])])


def test_a_peers_invalid_pattern_is_a_regexp_error() -> None:
    bad = replace(new_event("deploy", b""), node_filter="(?<=x)")  # as gossip could carry it
    with pytest.raises(go_regexp.RegexpError):
        matches(bad, "node", [])
