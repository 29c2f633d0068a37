"""`proconsul tls ca create` / `tls cert create`, run as an operator would, checked with openssl and a TLS handshake.

The commands run in a temporary working directory through the real entry point; what they write
is read back with `cryptography`, verified by the `openssl` tool, and finally used on both ends of
a mutually authenticated TLS connection over loopback that checks `server.dc1.consul`, the name
`verify_server_hostname` asks for.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from proconsul.cli import main as cli


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(i) for i in ext.get_values_for_type(x509.IPAddress)]


def test_ca_create_writes_consul_names_and_refuses_to_overwrite(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "tls", "ca", "create")
    assert code == 0, err
    assert out == "==> Saved consul-agent-ca.pem\n==> Saved consul-agent-ca-key.pem\n"
    ca = load(workdir / "consul-agent-ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.issuer == ca.subject
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 1825
    assert (workdir / "consul-agent-ca-key.pem").read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    assert stat.S_IMODE((workdir / "consul-agent-ca-key.pem").stat().st_mode) == 0o600

    before = (workdir / "consul-agent-ca.pem").read_bytes()
    code, out, err = run(capsys, "tls", "ca", "create")
    assert code == 1 and err == "consul-agent-ca.pem already exists.\n"
    assert (workdir / "consul-agent-ca.pem").read_bytes() == before


def test_ca_with_name_constraints(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tls", "ca", "create", "-domain", "example", "-name-constraint",
                       "-additional-name-constraint", "ui.example.org", "-days", "30")
    assert code == 0, err
    ca = load(workdir / "example-agent-ca.pem")
    constraint = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraint.critical
    assert [n.value for n in constraint.value.permitted_subtrees or []] == ["ui.example.org", "example", "localhost"]
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 30


def test_cert_create_names_sans_and_usages(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tls", "ca", "create")[0] == 0
    code, out, err = run(capsys, "tls", "cert", "create", "-server", "-dc", "east", "-node", "s1",
                         "-additional-dnsname", "consul.example.net", "-additional-ipaddress", "10.1.2.3")
    assert code == 0, err
    assert "==> WARNING: Server Certificates grants authority" in out
    assert out.endswith("==> Using consul-agent-ca.pem and consul-agent-ca-key.pem\n"
                        "==> Saved east-server-consul-0.pem\n==> Saved east-server-consul-0-key.pem\n")
    server = load(workdir / "east-server-consul-0.pem")
    assert server.subject.rfc4514_string() == "CN=server.east.consul"
    assert sans(server) == (["consul.example.net", "s1.server.east.consul", "server.east.consul", "localhost"],
                            ["10.1.2.3", "127.0.0.1"])
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 365
    assert stat.S_IMODE((workdir / "east-server-consul-0-key.pem").stat().st_mode) == 0o600

    # The next certificate of the same kind takes the next number; others have their own prefix.
    assert run(capsys, "tls", "cert", "create", "-server", "-dc", "east")[0] == 0
    assert sans(load(workdir / "east-server-consul-1.pem"))[0] == ["server.east.consul", "localhost"]
    assert run(capsys, "tls", "cert", "create", "-client")[0] == 0
    client = load(workdir / "dc1-client-consul-0.pem")
    assert client.subject.rfc4514_string() == "CN=client.dc1.consul"
    assert sans(client) == (["client.dc1.consul", "localhost"], ["127.0.0.1"])
    code, out, _ = run(capsys, "tls", "cert", "create", "-cli", "-additional-dnsname", "ignored.example")
    assert code == 0 and "WARNING" not in out
    cli_cert = load(workdir / "dc1-cli-consul-0.pem")
    assert sans(cli_cert) == (["cli.dc1.consul", "localhost"], [])
    with pytest.raises(x509.ExtensionNotFound):
        cli_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)

    # The openssl tool accepts every certificate against the CA.
    if shutil.which("openssl"):
        for name in ("east-server-consul-0.pem", "east-server-consul-1.pem", "dc1-client-consul-0.pem",
                     "dc1-cli-consul-0.pem"):
            checked = subprocess.run(["openssl", "verify", "-CAfile", "consul-agent-ca.pem", name],
                                     capture_output=True, text=True)
            assert checked.returncode == 0 and checked.stdout.strip() == f"{name}: OK", checked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Please provide either -server, -client, or -cli"),
        (["-server", "-client"], "Please provide either -server, -client, or -cli"),
        (["-client", "-node", "n1"], "-node requires -server"),
        (["-server", "-ca", ""], "Please provide the ca"),
        (["-server", "-additional-ipaddress", "not-an-ip"], "invalid IP address 'not-an-ip'"),
    ],
)
def test_cert_create_usage_errors(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run(capsys, "tls", "ca", "create")[0] == 0
    code, _, err = run(capsys, "tls", "cert", "create", *args)
    assert code == 1 and message in err
    assert sorted(os.listdir(workdir)) == ["consul-agent-ca-key.pem", "consul-agent-ca.pem"]


def test_cert_create_without_a_ca(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tls", "cert", "create", "-server")
    assert code == 1 and err.startswith("Error reading CA: ")
    (workdir / "consul-agent-ca.pem").write_text("not a certificate")
    (workdir / "consul-agent-ca-key.pem").write_text("not a key")
    code, _, err = run(capsys, "tls", "cert", "create", "-server")
    assert code == 1 and err.startswith("Error parsing CA: ")
    assert not list(workdir.glob("dc1-server-*"))


def test_a_certificate_from_another_ca_does_not_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        assert run(capsys, "tls", "ca", "create")[0] == 0
        assert run(capsys, "tls", "cert", "create", "-server")[0] == 0
    checked = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "a/consul-agent-ca.pem"),
                              str(tmp_path / "b/dc1-server-consul-0.pem")], capture_output=True, text=True)
    assert checked.returncode != 0


def handshake(server_pair: str, client_pair: str, hostname: str) -> dict[str, str]:
    """One mutually verified TLS connection on loopback; the client-certificate subject the server saw."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile="consul-agent-ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(f"{server_pair}.pem", f"{server_pair}-key.pem")
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile="consul-agent-ca.pem")
    client_ctx.load_cert_chain(f"{client_pair}.pem", f"{client_pair}-key.pem")
    seen: dict[str, str] = {}

    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    peer = tls.getpeercert() or {}
                    seen.update(dict(x[0] for x in peer.get("subject", ())))
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass  # the client refused us; the client side reports it

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=30) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                    assert tls.recv(2) == b"ok"
        finally:
            thread.join(30)
    return seen


def test_certificates_authenticate_both_ends_of_a_tls_connection(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "tls", "ca", "create")[0] == 0
    assert run(capsys, "tls", "cert", "create", "-server")[0] == 0
    assert run(capsys, "tls", "cert", "create", "-client")[0] == 0

    # A server presents server.dc1.consul (what verify_server_hostname checks) and accepts the client.
    assert handshake("dc1-server-consul-0", "dc1-client-consul-0", "server.dc1.consul")["commonName"] == \
        "client.dc1.consul"
    # A client certificate cannot pose as a server: it does not carry server.dc1.consul.
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake("dc1-client-consul-0", "dc1-server-consul-0", "server.dc1.consul")
