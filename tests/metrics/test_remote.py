"""Reports of a worker's metrics merged into the agent's registry (`proconsul.metrics.remote`):
the merged registry reads as if every value had been recorded in it, under its own prefix and
host name; gauges stay the reporter's; rows the receiver cannot take are skipped."""

from __future__ import annotations

import statistics

import orjson
from proconsul.metrics import Metrics
from proconsul.metrics.prometheus import render
from proconsul.metrics.remote import VALUES_PER_SERIES, merge_report, take_report
from prometheus_client.parser import text_string_to_metric_families


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _entry(doc: dict, section: str, name: str, labels: dict[str, str] | None = None) -> dict:
    found = [e for e in doc[section] if e["Name"] == name and e["Labels"] == (labels or {})]
    assert len(found) == 1, (name, labels, doc[section])
    return found[0]


def _worker() -> Metrics:
    worker = Metrics(clock=Clock())  # a worker's registry: default prefix, no telemetry config
    worker.open_outbox()
    return worker


def test_counters_and_samples_merge_as_if_recorded_by_the_agent() -> None:
    clock = Clock()
    agent = Metrics(prefix="proconsul", hostname="box", clock=clock, prometheus_retention_s=60)
    agent_timer = agent.sample("api", "http", labels=("method", "path"))
    agent_reads = agent.counter("rpc", "query")
    worker = _worker()
    w_timer = worker.sample("api", "http", labels=("method", "path"))
    w_reads = worker.counter("rpc", "query")
    worker.gauge("runtime", "alloc_bytes").set(123.0)  # the worker's own: never reported

    agent_timer.with_labels("GET", "v1_kv_").observe(1.0)
    agent_reads.incr()
    worker_values = [0.5, 2.0, 4.5]
    for v in worker_values:
        w_timer.with_labels("GET", "v1_kv_").observe(v)
        w_reads.incr()

    payload = take_report(worker)
    assert payload is not None
    assert merge_report(agent, payload) == 2
    assert take_report(worker) is None  # reported once

    doc = agent.summary()
    timer = _entry(doc, "Samples", "proconsul.api.http", {"method": "GET", "path": "v1_kv_"})
    every = [1.0, *worker_values]
    assert timer["Count"] == 4
    assert timer["Sum"] == sum(every)
    assert (timer["Min"], timer["Max"]) == (0.5, 4.5)
    assert abs(timer["Stddev"] - statistics.stdev(every)) < 1e-9
    assert _entry(doc, "Counters", "proconsul.rpc.query")["Count"] == 4
    assert not any("alloc_bytes" in g["Name"] for g in doc["Gauges"])

    prom = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(render(agent).decode())
        for s in f.samples
    }
    key = (("method", "GET"), ("path", "v1_kv_"))
    assert prom[("proconsul_api_http_count", key)] == 4
    assert prom[("proconsul_api_http_sum", key)] == sum(every)
    # The quantile window holds the worker's values too: its median is one of them.
    assert prom[("proconsul_api_http", (*key, ("quantile", "0.5")))] in (2.0, 1.0)
    assert prom[("proconsul_rpc_query", ())] == 4


def test_a_family_only_the_worker_declared_appears_with_its_help() -> None:
    agent = Metrics(clock=Clock(), hostname="")
    worker = _worker()
    worker.counter("worker", "only", help="something only workers count").incr(3)
    assert merge_report(agent, take_report(worker) or b"") == 1
    assert agent.families["consul.worker.only"].help == "something only workers count"
    assert _entry(agent.summary(), "Counters", "consul.worker.only")["Sum"] == 3


def test_statsd_sinks_see_each_reported_sample_and_a_counter_sum() -> None:
    agent = Metrics(clock=Clock(), hostname="")
    agent.open_outbox()
    worker = _worker()
    for v in range(VALUES_PER_SERIES + 10):
        worker.sample("dns", "query").observe(float(v))
    worker.counter("dns", "hits").incr(2)
    worker.counter("dns", "hits").incr(5)
    merge_report(agent, take_report(worker) or b"")
    out = agent.take_outbox()
    samples = [v for s, v in out if s.name == "consul.dns.query"]
    assert samples == [float(v) for v in range(VALUES_PER_SERIES)]  # a bounded share of values
    assert [v for s, v in out if s.name == "consul.dns.hits"] == [7.0]
    # ...while the count and sum stay exact.
    entry = _entry(agent.summary(), "Samples", "consul.dns.query")
    assert entry["Count"] == VALUES_PER_SERIES + 10
    assert entry["Sum"] == sum(range(VALUES_PER_SERIES + 10))


def test_rows_the_agent_cannot_take_are_skipped_and_the_rest_merged() -> None:
    agent = Metrics(clock=Clock(), hostname="")
    agent.sample("api", "http", labels=("method", "path"))
    worker = _worker()
    worker.counter("api", "http").incr()  # declared differently by the agent: skipped
    worker.counter("fine").incr()
    assert merge_report(agent, take_report(worker) or b"") == 1
    assert merge_report(agent, b"not json") == 0
    assert merge_report(agent, orjson.dumps([["gauge", "x", "", [], [], 1, 1, 1, 1, 1, []], "junk"])) == 0
    assert _entry(agent.summary(), "Counters", "consul.fine")["Count"] == 1
