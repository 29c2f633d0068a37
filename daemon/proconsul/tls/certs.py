"""Certificates for agent TLS: a private CA and the server, client and CLI certificates it signs.

Owns what `proconsul tls ca create` and `proconsul tls cert create` produce, with the names,
SANs and key usages Consul's built-in CA gives them, so configurations and scripts written for
`consul tls` work unchanged:

- keys are ECDSA P-256 in "EC PRIVATE KEY" PEM; serial numbers are random 128-bit integers;
- a server certificate is named `server.<dc>.<domain>` (what `verify_server_hostname` checks),
  with `localhost`, 127.0.0.1 and, given a node, `<node>.server.<dc>.<domain>` as extra SANs;
  a client certificate is `client.<dc>.<domain>`; both may authenticate either end of a
  connection. A CLI certificate (`cli.<dc>.<domain>`) carries no extended key usage;
- files are `<domain>-agent-ca.pem` / `-key.pem` for the CA and `<dc>-<kind>-<domain>-<n>.pem` /
  `-<n>-key.pem` for a certificate, `n` the first number whose two files do not exist yet.

No I/O here: callers read and write the PEM text.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS_DEFAULT = 1825  # five years, as Consul's CA
CERT_DAYS_DEFAULT = 365
KINDS = ("server", "client", "cli")
# Consul gives up after this many existing numbered files.
MAX_FILE_NUMBER = 10000


class CertificateError(Exception):
    """Input the certificate commands cannot use (unreadable PEM, wrong key type, bad address)."""


@dataclass(frozen=True)
class CertSpec:
    """What one certificate will say: its common name, SANs and extended key usages."""

    kind: str
    name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    extended_key_usage: tuple[x509.ObjectIdentifier, ...]
    file_prefix: str


@dataclass(frozen=True)
class PemPair:
    certificate: str
    private_key: str


def ca_file_names(domain: str) -> tuple[str, str]:
    """(certificate, key) file names of the CA for `domain`."""
    return f"{domain}-agent-ca.pem", f"{domain}-agent-ca-key.pem"


def cert_spec(
    kind: str,
    datacenter: str,
    domain: str,
    node: str = "",
    additional_dns: Sequence[str] = (),
    additional_ips: Sequence[str] = (),
) -> CertSpec:
    """The certificate `tls cert create -<kind>` makes; extra names come first, as Consul orders them."""
    if kind not in KINDS:
        raise CertificateError(f"unknown certificate kind {kind!r}")
    name = f"{kind}.{datacenter}.{domain}"
    dns = [d.strip() for d in additional_dns if d.strip()]
    ips = [_ip(i) for i in additional_ips if i.strip()]
    both_ends = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    if kind == "server":
        if node:
            dns.append(f"{node}.server.{datacenter}.{domain}")
        dns += [name, "localhost"]
        ips.append(ipaddress.ip_address("127.0.0.1"))
        usage: tuple[x509.ObjectIdentifier, ...] = both_ends
    elif kind == "client":
        dns += [name, "localhost"]
        ips.append(ipaddress.ip_address("127.0.0.1"))
        usage = both_ends
    else:
        # Consul's CLI certificate drops any additional names and addresses.
        dns, ips, usage = [name, "localhost"], [], ()
    return CertSpec(kind, name, tuple(dns), tuple(ips), usage, f"{datacenter}-{kind}-{domain}")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as exc:
        raise CertificateError(f"invalid IP address {text!r}") from exc


def free_file_names(prefix: str, exists: Callable[[str], bool]) -> tuple[str, str]:
    """The first numbered (certificate, key) pair of names where neither file exists."""
    for n in range(MAX_FILE_NUMBER + 1):
        cert, key = f"{prefix}-{n}.pem", f"{prefix}-{n}-key.pem"
        if not exists(cert) and not exists(key):
            return cert, key
    raise CertificateError("Could not find a filename that doesn't already exist")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def _serial() -> int:
    # 128 random bits, kept positive and non-zero as X.509 requires.
    return secrets.randbits(128) | 1


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def _validity(days: int, now: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    if days <= 0:
        raise CertificateError("days must be a positive number")
    start = now or datetime.datetime.now(datetime.UTC)
    return start, start + datetime.timedelta(days=days)


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs handshakes and may encipher keys."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=not ca, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def create_ca(
    days: int = CA_DAYS_DEFAULT,
    name_constraints: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> PemPair:
    """A self-signed CA; with `name_constraints`, it may only sign names under those DNS domains."""
    key = _new_key()
    serial = _serial()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "proconsul"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"proconsul Agent CA {serial}"),
    ])
    start, end = _validity(days, now)
    key_id = _key_id(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(key_id), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(key_id, authority_cert_issuer=None, authority_cert_serial_number=None),
            critical=False,
        )
    )
    if name_constraints:
        permitted = [x509.DNSName(name) for name in name_constraints]
        builder = builder.add_extension(x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
                                        critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return PemPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def load_ca(ca_pem: str, ca_key_pem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and its EC key, or a CertificateError naming which one is unusable."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
    except ValueError as exc:
        raise CertificateError(f"Error parsing CA: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"Error parsing CA key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an EC private key")
    if key.public_key().public_numbers() != ca.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertificateError("the CA key does not belong to the CA certificate")
    return ca, key


def _authority_key_id(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Verifiers match this against the CA's own subject key identifier, whatever hash made it.
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def create_cert(
    spec: CertSpec, ca_pem: str, ca_key_pem: str, days: int = CERT_DAYS_DEFAULT, now: datetime.datetime | None = None
) -> PemPair:
    """A new key and a certificate for it, signed by the CA, as `spec` describes."""
    ca, ca_key = load_ca(ca_pem, ca_key_pem)
    key = _new_key()
    start, end = _validity(days, now)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
    sans += [x509.IPAddress(ip) for ip in spec.ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(_key_id(key.public_key())), critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    if spec.extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(spec.extended_key_usage)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return PemPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))
