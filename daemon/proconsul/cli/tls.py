"""`proconsul tls ca create` and `proconsul tls cert create`: a private CA and agent certificates.

Owns the commands' flags, messages and files, which follow `consul tls`: files are written to the
current directory under Consul's names (tls/certs.py), an existing CA is never overwritten, a
certificate takes the first free number, and the server warning and "==> Saved <file>" lines
read as Consul's do. One deliberate difference: private keys are written 0600, where Consul
leaves them to the umask (usually world-readable).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from proconsul.cli.base import Command, Context, FlagSpec, GroupCommand
from proconsul.tls import certs

_SERVER_WARNING = """==> WARNING: Server Certificates grants authority to become a
    server and access all state in the cluster including root keys
    and all ACL tokens. Do not distribute them to production hosts
    that are not server nodes. Store them as securely as CA keys."""


def _write_new(path: str, text: str, mode: int) -> None:
    """Create `path` with `mode` (never replacing a file that appeared meanwhile)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, mode)  # the umask may have narrowed the certificate's 0644


def _save(ctx: Context, pair: certs.PemPair, cert_file: str, key_file: str) -> None:
    """Write a certificate (0644) and its key (0600), saying so as Consul does."""
    _write_new(cert_file, pair.certificate, 0o644)
    ctx.ui.output(f"==> Saved {cert_file}")
    _write_new(key_file, pair.private_key, 0o600)
    ctx.ui.output(f"==> Saved {key_file}")


class TLSCommand(GroupCommand):
    name = "tls"
    synopsis = "Builtin helpers for creating CAs and certificates"
    usage = """
Usage: proconsul tls <subcommand> <subcommand> [options]

  Helpers for setting up a private CA and the certificates agents, servers
  and the CLI use for TLS.

  Create a CA:

    $ proconsul tls ca create

  Create a server certificate:

    $ proconsul tls cert create -server -dc dc1

  Create a client certificate:

    $ proconsul tls cert create -client -dc dc1
"""


class TLSCACommand(GroupCommand):
    name = "tls ca"
    synopsis = "Helpers for CAs"
    usage = """
Usage: proconsul tls ca <subcommand> [options]

  Creates the certificate authority that signs agent certificates.
"""


class TLSCertCommand(GroupCommand):
    name = "tls cert"
    synopsis = "Helpers for certificates"
    usage = """
Usage: proconsul tls cert <subcommand> [options]

  Creates server, client and CLI certificates signed by the CA.
"""


class TLSCACreateCommand(Command):
    name = "tls ca create"
    synopsis = "Create a new consul CA"
    usage = """
Usage: proconsul tls ca create [options]

  Creates a new CA in the current directory:

    $ proconsul tls ca create
    ==> Saved consul-agent-ca.pem
    ==> Saved consul-agent-ca-key.pem
"""

    def define(self, spec: FlagSpec) -> None:
        spec.int("days", "Provide number of days the CA is valid for from now on. Defaults to 5 years.",
                 default=certs.CA_DAYS_DEFAULT)
        spec.string("domain", "Domain of consul cluster. Only used in combination with -name-constraint. "
                    "Defaults to consul.", default="consul")
        spec.bool("name-constraint", "Add name constraints for the CA. Results in rejecting certificates for "
                  "other DNS than specified. If turned on localhost and -domain will be added to the allowed DNS.")
        spec.list("additional-name-constraint", "Add name constraints for the CA. Can be used multiple times. "
                  "Only used in combination with -name-constraint.")

    def run(self, ctx: Context) -> int:
        domain = ctx.opts["domain"]
        cert_file, key_file = certs.ca_file_names(domain)
        for path in (cert_file, key_file):
            if os.path.lexists(path):
                ctx.ui.error(f"{path} already exists.")
                return 1
        constraints: list[str] = []
        if ctx.opts["name-constraint"]:
            constraints = [*ctx.opts["additional-name-constraint"], domain, "localhost"]
        try:
            pair = certs.create_ca(ctx.opts["days"], constraints)
        except certs.CertificateError as exc:
            ctx.ui.error(str(exc))
            return 1
        _save(ctx, pair, cert_file, key_file)
        return 0


class TLSCertCreateCommand(Command):
    name = "tls cert create"
    synopsis = "Create a new certificate"
    usage = """
Usage: proconsul tls cert create [options]

  Creates a certificate and its key in the current directory, signed by the
  CA that "proconsul tls ca create" made:

    $ proconsul tls cert create -server
    ==> Using consul-agent-ca.pem and consul-agent-ca-key.pem
    ==> Saved dc1-server-consul-0.pem
    ==> Saved dc1-server-consul-0-key.pem
"""

    def define(self, spec: FlagSpec) -> None:
        spec.string("ca", "Provide path to the ca. Defaults to #DOMAIN#-agent-ca.pem.", default="#DOMAIN#-agent-ca.pem")
        spec.string("key", "Provide path to the key. Defaults to #DOMAIN#-agent-ca-key.pem.",
                    default="#DOMAIN#-agent-ca-key.pem")
        spec.bool("server", "Generate server certificate.")
        spec.bool("client", "Generate client certificate.")
        spec.bool("cli", "Generate cli certificate.")
        spec.string("node", "When generating a server cert and this is set an additional dns name is included "
                    "of the form <node>.server.<datacenter>.<domain>.", default="")
        spec.int("days", "Provide number of days the certificate is valid for from now on. Defaults to 1 year.",
                 default=certs.CERT_DAYS_DEFAULT)
        spec.string("dc", "Provide the datacenter. Matters only for -server certificates. Defaults to dc1.",
                    default="dc1")
        spec.string("domain", "Provide the domain. Matters only for -server certificates.", default="consul")
        spec.list("additional-dnsname", "Provide an additional dnsname for Subject Alternative Names. "
                  "localhost is always included. This flag may be provided multiple times.")
        spec.list("additional-ipaddress", "Provide an additional ipaddress for Subject Alternative Names. "
                  "127.0.0.1 is always included. This flag may be provided multiple times.")

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        if not o["ca"]:
            ctx.ui.error("Please provide the ca")
            return 1
        if not o["key"]:
            ctx.ui.error("Please provide the key")
            return 1
        kinds = [k for k in certs.KINDS if o[k]]
        if len(kinds) != 1:
            ctx.ui.error("Please provide either -server, -client, or -cli")
            return 1
        if o["node"] and kinds[0] != "server":
            ctx.ui.error("-node requires -server")
            return 1
        try:
            spec = certs.cert_spec(kinds[0], o["dc"], o["domain"], o["node"],
                                   o["additional-dnsname"], o["additional-ipaddress"])
            cert_file, key_file = certs.free_file_names(spec.file_prefix, os.path.lexists)
        except certs.CertificateError as exc:
            ctx.ui.error(str(exc))
            return 1
        ca_file = o["ca"].replace("#DOMAIN#", o["domain"], 1)
        ca_key_file = o["key"].replace("#DOMAIN#", o["domain"], 1)
        try:
            ca_pem = Path(ca_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            ctx.ui.error(f"Error reading CA: {exc}")
            return 1
        try:
            ca_key_pem = Path(ca_key_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            ctx.ui.error(f"Error reading CA key: {exc}")
            return 1
        if spec.kind == "server":
            ctx.ui.output(_SERVER_WARNING)
        ctx.ui.output(f"==> Using {ca_file} and {ca_key_file}")
        try:
            pair = certs.create_cert(spec, ca_pem, ca_key_pem, o["days"])
            _check_signed(pair.certificate, ca_pem)
        except certs.CertificateError as exc:
            ctx.ui.error(str(exc))
            return 1
        _save(ctx, pair, cert_file, key_file)
        return 0


def _check_signed(cert_pem: str, ca_pem: str) -> None:
    """As Consul does before saving: the new certificate verifies against the CA it came from."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise certs.CertificateError(f"the new certificate does not verify against the CA: {exc!r}") from exc


COMMANDS = [TLSCommand, TLSCACommand, TLSCertCommand, TLSCACreateCommand, TLSCertCreateCommand]
