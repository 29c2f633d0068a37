"""Config honesty (house rule 9, issue 17 item 1): every key is honoured, inert or refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from proconsul.agent.agent import run_agent
from proconsul.config import ConfigError, honesty, interfaces, load, validate_paths_with_warnings
from proconsul.config.schema import IGNORED, SCHEMA, field_name

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "proconsul"

# The configuration from issue 17: it passed validate and started an open agent.
ISSUE_17 = """
data_dir = "/tmp/x"
acl { enabled = true  default_policy = "deny" }
tls { defaults { verify_incoming = true  cert_file = "/nonexistent.pem" } }
ports { https = 8501 }
http_config { allow_write_http_from = ["10.0.0.0/8"] }
"""


@pytest.fixture(autouse=True)
def _host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interfaces, "hostname", lambda: "testhost")
    monkeypatch.setattr(
        interfaces, "interface_addresses", lambda: [("lo", "127.0.0.1"), ("eth0", "10.1.2.3")]
    )


def _leaves(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, kind in schema.items():
        if isinstance(kind, dict):
            out.extend(_leaves(kind, prefix + key + "."))
        else:
            out.append((prefix + key, kind))
    return out


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_schema_key_is_implemented_inert_or_refused() -> None:
    leaves = dict(_leaves(SCHEMA))
    unlisted, doubled = [], []
    for key, kind in leaves.items():
        if kind == IGNORED:
            continue  # warned about when loaded, or refused when in REFUSED_IGNORED
        homes = [key in honesty.IMPLEMENTED, key in honesty.INERT, key in honesty.REFUSED]
        if sum(homes) == 0:
            unlisted.append(key)
        elif sum(homes) > 1:
            doubled.append(key)
    assert not unlisted, f"keys neither implemented, inert nor refused: {unlisted}"
    assert not doubled, f"keys in more than one list: {doubled}"
    listed = honesty.IMPLEMENTED | honesty.INERT | set(honesty.REFUSED)
    assert not listed - leaves.keys(), f"listed keys not in the schema: {listed - leaves.keys()}"
    for key in honesty.REFUSED_IGNORED:
        assert leaves.get(key) == IGNORED, key


def test_implemented_keys_are_read_outside_config() -> None:
    """An IMPLEMENTED key's runtime field is read somewhere outside config/ (keeps the list honest)."""
    text = "\n".join(
        p.read_text() for p in PACKAGE.rglob("*.py") if "config" not in p.relative_to(PACKAGE).parts[:1]
    )
    exempt = {"raft_protocol"}  # only 3 is accepted (build.py), the protocol proconsul speaks
    leaves = dict(_leaves(SCHEMA))
    missing = []
    for key in sorted(honesty.IMPLEMENTED - exempt):
        name = field_name(key.rsplit(".", 1)[-1], leaves[key])
        if not re.search(r"[\w\]\)]\." + re.escape(name) + r"\b", text):
            missing.append(key)
    assert not missing, f"IMPLEMENTED keys nothing outside config/ reads: {missing}"


def test_issue_17_config_is_refused_naming_file_and_every_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "agent.hcl", ISSUE_17)
    errors, _ = validate_paths_with_warnings([path])
    # ACLs are honoured now (proconsul.acl, docs/ACL.md): no longer refused.
    assert not any(e.startswith(f"{path}: acl.") for e in errors), errors
    for key, reason in (
        # HTTPS and server RPC are honoured; verify_incoming in tls.defaults also reaches gRPC.
        ("tls.defaults.verify_incoming", "also applies to tls.grpc"),
        ("tls.defaults.cert_file", "cannot read /nonexistent.pem"),
        ("ports.https", "no cert_file and key_file"),
    ):
        assert any(e.startswith(f"{path}: {key}:") and reason in e for e in errors), (key, errors)
    with pytest.raises(ConfigError):
        load(["-config-file", path])


def test_agent_start_up_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "agent.hcl", ISSUE_17)
    assert run_agent(["-config-file", path]) == 1
    assert f"{path}: tls.defaults.verify_incoming: tls.defaults.verify_incoming also applies" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        'acl { enabled = false  default_policy = "allow" }',
        "ports { https = -1  grpc_tls = -1 }",
        "ports { https = 0 }",
        "tls { defaults { verify_incoming = false  verify_outgoing = false } }",
        "verify_incoming = false",
        "auto_encrypt { tls = false  allow_tls = false }",
        "http_config { allow_write_http_from = [] }",
        "serf_lan_allowed_cidrs = []",
        # Client verification kept to what proconsul secures (HTTPS, server RPC).
        "tls { defaults { verify_incoming = true } internal_rpc { verify_incoming = false } "
        "grpc { verify_incoming = false } }",
        "tls { defaults { verify_incoming = true } grpc { verify_incoming = false } }",
        "verify_incoming_https = true",
        "verify_incoming = true\nverify_incoming_rpc = false",  # legacy: gRPC is kept off by Consul
        "verify_incoming = true",  # a client agent: no server port to verify on, HTTPS off (warned)
    ],
)
def test_explicitly_disabling_values_are_fine(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "agent.hcl", f'data_dir = "{tmp_path}"\n{text}\n')
    errors, _ = validate_paths_with_warnings([path])
    assert errors == []


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("auto_encrypt { tls = true }", "auto_encrypt"),
        ("audit { enabled = true }", "audit"),
        ('serf_lan_allowed_cidrs = ["10.0.0.0/8"]', "serf_lan_allowed_cidrs"),
        ('addresses { http = "unix:///run/proconsul.sock" }', "addresses.http"),
        ("ports { grpc_tls = 8503 }", "ports.grpc_tls"),
        ("tls { grpc { verify_incoming = true } }", "tls.grpc.verify_incoming"),
        # tls.defaults.verify_incoming reaches gRPC unless it says false (Consul's precedence).
        ("tls { defaults { verify_incoming = true } internal_rpc { verify_incoming = false } }",
         "tls.defaults.verify_incoming"),
        ("tls { internal_rpc { use_auto_cert = true } }", "tls.internal_rpc.use_auto_cert"),
        ("auto_encrypt { allow_tls = true }", "auto_encrypt"),
    ],
)
def test_security_settings_not_honoured_are_refused(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, "agent.hcl", f'data_dir = "{tmp_path}"\n{text}\n')
    errors, _ = validate_paths_with_warnings([path])
    assert any(e.startswith(f"{path}: {key}:") and "refusing to start" in e for e in errors), errors


def test_inert_keys_are_warned_about_naming_file_and_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "agent.hcl",
        f'data_dir = "{tmp_path}"\n'
        'limits { rpc_rate = 10.0 }\ndns_config { use_cache = true }\n',
    )
    errors, warnings = validate_paths_with_warnings([path])
    assert errors == []
    for key in (
        "limits.rpc_rate",
        "dns_config.use_cache",
    ):
        assert (
            f"{path}: {key}: config key {key} is accepted but not implemented by proconsul: it has no effect"
            in warnings
        )
    # Start-up carries the same warnings (run_agent logs every LoadResult warning).
    result = load(["-config-file", path])
    assert any("limits.rpc_rate" in w for w in result.warnings)


def test_prefix_filter_rules_consul_skips_are_warned_about_naming_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "telemetry.hcl", f'data_dir = "{tmp_path}"\n'
                  'telemetry { prefix_filter = ["+consul.raft", "", "nix", "-consul.api"] filter_default = false }\n')
    errors, warnings = validate_paths_with_warnings([path])
    assert errors == []
    assert f"{path}: telemetry.prefix_filter: Cannot have empty filter rule in prefix_filter" in warnings
    assert f"{path}: telemetry.prefix_filter: Filter rule must begin with either '+' or '-': \"nix\"" in warnings
    assert not any("not implemented" in w for w in warnings), warnings  # honoured, not inert
    cfg = load(["-config-file", path]).config
    assert cfg.telemetry.prefix_filter == ("+consul.raft", "", "nix", "-consul.api")
    assert cfg.telemetry.filter_default is False


def test_statsd_sinks_are_honoured_and_their_addresses_checked(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.hcl", f'data_dir = "{tmp_path}"\ntelemetry {{ statsd_address = "127.0.0.1:8125"\n'
                  'dogstatsd_addr = "[::1]:8125" dogstatsd_tags = ["env:test"] statsite_address = "s:8125" }\n')
    errors, warnings = validate_paths_with_warnings([good])
    assert errors == [] and not any("telemetry" in w for w in warnings), (errors, warnings)
    bad = _write(tmp_path, "bad.hcl", f'data_dir = "{tmp_path}"\ntelemetry {{ statsd_address = "127.0.0.1"\n'
                 'dogstatsd_addr = "localhost:99999" statsite_address = "x" }\n')
    errors, _ = validate_paths_with_warnings([bad])
    assert any(e.startswith(f"{bad}: telemetry.statsd_address:") and "host:port" in e for e in errors), errors
    assert any(e.startswith(f"{bad}: telemetry.dogstatsd_addr:") and "port" in e for e in errors), errors
    assert any(e.startswith(f"{bad}: telemetry.statsite_address:") for e in errors), errors


def test_inert_keys_at_their_default_and_dev_mode_layer_are_quiet(tmp_path: Path) -> None:
    path = _write(tmp_path, "agent.hcl", f'data_dir = "{tmp_path}"\nhttp_config {{ max_header_bytes = 0 }}\n')
    errors, warnings = validate_paths_with_warnings([path])
    assert errors == [] and not any("not implemented" in w for w in warnings)
    # Set to a limit proconsul does not enforce, it refuses to start, naming file and key.
    limited = _write(tmp_path, "limit.hcl", f'data_dir = "{tmp_path}"\nhttp_config {{ max_header_bytes = 4096 }}\n')
    errors, _ = validate_paths_with_warnings([limited])
    assert any(e.startswith(f"{limited}: http_config.max_header_bytes:") and "refusing to start" in e for e in errors), errors
    result = load(["-dev"])
    assert not any("not implemented" in w for w in result.warnings), result.warnings


def test_write_networks_must_be_cidrs(tmp_path: Path) -> None:
    path = _write(tmp_path, "agent.hcl", f'data_dir = "{tmp_path}"\nhttp_config {{ allow_write_http_from = ["10.0.0.0/33"] }}\n')
    errors, _ = validate_paths_with_warnings([path])
    assert any(e.startswith(f"{path}: http_config.allow_write_http_from:") and "invalid CIDR" in e for e in errors), errors


def test_tls_precedence_as_consul_folds_legacy_keys(tmp_path: Path) -> None:
    """Legacy keys land where Consul puts them; a section's own value beats tls.defaults."""
    path = _write(
        tmp_path,
        "agent.hcl",
        f'data_dir = "{tmp_path}"\nverify_incoming = true\nverify_incoming_rpc = false\n'
        'verify_incoming_https = false\ntls_min_version = "tls13"\n'
        'tls { defaults { tls_min_version = "TLSv1_2" } }\n',
    )
    cfg = load(["-config-file", path]).config
    # tls_min_version: the new key wins over the legacy one.
    assert cfg.tls.defaults.tls_min_version == "TLSv1_2"
    assert cfg.tls.defaults.verify_incoming is True
    assert cfg.tls.internal_rpc.verify_incoming is False  # verify_incoming_rpc
    assert cfg.tls.https.verify_incoming is False  # verify_incoming_https beats the default
    assert cfg.tls.grpc.verify_incoming is False  # legacy verify_incoming never reaches gRPC


def test_tls_material_without_https_is_reported_unused(tmp_path: Path) -> None:
    cert = _write(tmp_path, "c.pem", "not a certificate")
    path = _write(tmp_path, "agent.hcl", f'data_dir = "{tmp_path}"\ncert_file = "{cert}"\n')
    errors, warnings = validate_paths_with_warnings([path])
    assert any(w.startswith(f"{path}: cert_file:") and "ports.https is not set" in w for w in warnings), warnings
    # ... and a broken file is still an error, named by the key as written.
    assert any(e.startswith(f"{path}: cert_file:") and "holds no PEM certificate" in e for e in errors), errors


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("tls { grpc { verify_outgoing = false } }", "tls.grpc.verify_outgoing", "not valid in the tls.grpc stanza"),
        ("tls { defaults { verify_server_hostname = true } }", "tls.defaults.verify_server_hostname",
         "only valid in the tls.internal_rpc stanza"),
        ('tls { https { tls_min_version = "TLSv1.2" } }', "tls.https.tls_min_version", "unknown TLS version"),
        ('tls { defaults { tls_min_version = "TLSv1_3"  tls_cipher_suites = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" } }',
         "tls.defaults.tls_cipher_suites", "TLS 1.3 cipher suites are not configurable"),
        ('tls_cipher_suites = "TLS_RSA_WITH_RC4_128_SHA"', "tls_cipher_suites", "unsupported cipher suite"),
    ],
)  # fmt: skip
def test_tls_stanza_rules_as_consul(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = _write(tmp_path, "agent.hcl", f'data_dir = "{tmp_path}"\n{text}\n')
    errors, _ = validate_paths_with_warnings([path])
    assert any(e.startswith(f"{path}: {key}:") and reason in e for e in errors), errors
