"""ACL configuration: honoured (no longer refused), legacy names land in `acl.*`, inert ACL keys warn."""

from __future__ import annotations

from pathlib import Path

from proconsul.config import load
from proconsul.config.load import validate_paths_with_warnings


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.hcl"
    path.write_text(f'data_dir = "{tmp_path}"\nbind_addr = "127.0.0.1"\n{text}\n')
    return str(path)


def test_acls_enabled_load_with_consuls_legacy_names(tmp_path: Path) -> None:
    path = _write(tmp_path, 'acl_master_token = "m1"\nacl_agent_master_token = "r1"\nacl_token = "d1"\n'
                            'acl_agent_token = "a1"\nacl_default_policy = "deny"\nacl_down_policy = "allow"\n'
                            'acl_ttl = "5s"\nacl { enabled = true  enable_key_list_policy = true }')
    result = load(["-config-file", path])
    acl = result.config.acl
    assert acl.enabled and acl.default_policy == "deny" and acl.down_policy == "allow"
    assert acl.token_ttl_s == 5.0 and acl.enable_key_list_policy
    assert (acl.tokens.initial_management, acl.tokens.agent_recovery, acl.tokens.default, acl.tokens.agent) == (
        "m1", "r1", "d1", "a1")
    assert any("acl_master_token is deprecated" in w for w in result.warnings)


def test_acl_tokens_master_and_agent_master_are_renamed(tmp_path: Path) -> None:
    path = _write(tmp_path, 'acl { enabled = true\n tokens { master = "m2"  agent_master = "r2" } }')
    tokens = load(["-config-file", path]).config.acl.tokens
    assert (tokens.initial_management, tokens.agent_recovery) == ("m2", "r2")


def test_every_acl_key_is_honoured_and_replication_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, 'acl { enabled = true  default_policy = "deny"  policy_ttl = "1m"  role_ttl = "1m" '
                            'tokens { dns = "d" } }')
    errors, warnings = validate_paths_with_warnings([path])
    assert errors == []
    assert not any(w.split(": ")[1].startswith("acl.") for w in warnings if ": " in w), warnings
    # Replication between datacenters is not built: turning it on refuses, naming file and key.
    for setting, key in (("enable_token_replication = true", "acl.enable_token_replication"),
                         ('tokens { replication = "r" }', "acl.tokens.replication")):
        bad = _write(tmp_path, f"acl {{ enabled = true  {setting} }}")
        errors, _ = validate_paths_with_warnings([bad])
        assert any(e.startswith(f"{bad}: {key}:") and "refusing to start" in e for e in errors), errors
    # Off (the default) is fine.
    ok = _write(tmp_path, "acl { enabled = true  enable_token_replication = false }")
    assert validate_paths_with_warnings([ok])[0] == []
