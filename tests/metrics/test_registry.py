"""The metrics registry on a fake clock: go-metrics' interval semantics and JSON shape, naming
(prefix, host name for gauges), labelled series, and the Prometheus view read back with
prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import math
import statistics

import pytest
from proconsul.metrics import Metrics
from proconsul.metrics.inmem import go_timestamp
from proconsul.metrics.prometheus import render
from proconsul.metrics.registry import CounterBatch, SampleBatch, deferred_group
from prometheus_client.parser import text_string_to_metric_families


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _families(m: Metrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(render(m).decode())}


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(render(m).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_json_view_has_go_metrics_fields_and_aggregates() -> None:
    clock = Clock()
    m = Metrics(clock=clock, hostname="")
    timer = m.sample("kvs", "apply")
    counter = m.counter("rpc", "request")
    gauge = m.gauge("runtime", "num_goroutines")
    values = [2.0, 4.0, 9.0]
    for v in values:
        timer.observe(v)
    counter.incr()
    counter.incr(3)
    gauge.set(7)
    doc = m.summary()
    assert list(doc) == ["Timestamp", "Gauges", "Points", "Counters", "Samples"]
    assert doc["Points"] == []
    assert doc["Gauges"] == [{"Name": "consul.runtime.num_goroutines", "Value": 7, "Labels": {}}]
    (sample,) = doc["Samples"]
    assert list(sample) == ["Name", "Count", "Rate", "Sum", "Min", "Max", "Mean", "Stddev", "Labels"]
    assert sample["Name"] == "consul.kvs.apply"
    assert (sample["Count"], sample["Sum"], sample["Min"], sample["Max"]) == (3, 15.0, 2.0, 9.0)
    assert sample["Mean"] == pytest.approx(5.0)
    assert sample["Stddev"] == pytest.approx(statistics.stdev(values))
    assert sample["Rate"] == pytest.approx(15.0 / 10.0)  # Sum per second of the 10 s interval
    (count,) = doc["Counters"]
    assert (count["Name"], count["Count"], count["Sum"], count["Min"], count["Max"]) == ("consul.rpc.request", 2, 4.0, 1.0, 3.0)


def test_the_json_view_reports_the_last_finished_interval() -> None:
    clock = Clock(1_000_003.0)
    m = Metrics(clock=clock)
    c = m.counter("kvs", "x")
    c.incr()
    # Only the current interval exists: it is shown, stamped with its start (truncated to 10 s).
    assert m.summary()["Timestamp"] == go_timestamp(1_000_000.0)
    assert m.summary()["Counters"][0]["Count"] == 1
    clock.now = 1_000_012.0
    c.incr(5)
    c.incr(5)
    doc = m.summary()
    # The finished interval, not the one in progress.
    assert doc["Timestamp"] == go_timestamp(1_000_000.0)
    assert doc["Counters"][0]["Count"] == 1
    clock.now = 1_000_020.0
    doc = m.summary()
    assert doc["Timestamp"] == go_timestamp(1_000_010.0)
    assert doc["Counters"][0]["Count"] == 2 and doc["Counters"][0]["Sum"] == 10.0
    # An interval with nothing recorded reports nothing: go-metrics keeps no values across intervals.
    clock.now = 1_000_031.0
    assert m.summary()["Counters"] == []


def test_retention_keeps_a_minute_of_intervals() -> None:
    clock = Clock()
    m = Metrics(clock=clock, interval_s=10.0, retain_s=60.0)
    c = m.counter("x")
    for i in range(20):
        clock.now = 1_000_000.0 + 10.0 * i
        c.incr()
    assert len(m.inmem.intervals) == 6


def test_go_timestamp_format() -> None:
    assert go_timestamp(0.4) == "1970-01-01 00:00:00 +0000 UTC"
    assert go_timestamp(1_764_733_810.6) == "2025-12-03 03:50:11 +0000 UTC"


def test_prefix_and_host_name_as_go_metrics_names_them() -> None:
    m = Metrics(prefix="pc", hostname="web 1")
    m.gauge("runtime", "alloc_bytes").set(1)
    m.counter("raft", "apply").incr()
    doc = m.summary()
    # Gauges carry the host name after the prefix (disable_hostname = false); counters do not.
    assert doc["Gauges"][0]["Name"] == "pc.web_1.runtime.alloc_bytes"
    assert doc["Counters"][0]["Name"] == "pc.raft.apply"
    assert "pc_web_1_runtime_alloc_bytes" in _families(m)
    bare = Metrics(prefix="")
    bare.counter("raft", "apply").incr()
    assert bare.summary()["Counters"][0]["Name"] == "raft.apply"


def test_labelled_series_are_separate_and_sorted_by_key() -> None:
    m = Metrics()
    http = m.sample("api", "http", labels=("method", "path"))
    http.with_labels("PUT", "v1_kv_").observe(2.0)
    http.with_labels("GET", "v1_kv_").observe(1.0)
    http.with_labels("GET", "v1_kv_").observe(3.0)
    assert http.with_labels("GET", "v1_kv_") is http.with_labels("GET", "v1_kv_")  # cached handle
    samples = m.summary()["Samples"]
    assert [(s["Labels"], s["Count"]) for s in samples] == [
        ({"method": "GET", "path": "v1_kv_"}, 2),
        ({"method": "PUT", "path": "v1_kv_"}, 1),
    ]
    with pytest.raises(ValueError):
        http.with_labels("GET")


def test_declaring_twice_returns_the_same_series_and_a_conflict_is_refused() -> None:
    m = Metrics()
    a = m.counter("rpc", "request")
    b = m.counter("rpc", "request")
    a.incr()
    b.incr()
    assert _samples(m)[("consul_rpc_request", ())] == 2.0
    with pytest.raises(ValueError):
        m.sample("rpc", "request")


def test_every_declared_family_is_in_the_prometheus_view_before_any_event() -> None:
    m = Metrics(prometheus_retention_s=60.0)
    m.counter("raft", "apply")
    m.sample("raft", "commitTime")
    m.gauge("autopilot", "healthy")
    m.sample("api", "http", labels=("method", "path"))
    families = _families(m)
    assert families["consul_raft_apply"].type == "unknown"  # untyped: Consul's name, no _total
    assert families["consul_raft_commitTime"].type == "summary"
    assert families["consul_autopilot_healthy"].type == "gauge"
    samples = _samples(m)
    assert samples[("consul_raft_apply", ())] == 0.0
    assert samples[("consul_raft_commitTime_count", ())] == 0.0
    assert math.isnan(samples[("consul_raft_commitTime", (("quantile", "0.99"),))])
    assert samples[("consul_api_http_count", ())] == 0.0


def test_prometheus_values_are_cumulative_with_quantiles() -> None:
    clock = Clock()
    m = Metrics(clock=clock, prometheus_retention_s=60.0)
    c = m.counter("raft", "apply")
    t = m.sample("api", "http", labels=("method", "path")).with_labels("PUT", "v1_kv_")
    for i in range(1, 101):
        t.observe(float(i))
        c.incr()
    clock.now += 15  # a new JSON interval; Prometheus totals carry on
    c.incr()
    samples = _samples(m)
    labels = (("method", "PUT"), ("path", "v1_kv_"))
    assert samples[("consul_raft_apply", ())] == 101.0
    assert samples[("consul_api_http_count", labels)] == 100.0
    assert samples[("consul_api_http_sum", labels)] == 5050.0
    assert samples[("consul_api_http", (*labels, ("quantile", "0.5")))] == 50.0
    assert samples[("consul_api_http", (("method", "PUT"), ("path", "v1_kv_"), ("quantile", "0.99")))] == 99.0


def test_quantiles_forget_old_windows_but_counts_do_not() -> None:
    clock = Clock()
    m = Metrics(clock=clock, prometheus_retention_s=600.0)
    t = m.sample("x")
    t.observe(1000.0)
    clock.now += 25  # past two 10 s windows: the old value no longer shapes the quantiles
    t.observe(1.0)
    samples = _samples(m)
    assert samples[("consul_x", (("quantile", "0.99"),))] == 1.0
    assert samples[("consul_x_count", ())] == 2.0


def test_labelled_series_idle_past_the_retention_leave_the_prometheus_view() -> None:
    clock = Clock()
    m = Metrics(clock=clock, prometheus_retention_s=30.0)
    http = m.sample("api", "http", labels=("method", "path"))
    get = http.with_labels("GET", "v1_kv_")
    get.observe(1.0)
    labels = (("method", "GET"), ("path", "v1_kv_"))
    assert ("consul_api_http_count", labels) in _samples(m)
    clock.now += 31
    samples = _samples(m)
    assert ("consul_api_http_count", labels) not in samples
    assert ("consul_api_http_count", ()) in samples  # the definition stays
    get.observe(1.0)  # updated again: back, with its running count
    assert _samples(m)[("consul_api_http_count", labels)] == 2.0


def test_quantile_windows_are_kept_only_when_prometheus_is_served() -> None:
    m = Metrics(prometheus_retention_s=0.0)
    t = m.sample("x")
    t.observe(1.0)
    assert m.series[("consul.x", ())].window == []


def test_prefix_filter_blocks_by_longest_rule_and_filter_default() -> None:
    clock = Clock()
    m = Metrics(clock=clock, hostname="box", prometheus_retention_s=60,
                prefix_filter=("-consul.api", "+consul.api.http.extra", "-consul.box", "+consul.raft", "-consul.raft"))
    http = m.sample("api", "http", labels=("method", "path"))
    extra = m.counter("api", "http", "extra")
    apply = m.counter("raft", "apply")
    leader_gauge = m.gauge("server", "isLeader")  # "consul.box.server.isLeader": a host-name rule
    kept = m.counter("kvs", "apply")
    http.with_labels("GET", "v1_kv_").observe(3.0)
    extra.incr()
    apply.incr()  # "+consul.raft" and "-consul.raft": the same prefix both ways is blocked
    leader_gauge.set(1.0)
    kept.incr()
    clock.now += 10
    doc = m.summary()
    names = {e["Name"] for section in ("Gauges", "Counters", "Samples") for e in doc[section]}
    assert names == {"consul.api.http.extra", "consul.kvs.apply"}
    prom = {f.name for f in _families(m).values()}
    assert "consul_api_http" not in prom and "consul_raft_apply" not in prom
    assert {"consul_kvs_apply", "consul_api_http_extra"} <= prom

    # Without a matching rule filter_default decides; with no rules at all too.
    closed = Metrics(clock=clock, hostname="", prefix_filter=("+consul.raft",), filter_default=False)
    closed.counter("raft", "apply").incr()
    closed.counter("kvs", "apply").incr()
    clock.now += 10
    assert [e["Name"] for e in closed.summary()["Counters"]] == ["consul.raft.apply"]
    assert not Metrics(filter_default=False).allows("consul.raft.apply")


def test_a_new_prefix_filter_applies_to_families_already_declared() -> None:
    clock = Clock()
    m = Metrics(clock=clock, hostname="")
    timer = m.sample("api", "http", labels=("method", "path")).with_labels("GET", "v1_kv_")
    timer.observe(1.0)
    m.set_filter(("-consul.api.http",))
    timer.observe(2.0)  # a handle taken before the reload records nothing now
    clock.now += 10
    assert [e["Count"] for e in m.summary()["Samples"]] == [1]
    m.set_filter(())
    timer.observe(5.0)
    clock.now += 10
    assert [(e["Count"], e["Sum"]) for e in m.summary()["Samples"]] == [(1, 5.0)]


@pytest.mark.parametrize("prometheus_retention_s", [0.0, 60.0])
def test_observe_many_records_what_observing_each_value_records(prometheus_retention_s: float) -> None:
    # A batch recorder (the Raft driver's per-entry timers) must leave every view as one
    # observe per value would: the interval's aggregate, the running totals, the quantile
    # window (wrapping past its cap), the statsd outbox, a new interval, a blocked family.
    values = [float((i * 37) % 101) / 7 for i in range(3000)]
    clocks = [Clock(), Clock()]
    ms = [Metrics(clock=c, prometheus_retention_s=prometheus_retention_s, prefix_filter=("-consul.blocked",))
          for c in clocks]
    for m in ms:
        m.open_outbox()
    one, many = (m.sample("raft", "commitTime") for m in ms)
    blocked_one, blocked_many = (m.sample("blocked", "x") for m in ms)
    for chunk in (values[:5], values[5:2500], [], values[2500:]):
        for v in chunk:
            one.observe(v)
            blocked_one.observe(v)
        many.observe_many(chunk)
        blocked_many.observe_many(chunk)
        a, b = (m.series[("consul.raft.commitTime", ())] for m in ms)
        assert (a.count, a.total, a.window, a.prev_window) == (b.count, b.total, b.window, b.prev_window)
        assert ms[0].summary() == ms[1].summary()
        for c in clocks:
            c.now += 7  # every other chunk lands in a new interval
    assert repr(_samples(ms[0])) == repr(_samples(ms[1]))  # (repr: NaN quantiles of an empty window)
    outs = [[(s.name, v) for s, v in m.take_outbox()] for m in ms]
    assert outs[0] == outs[1] and len(outs[0]) == len(values)
    assert ms[1].series[("consul.blocked.x", ())].count == 0


def test_incr_each_records_what_incrementing_each_time_records() -> None:
    # A counter counted once per batch must leave every view as one `incr` per event would:
    # the interval's aggregate (count, mean, min/max), the running total, the statsd outbox.
    clocks = [Clock(), Clock()]
    ms = [Metrics(clock=c, prometheus_retention_s=60, prefix_filter=("-consul.blocked",)) for c in clocks]
    for m in ms:
        m.open_outbox()
    one, each = (m.counter("rpc", "request") for m in ms)
    blocked_one, blocked_each = (m.counter("blocked", "x") for m in ms)
    for times, value in ((3, 1.0), (0, 1.0), (64, 1.0), (5, 2.5), (1, 0.25)):
        for _ in range(times):
            one.incr(value)
            blocked_one.incr(value)
        each.incr_each(times, value)
        blocked_each.incr_each(times, value)
        a, b = (m.series[("consul.rpc.request", ())] for m in ms)
        assert a.total == b.total
        assert ms[0].summary() == ms[1].summary()
        for c in clocks:
            c.now += 7  # every other step lands in a new interval
    outs = [[(s.name, v) for s, v in m.take_outbox()] for m in ms]
    assert outs[0] == outs[1] and len(outs[0]) == 73
    assert ms[1].series[("consul.blocked.x", ())].total == 0


async def test_batches_record_at_the_end_of_the_loop_iteration_what_each_recording_would() -> None:
    # The per-write timers and counters of the hot paths (SampleBatch, CounterBatch): nothing is
    # recorded inside the iteration, everything by the next one, identical to direct recordings.
    clocks = [Clock(), Clock()]
    ms = [Metrics(clock=c, prometheus_retention_s=60) for c in clocks]
    for m in ms:
        m.open_outbox()
    group = deferred_group()
    timer, counter = SampleBatch(ms[1].sample("kvs", "apply"), group), CounterBatch(ms[1].counter("rpc", "request"), group)
    direct_timer, direct_counter = ms[0].sample("kvs", "apply"), ms[0].counter("rpc", "request")
    for round_ in range(3):
        for i in range(10 * round_ + 1):
            direct_timer.observe(i / 3)
            direct_counter.incr()
            timer.observe(i / 3)
            counter.incr()
        assert ms[1].series[("consul.rpc.request", ())].total < ms[0].series[("consul.rpc.request", ())].total
        await asyncio.sleep(0)  # the next iteration
        assert ms[0].summary() == ms[1].summary()
        # Each metric's statsd lines, in order (a batch's lines come together, not interleaved
        # with another metric's).
        outs = [sorted(((s.name, v) for s, v in m.take_outbox()), key=lambda line: line[0]) for m in ms]
        assert outs[0] == outs[1] and len(outs[0]) == 2 * (10 * round_ + 1)
        for c in clocks:
            c.now += 7


def test_batches_record_at_once_without_a_running_loop() -> None:
    m = Metrics(clock=Clock(), prometheus_retention_s=60)
    timer, counter = SampleBatch(m.sample("kvs", "apply")), CounterBatch(m.counter("rpc", "request"))
    timer.observe(2.0)
    counter.incr()
    assert m.series[("consul.kvs.apply", ())].count == 1
    assert m.series[("consul.rpc.request", ())].total == 1
