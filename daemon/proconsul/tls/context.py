"""The SSL context an agent listener serves with, built from one TLS settings section.

Owns turning Consul's TLS settings (cert_file, key_file, ca_file, ca_path, verify_incoming,
tls_min_version, tls_cipher_suites) into an `ssl.SSLContext`, and every check on them: a file that
is missing, unreadable or not PEM, a key that does not match its certificate, an unknown TLS
version or cipher suite, client verification without a CA. Each problem is a `TLSSettingError`
naming the setting (and the path), so config validation and start-up report the key the operator
wrote. The settings arrive as any object with those attributes (`TLSSettings`): the config model
lives in a higher layer.
"""

from __future__ import annotations

import os
import ssl
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["CIPHER_SUITES", "MIN_VERSIONS", "TLSSettingError", "TLSSettings", "check_files", "min_version",
           "openssl_ciphers", "server_context"]  # fmt: skip


class TLSSettings(Protocol):
    ca_file: str
    ca_path: str
    cert_file: str
    key_file: str
    verify_incoming: bool
    tls_min_version: str
    tls_cipher_suites: str


class TLSSettingError(ValueError):
    """A TLS setting cannot be honoured; `field` is the setting's name (e.g. "cert_file")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# Consul's names, and the legacy ones it still maps (tls12 -> TLSv1_2).
MIN_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
    "TLS_AUTO": ssl.TLSVersion.TLSv1_2,  # Consul's "unset": its default minimum
    "tls10": ssl.TLSVersion.TLSv1,
    "tls11": ssl.TLSVersion.TLSv1_1,
    "tls12": ssl.TLSVersion.TLSv1_2,
    "tls13": ssl.TLSVersion.TLSv1_3,
}

# The Go crypto/tls names Consul accepts in tls_cipher_suites -> OpenSSL's names. They only
# govern TLS 1.2 and below: neither Go nor OpenSSL's Python binding lets TLS 1.3 suites be chosen.
CIPHER_SUITES: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
}


def min_version(value: str) -> ssl.TLSVersion:
    if value not in MIN_VERSIONS:
        raise TLSSettingError(
            "tls_min_version",
            f"tls_min_version: unknown TLS version {value!r}; use one of TLSv1_0, TLSv1_1, TLSv1_2, TLSv1_3",
        )
    return MIN_VERSIONS[value]


def openssl_ciphers(value: str) -> str:
    """The OpenSSL cipher list for Consul's comma-separated Go names; "" keeps the library's."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in CIPHER_SUITES]
    if unknown:
        raise TLSSettingError(
            "tls_cipher_suites", f"tls_cipher_suites: unsupported cipher suite(s) {', '.join(unknown)}"
        )
    return ":".join(dict.fromkeys(CIPHER_SUITES[name] for name in names))


def _read(field: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSSettingError(field, f"{field}: cannot read {path}: {exc.strerror or exc}") from exc


def _certificate(field: str, path: str) -> x509.Certificate:
    data = _read(field, path)  # a TLSSettingError of its own; it is a ValueError, so read first
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise TLSSettingError(field, f"{field}: {path} holds no PEM certificate") from exc


def _check_pair(cert_file: str, key_file: str) -> None:
    cert = _certificate("cert_file", cert_file)
    key_pem = _read("key_file", key_file)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSSettingError(
            "key_file", f"key_file: {key_file} holds no unencrypted PEM private key"
        ) from exc
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        raise TLSSettingError("key_file", f"key_file: {key_file} is not the key of cert_file {cert_file}")


def check_files(settings: TLSSettings) -> None:
    """Every file setting that is set names a readable PEM file (a directory for ca_path), and a
    key matches its certificate; raises TLSSettingError naming the first that does not."""
    if settings.cert_file and settings.key_file:
        _check_pair(settings.cert_file, settings.key_file)
    elif settings.cert_file:
        _certificate("cert_file", settings.cert_file)
    elif settings.key_file:
        _read("key_file", settings.key_file)
    if settings.ca_file:
        _certificate("ca_file", settings.ca_file)
    if settings.ca_path and (
        not os.path.isdir(settings.ca_path) or not os.access(settings.ca_path, os.R_OK | os.X_OK)
    ):
        raise TLSSettingError("ca_path", f"ca_path: {settings.ca_path} is not a readable directory")


def server_context(settings: TLSSettings) -> ssl.SSLContext:
    """A server-side context for `settings`; raises TLSSettingError naming the first bad setting."""
    if not settings.cert_file or not settings.key_file:
        missing = "cert_file" if not settings.cert_file else "key_file"
        raise TLSSettingError(missing, f"{missing} is required to serve TLS (cert_file and key_file)")
    check_files(settings)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = min_version(settings.tls_min_version or "TLSv1_2")
    ciphers = openssl_ciphers(settings.tls_cipher_suites)
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise TLSSettingError(
                "tls_cipher_suites", f"tls_cipher_suites: OpenSSL accepts none of {ciphers}"
            ) from exc
    ctx.load_cert_chain(settings.cert_file, settings.key_file)
    if settings.ca_file:
        try:
            ctx.load_verify_locations(cafile=settings.ca_file)
        except ssl.SSLError as exc:
            raise TLSSettingError(
                "ca_file", f"ca_file: {settings.ca_file} holds no usable CA certificate"
            ) from exc
    if settings.ca_path:
        ctx.load_verify_locations(capath=settings.ca_path)
    if settings.verify_incoming:
        if not settings.ca_file and not settings.ca_path:
            raise TLSSettingError(
                "verify_incoming",
                "verify_incoming is set but there is no ca_file or ca_path to verify clients with",
            )
        # Only a client that presents a certificate signed by the CA completes the handshake.
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
