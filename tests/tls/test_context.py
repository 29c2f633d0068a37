"""tls/context.py: the HTTPS server context from Consul's settings, and each setting's refusal."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import pytest
from proconsul.tls import certs
from proconsul.tls.context import TLSSettingError, min_version, openssl_ciphers, server_context


@dataclass
class Settings:
    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_incoming: bool = False
    tls_min_version: str = "TLSv1_2"
    tls_cipher_suites: str = ""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ctx")
    ca = certs.create_ca()
    server = certs.create_cert(certs.cert_spec("server", "dc1", "consul"), ca.certificate, ca.private_key)
    other = certs.create_cert(certs.cert_spec("cli", "dc1", "consul"), ca.certificate, ca.private_key)
    out = {}
    for name, text in (
        ("ca", ca.certificate),
        ("cert", server.certificate),
        ("key", server.private_key),
        ("other_key", other.private_key),
    ):
        (root / f"{name}.pem").write_text(text)
        out[name] = str(root / f"{name}.pem")
    return out


def test_min_versions_take_consul_and_legacy_names() -> None:
    assert min_version("TLSv1_3") is ssl.TLSVersion.TLSv1_3
    assert min_version("tls12") is ssl.TLSVersion.TLSv1_2
    with pytest.raises(TLSSettingError) as err:
        min_version("TLS1.2")
    assert err.value.field == "tls_min_version"


def test_cipher_suites_map_go_names_and_refuse_unknown_ones() -> None:
    assert openssl_ciphers("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384") == (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
    )
    assert openssl_ciphers("") == ""
    with pytest.raises(TLSSettingError, match="TLS_RSA_WITH_RC4_128_SHA") as err:
        openssl_ciphers("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_RC4_128_SHA")
    assert err.value.field == "tls_cipher_suites"


def test_context_honours_version_ciphers_and_client_verification(files: dict[str, str]) -> None:
    ctx = server_context(
        Settings(
            ca_file=files["ca"], cert_file=files["cert"], key_file=files["key"], verify_incoming=True,
            tls_min_version="TLSv1_3",
            tls_cipher_suites="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        )
    )  # fmt: skip
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES128-GCM-SHA256"]
    plain = server_context(Settings(cert_file=files["cert"], key_file=files["key"]))
    assert plain.verify_mode is ssl.CERT_NONE


@pytest.mark.parametrize(
    ("settings", "field", "text"),
    [
        ({"cert_file": ""}, "cert_file", "required"),
        ({"cert_file": "/nonexistent/c.pem"}, "cert_file", "cannot read /nonexistent/c.pem"),
        ({"key_file": "#ca#"}, "key_file", "no unencrypted PEM private key"),
        ({"key_file": "#other_key#"}, "key_file", "is not the key of"),
        ({"cert_file": "#key#"}, "cert_file", "holds no PEM certificate"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "cannot read"),
        ({"ca_path": "/nonexistent/dir"}, "ca_path", "not a readable directory"),
        ({"verify_incoming": True}, "verify_incoming", "no ca_file or ca_path"),
    ],
)
def test_each_bad_setting_is_named(files: dict[str, str], settings: dict[str, object], field: str, text: str) -> None:
    values: dict[str, object] = {"cert_file": files["cert"], "key_file": files["key"]}
    for key, value in settings.items():
        values[key] = files[value[1:-1]] if isinstance(value, str) and value.startswith("#") else value
    with pytest.raises(TLSSettingError, match=text) as err:
        server_context(Settings(**values))  # type: ignore[arg-type]
    assert err.value.field == field
