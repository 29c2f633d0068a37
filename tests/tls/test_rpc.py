"""tls/rpc.py with the transport: TLS on the server port, who counts as a server, and rotation.

Real sockets on 127.0.0.1, the transport's own listener and pool, certificates from
proconsul.tls.certs (the code behind `proconsul tls`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from proconsul.tls import certs
from proconsul.tls.context import TLSSettingError
from proconsul.tls.rpc import TLSConfigurator
from proconsul.transport import (
    ConnectionPool,
    Listener,
    RemoteError,
    TLSHandshakeError,
    dial,
    rpc_stream_handler,
)
from proconsul.wire import ConnType


@dataclass(frozen=True)
class Section:
    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_incoming: bool = False
    verify_outgoing: bool = False
    verify_server_hostname: bool = False
    tls_min_version: str = "TLSv1_2"
    tls_cipher_suites: str = ""


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = certs.create_ca()
        self.foreign = certs.create_ca()
        self.ca_file = self._write("ca.pem", self.ca.certificate)
        self.foreign_ca_file = self._write("foreign-ca.pem", self.foreign.certificate)
        self.server = self.pair("server", "server")
        self.server2 = self.pair("server2", "server")
        self.client = self.pair("client", "client")
        self.foreign_server = self.pair("foreign", "server", foreign=True)

    def _write(self, name: str, text: str) -> str:
        path = self.root / name
        path.write_text(text)
        return str(path)

    def pair(self, name: str, kind: str, foreign: bool = False) -> tuple[str, str]:
        ca = self.foreign if foreign else self.ca
        made = certs.create_cert(certs.cert_spec(kind, "dc1", "consul"), ca.certificate, ca.private_key)
        return self._write(f"{name}.pem", made.certificate), self._write(f"{name}-key.pem", made.private_key)

    def section(self, pair: tuple[str, str], foreign_ca: bool = False, **verify: bool) -> Section:
        flags = {"verify_incoming": True, "verify_outgoing": True, "verify_server_hostname": True, **verify}
        ca = self.foreign_ca_file if foreign_ca else self.ca_file
        return Section(ca_file=ca, cert_file=pair[0], key_file=pair[1], **flags)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("rpc-tls"))


def configurator(section: Section, server: bool = True) -> TLSConfigurator:
    return TLSConfigurator(section, None, "dc1", "consul.", server=server)


class Served:
    """A listener with an RPC handler (Raft.Join server-only) and a Raft handler that records."""

    def __init__(self, security: TLSConfigurator) -> None:
        self.raft_bytes = bytearray()
        self.raft_seen = asyncio.Event()

        async def dispatch(method: str, body: Any) -> Any:
            return {"method": method, "body": body}

        async def raft(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                self.raft_bytes += data
                self.raft_seen.set()

        self.listener = Listener(
            "127.0.0.1", 0,
            {ConnType.RPC: rpc_stream_handler(dispatch, security, {"Raft.Join"}), ConnType.RAFT: raft},
            security=security, server_only=(ConnType.RAFT,),
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.port}"


async def _serving(security: TLSConfigurator) -> Served:
    served = Served(security)
    await served.listener.start()
    return served


async def test_servers_talk_over_verified_tls_and_plaintext_is_refused(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    served = await _serving(configurator(files.section(files.server)))
    server_pool = ConnectionPool(security=configurator(files.section(files.server2)))
    plain_pool = ConnectionPool()
    try:
        # Another server: any method, server-only ones included, over TLS.
        assert await server_pool.call(served.address, "Raft.Join", {"id": "x"}) == {
            "method": "Raft.Join", "body": {"id": "x"},
        }
        _, writer = await dial(served.address, ConnType.RAFT, configurator(files.section(files.server2)))
        writer.write(b"hello raft")
        await writer.drain()
        await asyncio.wait_for(served.raft_seen.wait(), 30)
        assert bytes(served.raft_bytes) == b"hello raft"
        writer.close()
        # A plaintext client is closed before it is served (verify_incoming), with a log line.
        with caplog.at_level(logging.WARNING, logger="proconsul.transport"):
            with pytest.raises((ConnectionError, RemoteError)):
                await plain_pool.call(served.address, "Status.Ping", None, timeout_s=30)
        assert "non-TLS connection" in caplog.text and "verify_incoming requires TLS" in caplog.text
    finally:
        await server_pool.close()
        await plain_pool.close()
        await served.listener.stop()


async def test_a_client_certificate_cannot_make_server_calls(files: Files, caplog: pytest.LogCaptureFixture) -> None:
    served = await _serving(configurator(files.section(files.server)))
    client = configurator(files.section(files.client), server=False)
    pool = ConnectionPool(security=client)
    try:
        # A client agent's ordinary calls work over its client certificate...
        assert (await pool.call(served.address, "Status.Ping", None))["method"] == "Status.Ping"
        # ...but it cannot join Raft or stream Raft messages.
        with pytest.raises(RemoteError, match="Raft.Join is for servers only.*not server.dc1.consul"):
            await pool.call(served.address, "Raft.Join", {"id": "intruder"})
        with caplog.at_level(logging.WARNING, logger="proconsul.transport"):
            reader, writer = await dial(served.address, ConnType.RAFT, client)
            writer.write(b"vote for me")
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server
            writer.close()
        assert "RAFT connection from" in caplog.text and "not server.dc1.consul" in caplog.text
        assert not served.raft_seen.is_set()
    finally:
        await pool.close()
        await served.listener.stop()


async def test_a_certificate_of_another_ca_is_refused_both_ways(files: Files) -> None:
    served = await _serving(configurator(files.section(files.server)))
    # A server whose certificate (and trust) come from another CA.
    foreign = configurator(files.section(files.foreign_server, foreign_ca=True))
    pool = ConnectionPool(security=foreign)
    try:
        with pytest.raises(TLSHandshakeError):
            await pool.call(served.address, "Raft.Join", {"id": "foreign"})
        # Trusting our CA does not help it: our server does not accept its certificate.
        half = configurator(replace(files.section(files.foreign_server), ca_file=files.ca_file))
        with pytest.raises((TLSHandshakeError, ConnectionError)):
            await ConnectionPool(security=half).call(served.address, "Raft.Join", {"id": "foreign"}, timeout_s=30)
        assert not served.raft_seen.is_set()
    finally:
        await pool.close()
        await served.listener.stop()


async def test_verify_server_hostname_refuses_a_client_certificate_posing_as_a_server(files: Files) -> None:
    # A "server" that presents a client certificate, with incoming verification off.
    impostor = await _serving(configurator(files.section(files.client, verify_incoming=False)))
    checking = ConnectionPool(security=configurator(files.section(files.server2)))
    chain_only = ConnectionPool(security=configurator(files.section(files.server2, verify_server_hostname=False)))
    try:
        with pytest.raises(TLSHandshakeError, match="server.dc1.consul|[Hh]ostname"):
            await checking.call(impostor.address, "Status.Ping", None)
        # verify_outgoing alone verifies the chain only (Consul's behaviour without the hostname check).
        assert (await chain_only.call(impostor.address, "Status.Ping", None))["method"] == "Status.Ping"
    finally:
        await checking.close()
        await chain_only.close()
        await impostor.listener.stop()


async def test_reload_swaps_certificates_for_new_connections_and_refuses_a_broken_pair(files: Files) -> None:
    security = configurator(files.section(files.server))
    served = await _serving(security)
    pool = ConnectionPool(security=configurator(files.section(files.server2)))
    try:
        assert await pool.call(served.address, "Status.Ping", None)
        # A key that is not the certificate's: refused, the running material stays.
        with pytest.raises(TLSSettingError, match="is not the key of cert_file"):
            security.reload(Section(**{**files.section(files.server).__dict__, "key_file": files.client[1]}), None)
        assert security.server_context() is not None
        fresh = ConnectionPool(security=configurator(files.section(files.server2)))
        assert await fresh.call(served.address, "Status.Ping", None)
        await fresh.close()
        # Rotating to a certificate of another CA: new handshakes present it (our old trust refuses
        # it), while the connection opened before keeps working.
        security.reload(files.section(files.foreign_server, foreign_ca=True), None)
        with pytest.raises(TLSHandshakeError):
            await ConnectionPool(security=configurator(files.section(files.server2))).call(
                served.address, "Status.Ping", None
            )
        assert await pool.call(served.address, "Status.Ping", None)
    finally:
        await pool.close()
        await served.listener.stop()


def test_settings_that_cannot_be_honoured_name_the_key(files: Files) -> None:
    with pytest.raises(TLSSettingError, match="no ca_file or ca_path to verify servers with") as err:
        configurator(Section(cert_file=files.server[0], key_file=files.server[1], verify_outgoing=True))
    assert err.value.field == "verify_outgoing"
    with pytest.raises(TLSSettingError) as err:
        configurator(Section(ca_file=files.ca_file, verify_incoming=True))
    assert err.value.field == "cert_file"
    # A client agent has no server port: verify_incoming there needs no certificate.
    assert configurator(Section(ca_file=files.ca_file, verify_incoming=True), server=False).server_context() is None


def test_validate_names_the_file_and_key_of_an_internal_rpc_setting_it_cannot_honour(
    files: Files, tmp_path: Path
) -> None:
    from proconsul.config import validate_paths_with_warnings

    path = tmp_path / "tls.hcl"
    path.write_text(f'data_dir = "{tmp_path}"\nbind_addr = "127.0.0.1"\nserver = true\ncert_file = "{files.server[0]}"\n'
                    f'key_file = "{files.server[1]}"\nverify_outgoing = true\n')
    errors, _ = validate_paths_with_warnings([str(path)])
    assert any(e.startswith(f"{path}: verify_outgoing") and "no ca_file or ca_path" in e for e in errors), errors
    # With the CA it validates, and nothing is reported unused (server RPC uses the defaults).
    path.write_text(path.read_text() + f'ca_file = "{files.ca_file}"\nverify_incoming = true\n'
                    "verify_server_hostname = true\n")
    errors, warnings = validate_paths_with_warnings([str(path)])
    assert errors == [] and not [w for w in warnings if "no listener uses them" in w], (errors, warnings)
