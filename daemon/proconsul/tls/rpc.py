"""The agent's TLS material in use, per interface, and its replacement on reload.

Owns Consul's internal_rpc semantics on the server port (as its tlsutil configurator does):
- incoming: with cert_file and key_file, a server accepts TLS connections; `verify_incoming`
  refuses plaintext and requires a client certificate signed by the CA; with it on, server-only
  calls (Raft streams, `Raft.Join`, leader forwarding) need a certificate naming
  `server.<datacenter>.<domain>` (a client certificate, `client.<dc>.<domain>`, cannot pose as a
  server);
- outgoing: `verify_outgoing` dials every server over TLS, verifying its certificate against the
  CA and presenting ours; `verify_server_hostname` (which implies verify_outgoing, as in Consul)
  also checks the name `server.<datacenter>.<domain>` of the datacenter dialled;
- HTTPS: the listener keeps one context object for its life; its SNI callback hands each new
  handshake the context of the moment, so a reload reaches new connections and leaves
  established ones alone.

`reload` builds every new context first and swaps them only when all of them build: a missing
file or a key that is not its certificate's leaves the running material in place and raises the
`TLSSettingError` naming the setting. Verification switches and versions are read from the
settings as they were at start for HTTPS (OpenSSL copies them into a connection before the SNI
callback runs); cert, key and CA files are what rotation is about.
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol

from proconsul.tls.context import (
    TLSSettingError,
    TLSSettings,
    check_files,
    min_version,
    openssl_ciphers,
    server_context,
)

__all__ = ["InternalRPCSettings", "TLSConfigurator", "client_context", "server_name"]


class InternalRPCSettings(TLSSettings, Protocol):
    verify_outgoing: bool
    verify_server_hostname: bool


def server_name(datacenter: str, domain: str) -> str:
    """The name a server certificate carries and verify_server_hostname checks (Consul's)."""
    return f"server.{datacenter}.{domain.strip('.')}"


def client_context(settings: InternalRPCSettings) -> ssl.SSLContext:
    """The context servers are dialled with: the CA verifies them, our certificate (if any) is
    presented, and the hostname is checked when verify_server_hostname is set."""
    if not settings.ca_file and not settings.ca_path:
        field = "verify_server_hostname" if settings.verify_server_hostname else "verify_outgoing"
        raise TLSSettingError(field, f"{field} is set but there is no ca_file or ca_path to verify servers with")
    check_files(settings)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = min_version(settings.tls_min_version or "TLSv1_2")
    ciphers = openssl_ciphers(settings.tls_cipher_suites)
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise TLSSettingError("tls_cipher_suites", f"tls_cipher_suites: OpenSSL accepts none of {ciphers}") from exc
    try:
        ctx.load_verify_locations(cafile=settings.ca_file or None, capath=settings.ca_path or None)
    except ssl.SSLError as exc:
        raise TLSSettingError("ca_file", f"ca_file: {settings.ca_file} holds no usable CA certificate") from exc
    if settings.cert_file and settings.key_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    ctx.check_hostname = settings.verify_server_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _dns_names(peer_certificate: dict[str, Any]) -> list[str]:
    return [value for kind, value in peer_certificate.get("subjectAltName", ()) if kind == "DNS"]


class _Material:
    """The contexts built from one version of the settings (all or nothing)."""

    def __init__(self, rpc: InternalRPCSettings, https: TLSSettings | None, server: bool) -> None:
        self.rpc = rpc
        self.rpc_server: ssl.SSLContext | None = None
        if server and (rpc.verify_incoming or (rpc.cert_file and rpc.key_file)):
            # server_context names a missing cert_file/key_file, and verify_incoming without a CA.
            self.rpc_server = server_context(rpc)
        elif rpc.cert_file or rpc.key_file or rpc.ca_file or rpc.ca_path:
            check_files(rpc)
        self.rpc_client: ssl.SSLContext | None = None
        if rpc.verify_outgoing or rpc.verify_server_hostname:
            self.rpc_client = client_context(rpc)
        self.https = server_context(https) if https is not None else None


class TLSConfigurator:
    """The TLS policy of one agent (`transport.RPCSecurity` for the server port, plus HTTPS)."""

    def __init__(
        self,
        internal_rpc: InternalRPCSettings,
        https: TLSSettings | None,
        datacenter: str,
        domain: str,
        server: bool,
        handshake_timeout_s: float = 5.0,
    ) -> None:
        self.datacenter = datacenter
        self.domain = domain
        self.server = server
        self._handshake_timeout_s = handshake_timeout_s
        self._material = _Material(internal_rpc, https, server)
        self._https_front: ssl.SSLContext | None = self._material.https
        if self._https_front is not None:
            self._https_front.sni_callback = self._https_handshake

    # --- reload ------------------------------------------------------------------------------

    def reload(
        self, internal_rpc: InternalRPCSettings, https: TLSSettings | None, handshake_timeout_s: float | None = None
    ) -> None:
        """Re-read every file; raises TLSSettingError (and keeps what is in use) when one fails."""
        if self._https_front is None:
            https = None  # ports.https turned on needs a restart (the listener is not there)
        self._material = _Material(internal_rpc, https, self.server)
        if handshake_timeout_s is not None:
            self._handshake_timeout_s = handshake_timeout_s

    def rpc_certificate_file(self) -> str:
        return self._material.rpc.cert_file

    # --- HTTPS -------------------------------------------------------------------------------

    def https_context(self) -> ssl.SSLContext | None:
        """The context the HTTPS listener is built with (the same object for the agent's life)."""
        return self._https_front

    def _https_handshake(self, ssl_object: Any, name: str | None, front: ssl.SSLContext) -> None:
        current = self._material.https
        if current is not None and current is not front:
            ssl_object.context = current  # this handshake uses the certificate loaded last

    # --- transport.RPCSecurity ---------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext | None:
        return self._material.rpc_server

    def require_tls(self) -> bool:
        return self._material.rpc.verify_incoming

    def client_context(self, datacenter: str) -> tuple[ssl.SSLContext, str | None] | None:
        material = self._material
        if material.rpc_client is None:
            return None
        name = server_name(datacenter or self.datacenter, self.domain) if material.rpc.verify_server_hostname else None
        return material.rpc_client, name

    def server_refusal(self, peer_certificate: dict[str, Any] | None) -> str:
        if not self._material.rpc.verify_incoming:
            return ""  # Consul authorises server connections only when it verifies clients
        expected = server_name(self.datacenter, self.domain)
        if not peer_certificate:
            return f"no verified certificate for {expected}"
        names = _dns_names(peer_certificate)
        if expected not in names:
            return f"the certificate names {', '.join(names) or 'no DNS name'}, not {expected}"
        return ""

    def handshake_timeout_s(self) -> float:
        return self._handshake_timeout_s
