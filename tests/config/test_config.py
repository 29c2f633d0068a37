"""Tests for proconsul.config: Go durations, agent flags, file loading, merge rules, validation."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proconsul import config
from proconsul.config import ConfigError, RuntimeConfig, diff, interfaces, load
from proconsul.durations import format_duration, parse_duration
from proconsul.flags import FlagError, HelpRequested


@pytest.fixture(autouse=True)
def _host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed host: hostname "testhost", one private IPv4 (so bind 0.0.0.0 can advertise)."""
    monkeypatch.setattr(interfaces, "hostname", lambda: "testhost")
    monkeypatch.setattr(interfaces, "interface_addresses", lambda: [("lo", "127.0.0.1"), ("eth0", "10.1.2.3")])


def write(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def base_args(tmp_path: Path) -> list[str]:
    return ["-data-dir", str(tmp_path / "data")]


def errors_of(argv: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(argv)
    return info.value.errors


# ---------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("1m30s", 90.0),
        ("10us", 10e-6),
        ("10\u00b5s", 10e-6),
        ("10\u03bcs", 10e-6),
        ("5ns", 5e-9),
        ("-1s", -1.0),
        ("+2s", 2.0),
        ("0", 0.0),
        ("-0", 0.0),
        (".5s", 0.5),
        ("1h2m3s4ms", 3723.004),
        ("72h", 259200.0),
    ],
)
def test_parse_duration_accepts_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", ["", "1", "s", "x", "1x", ".s", "1h1", "-", "1.5.5s", "1 s", "ten seconds"])
def test_parse_duration_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_numbers_are_nanoseconds() -> None:
    assert parse_duration(1_500_000_000) == 1.5
    assert parse_duration(0) == 0.0
    with pytest.raises(ValueError):
        parse_duration(True)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (10, "10s"),
        (90, "1m30s"),
        (1.5, "1.5s"),
        (3600, "1h0m0s"),
        (120, "2m0s"),
        (0.0015, "1.5ms"),
        (0.2, "200ms"),
        (1e-7, "100ns"),
        (2e-6, "2\u00b5s"),
        (-2.5, "-2.5s"),
        (86400 * 3, "72h0m0s"),
    ],
)
def test_format_duration_matches_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_then_parse_round_trips(ns: int) -> None:
    assert round(parse_duration(format_duration(ns / 1e9)) * 1e9) == ns


# ---------------------------------------------------------------------------------------------
# Flags


def test_flags_both_dash_styles_and_separate_values(tmp_path: Path) -> None:
    cfg = load(["--data-dir", str(tmp_path), "-node=n1", "--datacenter=EAST", "-http-port", "9500"]).config
    assert cfg.data_dir == str(tmp_path)
    assert cfg.node_name == "n1"
    assert cfg.datacenter == "east"  # lower-cased, as Consul
    assert cfg.ports.http == 9500


def test_flag_booleans(tmp_path: Path) -> None:
    on = load([*base_args(tmp_path), "-server", "-bind=10.0.0.1"]).config
    off = load([*base_args(tmp_path), "-server=false", "-bind=10.0.0.1"]).config
    assert on.server and not off.server


def test_repeatable_flags_keep_order(tmp_path: Path) -> None:
    cfg = load(
        [
            *base_args(tmp_path),
            "-retry-join",
            "a",
            "-retry-join=b",
            "-recursor",
            "8.8.8.8",
            "-node-meta",
            "rack:r1",
        ]
    ).config
    assert cfg.retry_join == ("a", "b")
    assert cfg.recursors == ("8.8.8.8",)
    assert cfg.node_meta == {"rack": "r1"}


def test_dc_alias_and_duration_flags(tmp_path: Path) -> None:
    cfg = load(
        [*base_args(tmp_path), "-dc", "west", "-retry-interval", "1m30s", "-default-query-time=10s"]
    ).config
    assert cfg.datacenter == "west"
    assert cfg.retry_interval_s == 90.0
    assert cfg.default_query_time_s == 10.0


@pytest.mark.parametrize(
    "argv",
    [["-http-port", "abc"], ["-retry-interval", "soon"], ["-nope"], ["-server", "extra"], ["-node"]],
)
def test_flag_syntax_errors_raise_flag_error(argv: list[str]) -> None:
    with pytest.raises(FlagError):
        load(argv)


def test_help_flag() -> None:
    with pytest.raises(HelpRequested):
        load(["-h"])


def test_flagset_declares_consul_agent_flags() -> None:
    names = set(config.agent_flagset().names())
    for name in [
        "dev",
        "server",
        "bootstrap",
        "bootstrap-expect",
        "data-dir",
        "config-file",
        "config-dir",
        "config-format",
        "bind",
        "advertise",
        "advertise-wan",
        "client",
        "node",
        "node-id",
        "datacenter",
        "dc",
        "domain",
        "log-level",
        "log-json",
        "log-file",
        "syslog",
        "pid-file",
        "ui",
        "join",
        "retry-join",
        "join-wan",
        "retry-join-wan",
        "retry-interval",
        "retry-max",
        "rejoin",
        "encrypt",
        "http-port",
        "dns-port",
        "server-port",
        "serf-lan-port",
        "serf-wan-port",
        "disable-host-node-id",
        "hcl",
        "node-meta",
        "recursor",
        "enable-script-checks",
        "enable-local-script-checks",
        "alt-domain",
        "default-query-time",
    ]:
        assert name in names, name


# ---------------------------------------------------------------------------------------------
# Files and directories


def test_json_and_hcl_files(tmp_path: Path) -> None:
    j = write(tmp_path / "a.json", {"data_dir": "/var/lib/x", "node_name": "j", "ports": {"dns": 53}})
    h = write(
        tmp_path / "b.hcl", 'node_name = "h"\nretry_interval = "5s"\nlimits { kv_max_value_size = 1024 }\n'
    )
    cfg = load(["-config-file", str(j), "-config-file", str(h), "-bind", "10.0.0.1"]).config
    assert cfg.data_dir == "/var/lib/x"
    assert cfg.node_name == "h"
    assert cfg.ports.dns == 53
    assert cfg.retry_interval_s == 5.0
    assert cfg.limits.kv_max_value_size == 1024
    assert cfg.limits.txn_max_req_len == 524288
    assert cfg.sources == (str(j), str(h))


def test_dir_lexical_order_skips_other_files_and_subdirs(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    write(d / "b.json", {"node_name": "from-b"})
    write(d / "a.hcl", 'node_name = "from-a"\ndata_dir = "/d"')
    for name in ("9.json", "B.json", "10.json"):
        write(d / name, {"retry_join": [name]})
    write(d / "c.txt", "not config")
    write(d / "sub" / "z.json", {"node_name": "from-sub"})
    result = load(["-config-dir", str(d)])
    assert result.config.node_name == "from-b"  # a.hcl then b.json: b wins
    # Byte-wise lexical order, as Go's sort of file names: digits < upper case < lower case.
    order = ["10.json", "9.json", "B.json", "a.hcl", "b.json"]
    assert result.config.sources == tuple(str(d / n) for n in order)
    assert result.config.retry_join == ("10.json", "9.json", "B.json")
    assert any("c.txt" in w and "skipping" in w for w in result.warnings)


def test_config_format_parses_every_file_in_dir(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    write(d / "main.conf", {"data_dir": "/d", "node_name": "conf"})
    cfg = load(["-config-dir", str(d), "-config-format", "json"]).config
    assert cfg.node_name == "conf"
    assert errors_of(["-config-dir", str(d), "-config-format", "yaml"])


def test_files_and_dirs_interleave_in_command_line_order(tmp_path: Path) -> None:
    first = write(tmp_path / "first.json", {"data_dir": "/d", "node_name": "first", "retry_join": ["1"]})
    d = tmp_path / "dir"
    write(d / "x.json", {"node_name": "dir", "retry_join": ["2"]})
    last = write(tmp_path / "last.json", {"retry_join": ["3"]})
    cfg = load(["-config-file", str(first), "-config-dir", str(d), "-config-file", str(last)]).config
    assert cfg.node_name == "dir"
    assert cfg.retry_join == ("1", "2", "3")
    # Reversed order on the command line reverses the merge.
    cfg = load(["-config-dir", str(d), "-config-file", str(first)]).config
    assert cfg.node_name == "first"
    assert cfg.retry_join == ("2", "1")


def test_missing_file_and_parse_errors_are_reported(tmp_path: Path) -> None:
    bad_json = write(tmp_path / "bad.json", "{not json")
    bad_hcl = write(tmp_path / "bad.hcl", "a = = =")
    errs = errors_of(
        [
            "-config-file",
            str(tmp_path / "missing.hcl"),
            "-config-file",
            str(bad_json),
            "-config-file",
            str(bad_hcl),
        ]
    )
    assert any(str(tmp_path / "missing.hcl") in e for e in errs)
    assert any(str(bad_json) in e and "JSON" in e for e in errs)
    assert any(str(bad_hcl) in e and "HCL" in e for e in errs)


def test_empty_file_is_skipped(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.json", "")
    assert load([*base_args(tmp_path), "-config-file", str(empty)]).config.node_name == "testhost"


# ---------------------------------------------------------------------------------------------
# Merge rules


def test_merge_scalar_list_nested_and_map_rules(tmp_path: Path) -> None:
    one = write(
        tmp_path / "1.json",
        {
            "data_dir": "/d",
            "log_level": "warn",
            "retry_join": ["a"],
            "ports": {"http": 1111, "dns": 2222},
            "node_meta": {"a": "1", "b": "2"},
            "dns_config": {"service_ttl": {"*": "5s"}},
        },
    )
    two = write(
        tmp_path / "2.hcl",
        'log_level = "error"\nretry_join = ["b"]\nports { dns = 3333 }\nnode_meta { c = "3" }\n',
    )
    three = write(tmp_path / "3.json", {"node_meta": {}})
    cfg = load(["-config-file", str(one), "-config-file", str(two), "-config-file", str(three)]).config
    assert cfg.log_level == "ERROR"  # scalar: later wins
    assert cfg.retry_join == ("a", "b")  # list: appended
    assert (cfg.ports.http, cfg.ports.dns) == (1111, 3333)  # nested: field by field
    assert cfg.node_meta == {"c": "3"}  # map: replaced whole; the empty one changes nothing
    assert cfg.dns_config.service_ttl_s == {"*": 5.0}


def test_flags_win_over_files_and_hcl_wins_over_flags(tmp_path: Path) -> None:
    f = write(
        tmp_path / "f.json",
        {"data_dir": "/d", "node_name": "file", "retry_join": ["file"], "ports": {"http": 1}},
    )
    cfg = load(
        [
            "-config-file",
            str(f),
            "-node",
            "flag",
            "-retry-join",
            "flag",
            "-hcl",
            "ports { http = 7 }",
            "-http-port",
            "5",
        ]
    ).config
    assert cfg.node_name == "flag"
    assert cfg.retry_join == ("flag", "file")  # flag lists come first, as Consul
    assert cfg.ports.http == 7


def test_service_and_check_singular_forms_are_normalized(tmp_path: Path) -> None:
    h = write(
        tmp_path / "s.hcl",
        'data_dir = "/d"\n'
        'service { name = "a" }\nservice { name = "b" }\n'
        'services = [{ name = "c" }]\n'
        'check { name = "disk", ttl = "30s" }\n',
    )
    j = write(tmp_path / "t.json", {"service": {"name": "d"}, "checks": [{"name": "mem", "ttl": "10s"}]})
    cfg = load(["-config-file", str(h), "-config-file", str(j)]).config
    assert [s["name"] for s in cfg.services] == ["c", "a", "b", "d"]
    assert [c["name"] for c in cfg.checks] == ["disk", "mem"]


# ---------------------------------------------------------------------------------------------
# Errors


def test_unknown_keys_name_file_and_key(tmp_path: Path) -> None:
    f = write(tmp_path / "web.hcl", 'data_dir = "/d"\nbogus = 1\nports { htp = 1 }\n')
    errs = errors_of(["-config-file", str(f)])
    assert f"{f}: bogus: invalid config key bogus" in errs
    assert f"{f}: ports.htp: invalid config key ports.htp" in errs


def test_type_errors_and_every_error_at_once(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.json",
        {
            "data_dir": "/d",
            "server": "true",
            "retry_interval": 30,
            "ports": {"http": "abc"},
            "retry_join": "x",
        },
    )
    b = write(tmp_path / "b.hcl", 'bootstrap_expect = "three"\nnode_meta { n = 1 }\n')
    errs = errors_of(["-config-file", str(a), "-config-file", str(b)])
    assert f'{a}: server: expected a boolean, got "true"' in errs
    assert any(e.startswith(f"{a}: retry_interval: expected a duration") for e in errs)
    assert f'{a}: ports.http: expected an integer, got "abc"' in errs
    assert any(e.startswith(f"{a}: retry_join: expected a list") for e in errs)
    assert any(e.startswith(f"{b}: bootstrap_expect: expected an integer") for e in errs)
    assert any(e.startswith(f"{b}: node_meta:") for e in errs)
    assert len(errs) == 6


def test_semantic_errors_name_the_source_and_are_all_reported(tmp_path: Path) -> None:
    f = write(
        tmp_path / "s.json",
        {"datacenter": "bad dc", "bootstrap": True, "bootstrap_expect": 3, "ports": {"http": 70000}},
    )
    errs = errors_of(["-config-file", str(f), "-node-id", "not-a-uuid"])
    assert any(e.startswith(f"{f}: datacenter:") for e in errs)
    assert any(e.startswith(f"{f}: bootstrap:") and "requires 'server = true'" in e for e in errs)
    assert any(e.startswith(f"{f}: bootstrap_expect:") and "mutually exclusive" in e for e in errs)
    assert f"{f}: ports.http: invalid port: 70000" in errs
    assert any(e.startswith("command line: -node-id:") for e in errs)
    assert any("data_dir cannot be empty" in e for e in errs)


def test_command_line_errors_name_the_flag(tmp_path: Path) -> None:
    errs = errors_of([*base_args(tmp_path), "-http-port", "70000", "-bootstrap-expect", "-1", "-server"])
    assert "command line: -http-port: invalid port: 70000" in errs
    assert any(e.startswith("command line: -bootstrap-expect:") for e in errs)


def test_service_definitions_are_validated_with_structs(tmp_path: Path) -> None:
    pytest.importorskip("proconsul.structs")
    f = write(
        tmp_path / "svc.json", {"data_dir": "/d", "services": [{"name": "ok"}, {"name": "web", "port": "x"}]}
    )
    errs = errors_of(["-config-file", str(f)])
    assert any(e.startswith(f"{f}: services[1].port:") for e in errs)


def test_validate_paths_reports_every_error(tmp_path: Path) -> None:
    good = write(tmp_path / "ok" / "a.hcl", 'data_dir = "/d"\nbind_addr = "10.0.0.1"\n')
    assert config.validate_paths([str(good.parent)]) == []
    bad = write(tmp_path / "bad" / "a.hcl", 'bind_addr = "10.0.0.1"\nbogus = true\n')
    errs = config.validate_paths([str(bad.parent)])
    assert any("bogus" in e for e in errs)
    assert any("data_dir cannot be empty" in e for e in errs)


# ---------------------------------------------------------------------------------------------
# Defaults, dev mode, roles


def test_defaults(tmp_path: Path) -> None:
    cfg = load(base_args(tmp_path)).config
    assert cfg.datacenter == "dc1" and cfg.domain == "consul."
    assert cfg.node_name == "testhost" and cfg.node_id is None
    assert cfg.client_addr == ("127.0.0.1",)
    assert cfg.advertise_addr == "10.1.2.3"  # the single private IPv4, bind being 0.0.0.0
    assert (cfg.ports.http, cfg.ports.dns, cfg.ports.server, cfg.ports.serf_lan, cfg.ports.serf_wan) == (
        8500, 8600, 8300, 8301, 8302,
    )  # fmt: skip
    assert cfg.default_query_time_s == 300.0 and cfg.max_query_time_s == 600.0
    assert cfg.limits.kv_max_value_size == 524288
    assert cfg.session_ttl_min_s == 10.0 and cfg.check_update_interval_s == 300.0
    assert cfg.log_level == "INFO" and cfg.syslog_facility == "LOCAL0"
    assert not cfg.dev and not cfg.ui_enabled


def test_dev_mode(tmp_path: Path) -> None:
    cfg = load(["-dev"]).config
    assert cfg.dev and cfg.server and cfg.bootstrap
    assert cfg.data_dir is None
    assert cfg.bind_addr == "127.0.0.1" and cfg.advertise_addr == "127.0.0.1"
    assert cfg.client_addr == ("127.0.0.1",)
    assert cfg.ui_enabled
    assert cfg.log_level == "DEBUG"
    assert cfg.node_name == "testhost"
    assert cfg.ports.grpc == 8502
    assert cfg.performance.raft_multiplier == 1
    # Dev mode defaults are still overridable.
    assert load(["-dev", "-log-level", "info"]).config.log_level == "INFO"
    assert any("not allowed in dev mode" in e for e in errors_of(["-dev", "-bootstrap-expect", "3"]))


def test_data_dir_required_without_dev() -> None:
    assert any("data_dir cannot be empty" in e for e in errors_of(["-bind", "10.0.0.1"]))


def test_leave_defaults_depend_on_role(tmp_path: Path) -> None:
    client = load(base_args(tmp_path)).config
    server = load([*base_args(tmp_path), "-server"]).config
    assert client.leave_on_terminate and not client.skip_leave_on_interrupt
    assert not server.leave_on_terminate and server.skip_leave_on_interrupt
    explicit = load([*base_args(tmp_path), "-server", "-hcl", "leave_on_terminate = true"]).config
    assert explicit.leave_on_terminate


def test_bootstrap_expect_one_means_bootstrap(tmp_path: Path) -> None:
    result = load([*base_args(tmp_path), "-server", "-bootstrap-expect", "1"])
    assert result.config.bootstrap and result.config.bootstrap_expect == 0
    assert any("BootstrapExpect is set to 1" in w for w in result.warnings)


def test_advertise_detection_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interfaces, "interface_addresses", lambda: [("a", "10.0.0.1"), ("b", "192.168.1.1")])
    assert any("Multiple private IPv4" in e for e in errors_of(base_args(tmp_path)))
    assert load([*base_args(tmp_path), "-advertise", "10.0.0.1"]).config.advertise_addr == "10.0.0.1"
    monkeypatch.setattr(interfaces, "interface_addresses", lambda: [("lo", "127.0.0.1")])
    assert any("No private IPv4" in e for e in errors_of(base_args(tmp_path)))


def test_addresses_templates_and_client_lists(tmp_path: Path) -> None:
    cfg = load(
        [*base_args(tmp_path), "-bind", '{{ GetInterfaceIP "eth0" }}', "-client", "127.0.0.1 10.1.2.3",
         "-hcl", 'addresses { http = "[::1] 127.0.0.1" }']
    ).config  # fmt: skip
    assert cfg.bind_addr == "10.1.2.3"
    assert cfg.client_addr == ("127.0.0.1", "10.1.2.3")
    assert cfg.addresses.http == ("::1", "127.0.0.1")
    # The HTTP server listens on TCP only: a unix socket address is refused (config honesty).
    errs = errors_of([*base_args(tmp_path), "-hcl", 'addresses { http = "unix:///run/p.sock 127.0.0.1" }'])
    assert any(e.startswith("command line: -hcl[0]: addresses.http:") and "refusing to start" in e for e in errs)
    errs = errors_of([*base_args(tmp_path), "-bind", "{{ GetAllInterfaces | attr }}"])
    assert any(e.startswith("command line: -bind:") for e in errs)


def test_legacy_and_ignored_keys_warn(tmp_path: Path) -> None:
    f = write(
        tmp_path / "old.json",
        {"data_dir": "/d", "ui": True, "acl": {"tokens": {"master": "m"}}, "connect": {"enabled": True}},
    )
    result = load(["-config-file", str(f)])
    assert result.config.ui_enabled
    assert result.config.acl.tokens.initial_management == "m"
    assert any("ui is deprecated" in w for w in result.warnings)
    assert any("connect is not supported" in w for w in result.warnings)


def test_enable_local_script_checks_follows_enable_script_checks(tmp_path: Path) -> None:
    assert load([*base_args(tmp_path), "-enable-script-checks"]).config.enable_local_script_checks
    assert not load(base_args(tmp_path)).config.enable_local_script_checks


def test_every_schema_key_has_a_runtime_field() -> None:
    def check(schema: dict[str, Any], cls: type) -> None:
        names = {f.name: f for f in fields(cls)}
        defaults = cls()
        for key, kind in schema.items():
            if kind == config.IGNORED:
                continue
            name = config.field_name(key, kind)
            assert name in names, f"{cls.__name__}.{name}"
            if isinstance(kind, dict):
                check(kind, type(getattr(defaults, name)))

    check(config.SCHEMA, RuntimeConfig)


# ---------------------------------------------------------------------------------------------
# Reload diff


def test_diff_splits_reloadable_from_restart(tmp_path: Path) -> None:
    old = load([*base_args(tmp_path), "-hcl", 'acl { tokens { agent = "a" } }']).config
    new = load(
        [*base_args(tmp_path), "-log-level", "debug", "-http-port", "9", "-node-meta", "k:v",
         "-hcl", 'acl { down_policy = "deny"\ntokens { agent = "b" } }', "-hcl", 'service { name = "web" }']
    ).config  # fmt: skip
    reloadable, restart = diff(old, new)
    assert reloadable == ["log_level", "services", "node_meta", "acl.tokens"]
    assert restart == ["ports.http", "acl.down_policy"]
    assert diff(old, old) == ([], [])
