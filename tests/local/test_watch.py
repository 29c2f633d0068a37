"""The watch loop (proconsul.local.watch.run) with a scripted fetch: changes, back-off, no busy loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from proconsul.api_client import APIError
from proconsul.local import watch
from proconsul.local.events import EventError, EventLog, UserEvent, matches, new_event, uuid_to_uint64


class Script:
    """Answers fetches from a list of (index, result) or exceptions; records the wait indexes."""

    def __init__(self, answers: list[Any], stop: threading.Event) -> None:
        self.answers = answers
        self.asked: list[int] = []
        self.stop = stop

    def __call__(self, client: Any, index: int) -> tuple[int, Any]:
        self.asked.append(index)
        if not self.answers:
            self.stop.set()
            return index, None
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeStop(threading.Event):
    """Records the pauses the loop asks for instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(float(timeout or 0))
        return self.is_set()


def _run(answers: list[Any]) -> tuple[list[tuple[int, Any]], Script, FakeStop]:
    stop = FakeStop()
    script = Script(answers, stop)
    plan = watch.Plan(type="key", fetch=script)
    calls: list[tuple[int, Any]] = []
    watch.run(plan, None, lambda i, d: calls.append((i, d)), stop)  # type: ignore[arg-type]
    return calls, script, stop


def test_handler_once_per_change() -> None:
    calls, script, _ = _run([(5, "a"), (5, "a"), (6, "a"), (7, "b"), (7, "b"), (9, "c")])
    assert calls == [(5, "a"), (7, "b"), (9, "c")]
    assert script.asked[:4] == [0, 5, 5, 6]


def test_errors_back_off_quadratically_with_a_cap() -> None:
    err = APIError("Unexpected response code: 500 (boom)", 500)
    calls, _, stop = _run([err, err, err, (3, "x")])
    assert stop.pauses == [5.0, 20.0, 45.0]
    assert calls == [(3, "x")]
    calls, _, stop = _run([err] * 8)
    assert max(stop.pauses) == watch.MAX_BACKOFF_S


def test_zero_or_backwards_index_resets_and_pauses() -> None:
    calls, script, stop = _run([(0, "a"), (0, "a"), (10, "b"), (4, "c"), (5, "c")])
    # Index 0 is never used to block, and each 0 / backwards answer costs a pause.
    assert script.asked[:5] == [0, 0, 0, 10, 0]
    assert stop.pauses.count(watch.RESET_PAUSE_S) == 3
    assert [d for _, d in calls] == ["a", "b", "c"]


def test_parse_errors_are_consuls() -> None:
    for params, message in (
        ({}, "Watch type must be specified"),
        ({"type": "nope"}, "Unsupported watch type: nope"),
        ({"type": "key"}, "Must specify a single key to watch"),
        ({"type": "checks", "service": "a", "state": "any"}, "Cannot specify service and state"),
        ({"type": "nodes", "bogus": 1}, "Invalid parameters: [bogus]"),
        ({"type": "key", "key": "k", "handler_type": "http"}, "requires 'http_handler_config'"),
    ):
        with pytest.raises(watch.WatchError, match=message.replace("[", r"\[").replace("]", r"\]")):
            watch.parse(params)
    with pytest.raises(watch.WatchError, match="Must define a watch handler"):
        watch.parse_agent_watch({"type": "nodes"})
    with pytest.raises(watch.WatchError, match="not recognized"):
        watch.parse_agent_watch({"type": "nodes", "handler_type": "carrier-pigeon"})
    plan = watch.parse_agent_watch({"type": "key", "key": "k", "args": ["/bin/true"]})
    assert plan.exempt == {"args": ["/bin/true"]} and plan.handler_type == "script"


def test_go_json_escapes_like_go() -> None:
    assert watch.go_json({"a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e"}'


def test_events_filters_limit_and_index() -> None:
    e = new_event("deploy", b"x", node_filter="^web")
    assert matches(e, "web-1", []) and not matches(e, "db-1", [])
    svc = new_event("deploy", None, service_filter="api", tag_filter="^v2$")
    assert matches(svc, "n", [("api", ("v2",))]) and not matches(svc, "n", [("api", ("v1",))])
    with pytest.raises(EventError, match="Cannot provide tag filter without service filter"):
        new_event("x", None, tag_filter="t")
    with pytest.raises(EventError, match="exceeds configured limit of 512 bytes"):
        new_event("x", b"y" * 500)
    assert uuid_to_uint64("00000000-0000-0001-0000-000000000003") == 1 ^ 3
    log = EventLog(size=3)
    for i in range(5):
        log.ingest(UserEvent(id=f"00000000-0000-0000-0000-00000000000{i}", name=f"e{i}"))
    assert [e.name for e in log.list()] == ["e2", "e3", "e4"] and log.list()[-1].ltime == 5
    assert EventLog.index_of([]) == 1
